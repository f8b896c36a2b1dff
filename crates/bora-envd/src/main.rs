//! `bora-envd`: the binary Bora starts as PID 1 of every sandbox. All logic
//! lives in the library; this reads the command line and the token, and
//! turns SIGTERM/SIGINT into a graceful shutdown.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// The in-sandbox agent, compatible with E2B's envd protocol.
#[derive(Debug, Parser)]
#[command(name = "bora-envd", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:49983")]
    listen: SocketAddr,
    /// Read the access token from this file (instead of
    /// BORA_ENVD_ACCESS_TOKEN).
    #[arg(long, value_name = "PATH")]
    access_token_file: Option<PathBuf>,
    /// The user requests act as unless they name one.
    #[arg(long, default_value = "user")]
    default_user: String,
    /// Reap orphaned processes even when not PID 1 (becomes a child
    /// subreaper). Always on as PID 1.
    #[arg(long)]
    reap_orphans: bool,
    /// Seconds processes get between SIGTERM and SIGKILL at shutdown.
    #[arg(long, default_value_t = 5)]
    shutdown_grace: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("bora_envd=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let access_token = match &args.access_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the access token from {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("BORA_ENVD_ACCESS_TOKEN").ok(),
    }
    .filter(|t| !t.is_empty());

    let config = bora_envd::Config {
        access_token,
        default_user: args.default_user,
        reap_orphans: args.reap_orphans || std::process::id() == 1,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        ..Default::default()
    };

    // Two workers: envd is mostly waiting on pipes and sockets, and should
    // leave the sandbox's CPUs to the sandbox.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        bora_envd::serve(config, listener, shutdown)
            .await
            .context("serving envd")
    })
}
