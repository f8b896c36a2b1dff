//! Test harness: envd served in-process on 127.0.0.1:0 through the public
//! `serve`, a throwaway sandbox user, and small Connect clients (JSON and
//! binary protobuf) built on reqwest.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use bora_envd::connect::envelope::{self, EnvelopeDecoder};
use bora_envd::{Config, serve};
use bytes::Bytes;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The non-root user tests run commands as (created if missing).
pub const TEST_USER: &str = "envdtest";

const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `test`, failing if it takes longer than the test deadline.
pub async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test ran past its deadline")
}

/// Whether the tests can switch users and chown (they need root).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Skips the calling test (returning early) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::harness::is_root() {
            eprintln!("skipping: this test needs root (to run processes as other users)");
            return;
        }
    };
}

/// The test user's (uid, gid, home), creating the user once per run. Tests
/// that use it need root (`require_root!`); without root this only answers
/// for tests that never run a process as that user.
pub fn test_user() -> (u32, u32, String) {
    static USER: OnceLock<(u32, u32, String)> = OnceLock::new();
    USER.get_or_init(|| {
        if !is_root() {
            let uid = nix::unistd::Uid::effective().as_raw();
            let gid = nix::unistd::Gid::effective().as_raw();
            return (uid, gid, std::env::temp_dir().display().to_string());
        }
        let accounts = bora_envd::users::Accounts::new("/etc");
        if accounts.lookup(TEST_USER).is_err() {
            let status = std::process::Command::new("useradd")
                .args(["-m", "-s", "/bin/bash", TEST_USER])
                .status()
                .expect("running useradd");
            // 9: the user exists (another test binary created it meanwhile).
            assert!(
                status.success() || status.code() == Some(9),
                "useradd {TEST_USER} failed: {status}"
            );
        }
        let u = accounts.lookup(TEST_USER).expect("test user exists");
        std::fs::create_dir_all(&u.home).unwrap();
        std::os::unix::fs::chown(&u.home, Some(u.uid), Some(u.gid)).unwrap();
        (u.uid, u.gid, u.home.display().to_string())
    })
    .clone()
}

