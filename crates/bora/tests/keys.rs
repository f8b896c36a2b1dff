//! End to end: inference keys, usage and the audit trail with the real
//! `bora server` and the real CLI. Request records are written into the
//! server's store through the gateway's recorder (`RecordWriter`), from
//! this process, as the gateway does from the server's.

mod common;

use std::process::Output;
use std::sync::Arc;

use bora_api::RequestRecord;
use bora_control::records::{RecordWriter, RecorderConfig};
use bora_router::Recorder;
use bora_store::{SecretCipher, SqliteStore, Store};
use common::*;

#[track_caller]
fn assert_fails_with(out: &Output, needles: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    for needle in needles {
        assert!(
            stderr(out).contains(needle),
            "stderr lacks {needle:?}:\n{}",
            stderr(out)
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn keys_json(server: &Server, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["keys", "list", "-o", "json"];
    if all {
        args.push("--all");
    }
    let out: serde_json::Value = serde_json::from_str(&server.cli_ok(&args)).unwrap();
    out["items"].as_array().unwrap().clone()
}

fn record(i: usize, key: Option<(&str, &str)>, model: &str, status: u16) -> RequestRecord {
    RequestRecord {
        id: format!("req-{i}"),
        at: chrono::Utc::now() - chrono::TimeDelta::minutes(5),
        key_id: key.map(|k| k.0.to_string()),
        key_name: key.map(|k| k.1.to_string()),
        model: model.into(),
        app: Some("ai".into()),
        service: Some(model.into()),
        instance: Some("instance-1".into()),
        model_digest: Some("sha256:0123".into()),
        engine: Some("bora-engine/0.1.0".into()),
        endpoint: "chat.completions".into(),
        stream: i.is_multiple_of(2),
        status,
        error: (status >= 400).then(|| "upstream failed".to_string()),
        prompt_tokens: 10,
        completion_tokens: 3,
        duration_ms: 40,
        ttft_ms: Some(12),
        prompt: Some("the prompt".into()),
        completion: Some("the completion".into()),
    }
}

/// Writes records into the server's store through the recorder.
fn record_through_the_recorder(server: &Server, records: Vec<RequestRecord>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cipher = SecretCipher::load_or_create(&server.data_dir.join("secret.key")).unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&server.data_dir.join("bora.db"), cipher).unwrap());
        let writer = RecordWriter::start(store, RecorderConfig::default());
        for r in records {
            writer.record(r);
        }
        writer.flush().await;
        assert_eq!(writer.dropped(), 0);
    });
}

