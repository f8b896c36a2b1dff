//! A client for one sandbox's agent: `bora-envd`, which speaks E2B's envd
//! protocol on port 49983 of the sandbox's address (see the `bora-envd`
//! crate for the server side).
//!
//! | method | envd endpoint |
//! |---|---|
//! | [`Envd::health`] | `GET /health` (never authenticated) |
//! | [`Envd::init`] | `POST /init`: env vars, default user, access token |
//! | [`Envd::run`] | `POST /process.Process/Start`: Connect server streaming, JSON |
//! | [`Envd::read_file`], [`Envd::download`] | `GET /files?path=&username=` |
//! | [`Envd::write_file`] | `POST /files?path=&username=`, an `application/octet-stream` body |
//!
//! Every request but `/health` carries the sandbox's token in
//! `X-Access-Token`. The user a process runs as is named by
//! `Authorization: Basic base64("<user>:")`, the user of a file operation
//! by `?username=`; without either, envd uses the sandbox's default user.
//!
//! A Connect stream is a sequence of envelopes: one flag byte, a big-endian
//! `u32` length, that many bytes of JSON. Flag `0x02` marks the last one,
//! `{}` or `{"error": {"code", "message"}}`. envd answers a stream with 200
//! even when the call fails, so [`Envd::run`] reads the first message
//! before it returns: a command that cannot start (an unknown user, a
//! missing working directory) is an error of `run` itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use bora_api::{ExecEvent, ExecRequest};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::{Response, StatusCode, header};
use serde::Deserialize;

use crate::ControlError;

/// How long opening a connection to envd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a short request (`/health`, `/init`) may take in all.
const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest Connect message accepted from envd (envd's own limit).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Connect envelope flags.
const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_END_STREAM: u8 = 0x02;

/// A command's events: [`ExecEvent::Start`] first, [`ExecEvent::Exit`]
/// last; an error ends the stream early (the connection broke, envd
/// failed).
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecEvent, EnvdError>> + Send>>;

/// A file's bytes as envd sends them.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, EnvdError>> + Send>>;

/// What went wrong talking to a sandbox's agent. The messages are envd's
/// own where it gave one (they name the path, user or directory at fault).
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// No connection, or it broke or timed out.
    #[error("cannot reach the sandbox's agent at {addr}: {detail}")]
    Unreachable { addr: SocketAddr, detail: String },
    /// envd refused the request's input: an unknown user, a path that is a
    /// directory, a working directory that does not exist, no permission.
    #[error("{0}")]
    Invalid(String),
    /// The file or directory does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The sandbox's disk is full.
    #[error("{0}")]
    NoSpace(String),
    /// envd refused the access token: the control plane's record of the
    /// sandbox is out of step with the sandbox.
    #[error("the sandbox's agent at {addr} refused its access token: {message}")]
    TokenRefused { addr: SocketAddr, message: String },
    /// Any other failure envd reported.
    #[error("the sandbox's agent at {addr} failed to {what}: {message}")]
    Failed {
        addr: SocketAddr,
        what: &'static str,
        message: String,
    },
    /// envd answered something that is not its protocol.
    #[error("the sandbox's agent at {addr} answered {what} with something unexpected: {detail}")]
    Protocol {
        addr: SocketAddr,
        what: &'static str,
        detail: String,
    },
}

impl EnvdError {
    /// As a control-plane error about sandbox `id` (the message names it).
    pub fn in_sandbox(self, id: &str) -> ControlError {
        match self {
            EnvdError::Invalid(m) => ControlError::Invalid(format!("sandbox {id}: {m}")),
            EnvdError::NotFound(m) => ControlError::NotFound(format!("sandbox {id}: {m}")),
            EnvdError::NoSpace(m) => ControlError::Conflict(format!("sandbox {id}: {m}")),
            other => ControlError::Internal(format!("sandbox {id}: {other}")),
        }
    }
}

impl From<EnvdError> for ControlError {
    fn from(e: EnvdError) -> Self {
        match e {
            EnvdError::Invalid(m) => ControlError::Invalid(m),
            EnvdError::NotFound(m) => ControlError::NotFound(m),
            EnvdError::NoSpace(m) => ControlError::Conflict(m),
            other => ControlError::Internal(other.to_string()),
        }
    }
}

