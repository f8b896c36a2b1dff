//! The one error type of the client. Every message says what went wrong,
//! what was tried, and what to do; the binary prints it as `error: <message>`
//! and exits with [`CliError::exit_code`].

use std::path::PathBuf;

use bora_api::ErrorCode;

/// Where the token in use came from, so a refused token can be traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `BORA_TOKEN`.
    Flag,
    /// The local server's `admin.token` file.
    File(PathBuf),
}

/// Everything that can go wrong in a `bora` client command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Discovery found no `api.addr` in the data dir.
    #[error(
        "no Bora server found: {} does not exist; start one with `bora server`, or set BORA_URL and BORA_TOKEN",
        .path.display()
    )]
    NoServer { path: PathBuf },

    /// A discovery file exists but this user may not read it.
    #[error("permission denied reading {}: run as root or set {hint}", .path.display())]
    DiscoveryPermission {
        path: PathBuf,
        /// The variables that would avoid reading the file.
        hint: &'static str,
    },

    /// A discovery file could not be read for another reason.
    #[error("cannot read {}: {source}", .path.display())]
    DiscoveryRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `api.addr` does not hold an address.
    #[error(
        "{} holds {content:?}, not an address like 127.0.0.1:7070; restart `bora server` to rewrite it, or set BORA_URL",
        .path.display()
    )]
    InvalidAddrFile { path: PathBuf, content: String },

    /// `admin.token` exists but is empty.
    #[error("{} is empty; restart `bora server` to rewrite it, or set BORA_TOKEN", .path.display())]
    EmptyTokenFile { path: PathBuf },

    /// `--url` was given without a token.
    #[error(
        "BORA_URL (or --url) is set to {url} but no token is: set BORA_TOKEN (or pass --token) too"
    )]
    MissingToken { url: String },

    /// `--url` is not a usable URL.
    #[error("invalid server URL {url:?}: {reason}; expected something like http://127.0.0.1:7070")]
    InvalidUrl { url: String, reason: String },

    /// The server could not be reached.
    #[error("cannot reach the Bora server at {url}{origin}: {detail}")]
    Connect {
        url: String,
        /// `" (from /var/lib/bora/api.addr)"` or empty.
        origin: String,
        /// The transport error and what to check.
        detail: String,
    },

    /// The connection failed after it was made, or a body could not be read.
    #[error("request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The server answered 401.
    #[error("the Bora server at {url} refused the token {}: {message}; {}",
        token_origin(.token_source), token_fix(.token_source))]
    Unauthorized {
        url: String,
        token_source: TokenSource,
        message: String,
    },

    /// The server answered with an error body (or a non-JSON error).
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code, when the body was Bora's error JSON.
        code: Option<ErrorCode>,
        message: String,
    },

    /// A 2xx response whose body is not what the API promises.
    #[error("unexpected response from {url}: {detail}")]
    InvalidResponse { url: String, detail: String },

    /// A file named on the command line could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `bora.yaml` is invalid. Shown as the manifest parser's compiler-style
    /// report (file:line:column, what, and how to fix), without its first
    /// `error: `, which the binary's `error: ` prefix puts back.
    #[error("{}", manifest_report(.0))]
    Manifest(bora_manifest::ManifestErrors),

    /// Reading standard input failed.
    #[error("cannot read the secret's value from standard input: {0}")]
    ReadStdin(#[source] std::io::Error),

    /// A secret value is empty.
    #[error(
        "the value of secret {name:?} is empty; pass it on standard input, with --value or with --from-file"
    )]
    EmptySecret { name: String },

    /// Command-line flags that make an invalid definition (checked with the
    /// API's rules before anything is sent).
    #[error("{0}")]
    InvalidFlags(String),

    /// A service argument is malformed.
    #[error("invalid service {input:?}: {reason}; expected APP/SERVICE or SERVICE")]
    InvalidServiceRef { input: String, reason: String },

    /// No app has a service by that name.
    #[error("no service named {name:?} in any app; `bora services list` shows them")]
    ServiceNotFound { name: String },

    /// Several apps have a service by that name.
    #[error("service name {name:?} is ambiguous: {}; name one as APP/SERVICE", .candidates.join(", "))]
    AmbiguousService {
        name: String,
        candidates: Vec<String>,
    },

    /// A short ID matches several resources.
    #[error("{kind} ID {input:?} is ambiguous: it matches {}; give more of the ID", .candidates.join(", "))]
    AmbiguousId {
        kind: &'static str,
        input: String,
        candidates: Vec<String>,
    },

    /// `deploy --wait`: a deployment failed or was canceled.
    #[error(
        "deployment {id} of {service} {status}: {reason}; see `bora logs {service}` and `bora instances list --service {service} --all`"
    )]
    DeploymentFailed {
        id: String,
        service: String,
        status: bora_api::DeploymentStatus,
        reason: String,
    },

    /// `deploy --wait`: the timeout passed first.
    #[error(
        "timed out after {timeout} waiting for {}; the deployment goes on: follow it with `bora deployments get ID` and `bora logs SERVICE`",
        .waiting.join(", ")
    )]
    WaitTimeout {
        timeout: bora_api::Duration,
        /// `hello/web (starting)` for each deployment not yet healthy.
        waiting: Vec<String>,
    },

    /// `bora sandboxes cp` with no side in a sandbox.
    #[error(
        "neither {src:?} nor {dst:?} is in a sandbox: write one side as ID:/path, e.g. `bora sandboxes cp ./data.csv ID:/home/user/data.csv`"
    )]
    CpNoSandbox { src: String, dst: String },

    /// `bora sandboxes cp` with both sides in sandboxes.
    #[error(
        "both {src:?} and {dst:?} are in sandboxes: copy through a local file (`bora sandboxes cp ID1:/a ./a`, then `bora sandboxes cp ./a ID2:/b`)"
    )]
    CpTwoSandboxes { src: String, dst: String },

    /// A `bora sandboxes cp` argument that cannot be used as it is.
    #[error("invalid copy {side} {input:?}: {reason}")]
    CpInvalidPath {
        /// `source` or `destination`.
        side: &'static str,
        input: String,
        reason: String,
    },

    /// A local file could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Reading data from standard input failed.
    #[error("cannot read standard input: {0}")]
    ReadInput(#[source] std::io::Error),

    /// `bora sandboxes exec`: the command's stream was cut short.
    #[error("{message} (the command's exit status is unknown)")]
    ExecLost { message: String },

    /// A `--since`/`--until` that is neither a duration nor a time.
    #[error(
        "invalid {flag} {value:?}: give a duration meaning that long ago (24h, 30m, 7d) or an RFC 3339 time (2026-01-02T15:04:05Z)"
    )]
    InvalidTime { flag: &'static str, value: String },

    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),

    /// Rendering the output failed (should not happen for API types).
    #[error("cannot render output as {format}: {detail}")]
    Render {
        format: &'static str,
        detail: String,
    },
}

