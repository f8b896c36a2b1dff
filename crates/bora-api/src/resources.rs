//! What Bora reports back: apps, services, deployments, instances, secrets.
//! Times are RFC 3339 UTC.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::spec::{ServiceSpec, ServiceType};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    pub id: String,
    pub app: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// The deployment that serves traffic now.
    pub active_deployment: Option<String>,
    /// The newest deployment, which may still be rolling out or have failed.
    pub latest_deployment: Option<String>,
    /// Where the service is reached, for web services.
    pub url: Option<String>,
    /// The autoscaler's view, for services it manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The autoscaler's last decision for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScalingStatus {
    /// Instances serving now (healthy).
    pub current: u32,
    /// Instances the autoscaler wants.
    pub desired: u32,
    /// Instances frozen by light sleep.
    pub sleeping: u32,
    /// Whether the autoscaler is in panic mode (a sudden spike).
    pub panicking: bool,
    /// Why `desired` is what it is, with the inputs.
    pub reason: String,
    pub updated_at: DateTime<Utc>,
}

/// Something the platform did on its own: a scaling decision, a service
/// going to sleep or waking up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing with time.
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub app: String,
    pub service: String,
    /// `scaled_up`, `scaled_down`, `slept`, `woke`, `wake_failed`.
    pub kind: String,
    /// What happened and why, with the inputs.
    pub message: String,
}

/// A deployment's lifecycle: `pending → pulling → starting → healthy`, then
/// `draining → stopped` once a newer deployment replaces it; `failed` with
/// the reason when it never becomes healthy; `canceled` when a newer
/// deployment starts before this one finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Pending,
    Pulling,
    Starting,
    Healthy,
    Draining,
    Stopped,
    Failed,
    Canceled,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 8] = [
        DeploymentStatus::Pending,
        DeploymentStatus::Pulling,
        DeploymentStatus::Starting,
        DeploymentStatus::Healthy,
        DeploymentStatus::Draining,
        DeploymentStatus::Stopped,
        DeploymentStatus::Failed,
        DeploymentStatus::Canceled,
    ];

    /// True while the deployment is rolling out.
    pub fn is_in_progress(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Pending | DeploymentStatus::Pulling | DeploymentStatus::Starting
        )
    }

    /// True once the deployment will never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Stopped | DeploymentStatus::Failed | DeploymentStatus::Canceled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::Pulling => "pulling",
            DeploymentStatus::Starting => "starting",
            DeploymentStatus::Healthy => "healthy",
            DeploymentStatus::Draining => "draining",
            DeploymentStatus::Stopped => "stopped",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    pub app: String,
    pub service: String,
    /// 1 for a service's first deployment, then 2, 3, …
    pub version: u64,
    pub spec: ServiceSpec,
    /// The image digest the reference resolved to; instances run exactly this.
    pub image_digest: Option<String>,
    /// For a `type: model` service: `sha256:…` of the model file, computed
    /// when the deployment was pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    pub status: DeploymentStatus,
    /// Why the deployment is in its status (for `failed`: what went wrong).
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An instance's lifecycle: `pending → pulling → starting → healthy →
/// draining → stopped`, or `failed` from any state; every transition is
/// recorded with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Pending,
    Pulling,
    /// Set up but not started (rootfs, network, bundle ready; no process):
    /// what a service in deep sleep keeps, started by the first request.
    Standby,
    Starting,
    /// A model service's process runs and is loading its model: not
    /// ready yet, and never failed for taking long (only for exiting).
    Loading,
    Healthy,
    /// Frozen by a `min: 0` service's light sleep: memory kept, no CPU,
    /// out of the route table until woken.
    Sleeping,
    Draining,
    Stopped,
    Failed,
}

