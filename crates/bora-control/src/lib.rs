//! Bora's control plane.
//!
//! - [`controller`]: the one owner of state changes. It turns a deployment
//!   into healthy instances ([`rollout`]), keeps each instance alive
//!   ([`supervisor`]), shifts traffic in the router and drains what is
//!   replaced, and re-adopts running instances after a restart.
//! - [`models`]: model services (`type: model`): the model file's checks
//!   and digest, how a replica runs the built-in engine, the gateway's
//!   routes, `bora models list`.
//! - [`api`]: the REST API under `/v1/`, with its OpenAPI document.
//! - [`envd`]: the client for a sandbox's agent (`bora-envd`): health,
//!   init, running commands, reading and writing files.
//! - [`keys`]: inference keys (created, listed, revoked, handed to the
//!   router's gateway), usage and the audit trail.
//! - [`records`]: the gateway's recorder, writing request records to the
//!   store in batches off the data path.
//! - [`server`]: `bora server` — store, node agent, router, controller and API
//!   in one process.

pub mod api;
pub mod controller;
mod e2b;
pub mod envd;
pub mod error;
pub mod keys;
mod metrics;
pub mod models;
pub mod pool;
pub mod records;
pub mod rollout;
pub mod sandboxes;
mod scaler;
pub mod server;
pub mod supervisor;
mod wake;

pub use error::ControlError;
pub use server::{ServerConfig, ServerHandle, start};
