//! Sandboxes: create → first command latency with and without a warm
//! pool, sandboxes per second and idle memory, under gVisor and runc,
//! against `runsc run`/`runc run` of the same template bundle.
//!
//! `cargo bench -p bora --bench sandbox [-- --sandboxes 50]`, as root with
//! `scripts/install-deps.sh` and `scripts/build-envd.sh` run. What it
//! measures and the results: `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{Args, Machine, sandbox};

fn main() {
    let args = Args::from_env("sandbox", sandbox::SandboxParams::FLAGS);
    let params = sandbox::SandboxParams::full(&args);
    println!("{}", Machine::detect());
    let report = sandbox::run(&params);
    println!("\n{report}");
}
