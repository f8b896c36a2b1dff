//! `bora`: the server, the per-instance shim and the CLI in one binary. All
//! logic lives in the libraries; this file only parses arguments and
//! dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod template;

#[derive(Parser)]
#[command(
    name = "bora",
    version,
    about = "Bora: a self-hostable serverless cloud for AI"
)]
struct Cli {
    #[command(flatten)]
    global: bora_cli::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane, node agent and router on this machine.
    Server(ServerArgs),
    /// Run the built-in LLM inference engine (it stops on Ctrl-C or SIGTERM).
    #[command(subcommand)]
    Engine(EngineCommand),
    /// Stop and remove every instance and sandbox of a data directory (with its server stopped).
    Reset(ResetArgs),
    /// Build sandbox templates into this node's image store.
    #[command(subcommand)]
    Templates(template::TemplatesCommand),
    /// Supervise one instance (started by the node agent, not by hand).
    #[command(hide = true)]
    Shim(ShimArgs),
    #[command(flatten)]
    Client(bora_cli::ClientCommand),
}

#[derive(Args)]
struct ServerArgs {
    /// API listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    api_listen: SocketAddr,
    /// Router listen address: where services are reached.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// Services are reached at <service>.<app>.<domain>.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// A registry (host[:port]) to reach over plain HTTP; loopback registries always are.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// OCI runtime for `isolation: container`.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// OCI runtime for `isolation: gvisor`.
    #[arg(long, default_value = "runsc")]
    runsc: PathBuf,
    /// Linux bridge for instances.
    #[arg(long, default_value = "bora0")]
    bridge: String,
    /// Address range for instances.
    #[arg(long, default_value = "10.88.0.0/16")]
    subnet: String,
    /// Directory of the CNI plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// Longest a request waits for a sleeping service to wake before it
    /// gets 503 with Retry-After.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold_timeout: std::time::Duration,
    /// Most requests held per sleeping service; more get 503 at once.
    #[arg(long, default_value_t = 1000)]
    max_held: usize,
    /// The static agent every sandbox runs (`scripts/build-envd.sh` builds
    /// it); by default `bora-envd` beside this binary, then
    /// `../envd/bora-envd` (a source checkout), then /usr/lib/bora/bora-envd.
    #[arg(long, env = "BORA_ENVD_BINARY")]
    envd_binary: Option<PathBuf>,
    /// Keep N sandboxes of a template started and idle, so creating one
    /// takes one from the pool: TEMPLATE=N or TEMPLATE=N:ISOLATION
    /// (gvisor, the default, or container); repeatable. Pooled sandboxes
    /// serve creates with default resources and no outbound allow-list.
    #[arg(long = "sandbox-pool", value_name = "TEMPLATE=N[:ISOLATION]")]
    sandbox_pools: Vec<bora_control::pool::PoolSpec>,
    /// Keep the prompt and the completion in the inference gateway's
    /// request records (`bora audit export` shows them). Off by default:
    /// zero retention, the records hold only who asked which model, when,
    /// with what outcome and how many tokens.
    #[arg(long)]
    retain_content: bool,
}

