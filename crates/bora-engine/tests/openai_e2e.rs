//! End to end: starts the real server on port 0 and drives it with the
//! official `openai` Python SDK (`tests/openai_sdk.py`), installed with pip
//! into a virtualenv in the model cache (once; later runs reuse it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bora_engine::{ServeOptions, Server};

/// The SDK version the script is written against.
const OPENAI_SDK: &str = "openai==3.54.0";

/// A virtualenv with the SDK, created on first use.
fn sdk_python() -> PathBuf {
    let venv = common::model_cache().join(format!("venv-{}", OPENAI_SDK.replace("==", "-")));
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
        assert!(
            ok,
            "python3 -m venv {} failed (apt-get install python3-venv)",
            venv.display()
        );
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                OPENAI_SDK,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "pip install {OPENAI_SDK} into {} failed",
            venv.display()
        );
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_drives_the_server() {
    let (Some(model), Some(embedder)) = (common::smollm2(), common::minilm()) else {
        return;
    };
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let mut opts = ServeOptions::new(model, "127.0.0.1:0".parse().unwrap());
    opts.name = Some("smollm2".into());
    opts.embedding_model = Some(embedder);
    opts.embedding_name = Some("all-minilm-l6-v2".into());
    let server = Server::bind(opts).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(format!("http://{addr}/v1"))
            .args(["smollm2", "all-minilm-l6-v2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"));
}
