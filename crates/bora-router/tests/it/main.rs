//! Integration tests: real TCP on loopback, upstreams on 127.0.0.2 and up.

mod harness;

mod errors;
mod gateway;
mod headers;
mod lifecycle;
mod metrics;
mod passthrough;
mod routing;
mod streaming;
mod upgrade;
mod wake;