#[test]
fn keys_are_created_shown_once_listed_and_revoked() {
    require_root();
    let mut server = Server::start();
    let mut outputs = String::new();

    // Create: the secret alone on stdout, a warning on stderr.
    let created = server.cli(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--models",
        "llama,bert",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--expires",
        "30d",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let secret = stdout(&created).trim().to_string();
    assert!(secret.starts_with("bora-sk-"), "{secret:?}");
    assert_eq!(secret.len(), 51, "{secret:?}");
    assert!(
        stderr(&created).contains("will not be shown again"),
        "{}",
        stderr(&created)
    );
    let hash = hex(&bora_router::gateway::hash_secret(&secret));

    // -o json prints the whole answer, secret included.
    let web: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["keys", "create", "--name", "web", "-o", "json"]))
            .unwrap();
    let web_secret = web["secret"].as_str().unwrap().to_string();
    assert!(web_secret.starts_with("bora-sk-") && web_secret != secret);
    assert_eq!(web["key"]["hint"], web_secret[..12]);
    assert_eq!(web["key"]["models"], serde_json::json!([]));

    // List: names, hints, limits; never a secret or a hash.
    let table = server.cli_ok(&["keys", "list"]);
    outputs += &table;
    let header = table.lines().next().unwrap();
    for column in [
        "NAME", "ID", "HINT", "MODELS", "RPM", "TPM", "EXPIRES", "STATE",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let ci_line = table.lines().find(|l| l.starts_with("ci ")).unwrap();
    assert!(
        ci_line.contains("llama,bert") && ci_line.contains("60") && ci_line.contains("active"),
        "{table}"
    );
    assert!(ci_line.contains(&secret[..12]), "{table}");
    let keys = keys_json(&server, false);
    outputs += &serde_json::to_string(&keys).unwrap();
    assert_eq!(keys.len(), 2);
    let ci_id = keys[0]["id"].as_str().unwrap().to_string();
    assert_eq!(keys[0]["name"], "ci");
    assert_eq!(keys[0]["rpm"], 60);
    assert_eq!(keys[0]["tpm"], 100000);
    assert!(keys[0]["expires_at"].is_string());

    // Bad input: a clear error, and nothing changes.
    let zero = server.cli(&["keys", "create", "--name", "other", "--rpm", "0"]);
    assert_fails_with(&zero, &["rpm is 0", "at least 1"]);
    let bad_name = server.cli(&["keys", "create", "--name", "Bad_Name"]);
    assert_fails_with(&bad_name, &["key name \"Bad_Name\" is not allowed"]);
    let bad_model = server.cli(&["keys", "create", "--name", "other", "--models", "ok,No!"]);
    assert_fails_with(&bad_model, &["models[1]"]);
    let duplicate = server.cli(&["keys", "create", "--name", "ci"]);
    assert_fails_with(
        &duplicate,
        &[
            "inference key named \"ci\" already exists",
            "bora keys revoke ci",
        ],
    );
    let bad_expiry = server.cli(&["keys", "create", "--name", "other", "--expires", "soon"]);
    assert_eq!(bad_expiry.status.code(), Some(2), "clap refuses it");
    assert!(stderr(&bad_expiry).contains("expected a number and a unit"));
    assert_eq!(keys_json(&server, true).len(), 2, "nothing was recorded");

    // Usage and the audit trail of records the recorder wrote: more than a
    // page (1000) of them for ci, a failure, a request without a key.
    let mut records: Vec<RequestRecord> = (0..1203)
        .map(|i| record(i, Some((&ci_id, "ci")), "llama", 200))
        .collect();
    records.push(record(1203, Some((&ci_id, "ci")), "bert", 500));
    records.push(record(1204, None, "llama", 401));
    record_through_the_recorder(&server, records);

    let usage = server.cli_ok(&["usage"]);
    outputs += &usage;
    let mut lines = usage.lines();
    let header: Vec<_> = lines
        .next()
        .unwrap()
        .split("  ")
        .filter(|c| !c.is_empty())
        .collect();
    let header: Vec<_> = header.iter().map(|c| c.trim()).collect();
    assert_eq!(
        header,
        vec![
            "KEY",
            "MODEL",
            "REQUESTS",
            "ERRORS",
            "TOKENS IN",
            "TOKENS OUT"
        ],
        "{usage}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        vec![
            vec!["(no", "key)", "llama", "1", "1", "10", "3"],
            vec!["ci", "bert", "1", "1", "10", "3"],
            vec!["ci", "llama", "1203", "0", "12030", "3609"],
        ],
        "{usage}"
    );
    let only: serde_json::Value = serde_json::from_str(
        &server.cli_ok(&["usage", "--key", &ci_id, "--model", "bert", "-o", "json"]),
    )
    .unwrap();
    assert_eq!(only["items"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["items"][0]["errors"], 1);
    let none = server.cli(&["usage", "--since", "1m"]);
    assert!(none.status.success());
    assert_eq!(stdout(&none), "", "the records are 5 minutes old");
    assert!(stderr(&none).contains("no requests since 1m ago"));
    assert_fails_with(
        &server.cli(&["usage", "--since", "yesterday"]),
        &["invalid --since \"yesterday\""],
    );

    // Export: JSON Lines, every record once, in order, across pages; no
    // content (retention is off).
    let exported = server.cli_ok(&["audit", "export"]);
    let ids: Vec<String> = exported
        .lines()
        .map(|l| {
            let r: RequestRecord = serde_json::from_str(l).unwrap();
            assert_eq!((r.prompt, r.completion), (None, None));
            r.id
        })
        .collect();
    assert_eq!(
        ids,
        (0..1205).map(|i| format!("req-{i}")).collect::<Vec<_>>()
    );
    let file = server.data_dir.join("audit.jsonl");
    let written = server.cli(&[
        "audit",
        "export",
        "--key",
        "ci",
        "--model",
        "bert",
        "--since",
        "1h",
        "--until",
        "2099-01-01T00:00:00Z",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(written.status.success(), "{}", stderr(&written));
    assert_eq!(stdout(&written), "");
    assert!(stderr(&written).contains("wrote 1 request record to"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"req-1203\""), "{text}");

    // Revoke by name: gone from the list, shown revoked with --all; the
    // name can be used again.
    let revoked = server.cli_ok(&["keys", "revoke", "ci"]);
    assert_eq!(revoked, format!("inference key ci ({ci_id}) revoked\n"));
    let live = keys_json(&server, false);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["name"], "web");
    let all = server.cli_ok(&["keys", "list", "--all"]);
    outputs += &all;
    let ci_line = all.lines().find(|l| l.starts_with("ci ")).unwrap();
    assert!(ci_line.ends_with("revoked"), "{all}");
    assert_fails_with(
        &server.cli(&["keys", "revoke", "ci"]),
        &[
            "no inference key has the id or name \"ci\"",
            "bora keys list",
        ],
    );
    let again = server.cli_ok(&["keys", "create", "--name", "ci"]);
    assert!(again.trim().starts_with("bora-sk-") && again.trim() != secret);

    // A restart keeps the keys (and publishes them to the router again).
    server.restart();
    let after = keys_json(&server, true);
    assert_eq!(after.len(), 3);
    let revoked_web = server.cli_ok(&["keys", "revoke", web["key"]["id"].as_str().unwrap()]);
    assert!(revoked_web.contains("inference key web"), "{revoked_web}");

    // Neither a secret nor a hash was shown after creation, nor logged.
    outputs += &server.log();
    for hidden in [&secret, &web_secret, &hash] {
        assert!(!outputs.contains(hidden.as_str()), "{hidden} leaked");
    }
    let stored = {
        let cipher = SecretCipher::load_or_create(&server.data_dir.join("secret.key")).unwrap();
        SqliteStore::open(&server.data_dir.join("bora.db"), cipher)
            .unwrap()
            .list_keys(true)
            .unwrap()
    };
    assert_eq!(hex(&stored[0].hash), hash, "only the hash is stored");
}

/// `--retain-content` is documented and reaches a running server. (What it
/// changes — the recorder keeping prompts and completions — is tested in
/// `bora-control`'s `records` module; the gateway fills them in.)
#[test]
fn the_server_takes_retain_content() {
    require_root();
    let help = std::process::Command::new(BORA)
        .args(["server", "--help"])
        .output()
        .unwrap();
    let help = stdout(&help);
    assert!(
        help.contains("--retain-content") && help.contains("zero retention"),
        "{help}"
    );
    let server = Server::start_with(&["--retain-content"]);
    assert!(
        server
            .cli_ok(&["keys", "list", "-o", "json"])
            .contains("\"items\"")
    );
}
