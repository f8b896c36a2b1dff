//! Model services end to end: the real `bora server`, the real CLI, real
//! runc, and the real test model (SmolLM2-135M, fetched by
//! `scripts/fetch-models.sh`), reached straight at its replica's address
//! (the gateway is tested with the router).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// The model cache, as `scripts/fetch-models.sh` fills it (the same rule
/// as `bora-engine`'s tests).
fn model_cache() -> PathBuf {
    match std::env::var_os("BORA_MODEL_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/bora/models")
        }
    }
}

/// The SmolLM2 GGUF file, or `None` (with a loud message) when not fetched.
fn smollm2() -> Option<PathBuf> {
    let path = model_cache().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else if std::env::var_os("CI").is_some() {
        panic!(
            "test model {} is missing although CI fetches it",
            path.display()
        );
    } else {
        eprintln!(
            "\n!!! SKIPPED: test model {} is missing; run scripts/fetch-models.sh to fetch it !!!\n",
            path.display()
        );
        None
    }
}

/// `bora models deploy NAME --path PATH --wait …` (plus `extra`); the
/// CLI's output.
fn deploy_model(server: &Server, name: &str, path: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "models",
        "deploy",
        name,
        "--path",
        path,
        "--instance-type",
        "medium",
        "--wait",
        "--timeout",
        "3m",
    ];
    args.extend_from_slice(extra);
    server.cli(&args)
}

