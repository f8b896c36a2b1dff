//! Bora's resource types: the one vocabulary shared by `bora.yaml`, the REST
//! API, the store and the CLI.
//!
//! - [`spec`]: what a user writes. A [`spec::ServiceSpec`] is both a service in
//!   `bora.yaml` and the deployment definition in the API, so the file, the API
//!   and the CLI never disagree.
//! - [`resources`]: what Bora reports back (apps, services, deployments,
//!   instances, secrets), with their state machines.
//! - [`inference`]: the inference gateway's keys and request records
//!   (usage and audit).
//! - [`sandbox`]: sandboxes for AI agents, their requests and states.
//! - [`duration`]: durations written as `30s`, `5m`.
//! - [`names`]: the rules for names (DNS labels), as pure functions.
//! - [`error`]: the error body every API error uses.

pub mod duration;
pub mod error;
pub mod inference;
pub mod names;
pub mod resources;
pub mod sandbox;
pub mod spec;

pub use duration::Duration;
pub use error::{ApiErrorBody, ErrorCode};
pub use inference::*;
pub use resources::*;
pub use sandbox::*;
pub use spec::*;