/// The one HTTP client for every sandbox: plain HTTP, never through a
/// proxy, connections kept per address.
fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            // envd is plain HTTP: load no TLS roots (which is also what
            // could make building fail).
            .tls_built_in_root_certs(false)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("bora-control/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a plain-HTTP client without TLS roots always builds")
    })
}

/// One sandbox's agent: its address and access token.
#[derive(Debug, Clone)]
pub struct Envd {
    addr: SocketAddr,
    token: String,
}

impl Envd {
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr,
            token: token.to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn unreachable(&self, e: &reqwest::Error) -> EnvdError {
        EnvdError::Unreachable {
            addr: self.addr,
            detail: root_cause(e),
        }
    }

    /// Whether envd answers `GET /health` (with 2xx).
    pub async fn health(&self) -> Result<(), EnvdError> {
        let response = http()
            .get(self.url("/health"))
            .timeout(SHORT_REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.check(response, "answer /health", false)
            .await
            .map(drop)
    }

    /// `POST /init`: the env vars of every process and the default user;
    /// also (re)sets the access token to this client's.
    pub async fn init(
        &self,
        env: &BTreeMap<String, String>,
        default_user: &str,
    ) -> Result<(), EnvdError> {
        let body = serde_json::json!({
            "envVars": env,
            "defaultUser": default_user,
            "accessToken": self.token,
        });
        let response = http()
            .post(self.url("/init"))
            .header("x-access-token", &self.token)
            .json(&body)
            .timeout(SHORT_REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.check(response, "accept /init", false).await.map(drop)
    }

    /// Starts `req.cmd` under `/bin/bash -l -c` and streams its events.
    /// Returns once the command started (the stream's first event is
    /// [`ExecEvent::Start`]); a command that cannot start is an error here.
    pub async fn run(&self, req: &ExecRequest) -> Result<ExecStream, EnvdError> {
        let message = serde_json::json!({
            "process": {
                "cmd": "/bin/bash",
                "args": ["-l", "-c", req.cmd],
                "envs": req.env,
                "cwd": req.cwd.as_deref().filter(|c| !c.is_empty()),
            },
            "stdin": false,
        });
        let payload = serde_json::to_vec(&message).unwrap_or_default();
        let mut request = http()
            .post(self.url("/process.Process/Start"))
            .header("x-access-token", &self.token)
            .header(header::CONTENT_TYPE, "application/connect+json")
            .header("connect-protocol-version", "1")
            .body(envelope(0, &payload));
        if let Some(user) = req.user.as_deref().filter(|u| !u.is_empty()) {
            request = request.header(header::AUTHORIZATION, basic_user(user));
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let response = self.check(response, "start the command", false).await?;
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/connect+json") {
            return Err(EnvdError::Protocol {
                addr: self.addr,
                what: "process.Process/Start",
                detail: format!("content type {content_type:?}, not application/connect+json"),
            });
        }
        let mut events = EventReader {
            addr: self.addr,
            body: Box::pin(response.bytes_stream()),
            buf: BytesMut::new(),
            finished: false,
        };
        let first = match events.next_event().await {
            Some(Ok(first @ ExecEvent::Start { .. })) => first,
            Some(Ok(other)) => {
                return Err(EnvdError::Protocol {
                    addr: self.addr,
                    what: "process.Process/Start",
                    detail: format!("the first event is {other:?}, not the start"),
                });
            }
            Some(Err(e)) => return Err(e),
            None => unreachable!("an unfinished reader always yields an item"),
        };
        let rest = futures_util::stream::unfold(events, |mut events| async move {
            events.next_event().await.map(|item| (item, events))
        });
        Ok(Box::pin(
            futures_util::stream::once(async move { Ok(first) }).chain(rest),
        ))
    }

    /// `GET /files`: the file at `path` (absolute, or relative to the
    /// user's home) as `user` (the default user when `None`), streamed,
    /// with its length when envd sent one.
    pub async fn download(
        &self,
        path: &str,
        user: Option<&str>,
    ) -> Result<(Option<u64>, ByteStream), EnvdError> {
        let response = http()
            .get(self.url("/files"))
            .header("x-access-token", &self.token)
            .query(&file_query(path, user))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let response = self.check(response, "read the file", true).await?;
        let len = response.content_length();
        let addr = self.addr;
        let body = response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| EnvdError::Unreachable {
                addr,
                detail: format!("the download broke off: {}", root_cause(&e)),
            })
        });
        Ok((len, Box::pin(body)))
    }

    /// `GET /files`, read whole.
    pub async fn read_file(&self, path: &str, user: Option<&str>) -> Result<Bytes, EnvdError> {
        let (len, mut body) = self.download(path, user).await?;
        let mut out = BytesMut::with_capacity(len.unwrap_or(0).min(1 << 20) as usize);
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    /// `POST /files`: writes `body` to `path` (absolute, or relative to the
    /// user's home) as `user`, replacing the file; envd creates the parent
    /// directories, owned by the user.
    pub async fn write_file(
        &self,
        path: &str,
        user: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Result<(), EnvdError> {
        let response = http()
            .post(self.url("/files"))
            .header("x-access-token", &self.token)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .query(&file_query(path, user))
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.check(response, "write the file", true).await.map(drop)
    }

    /// Passes a 2xx response; turns any other into the error envd gave.
    /// A 404 means a missing file for `/files` (`on_file`), a missing
    /// endpoint otherwise.
    async fn check(
        &self,
        response: Response,
        what: &'static str,
        on_file: bool,
    ) -> Result<Response, EnvdError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .map(|b| b.message)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&body);
                let text = text.trim();
                if text.is_empty() {
                    status.to_string()
                } else {
                    format!("{status}: {}", text.chars().take(200).collect::<String>())
                }
            });
        Err(match status {
            StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN => EnvdError::Invalid(message),
            StatusCode::NOT_FOUND if on_file => EnvdError::NotFound(message),
            StatusCode::UNAUTHORIZED => unauthenticated(self.addr, message),
            StatusCode::INSUFFICIENT_STORAGE => EnvdError::NoSpace(message),
            _ => EnvdError::Failed {
                addr: self.addr,
                what,
                message,
            },
        })
    }
}

