//! The LLM engine against llama.cpp's `llama-server` on the same GGUF file
//! and the same thread count: single-stream decode tokens/s, prompt
//! processing tokens/s of a 512-token prompt, and aggregate output tokens/s
//! of 8 concurrent streams.
//!
//! `cargo bench -p bora --bench engine [-- --runs 5 --streams 8]`, with
//! `scripts/fetch-models.sh` and `scripts/install-llamacpp.sh` (which this
//! runs itself when `--llama-server` is not given; the first time it builds
//! llama.cpp, ~10-15 min). What it measures and the results:
//! `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{Args, Machine, engine};

fn main() {
    let args = Args::from_env("engine", engine::EngineParams::FLAGS);
    let params = engine::EngineParams::full(&args);
    println!("{}", Machine::detect());
    let report = engine::run(&params);
    println!("\n{report}");
}
