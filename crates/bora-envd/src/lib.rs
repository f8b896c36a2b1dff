//! `bora-envd`: the agent inside every Bora sandbox, speaking E2B's envd
//! protocol so the official E2B SDKs (`pip install e2b`, `npm install e2b`)
//! drive Bora sandboxes unchanged.
//!
//! Bora starts it as the sandbox container's first process (PID 1). It
//! serves, on one port (E2B's `49983` by default), HTTP/1.1 and HTTP/2 with
//! prior knowledge:
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /health` | 204, never authenticated |
//! | `POST /init` | the orchestrator's settings: `envVars`, `accessToken`, `defaultUser`, `defaultWorkdir` |
//! | `GET /envs` | the `envVars` set by `/init` |
//! | `GET /metrics` | CPU, memory, disk usage (E2B's `Metrics` JSON) |
//! | `GET`/`POST /files` | download / upload files ([`files`]) |
//! | `POST /process.Process/*` | Connect RPC: Start, Connect, List, SendInput, StreamInput, SendSignal, CloseStdin, Update |
//! | `POST /filesystem.Filesystem/*` | Connect RPC: Stat, ListDir, MakeDir, Move, Remove, WatchDir, CreateWatcher, GetWatcherEvents, RemoveWatcher |
//!
//! RPCs accept the Connect protocol's JSON and binary protobuf encodings
//! (the SDKs send JSON). Every response allows any origin (CORS), so the
//! SDKs also work from a browser; the token, not the origin, guards envd. With an access token configured every request but
//! `/health` must carry `X-Access-Token` (or, for `/files`, a signed URL).
//! An RPC acts as the user named by `Authorization: Basic base64("<user>:")`,
//! else the default user (`user`, or `/init`'s `defaultUser`): its process
//! runs with that user's uid, gid, groups and home, looked up in the
//! sandbox's own `/etc/passwd` and `/etc/group`.
//!
//! # Using it
//!
//! ```text
//! bora-envd [--listen 0.0.0.0:49983] [--access-token-file PATH] [--default-user user]
//!           [--reap-orphans]
//! BORA_ENVD_ACCESS_TOKEN=...   the access token (or --access-token-file)
//! RUST_LOG=bora_envd=debug     log filter (logs go to stderr)
//! ```
//!
//! From Rust: [`serve`] with a [`Config`] on a bound listener.
//!
//! # Building the static binary
//!
//! It must run in any image (Debian, Alpine, distroless), so it is linked
//! statically against glibc and never uses NSS (users are parsed from the
//! files, see [`users`]). `scripts/build-envd.sh` does
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p
//! bora-envd --target x86_64-unknown-linux-gnu`, checks the result is
//! static, and copies it to `target/envd/bora-envd`.
//!
//! # PID 1
//!
//! As PID 1 (or with `--reap-orphans`, which also makes it a child
//! subreaper) envd reaps every orphan re-parented to it; one [`reaper`]
//! owns all `waitpid` calls so the exit statuses of its own processes are
//! never stolen. On SIGTERM or SIGINT it stops accepting, forwards SIGTERM
//! to every process it started, waits up to [`Config::shutdown_grace`] and
//! SIGKILLs the rest.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`connect`] | the Connect protocol: codecs, envelopes, errors |
//! | [`proto`] | the envd messages (hand-written from E2B's .proto files) |
//! | `rpc` | the two Connect services' handlers |
//! | [`process`] | the process table, output fan-out, spawning as a user |
//! | [`reaper`] | the single owner of `waitpid` |
//! | [`fs`], [`watch`] | filesystem operations and inotify watches |
//! | [`files`] | the `/files` upload/download API |
//! | [`users`], [`paths`], [`auth`] | accounts, path resolution, tokens and signatures |
//! | `server` | connections, routing, `/health`, `/init`, `/envs`, `/metrics` |

pub mod auth;
pub mod connect;
pub mod files;
pub mod fs;
pub mod metrics;
pub mod paths;
pub mod process;
pub mod proto;
pub mod reaper;
mod rpc;
mod server;
mod state;
pub mod users;
pub mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// The envd protocol version Bora's envd implements, for the control plane
/// to report as `envdVersion` when it creates a sandbox: the SDKs enable
/// features (stdin control, default user, octet-stream uploads, file
/// metadata, watch entry info) by comparing against it.
pub const ENVD_COMPAT_VERSION: &str = "0.6.4";

/// E2B's envd port, the default listen port.
pub const DEFAULT_PORT: u16 = 49983;

/// How envd starts; `POST /init` may later change the token, default user,
/// default working directory and environment variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Required in `X-Access-Token` on every request but `/health`. `None`
    /// leaves envd open (until `/init` sets one).
    pub access_token: Option<String>,
    /// The user requests act as unless they name one. E2B's is `user`.
    pub default_user: String,
    /// Where processes start when the request names no `cwd` (default: the
    /// user's home).
    pub default_workdir: Option<PathBuf>,
    /// Extra environment for every process envd starts.
    pub env_vars: HashMap<String, String>,
    /// Where `passwd` and `group` are read from (`/etc`).
    pub etc_dir: PathBuf,
    /// Reap every child, including orphans re-parented to envd. On by
    /// default when envd is PID 1; when on and envd is not PID 1, envd makes
    /// itself a child subreaper so its processes' orphans come to it.
    /// Leave it off when envd runs inside a process that waits for its own
    /// children (tests).
    pub reap_orphans: bool,
    /// How long processes get between SIGTERM and SIGKILL at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            access_token: None,
            default_user: "user".into(),
            default_workdir: None,
            env_vars: HashMap::new(),
            etc_dir: "/etc".into(),
            reap_orphans: std::process::id() == 1,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why [`serve`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("installing the SIGCHLD handler: {0}")]
    Signals(#[source] std::io::Error),
    #[error("becoming a child subreaper: {0}")]
    Subreaper(#[source] nix::Error),
}

/// Serves envd on `listener` until `shutdown` resolves; then stops
/// accepting, sends SIGTERM to every process it started (SIGKILL after
/// [`Config::shutdown_grace`]), and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    if config.reap_orphans && std::process::id() != 1 {
        nix::sys::prctl::set_child_subreaper(true).map_err(Error::Subreaper)?;
    }
    let reaper = reaper::Reaper::start(config.reap_orphans).map_err(Error::Signals)?;
    let processes = process::ProcessManager::new(reaper);
    let grace = config.shutdown_grace;
    let shared = Arc::new(state::Shared::new(config, processes.clone()));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, version = ENVD_COMPAT_VERSION, "envd listening");
    }
    server::Server::new(shared)
        .run(listener, shutdown, grace)
        .await;
    Ok(())
}