/// `?path=&username=` of `/files`.
fn file_query<'a>(path: &'a str, user: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut query = vec![("path", path)];
    if let Some(user) = user.filter(|u| !u.is_empty()) {
        query.push(("username", user));
    }
    query
}

/// `Authorization: Basic base64("<user>:")`, the way envd (and the E2B
/// SDKs) name the user.
fn basic_user(user: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    )
}

/// One Connect envelope.
fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The innermost error (e.g. "Connection refused (os error 111)"), which
/// says more than reqwest's "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// envd's error bodies: `{"code", "message"}` (the code a number for
/// `/files`, a name for RPCs).
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

/// The end-of-stream message.
#[derive(Deserialize)]
struct EndOfStream {
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Deserialize)]
struct RpcError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// `process.StartResponse`, as proto3 JSON.
#[derive(Deserialize)]
struct StartResponse {
    #[serde(default)]
    event: Option<ProcessEvent>,
}

/// `process.ProcessEvent`: one of its fields is set.
#[derive(Default, Deserialize)]
#[serde(default)]
struct ProcessEvent {
    start: Option<StartEvent>,
    data: Option<DataEvent>,
    end: Option<EndEvent>,
}

#[derive(Deserialize)]
struct StartEvent {
    #[serde(default)]
    pid: u32,
}

/// Output chunks: standard base64.
#[derive(Default, Deserialize)]
#[serde(default)]
struct DataEvent {
    stdout: Option<String>,
    stderr: Option<String>,
    pty: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct EndEvent {
    exit_code: i32,
    exited: bool,
    /// Go's wording: `exit status 3`, `signal: killed`.
    status: String,
    error: Option<String>,
}

impl EndEvent {
    fn into_exit(self) -> ExecEvent {
        if self.exited {
            return ExecEvent::Exit {
                exit_code: self.exit_code,
                signal: None,
                error: self.error,
            };
        }
        match signal_number(&self.status) {
            Some(signal) => ExecEvent::Exit {
                exit_code: 128 + signal,
                signal: Some(signal),
                error: self.error,
            },
            None => ExecEvent::Exit {
                exit_code: -1,
                signal: None,
                error: Some(self.error.unwrap_or_else(|| {
                    format!("the command ended without an exit code ({:?})", self.status)
                })),
            },
        }
    }
}

/// The signal named by an end event's status, in Go's wording
/// (`signal: killed`, `signal: user defined signal 1`) or as a number
/// (`signal: signal 34`).
fn signal_number(status: &str) -> Option<i32> {
    let name = status.strip_prefix("signal: ")?;
    const NAMES: [&str; 15] = [
        "hangup",
        "interrupt",
        "quit",
        "illegal instruction",
        "trace/breakpoint trap",
        "aborted",
        "bus error",
        "floating point exception",
        "killed",
        "user defined signal 1",
        "segmentation fault",
        "user defined signal 2",
        "broken pipe",
        "alarm clock",
        "terminated",
    ];
    if let Some(i) = NAMES.iter().position(|n| *n == name) {
        return Some(i as i32 + 1);
    }
    name.strip_prefix("signal ")?
        .parse()
        .ok()
        .filter(|n| (1..=64).contains(n))
}

/// Reads `process.Process/Start`'s envelopes into [`ExecEvent`]s.
struct EventReader {
    addr: SocketAddr,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: BytesMut,
    /// After the exit event or an error: nothing more to read.
    finished: bool,
}

impl EventReader {
    const WHAT: &'static str = "process.Process/Start";

