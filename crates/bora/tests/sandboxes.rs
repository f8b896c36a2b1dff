//! End to end: sandboxes on a real `bora server`.
//!
//! - The official E2B SDKs with only `E2B_API_URL`, `E2B_SANDBOX_URL` and
//!   `E2B_API_KEY` set: the flow of issue 4 with the Python SDK
//!   (`tests/sdk/e2b_flow.py`) and the JavaScript SDK
//!   (`tests/sdk/e2b_flow.mjs`); metadata, env vars, pause and resume with
//!   the Python SDK (`tests/sdk/e2b_pause.py`).
//! - A sandbox past its timeout is gone with everything it had on the node;
//!   extending the timeout keeps it alive.
//!
//! The SDKs are the ones `scripts/install-sdks.sh` pins and installs in the
//! checkout's `target/sdk/` (`BORA_E2B_PYTHON` and `BORA_E2B_JS_DIR`
//! override them); a test installs them itself when they are missing. The
//! server gets the default template from `Server::base_template` (built
//! once per checkout with `bora templates build-base`: Debian packages, a
//! minute or two).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Server, sandbox_server, stderr, stdout};

/// The Python SDK version the scripts are written against (the JavaScript
/// one is pinned in `scripts/sdk/package.json`).
const E2B_SDK: &str = "e2b==2.63.0";
/// How long one SDK script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

/// Installs run one at a time (tests share the process under `cargo test`).
static INSTALLING: Mutex<()> = Mutex::new(());

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sdk_dir() -> PathBuf {
    checkout().join("target/sdk")
}

/// The Python of a virtualenv with the SDK: `BORA_E2B_PYTHON`, or the one
/// `scripts/install-sdks.sh` makes, created here if it is missing.
fn sdk_python() -> PathBuf {
    if let Some(python) = std::env::var_os("BORA_E2B_PYTHON") {
        return python.into();
    }
    let venv = sdk_dir().join(format!("venv-{}", E2B_SDK.replace("==", "-")));
    let python = venv.join("bin/python");
    let has_sdk = |python: &Path| {
        Command::new(python)
            .args(["-c", "import e2b"])
            .status()
            .is_ok_and(|s| s.success())
    };
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if !has_sdk(&python) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv {} failed", venv.display());
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", E2B_SDK])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install {E2B_SDK} failed");
    }
    python
}

/// The directory with the JavaScript SDK in `node_modules`:
/// `BORA_E2B_JS_DIR`, or the one `scripts/install-sdks.sh` makes, run here
/// if it is missing. `Err` says why there is none (no Node.js, or too old).
fn sdk_js_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("BORA_E2B_JS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| sdk_dir().join("js"));
    let present = |dir: &Path| dir.join("node_modules/e2b/package.json").is_file();
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if !present(&dir) && std::env::var_os("BORA_E2B_JS_DIR").is_none() {
        let out = Command::new(checkout().join("scripts/install-sdks.sh"))
            .output()
            .map_err(|e| format!("running scripts/install-sdks.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/install-sdks.sh failed:\n{}", stderr(&out)));
        }
    }
    if present(&dir) {
        Ok(dir)
    } else {
        Err(format!(
            "{}/node_modules/e2b is missing (run scripts/install-sdks.sh, or set BORA_E2B_JS_DIR)",
            dir.display()
        ))
    }
}

