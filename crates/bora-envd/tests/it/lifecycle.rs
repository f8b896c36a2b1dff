//! Shutdown and PID-1 duties: SIGTERM forwarding, orphan reaping, the real
//! binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::harness::{Envd, bounded, sdk_start};
use crate::require_root;

#[tokio::test]
async fn shutdown_forwards_sigterm_to_running_processes() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let mut stream = envd
            .stream("/process.Process/Start", sdk_start("sleep 30"), None)
            .await;
        assert!(stream.next_json().await.unwrap()["event"]["start"]["pid"].is_u64());
        let collector = tokio::spawn(async move { stream.collect_process().await });
        let started = Instant::now();
        envd.stop().await;
        let run = collector.await.unwrap();
        assert_eq!(run.end.unwrap()["status"], "signal: terminated");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}

/// A free loopback port (released again; the binary binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn binary_reaps_orphans_and_stops_on_sigterm() {
    require_root!();
    bounded(async {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_bora-envd"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--reap-orphans",
                "--default-user",
                "root",
                "--shutdown-grace",
                "2",
            ])
            .env("BORA_ENVD_ACCESS_TOKEN", "bin-token")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut envd = Envd::with_base(&format!("http://127.0.0.1:{port}"));
        envd.token = Some("bin-token".into());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = envd.client.get(envd.url("/health")).send().await
                && r.status() == 204
            {
                break;
            }
            assert!(Instant::now() < deadline, "envd binary did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // bash starts a background sleep and exits: the sleep is orphaned
        // and re-parented to envd (a subreaper here, PID 1 in a sandbox).
        let run = envd
            .stream(
                "/process.Process/Start",
                sdk_start("sleep 1 & echo $!"),
                None,
            )
            .await
            .collect_process()
            .await;
        let orphan: i32 = run.stdout.trim().parse().unwrap();
        let stat = format!("/proc/{orphan}/stat");
        // `pid (comm) state ppid ...`: the orphan now belongs to envd.
        let line = std::fs::read_to_string(&stat).expect("the orphan is still sleeping");
        let ppid: u32 = line
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            ppid,
            child.id(),
            "orphan {orphan} was not re-parented to envd: {line}"
        );
        let reaped_by = Instant::now() + Duration::from_secs(5);
        // Unreaped, it would linger as a zombie (state Z) of envd.
        while std::path::Path::new(&stat).exists() {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            assert!(
                Instant::now() < reaped_by,
                "orphan {orphan} was not reaped: {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // SIGTERM: running processes get it too, then envd exits cleanly.
        let mut stream = envd
            .stream("/process.Process/Start", sdk_start("sleep 30"), None)
            .await;
        assert!(stream.next_json().await.unwrap()["event"]["start"].is_object());
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let run = stream.collect_process().await;
        assert_eq!(run.end.unwrap()["status"], "signal: terminated");
        let exit_deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < exit_deadline,
                "envd did not exit on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "envd exited with {status}");
    })
    .await
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    bounded(async {
        let envd = Envd::start().await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let resp = client
            .post(envd.url("/process.Process/List"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap(),
            json!({"processes": []})
        );
    })
    .await
}

#[tokio::test]
async fn cors_preflight_needs_no_token() {
    bounded(async {
        let mut envd = crate::harness::Envd::with_config(bora_envd::Config {
            access_token: Some("t".into()),
            reap_orphans: false,
            ..Default::default()
        })
        .await;
        let resp = envd
            .client
            .request(reqwest::Method::OPTIONS, envd.url("/process.Process/Start"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-access-token, content-type",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert_eq!(
            resp.headers()["access-control-allow-headers"],
            "x-access-token, content-type"
        );
        envd.token = Some("t".into());
        let (status, _) = envd.unary("/process.Process/List", json!({}), None).await;
        assert_eq!(status, 200);
    })
    .await
}