/// A running envd.
pub struct Envd {
    pub base: String,
    pub client: reqwest::Client,
    /// Sent as `X-Access-Token` by the helpers, when set.
    pub token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Envd {
    /// envd with the test user as default user and no token.
    pub async fn start() -> Envd {
        test_user();
        Self::with_config(Config {
            default_user: TEST_USER.into(),
            reap_orphans: false,
            shutdown_grace: Duration::from_secs(2),
            ..Default::default()
        })
        .await
    }

    pub async fn with_config(config: Config) -> Envd {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve failed");
        });
        Envd {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            token: None,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A client for an envd running elsewhere (the built binary).
    pub fn with_base(base: &str) -> Envd {
        Envd {
            base: base.to_string(),
            client: reqwest::Client::new(),
            token: None,
            shutdown: None,
            task: None,
        }
    }

    /// Stops envd and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn headers(&self, user: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = &self.token {
            h.insert("x-access-token", HeaderValue::from_str(t).unwrap());
        }
        if let Some(u) = user {
            h.insert("authorization", HeaderValue::from_str(&basic(u)).unwrap());
        }
        h.insert("connect-protocol-version", HeaderValue::from_static("1"));
        h
    }

    /// A unary JSON call: (HTTP status, body as JSON).
    pub async fn unary(&self, method: &str, body: Value, user: Option<&str>) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(method))
            .headers(self.headers(user))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// A unary protobuf call.
    pub async fn unary_proto<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        req: &Req,
        user: Option<&str>,
    ) -> Result<Resp, (u16, Value)> {
        let resp = self
            .client
            .post(self.url(method))
            .headers(self.headers(user))
            .header("content-type", "application/proto")
            .body(req.encode_to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let bytes = resp.bytes().await.unwrap();
        if status != 200 {
            assert_eq!(ct, "application/json", "Connect errors are JSON");
            return Err((status, serde_json::from_slice(&bytes).unwrap()));
        }
        assert_eq!(ct, "application/proto");
        Ok(Resp::decode(bytes).unwrap())
    }

    /// Opens a server-streaming JSON call.
    pub async fn stream(&self, method: &str, body: Value, user: Option<&str>) -> Stream {
        self.stream_raw(
            method,
            "application/connect+json",
            envelope::encode(0, body.to_string().as_bytes()),
            user,
            &[],
        )
        .await
    }

    /// Opens a streaming call with a raw (already enveloped) body.
    pub async fn stream_raw(
        &self,
        method: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        user: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Stream {
        let mut req = self
            .client
            .post(self.url(method))
            .headers(self.headers(user))
            .header("content-type", content_type)
            .body(body);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        Stream {
            status: resp.status().as_u16(),
            content_type: resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            resp,
            decoder: EnvelopeDecoder::default(),
        }
    }
}

impl Drop for Envd {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `Basic base64("<user>:")`, as the SDKs send it.
pub fn basic(user: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    )
}

/// One message of a stream: a payload or the end-of-stream JSON.
#[derive(Debug)]
pub enum Msg {
    Data(Bytes),
    End(Value),
}

/// The response of a streaming call, read envelope by envelope.
pub struct Stream {
    pub status: u16,
    pub content_type: String,
    resp: reqwest::Response,
    decoder: EnvelopeDecoder,
}

impl Stream {
    /// The next envelope; `None` when the body ended.
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            if let Some(env) = self.decoder.next_envelope().unwrap() {
                return Some(if env.is_end_stream() {
                    Msg::End(serde_json::from_slice(&env.payload).unwrap())
                } else {
                    Msg::Data(env.payload)
                });
            }
            match self.resp.chunk().await.unwrap() {
                Some(chunk) => self.decoder.push(&chunk),
                None => {
                    self.decoder.finish().expect("stream ended mid-envelope");
                    return None;
                }
            }
        }
    }

    /// The next JSON message, `Err(end)` at the end of the stream.
    pub async fn next_json(&mut self) -> Result<Value, Value> {
        match self.next().await {
            Some(Msg::Data(b)) => Ok(serde_json::from_slice(&b).unwrap()),
            Some(Msg::End(v)) => Err(v),
            None => panic!("stream ended without an end-of-stream message"),
        }
    }

    /// Reads a process stream (JSON) to its end: (stdout, stderr, end event,
    /// end-of-stream message). Keepalives are skipped.
    pub async fn collect_process(mut self) -> ProcessRun {
        let mut run = ProcessRun::default();
        loop {
            match self.next_json().await {
                Ok(msg) => {
                    let ev = &msg["event"];
                    if let Some(start) = ev.get("start") {
                        run.pid = start["pid"].as_u64().map(|p| p as u32);
                    } else if let Some(data) = ev.get("data") {
                        if let Some(s) = data.get("stdout") {
                            run.stdout.push_str(&b64(s));
                        }
                        if let Some(s) = data.get("stderr") {
                            run.stderr.push_str(&b64(s));
                        }
                        if let Some(s) = data.get("pty") {
                            run.pty.push_str(&b64(s));
                        }
                    } else if let Some(end) = ev.get("end") {
                        run.end = Some(end.clone());
                    }
                }
                Err(end) => {
                    run.eos = end;
                    return run;
                }
            }
        }
    }
}

/// What a finished process stream said.
#[derive(Debug, Default)]
pub struct ProcessRun {
    pub pid: Option<u32>,
    pub stdout: String,
    pub stderr: String,
    pub pty: String,
    pub end: Option<Value>,
    /// The end-of-stream message (`{}` on success).
    pub eos: Value,
}

impl ProcessRun {
    pub fn exit_code(&self) -> i64 {
        let end = self
            .end
            .as_ref()
            .unwrap_or_else(|| panic!("no end event: {self:?}"));
        end.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
    }
}

pub fn b64(v: &Value) -> String {
    let bytes = bora_envd::proto::json::decode_base64(v.as_str().unwrap()).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The JSON `StartRequest` the Python SDK sends for `commands.run(cmd)`.
pub fn sdk_start(cmd: &str) -> Value {
    serde_json::json!({
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]},
        "stdin": false
    })
}