/// Runs `cmd` with nothing of this environment but `PATH` and the three
/// variables the issue allows, for at most [`SCRIPT_TIMEOUT`].
fn run_sdk_script(server: &Server, cmd: &mut Command) -> Output {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("E2B_API_URL", format!("http://{}/e2b", server.api))
        .env("E2B_SANDBOX_URL", format!("http://{}", server.http))
        .env("E2B_API_KEY", server.token())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().unwrap();
            eprintln!("{cmd:?} ran past {SCRIPT_TIMEOUT:?}: killed");
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn assert_script_passed(server: &Server, what: &str, run: &Output) {
    assert!(
        run.status.success() && stdout(run).trim_end().ends_with("ok"),
        "{what} failed ({}):\n{}\n{}\n--- server log ---\n{}",
        run.status,
        stdout(run),
        stderr(run),
        common::tail(&server.log(), 40)
    );
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
}

#[test]
fn the_e2b_python_sdk_runs_commands_and_files_in_a_sandbox() {
    let python = sdk_python();
    let Some(server) = sandbox_server(&[]) else {
        return;
    };

    let run = run_sdk_script(&server, Command::new(&python).arg(script("e2b_flow.py")));
    assert_script_passed(&server, "the Python SDK flow", &run);

    // Killed: nothing of it is left running or routed.
    let left = server.api_get("/v1/sandboxes");
    assert_eq!(left["items"].as_array().unwrap().len(), 0, "{left}");
}

#[test]
fn the_e2b_js_sdk_runs_commands_and_files_in_a_sandbox() {
    let dir = match sdk_js_dir() {
        Ok(dir) => dir,
        Err(why) => {
            eprintln!("skipped: no JavaScript SDK: {why}");
            return;
        }
    };
    let Some(server) = sandbox_server(&[]) else {
        return;
    };

    // ES modules resolve `e2b` next to the script: run a copy from the
    // SDK's directory.
    let copy = dir.join(format!("bora-e2b-flow-{}.mjs", std::process::id()));
    std::fs::copy(script("e2b_flow.mjs"), &copy).unwrap();
    let run = run_sdk_script(&server, Command::new("node").arg(&copy).current_dir(&dir));
    let _ = std::fs::remove_file(&copy);
    assert_script_passed(&server, "the JavaScript SDK flow", &run);

    let left = server.api_get("/v1/sandboxes");
    assert_eq!(left["items"].as_array().unwrap().len(), 0, "{left}");
}

#[test]
fn the_e2b_python_sdk_pauses_and_resumes_a_sandbox_with_its_metadata_and_env() {
    let python = sdk_python();
    let Some(server) = sandbox_server(&[]) else {
        return;
    };

    let run = run_sdk_script(&server, Command::new(&python).arg(script("e2b_pause.py")));
    assert_script_passed(&server, "the Python SDK pause/resume flow", &run);

    let left = server.api_get("/v1/sandboxes");
    assert_eq!(left["items"].as_array().unwrap().len(), 0, "{left}");
}

#[test]
fn a_sandbox_past_its_timeout_is_gone_with_its_files_and_network() {
    let Some(server) = sandbox_server(&[]) else {
        return;
    };
    let create = || {
        let (status, sandbox) = server.api_request(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(serde_json::json!({"timeout": "3s"})),
        );
        assert_eq!(
            status,
            201,
            "{sandbox}\n{}",
            common::tail(&server.log(), 40)
        );
        sandbox
    };

    // One that times out, with a file on its disk and its agent answering.
    let doomed = create();
    let id = doomed["id"].as_str().unwrap().to_string();
    let upload = server.envd_request(
        &doomed,
        reqwest::Method::POST,
        "/files?path=/home/user/note.txt&username=user",
        Some(("application/octet-stream", b"written".to_vec())),
    );
    assert_eq!(upload.0, 200, "upload: {upload:?}");
    let read = server.envd_request(
        &doomed,
        reqwest::Method::GET,
        "/files?path=/home/user/note.txt&username=user",
        None,
    );
    assert_eq!(read, (200, "written".to_string()));
    let processes = server.envd_request(
        &doomed,
        reqwest::Method::POST,
        "/process.Process/List",
        Some(("application/json", b"{}".to_vec())),
    );
    assert_eq!(processes.0, 200, "process list: {processes:?}");
    // What the checks below look for is there while it lives.
    let live = server.sandbox_leftovers(&id);
    for kind in [
        "container",
        "runtime state",
        "netns",
        "iptables",
        "address",
        "loop device",
        "mount",
        "directory",
    ] {
        assert!(
            live.iter().any(|(k, _)| *k == kind),
            "no {kind} in {live:?}"
        );
    }

    // One whose timeout is extended before it passes.
    let extended = create();
    // Its first deadline was set (3 s ahead) before create() returned.
    let first_deadline = Instant::now() + Duration::from_secs(3);
    let extended_id = extended["id"].as_str().unwrap().to_string();
    let (status, after) = server.api_request(
        reqwest::Method::POST,
        &format!("/v1/sandboxes/{extended_id}/timeout"),
        Some(serde_json::json!({"timeout": "30s"})),
    );
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["state"], "running", "{after}");

    let gone = server.wait_until("the sandbox to time out", Duration::from_secs(30), || {
        let (status, sandbox) =
            server.api_request(reqwest::Method::GET, &format!("/v1/sandboxes/{id}"), None);
        assert_eq!(status, 200, "{sandbox}");
        // Its address is cleared once the node has torn it down.
        (sandbox["state"] != "running" && sandbox["ip"].is_null()).then_some(sandbox)
    });
    assert_eq!(gone["state"], "timed_out", "{gone}");
    let listed = server.api_get("/v1/sandboxes");
    let listed_ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(!listed_ids.contains(&id.as_str()), "{listed}");
    let (status, body) =
        server.api_request(reqwest::Method::GET, &format!("/e2b/sandboxes/{id}"), None);
    assert_eq!(status, 404, "E2B's API still has it: {body}");
    let (status, body) = server.envd_request(&doomed, reqwest::Method::GET, "/health", None);
    assert_eq!(status, 502, "the router still routes it: {body}");
    assert!(body.contains("was not found"), "not E2B's wording: {body}");
    // The reaper ends it in one go; give the kernel a moment to let go.
    let mut left = server.sandbox_leftovers(&id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = server.sandbox_leftovers(&id);
    }
    assert!(left.is_empty(), "left of the timed-out sandbox: {left:?}");

    // The extended one outlives its first deadline (and the reaper's next
    // round after it) and still answers.
    let past = first_deadline + Duration::from_secs(2);
    std::thread::sleep(past.saturating_duration_since(Instant::now()));
    let (status, sandbox) = server.api_request(
        reqwest::Method::GET,
        &format!("/v1/sandboxes/{extended_id}"),
        None,
    );
    assert_eq!(
        (status, &sandbox["state"]),
        (200, &"running".into()),
        "{sandbox}"
    );
    let (status, _) = server.envd_request(&extended, reqwest::Method::GET, "/health", None);
    assert_eq!(status, 204);
    let (status, body) = server.api_request(
        reqwest::Method::DELETE,
        &format!("/v1/sandboxes/{extended_id}"),
        None,
    );
    assert_eq!(status, 204, "{body}");
    let left = server.sandbox_leftovers(&extended_id);
    assert!(left.is_empty(), "left of the killed sandbox: {left:?}");
}
