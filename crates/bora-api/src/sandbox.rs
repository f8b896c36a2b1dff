//! Sandboxes: short-lived, isolated machines for AI agents to run code in.
//!
//! A sandbox starts from a *template* (an OCI image; `base` has a shell,
//! coreutils and python3), runs Bora's agent `bora-envd` as its first
//! process, and lives until it is killed or its timeout passes. It can be
//! paused (frozen, processes and files kept) and resumed. Bora's own API is
//! `/v1/sandboxes`; the E2B-compatible API under `/e2b` maps onto it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::duration::Duration;
use crate::spec::Isolation;

/// The template used when a request names none.
pub const DEFAULT_TEMPLATE: &str = "base";
/// How long a sandbox lives when a request says nothing (E2B's default).
pub const DEFAULT_SANDBOX_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a sandbox may be given at once (E2B's limit).
pub const MAX_SANDBOX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The port `bora-envd` listens on inside every sandbox (E2B's envd port).
pub const ENVD_PORT: u16 = 49983;

/// What `POST /v1/sandboxes` takes. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSandbox {
    /// A template name (`base`) or an image reference; `base` by default.
    #[serde(default)]
    pub template: Option<String>,
    /// How long the sandbox lives, from now; 5m by default, at most 24h.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "10m")]
    pub timeout: Option<Duration>,
    /// Free-form labels, returned as given and usable to filter lists.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Environment variables of every process started in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `gvisor` (the default for sandboxes) or `container` (runc).
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// CPU, memory, process and disk limits; defaults in [`SandboxResources`].
    #[serde(default)]
    pub resources: Option<SandboxResources>,
    /// Where the sandbox may connect to: CIDRs (`203.0.113.0/24`) or host
    /// names (resolved at creation). Empty: no outbound network at all.
    /// The host, other sandboxes, services and link-local addresses stay
    /// unreachable whatever this says.
    #[serde(default)]
    pub allow_out: Vec<String>,
}

/// A sandbox's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxResources {
    /// CPU in thousandths of a core (1000 = one core).
    #[serde(default = "default_millicpu")]
    pub millicpu: u64,
    /// Memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Disk (the sandbox's writable layer) in MiB.
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u64,
    /// Most processes and threads at once.
    #[serde(default = "default_pids")]
    pub pids: u64,
}

fn default_millicpu() -> u64 {
    1000
}
fn default_memory_mib() -> u64 {
    512
}
fn default_disk_mib() -> u64 {
    1024
}
fn default_pids() -> u64 {
    512
}

impl Default for SandboxResources {
    /// One core, 512 MiB of memory, 1 GiB of disk, 512 processes.
    fn default() -> Self {
        Self {
            millicpu: default_millicpu(),
            memory_mib: default_memory_mib(),
            disk_mib: default_disk_mib(),
            pids: default_pids(),
        }
    }
}

impl SandboxResources {
    /// Checks the limits are usable; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            ("millicpu", self.millicpu, 10, 64_000),
            ("memory_mib", self.memory_mib, 32, 256 * 1024),
            ("disk_mib", self.disk_mib, 16, 1024 * 1024),
            ("pids", self.pids, 16, 1 << 20),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "resources.{name} is {value}; it must be between {min} and {max}"
                ));
            }
        }
        Ok(())
    }
}

/// A sandbox's lifecycle: `starting → running ⇄ paused`, then `killed`
/// (by a request), `timed_out` (its timeout passed) or `failed` (it could
/// not start, or its agent died).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Starting,
    Running,
    Paused,
    Killed,
    TimedOut,
    Failed,
}

impl SandboxState {
    /// Whether the sandbox is gone for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SandboxState::Killed | SandboxState::TimedOut | SandboxState::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Starting => "starting",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Killed => "killed",
            SandboxState::TimedOut => "timed_out",
            SandboxState::Failed => "failed",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "starting" => SandboxState::Starting,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            "killed" => SandboxState::Killed,
            "timed_out" => SandboxState::TimedOut,
            "failed" => SandboxState::Failed,
            other => return Err(format!("unknown sandbox state {other:?}")),
        })
    }
}

/// A sandbox, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub id: String,
    /// The template as asked for (`base`).
    pub template: String,
    /// The image it started from, pinned by digest.
    pub image: String,
    pub state: SandboxState,
    /// Why it is in its state (for `failed`, what went wrong).
    pub reason: String,
    pub isolation: Isolation,
    pub resources: SandboxResources,
    pub metadata: BTreeMap<String, String>,
    /// The CIDRs it may connect to (host names already resolved).
    pub allow_out: Vec<String>,
    /// Its address on the node's sandbox network, while it runs.
    pub ip: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it is killed unless the timeout is extended.
    pub end_at: DateTime<Utc>,
    /// The token `bora-envd` inside it requires (`X-Access-Token`).
    pub envd_access_token: String,
}

/// What `POST /v1/sandboxes/{id}/timeout` takes: the new timeout, from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxTimeout {
    #[schema(value_type = String, example = "10m")]
    pub timeout: Duration,
}

/// What `POST /v1/sandboxes/{id}/exec` takes: one shell command to run in
/// the sandbox, whose output streams back as [`ExecEvent`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell command line, run by `/bin/bash -l -c` (as the E2B SDKs run
    /// commands).
    #[schema(example = "echo hello && python3 -c 'print(6*7)'")]
    pub cmd: String,
    /// The sandbox user to run it as; the sandbox's default user (`user` in
    /// the `base` template) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The working directory: absolute, or relative to the user's home; the
    /// user's home when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Environment variables for this command, on top of the sandbox's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// One event of an exec's response: `application/x-ndjson`, one JSON
