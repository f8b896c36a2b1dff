//! `bora-node-shim`: the node's shim on its own, speaking the command line
//! `bora shim` speaks (`shim --dir D [--max-log-bytes N] [--created PIDFILE]
//! -- ARGV…`). The `bora` binary is the shim in production; this one lets
//! the node agent run without it, as in this crate's tests.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("shim") {
        return usage();
    }
    let mut dir: Option<PathBuf> = None;
    let mut created: Option<PathBuf> = None;
    let mut max_log_bytes: u64 = 10 * 1024 * 1024;
    loop {
        match (args.next().as_deref(), args.next()) {
            (Some("--"), value) => {
                let argv: Vec<String> = value.into_iter().chain(args).collect();
                let Some(dir) = dir else { return usage() };
                let code = bora_node::shim::run(&dir, &argv, max_log_bytes, created.as_deref());
                return ExitCode::from(code as u8);
            }
            (Some("--dir"), Some(v)) => dir = Some(PathBuf::from(v)),
            (Some("--created"), Some(v)) => created = Some(PathBuf::from(v)),
            (Some("--max-log-bytes"), Some(v)) => match v.parse() {
                Ok(n) => max_log_bytes = n,
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: bora-node-shim shim --dir DIR [--max-log-bytes N] [--created PIDFILE] -- COMMAND [ARG]..."
    );
    ExitCode::from(2)
}