/// Where the sandbox agent is, when `--envd-binary` does not say.
fn find_envd(exe: &std::path::Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(std::path::Path::new("."));
    [
        dir.join("bora-envd"),
        dir.join("../envd/bora-envd"),
        PathBuf::from("/usr/lib/bora/bora-envd"),
    ]
    .into_iter()
    .find(|path| path.is_file())
    .unwrap_or_else(|| PathBuf::from("/usr/lib/bora/bora-envd"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<bora_api::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum EngineCommand {
    /// Serve a GGUF model (and optionally a BERT embedding model) with an
    /// OpenAI-compatible API.
    Serve(EngineServeArgs),
}

#[derive(Args)]
struct EngineServeArgs {
    /// The chat model: a GGUF file (Llama architecture).
    #[arg(long)]
    model: PathBuf,
    /// Its name in the API (default: the file name without extension).
    #[arg(long)]
    name: Option<String>,
    /// Listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// A BERT embedding model directory (model.safetensors, tokenizer.json, config.json).
    #[arg(long)]
    embedding_model: Option<PathBuf>,
    /// Most requests generating at once in the running batch (vLLM's
    /// --max-num-seqs); more wait in arrival order.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_num_seqs: u32,
    /// MiB of attention keys and values the running requests may reserve
    /// together (each reserves its prompt plus max_tokens).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    kv_cache_mib: u64,
    /// MiB the prefix cache may keep of earlier prompts' keys and values, to
    /// reuse for prompts that start the same way (0 turns it off).
    #[arg(long, default_value_t = 1024)]
    prefix_cache_mib: u64,
}

#[derive(Args)]
struct ResetArgs {
    /// The bridge the data directory's instances were attached to.
    #[arg(long, default_value = "bora0")]
    bridge: String,
    /// The instances' address range.
    #[arg(long, default_value = "10.88.0.0/16")]
    subnet: String,
}

#[derive(Args)]
struct ShimArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    max_log_bytes: u64,
    /// The command is a runtime's `create`: wait for the container process
    /// whose pid it writes to this file.
    #[arg(long)]
    created: Option<PathBuf>,
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The shim stays small: no async runtime, no logging setup.
        Command::Shim(args) => ExitCode::from(bora_node::shim::run(
            &args.dir,
            &args.argv,
            args.max_log_bytes,
            args.created.as_deref(),
        ) as u8),
        Command::Server(args) => {
            init_tracing();
            match runtime().block_on(server(cli.global.data_dir, args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Engine(EngineCommand::Serve(args)) => {
            init_tracing();
            let mut opts = bora_engine::ServeOptions::new(args.model, args.listen);
            opts.name = args.name;
            opts.embedding_model = args.embedding_model;
            opts.engine.max_running = args.max_num_seqs as usize;
            opts.engine.kv_cache_bytes = (args.kv_cache_mib as usize).saturating_mul(1 << 20);
            opts.engine.prefix_cache_bytes =
                (args.prefix_cache_mib as usize).saturating_mul(1 << 20);
            match runtime().block_on(bora_engine::serve(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reset(args) => match runtime().block_on(reset(cli.global.data_dir, args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Templates(cmd) => template::main(&cli.global.data_dir, cmd),
        Command::Client(cmd) => {
            bora_cli::finish(runtime().block_on(bora_cli::run(cli.global, cmd)))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime")
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BORA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: an engine in a container writes to its
    // logs, whose last lines become an instance's reason.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

async fn server(data_dir: PathBuf, args: ServerArgs) -> anyhow::Result<()> {
    let shim_exe = std::env::current_exe().context("finding the bora binary for the shim")?;
    let config = bora_control::ServerConfig {
        data_dir,
        api_listen: args.api_listen,
        http_listen: args.http_listen,
        domain: args.domain,
        insecure_registries: args.insecure_registries,
        runtimes: bora_node::runtime::RuntimeBinaries {
            container: args.runc,
            gvisor: args.runsc,
        },
        network: bora_node::network::NetworkConfig {
            bridge: args.bridge,
            subnet: args.subnet,
            cni_bin_dir: args.cni_bin_dir,
            ..Default::default()
        },
        envd_binary: args.envd_binary.unwrap_or_else(|| find_envd(&shim_exe)),
        shim_exe,
        hold_timeout: args.hold_timeout,
        max_held: args.max_held,
        sandbox_pools: args.sandbox_pools,
        retain_content: args.retain_content,
    };
    let handle = bora_control::start(config).await?;
    println!("bora: API listening on http://{}", handle.api_addr);
    println!("bora: router listening on http://{}", handle.http_addr);
    println!("bora: ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("bora: stopping; instances keep running and are re-adopted at the next start");
    handle.shutdown();
    handle.flush_records().await;
    // Warm pool sandboxes are nobody's yet: they go now, not at the next start.
    handle.controller.drain_pools().await;
    Ok(())
}

/// Stops and removes every instance and sandbox a data directory's server started:
/// processes, mounts, network namespaces and addresses.
async fn reset(data_dir: std::path::PathBuf, args: ResetArgs) -> anyhow::Result<()> {
    let lock = data_dir.join("server.lock");
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&lock)
        && nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    {
        anyhow::bail!(
            "a bora server is running on {}: stop it first",
            data_dir.display()
        );
    }
    let mut config = bora_node::NodeConfig::new(&data_dir, std::env::current_exe()?);
    config.network.bridge = args.bridge;
    config.network.subnet = args.subnet;
    let node = bora_node::Node::new(config)?;
    for instance in node.recover() {
        node.stop(&instance.id, std::time::Duration::from_secs(5))
            .await
            .with_context(|| format!("stopping instance {}", instance.id))?;
        println!("stopped instance {}", instance.id);
    }
    for sandbox in node.recover_sandboxes() {
        node.stop_sandbox(&sandbox.id)
            .await
            .with_context(|| format!("stopping sandbox {}", sandbox.id))?;
        println!("stopped sandbox {}", sandbox.id);
    }
    Ok(())
}
