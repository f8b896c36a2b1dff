//! Integration tests: envd served on loopback, driven over HTTP exactly as
//! the E2B SDKs drive it (Connect JSON and binary protobuf, `/files`).

mod harness;

mod auth;
mod files;
mod filesystem;
mod lifecycle;
mod process;
mod sdk;
