//! Bora's control plane.
//!
//! - [`controller`]: the one owner of state changes. It turns a deployment
//!   into healthy instances ([`rollout`]), keeps each instance alive
//!   ([`supervisor`]), shifts traffic in the router and drains what is
//!   replaced, and re-adopts running instances after a restart.
//! - [`api`]: the REST API under `/v1/`, with its OpenAPI document.
//! - [`envd`]: the client for a sandbox's agent (`bora-envd`): health,
//!   init, running commands, reading and writing files.
//! - [`server`]: `bora server` — store, node agent, router, controller and API
//!   in one process.

pub mod api;
pub mod controller;
mod e2b;
pub mod envd;
pub mod error;
mod metrics;
pub mod pool;
pub mod rollout;
pub mod sandboxes;
mod scaler;
pub mod server;
pub mod supervisor;
mod wake;

pub use error::ControlError;
pub use server::{ServerConfig, ServerHandle, start};
