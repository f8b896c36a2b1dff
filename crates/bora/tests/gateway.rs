//! End to end, what a new user does: deploy SmolLM2 as a `type: model`
//! service, create an inference key, chat with it through the router's
//! `/v1` using the official OpenAI Python SDK (plain and streamed), let the
//! model fall asleep, chat again (it wakes), and read both calls back with
//! `bora usage` and `bora audit export`. Real `bora server`, real runc,
//! the real engine, the real SDK.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::bench::engine::cached_model;
use common::*;
use serde_json::Value;

/// The SDK version the script is written against (as the engine's test).
const OPENAI_SDK: &str = "openai==3.54.0";

/// A virtualenv with the SDK in the model cache, created on first use.
fn sdk_python(model: &Path) -> PathBuf {
    // <cache>/smollm2/<file> → <cache>/venv-openai-…
    let cache = model.parent().and_then(Path::parent).unwrap();
    let venv = cache.join(format!("venv-{}", OPENAI_SDK.replace("==", "-")));
    let python = venv.join("bin/python");
    let has_sdk = |python: &Path| {
        Command::new(python)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_sdk(&python) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv {} failed", venv.display());
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(OPENAI_SDK)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install {OPENAI_SDK} failed");
    }
    python
}

/// Runs one step of `tests/sdk/openai_gateway.py`; its JSON output.
fn sdk(python: &Path, server: &Server, key: &str, step: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_gateway.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/v1", server.http))
        .args([key, "smollm2", step])
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK's {step} failed:\n{}{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&server.log(), 60)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The model service's live instances as (id, state).
fn replicas(server: &Server) -> Vec<(String, String)> {
    server.api_get("/v1/instances?app=ai&service=smollm2")["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_new_user_chats_with_a_deployed_model_through_the_gateway() {
    require_root();
    let Some(model) = cached_model() else {
        return;
    };
    let python = sdk_python(&model);
    let server = Server::start();
    let manifest = server.write_manifest(
        "ai.yaml",
        &format!(
            r#"app: ai
services:
  - name: smollm2
    type: model
    model: {{ path: {}, engine: builtin }}
    scaling: {{ min: 0, max: 2, scale_to_zero_after: 2s, targets: {{ concurrency: 8 }} }}
"#,
            model.display()
        ),
    );
    server.cli_ok(&[
        "deploy",
        "-f",
        manifest.to_str().unwrap(),
        "--wait",
        "--timeout",
        "3m",
    ]);
    let listed = server.cli_ok(&["models", "list"]);
    assert!(listed.contains("smollm2"), "{listed}");

    let created: Value =
        serde_json::from_str(&server.cli_ok(&["keys", "create", "--name", "app1", "-o", "json"]))
            .unwrap();
    let key = created["secret"].as_str().unwrap().to_string();
    assert!(key.starts_with("bora-sk-"), "{created}");

    // Plain and streamed, through the router's /v1.
    let chat = sdk(&python, &server, &key, "chat");
    assert_eq!(chat["models"], serde_json::json!(["smollm2"]), "{chat}");
    assert!(chat["stream"]["chunks"].as_u64().unwrap() > 2, "{chat}");
    let refused = sdk(&python, &server, &key, "refused");
    assert_eq!(refused["bad_key"][0], 401, "{refused}");
    assert_eq!(refused["unknown_model"][0], 404, "{refused}");
    assert_eq!(refused["malformed"][0], 400, "{refused}");

    // Idle: the model sleeps (frozen, out of the table) ...
    server.wait_until(
        "the model to fall asleep",
        Duration::from_secs(60),
        || match replicas(&server).as_slice() {
            [(_, state)] if state == "sleeping" => Some(()),
            _ => None,
        },
    );
    // ... and the next call still succeeds: it wakes the model. (It may
    // fall asleep again 2 s after, so the wake is read from the events.)
    let again = sdk(&python, &server, &key, "chat");
    assert!(again["plain"]["content"].as_str().is_some(), "{again}");
    let events = server.api_get("/v1/events?app=ai&service=smollm2&limit=1000");
    let woke = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "woke")
        .count();
    assert!(woke >= 1, "{events:#}");

    // Usage: both chat steps (two completions each), per key and model.
    let usage: Value = server.wait_until(
        "the usage records to be written",
        Duration::from_secs(10),
        || {
            let usage: Value = serde_json::from_str(
                &server.cli_ok(&["usage", "--model", "smollm2", "-o", "json"]),
            )
            .ok()?;
            let rows = usage
                .as_array()
                .or_else(|| usage["items"].as_array())?
                .clone();
            let row = rows
                .into_iter()
                .find(|r| r["key_name"] == "app1" && r["model"] == "smollm2")?;
            // Two chats per step, twice, and the malformed call; records
            // are written in batches, shortly after each answer.
            (row["requests"].as_u64()? >= 5).then_some(row)
        },
    );
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    let table = server.cli_ok(&["usage"]);
    assert!(
        table.contains("app1") && table.contains("smollm2"),
        "{table}"
    );

    // The audit trail: every request, with the model file's digest and the
    // engine, and without the prompt or the completion.
    let (export, records) = server.wait_until(
        "the audit trail to hold every call",
        Duration::from_secs(10),
        || {
            let export = server.cli_ok(&["audit", "export"]);
            let records: Vec<Value> = export
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            let chats = records
                .iter()
                .filter(|r| r["model"] == "smollm2" && r["status"] == 200)
                .count();
            (chats >= 4).then_some((export, records))
        },
    );
    let chats: Vec<&Value> = records
        .iter()
        .filter(|r| r["model"] == "smollm2" && r["status"] == 200)
        .collect();
    for r in &chats {
        assert_eq!(r["key_name"], "app1", "{r}");
        assert!(
            r["model_digest"].as_str().unwrap().starts_with("sha256:"),
            "{r}"
        );
        assert!(
            r["engine"].as_str().unwrap().starts_with("bora-engine/"),
            "{r}"
        );
        assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r.get("prompt").is_none() && r.get("completion").is_none(),
            "{r}"
        );
    }
    assert!(chats.iter().any(|r| r["stream"] == true), "{export}");
    // The refusals are in the trail too.
    assert!(records.iter().any(|r| r["status"] == 401), "{export}");
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 404 && r["model"] == "no-such-model")
    );
    assert!(!export.contains("capital of France"), "zero retention");
}