    /// The next event; `None` after the exit event or an error.
    async fn next_event(&mut self) -> Option<Result<ExecEvent, EnvdError>> {
        if self.finished {
            return None;
        }
        let item = loop {
            match self.next_envelope().await {
                Err(e) => break Err(e),
                Ok((flags, payload)) if flags & FLAG_END_STREAM != 0 => {
                    break Err(self.end_of_stream(&payload));
                }
                Ok((flags, _)) if flags & FLAG_COMPRESSED != 0 => {
                    break Err(self.protocol("a compressed message, though none was asked for"));
                }
                Ok((_, payload)) => match self.event(&payload) {
                    Ok(Some(event)) => break Ok(event),
                    Ok(None) => continue, // a keepalive
                    Err(e) => break Err(e),
                },
            }
        };
        if matches!(item, Err(_) | Ok(ExecEvent::Exit { .. })) {
            self.finished = true;
        }
        Some(item)
    }

    /// The next envelope's flags and payload.
    async fn next_envelope(&mut self) -> Result<(u8, Bytes), EnvdError> {
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(self.protocol(&format!(
                        "a message of {len} bytes, more than the {MAX_MESSAGE} allowed"
                    )));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok((flags, self.buf.split_to(len).freeze()));
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(EnvdError::Unreachable {
                        addr: self.addr,
                        detail: format!(
                            "the command's output stream broke off: {}",
                            root_cause(&e)
                        ),
                    });
                }
                None if self.buf.is_empty() => {
                    return Err(self.protocol("a stream that ended before the command's exit"));
                }
                None => return Err(self.protocol("a stream that ended inside a message")),
            }
        }
    }

    /// The error an end-of-stream message carries (there was no exit event
    /// before it, so it always is one).
    fn end_of_stream(&self, payload: &[u8]) -> EnvdError {
        let end: EndOfStream = match serde_json::from_slice(payload) {
            Ok(end) => end,
            Err(e) => {
                return self.protocol(&format!("an end-of-stream message that is not JSON ({e})"));
            }
        };
        let Some(error) = end.error else {
            return self.protocol("a stream that ended before the command's exit");
        };
        let message = error.message;
        match error.code.as_str() {
            "invalid_argument" | "failed_precondition" | "out_of_range" | "permission_denied" => {
                EnvdError::Invalid(message)
            }
            "not_found" => EnvdError::NotFound(message),
            "resource_exhausted" => EnvdError::NoSpace(message),
            "unauthenticated" => unauthenticated(self.addr, message),
            code => EnvdError::Failed {
                addr: self.addr,
                what: "run the command",
                message: format!("{code}: {message}"),
            },
        }
    }

    /// The event a message carries; `None` for a keepalive.
    fn event(&self, payload: &[u8]) -> Result<Option<ExecEvent>, EnvdError> {
        let response: StartResponse = serde_json::from_slice(payload)
            .map_err(|e| self.protocol(&format!("a message that is not a StartResponse ({e})")))?;
        let Some(event) = response.event else {
            return Ok(None);
        };
        if let Some(start) = event.start {
            return Ok(Some(ExecEvent::Start { pid: start.pid }));
        }
        if let Some(end) = event.end {
            return Ok(Some(end.into_exit()));
        }
        let Some(data) = event.data else {
            return Ok(None);
        };
        let decode = |text: String| {
            decode_base64(&text)
                .map_err(|e| self.protocol(&format!("output that is not base64 ({e})")))
        };
        Ok(match (data.stdout, data.stderr, data.pty) {
            (Some(out), _, _) | (None, None, Some(out)) => {
                Some(ExecEvent::Stdout { data: decode(out)? })
            }
            (None, Some(err), _) => Some(ExecEvent::Stderr { data: decode(err)? }),
            (None, None, None) => None,
        })
    }

    fn protocol(&self, detail: &str) -> EnvdError {
        EnvdError::Protocol {
            addr: self.addr,
            what: Self::WHAT,
            detail: detail.to_string(),
        }
    }
}

