//! Wake-up latency of a sleeping service (light and deep sleep) against
//! the floor of a bare `runc run` of the same image.
//!
//! `cargo bench -p bora --bench wake [-- --wakeups 30]`, as root with
//! `scripts/install-deps.sh` run. What it measures and the results:
//! `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{Args, Machine, wake};

fn main() {
    let args = Args::from_env("wake", wake::WakeParams::FLAGS);
    let params = wake::WakeParams::full(&args);
    println!("{}", Machine::detect());
    let report = wake::run(&params);
    println!("\n{report}");
}