/// object per line, sent as it happens. A stream starts with `start`, has
/// any number of `stdout`/`stderr` chunks, and ends with `exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The command started, as process `pid` of the sandbox.
    Start { pid: u32 },
    /// Bytes the command wrote to its standard output.
    Stdout {
        /// The bytes, base64-encoded.
        #[serde(with = "base64_bytes")]
        #[schema(value_type = String, format = Byte)]
        data: Vec<u8>,
    },
    /// Bytes the command wrote to its standard error.
    Stderr {
        /// The bytes, base64-encoded.
        #[serde(with = "base64_bytes")]
        #[schema(value_type = String, format = Byte)]
        data: Vec<u8>,
    },
    /// The command ended (always the last event).
    Exit {
        /// Its exit status: the code it exited with, or 128 + N when signal
        /// N killed it (as shells report it); -1 when it is unknown, which
        /// `error` explains.
        exit_code: i32,
        /// The signal that killed it, if one did.
        #[serde(default)]
        signal: Option<i32>,
        /// Why the command's end is not known (the sandbox stopped, its
        /// agent failed); `null` when it ran to its end.
        #[serde(default)]
        error: Option<String>,
    },
}

impl ExecEvent {
    /// The exit status a CLI should end with for this `exit` event: the
    /// command's status, clamped to 0–255; 1 when it is unknown. `None` for
    /// the other events.
    pub fn exit_status(&self) -> Option<u8> {
        match self {
            ExecEvent::Exit { exit_code, .. } => {
                Some(u8::try_from(*exit_code).unwrap_or(if *exit_code < 0 { 1 } else { 255 }))
            }
            _ => None,
        }
    }
}

/// `Vec<u8>` as standard base64 with padding; parsing accepts missing
/// padding too.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::DecodePaddingMode;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        LENIENT
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64 in `data`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_request_takes_every_default() {
        let new: NewSandbox = serde_json::from_str("{}").unwrap();
        assert_eq!(new, NewSandbox::default());
        let resources: SandboxResources = serde_json::from_str("{}").unwrap();
        assert_eq!(resources, SandboxResources::default());
        assert!(resources.validate().is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_limits_are_refused_by_name() {
        let err = serde_json::from_str::<NewSandbox>(r#"{"tempalte": "base"}"#).unwrap_err();
        assert!(err.to_string().contains("tempalte"), "{err}");
        let tiny = SandboxResources {
            memory_mib: 1,
            ..SandboxResources::default()
        };
        assert_eq!(
            tiny.validate().unwrap_err(),
            "resources.memory_mib is 1; it must be between 32 and 262144"
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in [
            SandboxState::Starting,
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Killed,
            SandboxState::TimedOut,
            SandboxState::Failed,
        ] {
            assert_eq!(state.as_str().parse::<SandboxState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::String(state.as_str().into())
            );
        }
        assert!(SandboxState::TimedOut.is_final());
        assert!(!SandboxState::Paused.is_final());
    }

    #[test]
    fn exec_requests_are_strict_and_minimal() {
        let req: ExecRequest = serde_json::from_str(r#"{"cmd": "ls"}"#).unwrap();
        assert_eq!(
            req,
            ExecRequest {
                cmd: "ls".into(),
                ..ExecRequest::default()
            }
        );
        assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"cmd":"ls"}"#);
        let err =
            serde_json::from_str::<ExecRequest>(r#"{"cmd": "ls", "usr": "root"}"#).unwrap_err();
        assert!(err.to_string().contains("usr"), "{err}");
        assert!(
            serde_json::from_str::<ExecRequest>("{}").is_err(),
            "cmd is required"
        );
    }

    #[test]
    fn exec_events_are_tagged_lines_with_base64_data() {
        let events = [
            (ExecEvent::Start { pid: 7 }, r#"{"type":"start","pid":7}"#),
            (
                ExecEvent::Stdout {
                    data: b"hi\n\xff".to_vec(),
                },
                r#"{"type":"stdout","data":"aGkK/w=="}"#,
            ),
            (
                ExecEvent::Stderr { data: Vec::new() },
                r#"{"type":"stderr","data":""}"#,
            ),
            (
                ExecEvent::Exit {
                    exit_code: 137,
                    signal: Some(9),
                    error: None,
                },
                r#"{"type":"exit","exit_code":137,"signal":9,"error":null}"#,
            ),
        ];
        for (event, json) in events {
            assert_eq!(serde_json::to_string(&event).unwrap(), json);
            assert_eq!(serde_json::from_str::<ExecEvent>(json).unwrap(), event);
        }
        let unpadded: ExecEvent =
            serde_json::from_str(r#"{"type":"stdout","data":"aGkK/w"}"#).unwrap();
        assert_eq!(
            unpadded,
            ExecEvent::Stdout {
                data: b"hi\n\xff".to_vec()
            }
        );
        let err =
            serde_json::from_str::<ExecEvent>(r#"{"type":"stdout","data":"%%"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }

    #[test]
    fn exit_statuses_fit_a_process_exit_code() {
        let exit = |exit_code| ExecEvent::Exit {
            exit_code,
            signal: None,
            error: None,
        };
        assert_eq!(exit(0).exit_status(), Some(0));
        assert_eq!(exit(3).exit_status(), Some(3));
        assert_eq!(exit(137).exit_status(), Some(137));
        assert_eq!(exit(300).exit_status(), Some(255));
        assert_eq!(exit(-1).exit_status(), Some(1));
        assert_eq!(ExecEvent::Start { pid: 1 }.exit_status(), None);
    }
}