fn all_output(out: &std::process::Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// The one instance of `app/service` (any state), with its history.
fn only_instance(server: &Server, app: &str, service: &str) -> serde_json::Value {
    let list = server.api_get(&format!(
        "/v1/instances?app={app}&service={service}&all=true"
    ));
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list:#}");
    let id = items[0]["id"].as_str().unwrap();
    server.api_get(&format!("/v1/instances/{id}"))
}

/// The processes of `instance` (by cgroup) whose command line has all of
/// `words`: (pid, uid).
fn processes(words: &[&str], instance: &str) -> Vec<(i32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !words.iter().all(|w| args.iter().any(|a| a == w)) {
            continue;
        }
        // Only this test's replica: other tests may run engines too.
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if !cgroup.contains(instance) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if let Some(uid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
        {
            found.push((pid, uid));
        }
    }
    found
}

const ENGINE: &[&str] = &["/bora", "engine", "serve", "smollm2"];

#[test]
fn a_builtin_model_loads_then_serves_and_is_listed_ready() {
    require_root();
    let Some(model) = smollm2() else { return };
    let server = Server::start();

    let out = deploy_model(&server, "smollm2", model.to_str().unwrap(), &[]);
    let printed = all_output(&out);
    assert!(
        out.status.success(),
        "{printed}\n{}",
        tail(&server.log(), 40)
    );
    assert!(printed.contains("models/smollm2 is healthy"), "{printed}");
    assert!(
        printed.contains("loading: loading model /models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{printed}"
    );

    // Its instance went starting → loading → healthy, and says why.
    let instance = only_instance(&server, "models", "smollm2");
    let states: Vec<&str> = instance["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["pending", "pulling", "starting", "loading", "healthy"],
        "{instance:#}"
    );
    let loading = &instance["history"][3]["reason"];
    assert_eq!(
        loading, "loading model /models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "{instance:#}"
    );
    assert!(
        instance["reason"]
            .as_str()
            .unwrap()
            .contains("GET /v1/models on port 8000"),
        "{instance:#}"
    );

    // The deployment pinned the file's SHA-256, and no image.
    let d = server.api_get(&format!(
        "/v1/deployments/{}",
        instance["deployment"].as_str().unwrap()
    ));
    let sha = std::process::Command::new("sha256sum")
        .arg(&model)
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(d["model_digest"], format!("sha256:{hex}"), "{d:#}");
    assert!(d["image_digest"].is_null(), "{d:#}");

    // The engine runs as nobody, from the node's own binary.
    let id = instance["id"].as_str().unwrap().to_string();
    let engine = processes(ENGINE, &id);
    assert_eq!(engine.len(), 1, "{engine:?}");
    assert_eq!(engine[0].1, 65534, "the replica's uid");

    // A chat completion straight at the replica.
    let ip = instance["ip"].as_str().unwrap();
    let resp = http_client()
        .post(format!("http://{ip}:8000/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
            "temperature": 0
        }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["model"], "smollm2", "{body:#}");
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!answer.trim().is_empty(), "{body:#}");

    // Listed ready, with the gateway's endpoint; not routed by host.
    let list = server.cli_ok(&["models", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("smollm2"))
        .unwrap_or_else(|| panic!("{list}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    let endpoint = format!("http://{}/v1", server.http);
    assert_eq!(
        cells,
        [
            "smollm2",
            "models",
            "builtin",
            "ready",
            "1/1",
            endpoint.as_str()
        ],
        "{list}"
    );
    let svc = server.api_get("/v1/apps/models/services/smollm2");
    assert_eq!(svc["type"], "model");
    assert!(svc["url"].is_null(), "{svc:#}");

    // As its container's first process the engine still ends on SIGTERM
    // (exit 0); the replica is restarted in place and loads again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(engine[0].0),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let restarted = server.wait_until("the replica's restart", Duration::from_secs(120), || {
        let i = server.api_get(&format!("/v1/instances/{id}"));
        (i["restarts"] == 1 && i["state"] == "healthy").then_some(i)
    });
    let history = restarted["history"].as_array().unwrap();
    let restart = history
        .iter()
        .position(|t| {
            t["reason"]
                .as_str()
                .unwrap()
                .starts_with("restarting: the process exited with code 0")
        })
        .unwrap_or_else(|| panic!("{restarted:#}"));
    assert_eq!(history[restart - 1]["to"], "healthy", "{restarted:#}");
    let why = history[restart]["reason"].as_str().unwrap();
    assert!(why.ends_with("shutting down"), "{why}");
    let after: Vec<&str> = history[restart..]
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .filter(|s| *s != "starting")
        .collect();
    assert_eq!(after, ["loading", "healthy"], "{restarted:#}");

    server.cli_ok(&["services", "delete", "models/smollm2"]);
    assert!(processes(ENGINE, &id).is_empty());
}

#[test]
fn broken_model_files_fail_the_deployment_naming_the_path() {
    require_root();
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path.to_str().unwrap().to_string()
    };

    // No such file.
    let missing = dir.path().join("absent/SmolLM2.gguf");
    let missing = missing.to_str().unwrap();
    let out = deploy_model(&server, "absent", missing, &[]);
    let printed = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&format!("model file {missing} does not exist")),
        "{printed}"
    );
    assert!(
        printed.contains("put the model file on the node"),
        "{printed}"
    );

    // Not a GGUF file at all.
    let text = write("notes.gguf", b"these are my notes, not a model\n");
    let out = deploy_model(&server, "notes", &text, &[]);
    let printed = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&format!("model file {text} is not a GGUF file")),
        "{printed}"
    );
    assert!(printed.contains("GGUF magic"), "{printed}");

    // A GGUF header, then garbage: the checks pass, the engine refuses it,
    // and the deployment fails with the engine's words from the logs.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let garbage = write("garbage.gguf", &bytes);
    let out = deploy_model(&server, "garbage", &garbage, &[]);
    let printed = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("the process exited with code 1"),
        "{printed}"
    );
    assert!(
        printed.contains("/models/garbage.gguf") && printed.contains("GGUF"),
        "{printed}"
    );
    let instance = only_instance(&server, "models", "garbage");
    let states: Vec<&str> = instance["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(states.last(), Some(&"failed"), "{instance:#}");

    // Listed as failed, with the reason.
    let list = server.api_get("/v1/model-services");
    let garbage_row = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "garbage")
        .unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(garbage_row["state"], "failed", "{list:#}");
    assert_eq!(garbage_row["ready"], 0);
}

#[test]
fn model_names_are_unique_across_apps() {
    require_root();
    let server = Server::start();
    let path = "/nonexistent/models/m.gguf";
    // Recorded at once, whatever becomes of its rollout.
    server.cli_ok(&["models", "deploy", "shared-name", "--path", path]);
    // Another version in the same app is fine.
    server.cli_ok(&["models", "deploy", "shared-name", "--path", path]);

    let out = server.cli(&[
        "models",
        "deploy",
        "shared-name",
        "--path",
        path,
        "--app",
        "other",
    ]);
    let printed = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("a model named \"shared-name\" already exists in app \"models\""),
        "{printed}"
    );
    let apps = server.api_get("/v1/apps");
    assert!(
        !apps["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "other"),
        "nothing was recorded for the refused deploy: {apps:#}"
    );

    // A web service may share the name: only models are named globally.
    let web = server.write_manifest(
        "web.yaml",
        "app: other\nservices:\n  - name: shared-name\n    image: oci:/nonexistent:1\n    ports: [{ port: 8000 }]\n",
    );
    server.cli_ok(&["deploy", "-f", web.to_str().unwrap()]);

    // Flags the API would refuse are refused before anything is sent.
    let out = server.cli(&["models", "deploy", "rel", "--path", "models/m.gguf"]);
    let printed = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("model path `models/m.gguf` is not absolute"),
        "{printed}"
    );
}
