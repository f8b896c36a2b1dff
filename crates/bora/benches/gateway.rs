//! The inference gateway: overhead against the same upstream reached
//! directly and through LiteLLM's proxy (latency added on one connection
//! to the real engine; requests/s at saturation with a stand-in upstream
//! that costs nothing), and prefix affinity against plain least-outstanding
//! routing across engine replicas (time to first token, p50 and p90).
//!
//! `cargo bench -p bora --bench gateway [-- --replicas 4 --groups 16]`,
//! with `scripts/fetch-models.sh` and `scripts/install-litellm.sh` (which
//! this runs itself when `--litellm` is not given). What it measures and
//! the results: `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{Args, Machine, gateway};

fn main() {
    let args = Args::from_env("gateway", gateway::GatewayParams::FLAGS);
    let params = gateway::GatewayParams::full(&args);
    println!("{}", Machine::detect());
    let report = gateway::run(&params);
    println!("\n{report}");
}