impl InstanceState {
    pub const ALL: [InstanceState; 10] = [
        InstanceState::Pending,
        InstanceState::Pulling,
        InstanceState::Standby,
        InstanceState::Starting,
        InstanceState::Loading,
        InstanceState::Healthy,
        InstanceState::Sleeping,
        InstanceState::Draining,
        InstanceState::Stopped,
        InstanceState::Failed,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, InstanceState::Stopped | InstanceState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Pulling => "pulling",
            InstanceState::Starting => "starting",
            InstanceState::Loading => "loading",
            InstanceState::Healthy => "healthy",
            InstanceState::Sleeping => "sleeping",
            InstanceState::Standby => "standby",
            InstanceState::Draining => "draining",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
        }
    }

    /// Whether the state machine allows going from `self` to `to`.
    pub fn can_become(self, to: InstanceState) -> bool {
        use InstanceState::*;
        match (self, to) {
            (from, Failed) | (from, Stopped) => !from.is_final(),
            (Pending, Pulling) | (Pending, Starting) => true,
            (Pulling, Starting) => true,
            (Starting, Healthy) => true,
            // A model's process runs, then loads the model.
            (Starting, Loading) | (Loading, Healthy) | (Loading, Draining) => true,
            // A once-ready model whose process exits while it reloads is
            // restarted in place again.
            (Loading, Starting) => true,
            (Healthy, Draining) | (Starting, Draining) => true,
            // A healthy instance whose process exited or kept failing its
            // health checks is restarted in place.
            (Healthy, Starting) => true,
            // Light sleep freezes a healthy instance; waking thaws it. One
            // that fails to wake is restarted.
            (Healthy, Sleeping) | (Sleeping, Healthy) | (Sleeping, Starting) => true,
            (Sleeping, Draining) => true,
            // Deep sleep keeps a standby, started by the first request.
            (Pulling, Standby) | (Standby, Starting) => true,
            _ => false,
        }
    }
}

macro_rules! str_enum {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} {s:?}", stringify!($t)))
            }
        }
    };
}
str_enum!(DeploymentStatus);
str_enum!(InstanceState);

/// One recorded state change of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    pub at: DateTime<Utc>,
    pub from: Option<InstanceState>,
    pub to: InstanceState,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: String,
    pub app: String,
    pub service: String,
    pub deployment: String,
    pub node: String,
    pub state: InstanceState,
    /// Why the instance is in its state.
    pub reason: String,
    /// The instance's address on the node's instance network.
    pub ip: Option<String>,
    /// How many times its process was restarted after failing health checks
    /// or exiting.
    pub restarts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every state change, oldest first (filled by `GET` of one instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line an instance wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub instance: String,
    pub stream: LogStream,
    pub line: String,
}

/// A model service as `GET /v1/model-services` lists it: one line of
/// `bora models list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelService {
    /// The name clients give as `model` (the service's name).
    pub name: String,
    pub app: String,
    /// `builtin` or `openai-compatible`.
    pub engine: crate::spec::ModelEngine,
    /// The model file on the node.
    pub path: String,
    /// `sha256:…` of the model file, once pulled.
    pub digest: Option<String>,
    /// What its replicas do, in one word: `ready` (at least one serves),
    /// `loading`, `starting`, `sleeping`, `deploying`, `failed`, `stopped`.
    pub state: String,
    /// Replicas serving now.
    pub ready: u32,
    /// Replicas that are not stopped or failed.
    pub total: u32,
    /// Why the model is in its state (the latest deployment's or a
    /// replica's reason).
    pub reason: Option<String>,
    /// The inference gateway's base URL: `http://<router address>/v1`.
    pub endpoint: String,
}

/// A list response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_state_machine() {
        use InstanceState::*;
        assert!(Pending.can_become(Pulling));
        assert!(Pulling.can_become(Starting));
        assert!(Starting.can_become(Healthy));
        assert!(Healthy.can_become(Draining));
        assert!(Draining.can_become(Stopped));
        assert!(Starting.can_become(Failed));
        assert!(!Stopped.can_become(Healthy));
        assert!(!Failed.can_become(Stopped));
        assert!(!Healthy.can_become(Pending));
        assert!(Healthy.can_become(Starting));
        // Light sleep and back; deep sleep's standby.
        assert!(Healthy.can_become(Sleeping));
        assert!(Sleeping.can_become(Healthy));
        assert!(!Sleeping.can_become(Pending));
        assert!(Pulling.can_become(Standby));
        assert!(Standby.can_become(Starting));
        assert!(Standby.can_become(Stopped));
        assert!(!Standby.can_become(Healthy));
        // Models load before they are ready, and reload after a restart.
        assert!(Starting.can_become(Loading));
        assert!(Loading.can_become(Healthy));
        assert!(Loading.can_become(Starting));
        assert!(!Loading.can_become(Pending));
    }

    #[test]
    fn states_round_trip_as_strings() {
        for s in InstanceState::ALL {
            assert_eq!(s.to_string().parse::<InstanceState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in DeploymentStatus::ALL {
            assert_eq!(s.to_string().parse::<DeploymentStatus>().unwrap(), s);
        }
    }
}
