//! Router overhead: the same nginx backend reached directly, through nginx
//! and through Bora's router, under the same `wrk` load.
//!
//! `cargo bench -p bora --bench router [-- --duration 10s --rounds 2
//! --connections 64]`. Needs nginx and wrk (`scripts/install-deps.sh`).
//! What it measures and the results: `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{Args, Machine, router};

fn main() {
    let args = Args::from_env("router", router::RouterParams::FLAGS);
    let params = router::RouterParams::full(&args);
    println!("{}", Machine::detect());
    let report = router::run(&params);
    println!("\n{report}");
}