/// envd says "unauthenticated" both for a wrong token and for an unknown
/// user; only the first is the control plane's fault.
fn unauthenticated(addr: SocketAddr, message: String) -> EnvdError {
    if message.contains("access token") {
        EnvdError::TokenRefused { addr, message }
    } else {
        EnvdError::Invalid(message)
    }
}

/// Standard base64, padded or not.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::DecodePaddingMode;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text)
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    const TOKEN: &str = "t0k3n";

    /// envd in-process on loopback, with a one-user `/etc/passwd` whose
    /// user is whoever runs the tests (so no root is needed).
    struct Agent {
        envd: Envd,
        home: std::path::PathBuf,
        _dir: tempfile::TempDir,
        shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl Agent {
        async fn start() -> Agent {
            let dir = tempfile::tempdir().unwrap();
            let etc = dir.path().join("etc");
            let home = dir.path().join("home");
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::create_dir_all(&home).unwrap();
            let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
            std::fs::write(
                etc.join("passwd"),
                format!("sbx:x:{uid}:{gid}:sandbox:{}:/bin/bash\n", home.display()),
            )
            .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let config = bora_envd::Config {
                access_token: Some(TOKEN.into()),
                default_user: "sbx".into(),
                etc_dir: etc,
                reap_orphans: false,
                shutdown_grace: Duration::from_secs(1),
                ..Default::default()
            };
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let _ = bora_envd::serve(config, listener, async {
                    let _ = rx.await;
                })
                .await;
            });
            Agent {
                envd: Envd::new(addr, TOKEN),
                home,
                _dir: dir,
                shutdown: Some(tx),
            }
        }

        fn path(&self, rel: &str) -> String {
            self.home.join(rel).display().to_string()
        }
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            if let Some(tx) = self.shutdown.take() {
                let _ = tx.send(());
            }
        }
    }

    fn exec(cmd: &str) -> ExecRequest {
        ExecRequest {
            cmd: cmd.into(),
            ..ExecRequest::default()
        }
    }

    /// All of a command's events: (stdout, stderr, the exit event).
    async fn run_all(envd: &Envd, req: &ExecRequest) -> (String, String, ExecEvent) {
        let events: Vec<ExecEvent> = envd.run(req).await.unwrap().try_collect().await.unwrap();
        assert!(
            matches!(events.first(), Some(ExecEvent::Start { pid }) if *pid > 0),
            "{events:?}"
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for event in &events[1..events.len() - 1] {
            match event {
                ExecEvent::Stdout { data } => out.extend_from_slice(data),
                ExecEvent::Stderr { data } => err.extend_from_slice(data),
                other => panic!("unexpected {other:?} in {events:?}"),
            }
        }
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            events.last().unwrap().clone(),
        )
    }

    fn exited(exit_code: i32) -> ExecEvent {
        ExecEvent::Exit {
            exit_code,
            signal: None,
            error: None,
        }
    }

    #[tokio::test]
    async fn health_init_and_commands_with_their_output_and_status() {
        let agent = Agent::start().await;
        agent.envd.health().await.unwrap();
        let env = BTreeMap::from([("GREETING".to_string(), "hello".to_string())]);
        agent.envd.init(&env, "sbx").await.unwrap();

        let (out, err, exit) = run_all(
            &agent.envd,
            &exec("echo $GREETING $EXTRA; pwd; echo oops >&2; exit 3"),
        )
        .await;
        assert_eq!(out, format!("hello\n{}\n", agent.home.display()));
        assert_eq!(err, "oops\n");
        assert_eq!(exit, exited(3));

        let req = ExecRequest {
            cmd: "echo $GREETING $EXTRA; pwd".into(),
            cwd: Some("/".into()),
            env: BTreeMap::from([("EXTRA".to_string(), "world".to_string())]),
            user: Some("sbx".into()),
        };
        let (out, _, exit) = run_all(&agent.envd, &req).await;
        assert_eq!(out, "hello world\n/\n");
        assert_eq!(exit, exited(0));

        let (_, _, exit) = run_all(&agent.envd, &exec("kill -KILL $$")).await;
        assert_eq!(
            exit,
            ExecEvent::Exit {
                exit_code: 137,
                signal: Some(9),
                error: None
            }
        );
    }

    #[tokio::test]
    async fn output_streams_while_the_command_runs() {
        let agent = Agent::start().await;
        let go = agent.path("go");
        // Prints, then waits (up to 60 s) for a file only the test creates
        // after it has seen the first line: a buffered stream would give
        // "gave up" instead of "second".
        let cmd = format!(
            "echo first; for i in $(seq 1200); do [ -e {go} ] && break; sleep 0.05; done; \
             [ -e {go} ] && echo second || echo gave up"
        );
        let mut events = agent.envd.run(&exec(&cmd)).await.unwrap();
        assert!(matches!(
            events.next().await,
            Some(Ok(ExecEvent::Start { .. }))
        ));
        match events.next().await {
            Some(Ok(ExecEvent::Stdout { data })) => assert_eq!(data, b"first\n"),
            other => panic!("expected the first line, got {other:?}"),
        }
        std::fs::write(&go, "").unwrap();
        let rest: Vec<ExecEvent> = events.try_collect().await.unwrap();
        assert_eq!(
            rest,
            [
                ExecEvent::Stdout {
                    data: b"second\n".to_vec()
                },
                exited(0)
            ]
        );
    }

    #[tokio::test]
    async fn commands_that_cannot_start_are_errors_naming_the_cause() {
        let agent = Agent::start().await;
        let err = agent
            .envd
            .run(&ExecRequest {
                cwd: Some("/no/such/dir".into()),
                ..exec("true")
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, EnvdError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("/no/such/dir"), "{err}");

        let err = agent
            .envd
            .run(&ExecRequest {
                user: Some("mallory".into()),
                ..exec("true")
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, EnvdError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("mallory"), "{err}");
        let control = err.in_sandbox("sbx1");
        assert_eq!(control.code(), bora_api::ErrorCode::InvalidArgument);
        assert!(
            control.to_string().starts_with("sandbox sbx1: "),
            "{control}"
        );
    }

    #[tokio::test]
    async fn files_round_trip_byte_for_byte() {
        let agent = Agent::start().await;
        let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let path = agent.path("deep/er/data.bin");
        agent
            .envd
            .write_file(&path, None, bytes.clone())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let back = agent.envd.read_file(&path, Some("sbx")).await.unwrap();
        assert_eq!(back.as_ref(), bytes.as_slice());

        // Relative paths are in the user's home.
        agent
            .envd
            .write_file("notes.txt", None, "hi")
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(agent.path("notes.txt")).unwrap(),
            "hi"
        );

        let missing = agent.path("missing.txt");
        let err = agent.envd.read_file(&missing, None).await.unwrap_err();
        assert!(matches!(err, EnvdError::NotFound(_)), "{err:?}");
        assert!(err.to_string().contains(&missing), "{err}");
        let control = err.in_sandbox("sbx1");
        assert_eq!(control.code(), bora_api::ErrorCode::NotFound);

        let dir = agent.home.display().to_string();
        let err = agent.envd.write_file(&dir, None, "x").await.unwrap_err();
        assert!(matches!(err, EnvdError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[tokio::test]
    async fn a_wrong_token_and_an_absent_agent_are_told_apart() {
        let agent = Agent::start().await;
        let wrong = Envd::new(agent.envd.addr(), "not-the-token");
        wrong.health().await.unwrap(); // never authenticated
        let err = wrong.run(&exec("true")).await.err().unwrap();
        assert!(matches!(err, EnvdError::TokenRefused { .. }), "{err:?}");
        let err = wrong.read_file("/etc/hostname", None).await.unwrap_err();
        assert!(matches!(err, EnvdError::TokenRefused { .. }), "{err:?}");
        assert_eq!(
            ControlError::from(err).code(),
            bora_api::ErrorCode::Internal
        );

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = Envd::new(closed, TOKEN).health().await.unwrap_err();
        assert!(matches!(err, EnvdError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains(&closed.to_string()), "{err}");
    }

    /// A reader over the given chunks of a response body.
    fn reader(chunks: Vec<Vec<u8>>) -> EventReader {
        let chunks = chunks
            .into_iter()
            .map(|c| Ok(Bytes::from(c)))
            .collect::<Vec<reqwest::Result<Bytes>>>();
        EventReader {
            addr: "127.0.0.1:49983".parse().unwrap(),
            body: Box::pin(futures_util::stream::iter(chunks)),
            buf: BytesMut::new(),
            finished: false,
        }
    }

    async fn drain(mut r: EventReader) -> Vec<Result<ExecEvent, String>> {
        let mut out = Vec::new();
        while let Some(item) = r.next_event().await {
            out.push(item.map_err(|e| e.to_string()));
        }
        out
    }

    #[tokio::test]
    async fn envelopes_split_anywhere_decode_to_events() {
        let mut wire = Vec::new();
        for msg in [
            r#"{"event":{"start":{"pid":42}}}"#,
            r#"{"event":{"keepalive":{}}}"#,
            r#"{"event":{"data":{"stdout":"aGkK"}}}"#,
            r#"{"event":{"data":{"stderr":"/w=="}}}"#,
            r#"{"event":{"end":{"exitCode":0,"exited":false,"status":"signal: terminated"}}}"#,
        ] {
            wire.extend(envelope(0, msg.as_bytes()));
        }
        wire.extend(envelope(FLAG_END_STREAM, b"{}"));
        let want = vec![
            Ok(ExecEvent::Start { pid: 42 }),
            Ok(ExecEvent::Stdout {
                data: b"hi\n".to_vec(),
            }),
            Ok(ExecEvent::Stderr { data: vec![0xff] }),
            Ok(ExecEvent::Exit {
                exit_code: 143,
                signal: Some(15),
                error: None,
            }),
        ];
        // One byte at a time, and all at once.
        let bytewise = wire.iter().map(|b| vec![*b]).collect();
        assert_eq!(drain(reader(bytewise)).await, want);
        assert_eq!(drain(reader(vec![wire])).await, want);
    }

    #[tokio::test]
    async fn streams_that_end_early_or_badly_are_errors() {
        let start = envelope(0, br#"{"event":{"start":{"pid":1}}}"#);
        let failed = envelope(
            FLAG_END_STREAM,
            br#"{"error":{"code":"not_found","message":"process 1 not found"}}"#,
        );
        let got = drain(reader(vec![start.clone(), failed])).await;
        assert_eq!(got[0], Ok(ExecEvent::Start { pid: 1 }));
        assert_eq!(got[1], Err("process 1 not found".to_string()));
        assert_eq!(got.len(), 2, "nothing after an error");

        let got = drain(reader(vec![start.clone()])).await;
        assert!(
            got[1]
                .as_ref()
                .unwrap_err()
                .contains("ended before the command's exit"),
            "{got:?}"
        );
        let got = drain(reader(vec![start[..7].to_vec()])).await;
        assert!(
            got[0]
                .as_ref()
                .unwrap_err()
                .contains("ended inside a message"),
            "{got:?}"
        );
        let huge = vec![0, 0xff, 0xff, 0xff, 0xff];
        let got = drain(reader(vec![huge])).await;
        assert!(
            got[0].as_ref().unwrap_err().contains("more than"),
            "{got:?}"
        );
        let got = drain(reader(vec![envelope(0, b"not json")])).await;
        assert!(
            got[0].as_ref().unwrap_err().contains("not a StartResponse"),
            "{got:?}"
        );
    }

    #[test]
    fn end_events_become_shell_exit_statuses() {
        let end = |exited, exit_code, status: &str| EndEvent {
            exit_code,
            exited,
            status: status.into(),
            error: None,
        };
        assert_eq!(end(true, 3, "exit status 3").into_exit(), exited(3));
        assert_eq!(
            end(false, -1, "signal: killed").into_exit(),
            ExecEvent::Exit {
                exit_code: 137,
                signal: Some(9),
                error: None
            }
        );
        assert_eq!(
            end(false, -1, "signal: signal 34").into_exit(),
            ExecEvent::Exit {
                exit_code: 162,
                signal: Some(34),
                error: None
            }
        );
        let ExecEvent::Exit {
            exit_code, error, ..
        } = end(false, -1, "lost").into_exit()
        else {
            panic!()
        };
        assert_eq!(exit_code, -1);
        assert!(error.unwrap().contains("without an exit code"));
        assert_eq!(signal_number("signal: user defined signal 2"), Some(12));
        assert_eq!(signal_number("signal: signal 99"), None);
        assert_eq!(basic_user("root"), "Basic cm9vdDo=");
    }
}
