//! End to end: the official E2B Python SDK (`tests/sdk/e2b_flow.py`, the
//! flow of issue 4) against a real `bora server`, with only `E2B_API_URL`,
//! `E2B_SANDBOX_URL` and `E2B_API_KEY` set. The server builds the default
//! template with `bora templates build-base` first (Debian packages, a
//! few minutes the first time).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, require_root, stderr, stdout};

/// The SDK version the script is written against.
const E2B_SDK: &str = "e2b==2.63.0";

/// A virtualenv with the SDK under `target/`, created on first use.
fn sdk_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/sdk")
        .join(format!("venv-{}", E2B_SDK.replace("==", "-")));
    let python = venv.join("bin/python");
    let has_sdk = |python: &Path| {
        Command::new(python)
            .args(["-c", "import e2b"])
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
            .args(["-m", "pip", "install", "--quiet", E2B_SDK])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install {E2B_SDK} failed");
    }
    python
}

fn envd_available() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/envd/bora-envd")
        .is_file()
}

#[test]
fn the_e2b_python_sdk_runs_commands_and_files_in_a_sandbox() {
    require_root();
    if !envd_available() {
        eprintln!("skipped: build the sandbox agent first (scripts/build-envd.sh)");
        return;
    }
    let python = sdk_python();
    let server = Server::start();
    let built = server.cli(&["templates", "build-base"]);
    assert!(
        built.status.success(),
        "bora templates build-base failed: {}",
        stderr(&built)
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/e2b_flow.py");
    let run = Command::new(&python)
        .arg(&script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("E2B_API_URL", format!("http://{}/e2b", server.api))
        .env("E2B_SANDBOX_URL", format!("http://{}", server.http))
        .env("E2B_API_KEY", server.token())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the SDK flow failed:\n{}\n{}\n--- server log ---\n{}",
        stdout(&run),
        stderr(&run),
        common::tail(&server.log(), 40)
    );
    assert!(stdout(&run).trim_end().ends_with("ok"), "{}", stdout(&run));

    // Killed: nothing of it is left running or routed.
    let left = server.api_get("/v1/sandboxes");
    assert_eq!(left["items"].as_array().unwrap().len(), 0, "{left}");
}
