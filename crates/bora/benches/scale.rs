//! Scale-out reaction: a step from idle to a load that needs 4 instances,
//! against the same load on 4 warm instances.
//!
//! `cargo bench -p bora --bench scale [-- --duration 30s --clients 8]`, as
//! root with `scripts/install-deps.sh` run. What it measures and the
//! results: `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{Args, Machine, scale};

fn main() {
    let args = Args::from_env("scale", scale::ScaleParams::FLAGS);
    let params = scale::ScaleParams::full(&args);
    println!("{}", Machine::detect());
    let report = scale::run(&params);
    println!("\n{report}");
}
