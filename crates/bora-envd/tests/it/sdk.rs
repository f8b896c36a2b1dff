//! The official E2B SDKs against envd:
//!
//! - Python: `tests/sdk/acceptance.py` with the Python of a virtualenv
//!   holding `pip install e2b` (`BORA_E2B_PYTHON`, default
//!   `target/sdk/venv-e2b-2.63.0/bin/python` of the checkout);
//! - JavaScript: `tests/sdk/acceptance.mjs` with `node`, in a directory
//!   where `npm install e2b` was run (`BORA_E2B_JS_DIR`, default
//!   `target/sdk/js` of the checkout).
//!
//! `scripts/install-sdks.sh` installs both, pinned, where the defaults
//! point (`scripts/test.sh` runs it before the tests). Each test skips,
//! saying why, when its SDK is missing: a developer running one test
//! without the script.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bora_envd::Config;

use crate::harness::{Envd, TEST_USER, test_user};
use crate::require_root;

/// Where `scripts/install-sdks.sh` installs the SDKs.
fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/sdk")
}

fn sdk_python() -> Result<String, String> {
    let python = std::env::var("BORA_E2B_PYTHON").unwrap_or_else(|_| {
        sdk_dir()
            .join("venv-e2b-2.63.0/bin/python")
            .display()
            .to_string()
    });
    if !Path::new(&python).exists() {
        return Err(format!(
            "{python} does not exist (run scripts/install-sdks.sh, or set BORA_E2B_PYTHON)"
        ));
    }
    let ok = Command::new(&python)
        .args(["-c", "import e2b"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "{python} cannot import e2b (run scripts/install-sdks.sh, or pip install e2b)"
        ))
    }
}

#[tokio::test]
async fn official_python_sdk_drives_envd() {
    require_root!();
    let python = match sdk_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping the E2B SDK acceptance test: {why}");
            return;
        }
    };
    let (_, _, home) = test_user();
    let open = Envd::start().await;
    let token = "sdk-acceptance-token";
    let secured = Envd::with_config(Config {
        access_token: Some(token.into()),
        default_user: TEST_USER.into(),
        reap_orphans: false,
        shutdown_grace: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/acceptance.py");
    let args = [
        script.to_string(),
        open.base.clone(),
        home,
        secured.base.clone(),
        token.to_string(),
    ];
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(&args)
            // The SDK must not reach for a real E2B account.
            .env_remove("E2B_API_KEY")
            .env_remove("E2B_DOMAIN")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("running the SDK acceptance script")
    });
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the SDK acceptance script ran past 180s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("SDK ACCEPTANCE PASSED"),
        "SDK acceptance failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    println!("{stdout}");
    open.stop().await;
    secured.stop().await;
}

fn sdk_js_dir() -> Result<String, String> {
    let dir = std::env::var("BORA_E2B_JS_DIR")
        .unwrap_or_else(|_| sdk_dir().join("js").display().to_string());
    if !Path::new(&dir)
        .join("node_modules/e2b/package.json")
        .exists()
    {
        return Err(format!(
            "{dir}/node_modules/e2b is missing (run scripts/install-sdks.sh, or set BORA_E2B_JS_DIR)"
        ));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Err("node is not installed".into());
    }
    Ok(dir)
}

#[tokio::test]
async fn official_js_sdk_drives_envd() {
    require_root!();
    let dir = match sdk_js_dir() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipping the E2B JS SDK acceptance test: {why}");
            return;
        }
    };
    test_user();
    let envd = Envd::start().await;
    // ES modules resolve `e2b` next to the script, so the script runs from
    // the SDK's directory.
    let script = Path::new(&dir).join(format!("bora-envd-acceptance-{}.mjs", std::process::id()));
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/acceptance.mjs"),
        &script,
    )
    .unwrap();
    let base = envd.base.clone();
    let script_arg = script.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script_arg)
            .arg(base)
            .env_remove("E2B_API_KEY")
            .env_remove("E2B_DOMAIN")
            .output()
            .expect("running node")
    });
    let out = tokio::time::timeout(Duration::from_secs(120), run).await;
    let _ = std::fs::remove_file(&script);
    let out = out
        .expect("the JS SDK acceptance script ran past 120s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("JS SDK ACCEPTANCE PASSED"),
        "JS SDK acceptance failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    println!("{stdout}");
    envd.stop().await;
}