impl CliError {
    /// The process exit code for this error: 2 for a `--wait` timeout, 1
    /// otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::WaitTimeout { .. } => 2,
            _ => 1,
        }
    }

    /// True for a 404 from the API.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CliError::Api { status: 404, .. })
    }

    /// True when the error came from a broken output pipe (`bora logs | head`),
    /// which is no error for the user.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

fn manifest_report(errors: &bora_manifest::ManifestErrors) -> String {
    let report = errors.to_string();
    match report.strip_prefix("error: ") {
        Some(rest) => rest.to_string(),
        None => report,
    }
}

fn token_origin(source: &TokenSource) -> String {
    match source {
        TokenSource::Flag => "from BORA_TOKEN (or --token)".to_string(),
        TokenSource::File(path) => format!("from {}", path.display()),
    }
}

fn token_fix(source: &TokenSource) -> &'static str {
    match source {
        TokenSource::Flag => {
            "check BORA_TOKEN, or unset BORA_URL and BORA_TOKEN to use the local server's admin token"
        }
        TokenSource::File(_) => {
            "the file is stale or belongs to another server: restart `bora server`, or set BORA_URL and BORA_TOKEN"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = CliError::NoServer {
            path: "/var/lib/bora/api.addr".into(),
        };
        assert_eq!(
            e.to_string(),
            "no Bora server found: /var/lib/bora/api.addr does not exist; start one with `bora server`, or set BORA_URL and BORA_TOKEN"
        );
        let e = CliError::DiscoveryPermission {
            path: "/var/lib/bora/admin.token".into(),
            hint: "BORA_TOKEN",
        };
        assert_eq!(
            e.to_string(),
            "permission denied reading /var/lib/bora/admin.token: run as root or set BORA_TOKEN"
        );
        let e = CliError::Unauthorized {
            url: "http://127.0.0.1:7070".into(),
            token_source: TokenSource::Flag,
            message: "invalid token".into(),
        };
        assert!(e.to_string().starts_with(
            "the Bora server at http://127.0.0.1:7070 refused the token from BORA_TOKEN (or --token): invalid token; check BORA_TOKEN"
        ));
    }

    #[test]
    fn exit_codes() {
        let timeout = CliError::WaitTimeout {
            timeout: bora_api::Duration::from_secs(600),
            waiting: vec!["hello/web (starting)".into()],
        };
        assert_eq!(timeout.exit_code(), 2);
        assert!(
            timeout
                .to_string()
                .starts_with("timed out after 10m waiting for hello/web (starting);")
        );
        assert_eq!(
            CliError::ServiceNotFound { name: "x".into() }.exit_code(),
            1
        );
    }
}
