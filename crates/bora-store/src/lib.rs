//! Bora's state.
//!
//! The control plane talks to a [`Store`]: a small, synchronous, transactional
//! interface over apps, services, deployments, instances, secrets, sandboxes,
//! inference keys and the gateway's request records. Every
//! method that changes state runs in one transaction, so a crash (even
//! `kill -9`) leaves either all of a change or none of it.
//!
//! [`SqliteStore`] is the embedded default. A PostgreSQL store implements the
//! same trait; callers hold an `Arc<dyn Store>` and never see which.

mod crypto;
mod error;
mod migrations;
mod sqlite;

pub use crypto::SecretCipher;
pub use error::StoreError;
pub use sqlite::SqliteStore;

use std::collections::BTreeMap;

use bora_api::{
    App, Deployment, DeploymentStatus, Event, InferenceKey, Instance, InstanceState, Isolation,
    RequestRecord, Sandbox, SandboxResources, SandboxState, ScalingStatus, Secret, Service,
    ServiceSpec, UsageRow,
};
use chrono::{DateTime, Utc};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which deployments to list.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFilter<'a> {
    pub app: Option<&'a str>,
    pub service: Option<&'a str>,
    /// Only deployments in one of these statuses (all when empty).
    pub statuses: &'a [DeploymentStatus],
}

/// Which instances to list.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter<'a> {
    pub app: Option<&'a str>,
    pub service: Option<&'a str>,
    pub deployment: Option<&'a str>,
    /// Include `stopped` and `failed` instances.
    pub include_final: bool,
}

/// Which events to list: the newest `limit` matching ones, oldest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter<'a> {
    pub app: Option<&'a str>,
    pub service: Option<&'a str>,
    /// Only events after this sequence number.
    pub after: Option<i64>,
    /// At most this many (the newest); 100 when 0.
    pub limit: usize,
}

/// A sandbox to record, as the control plane resolved it.
#[derive(Debug, Clone)]
pub struct NewSandboxRecord {
    pub id: String,
    pub template: String,
    pub image: String,
    pub isolation: Isolation,
    pub resources: SandboxResources,
    pub metadata: BTreeMap<String, String>,
    pub allow_out: Vec<String>,
    pub end_at: DateTime<Utc>,
    /// Sealed at rest with the secrets' key, as are `env`.
    pub envd_access_token: String,
    pub env: BTreeMap<String, String>,
}

/// An inference key to record, as the control plane made it. The secret
/// itself is never stored, only its SHA-256.
#[derive(Debug, Clone)]
pub struct NewKeyRecord {
    /// `key_` and 16 hex digits.
    pub id: String,
    pub name: String,
    /// The secret's first characters.
    pub hint: String,
    /// SHA-256 of the whole secret.
    pub hash: [u8; 32],
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An inference key with the SHA-256 of its secret, which the gateway
/// matches presented secrets against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: InferenceKey,
    pub hash: [u8; 32],
}

/// Which request records to sum up in [`Store::usage`].
#[derive(Debug, Clone, Default)]
pub struct UsageFilter<'a> {
    /// A key's id or name.
    pub key: Option<&'a str>,
    pub model: Option<&'a str>,
    /// Only requests that arrived at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// Which request records to list in [`Store::list_requests`]: those
/// after the `after` cursor, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter<'a> {
    /// Arrived at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Arrived before this time.
    pub until: Option<DateTime<Utc>>,
    /// A key's id or name.
    pub key: Option<&'a str>,
    pub model: Option<&'a str>,
    /// Only records with a larger sequence number (the cursor).
    pub after: Option<i64>,
    /// At most this many; 1000 when 0.
    pub limit: usize,
}

/// A request record and its sequence number (the export cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    pub seq: i64,
    pub record: RequestRecord,
}

/// How many events are kept per service; older ones are pruned.
pub const EVENTS_KEPT_PER_SERVICE: i64 = 1000;

/// The state Bora keeps. See the crate docs.
pub trait Store: Send + Sync + 'static {
    fn list_apps(&self) -> Result<Vec<App>>;
    fn get_app(&self, name: &str) -> Result<App>;
    /// Deletes the app with its services, deployments and instance records.
    /// The caller stops the instances first.
    fn delete_app(&self, name: &str) -> Result<()>;

    fn list_services(&self, app: Option<&str>) -> Result<Vec<Service>>;
    fn get_service(&self, app: &str, name: &str) -> Result<Service>;
    fn delete_service(&self, app: &str, name: &str) -> Result<()>;
    /// Records the autoscaler's latest decision for a service.
    fn set_service_scaling(&self, app: &str, name: &str, status: &ScalingStatus) -> Result<()>;

    /// Records an event of a service, pruning the service's oldest beyond
    /// [`EVENTS_KEPT_PER_SERVICE`].
    fn record_event(&self, app: &str, service: &str, kind: &str, message: &str) -> Result<Event>;
    fn list_events(&self, filter: &EventFilter<'_>) -> Result<Vec<Event>>;

    /// Records a new deployment of `spec` in `app`, creating the app and the
    /// service if they do not exist, with the next version number, and makes
    /// it the service's latest deployment.
    fn create_deployment(&self, app: &str, spec: &ServiceSpec) -> Result<Deployment>;
    fn get_deployment(&self, id: &str) -> Result<Deployment>;
    /// Newest first.
    fn list_deployments(&self, filter: &DeploymentFilter<'_>) -> Result<Vec<Deployment>>;
    fn set_deployment_status(
        &self,
        id: &str,
        status: DeploymentStatus,
        reason: Option<&str>,
    ) -> Result<Deployment>;
    fn set_deployment_image(&self, id: &str, image_digest: &str) -> Result<Deployment>;
    /// Records the digest (`sha256:…`) of a model deployment's model file.
    fn set_deployment_model(&self, id: &str, model_digest: &str) -> Result<Deployment>;
    /// Makes `deployment` the one its service routes to.
    fn set_active_deployment(&self, deployment: &str) -> Result<Service>;
    fn delete_deployment(&self, id: &str) -> Result<()>;

    /// Records a new `pending` instance of `deployment` on `node`.
    fn create_instance(&self, deployment: &str, node: &str, reason: &str) -> Result<Instance>;
    /// Moves an instance to `to`, recording the transition and its reason.
    /// Refuses transitions the state machine does not allow.
    fn transition_instance(&self, id: &str, to: InstanceState, reason: &str) -> Result<Instance>;
    fn set_instance_ip(&self, id: &str, ip: Option<&str>) -> Result<()>;
    fn increment_instance_restarts(&self, id: &str, reason: &str) -> Result<Instance>;
    /// One instance, with its history.
    fn get_instance(&self, id: &str) -> Result<Instance>;
    /// Oldest first, without history.
    fn list_instances(&self, filter: &InstanceFilter<'_>) -> Result<Vec<Instance>>;
    fn delete_instance(&self, id: &str) -> Result<()>;

    /// Records a new sandbox in state `starting`.
    fn create_sandbox(&self, new: &NewSandboxRecord) -> Result<Sandbox>;
    fn get_sandbox(&self, id: &str) -> Result<Sandbox>;
    /// Oldest first; with `include_final`, killed, timed-out and failed
    /// ones too.
    fn list_sandboxes(&self, include_final: bool) -> Result<Vec<Sandbox>>;
    fn set_sandbox_state(&self, id: &str, state: SandboxState, reason: &str) -> Result<Sandbox>;
    fn set_sandbox_ip(&self, id: &str, ip: Option<&str>) -> Result<()>;
    fn set_sandbox_end_at(&self, id: &str, end_at: DateTime<Utc>) -> Result<Sandbox>;
    /// The environment variables a sandbox was created with (decrypted).
    fn sandbox_env(&self, id: &str) -> Result<BTreeMap<String, String>>;
    /// Forgets sandboxes that ended before `before`.
    fn prune_sandboxes(&self, before: DateTime<Utc>) -> Result<usize>;

    fn create_secret(&self, name: &str, value: &str) -> Result<Secret>;
    fn update_secret(&self, name: &str, value: &str) -> Result<Secret>;
    fn list_secrets(&self) -> Result<Vec<Secret>>;
    /// The decrypted value; never log it.
    fn secret_value(&self, name: &str) -> Result<String>;
    fn delete_secret(&self, name: &str) -> Result<()>;

    /// Records a new inference key. A name is unique among keys that are
    /// not revoked: [`StoreError::AlreadyExists`] names the key otherwise.
    fn create_key(&self, new: &NewKeyRecord) -> Result<InferenceKey>;
    /// Oldest first; with `include_revoked`, revoked keys too.
    fn list_keys(&self, include_revoked: bool) -> Result<Vec<StoredKey>>;
    /// Revokes the key with this id, or the live key with this name.
    /// Revoking a revoked key (by id) changes nothing and returns it.
    fn revoke_key(&self, id_or_name: &str) -> Result<InferenceKey>;

    /// Appends request records, all in one transaction.
    fn insert_requests(&self, records: &[RequestRecord]) -> Result<()>;
    /// Requests, errors and tokens per key and model, ordered by key name,
    /// key id and model.
    fn usage(&self, filter: &UsageFilter<'_>) -> Result<Vec<UsageRow>>;
    /// Request records in the order they were written.
    fn list_requests(&self, filter: &RequestFilter<'_>) -> Result<Vec<StoredRequest>>;
}
