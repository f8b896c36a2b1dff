//! The `bora` command-line client: the commands that talk to Bora's REST API
//! (`deploy`, `apps`, `services`, `deployments`, `instances`, `logs`, `models`,
//! `secrets`, `events`, `sandboxes`, `keys`, `usage`, `audit`).
//!
//! The `bora` binary owns the top-level parser (it also has `bora server`);
//! it flattens [`GlobalOpts`] and [`ClientCommand`] into it and calls [`run`]:
//!
//! ```no_run
//! use clap::{Parser, Subcommand};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     global: bora_cli::GlobalOpts,
//!     #[command(subcommand)]
//!     command: Command,
//! }
//!
//! #[derive(Subcommand)]
//! enum Command {
//!     /// Run the server.
//!     Server,
//!     #[command(flatten)]
//!     Client(bora_cli::ClientCommand),
//! }
//!
//! # async fn main_() -> std::process::ExitCode {
//! let cli = Cli::parse();
//! match cli.command {
//!     Command::Server => todo!(),
//!     Command::Client(cmd) => bora_cli::finish(bora_cli::run(cli.global, cmd).await),
//! }
//! # }
//! ```
//!
//! The global options are `global = true`, so they may come after the
//! subcommand (`bora apps list -o json`); a `server` subcommand should reuse
//! [`GlobalOpts::data_dir`] rather than declare its own `--data-dir`.
//!
//! Layout: [`discovery`] finds the server and token, [`client`] speaks HTTP,
//! [`output`] renders tables/JSON/YAML, [`refs`] resolves service and ID
//! arguments, and `commands/` has one file per command group. Commands write
//! through a [`Terminal`], so tests capture everything they print.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub mod client;
mod commands;
pub mod discovery;
pub mod error;
pub mod output;
pub mod refs;
pub mod terminal;

pub use commands::apps::AppsCommand;
pub use commands::audit::{AuditCommand, ExportArgs};
pub use commands::deploy::DeployArgs;
pub use commands::deployments::DeploymentsCommand;
pub use commands::events::EventsArgs;
pub use commands::instances::InstancesCommand;
pub use commands::keys::{CreateKeyArgs, KeysCommand};
pub use commands::logs::LogsArgs;
pub use commands::models::{ModelDeployArgs, ModelsCommand};
pub use commands::sandboxes::SandboxesCommand;
pub use commands::secrets::SecretsCommand;
pub use commands::services::ServicesCommand;
pub use commands::usage::UsageArgs;
pub use error::CliError;
pub use output::OutputFormat;
pub use terminal::{Captured, Terminal};

/// The default data dir of a local server.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bora";

/// Options every client command takes, before or after the subcommand.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GlobalOpts {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// The Bora API's base URL; without it, the local server is found
    /// through --data-dir.
    #[arg(long, global = true, env = "BORA_URL", value_name = "URL")]
    pub url: Option<String>,

    /// The API token; required with --url, else read from DIR/admin.token.
    #[arg(
        long,
        global = true,
        env = "BORA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// The local server's data dir, holding api.addr and admin.token.
    #[arg(long, global = true, env = "BORA_DATA_DIR", default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// The client's commands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ClientCommand {
    /// Deploy the services of a bora.yaml.
    Deploy(DeployArgs),
    /// List, show and delete apps.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// List, show and delete services.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// List, show and delete deployments.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// List, show and delete instances.
    #[command(subcommand)]
    Instances(InstancesCommand),
    /// Show (and follow) the logs of a service's instances.
    Logs(LogsArgs),
    /// Deploy and list models (`type: model` services), served through the
    /// inference gateway.
    #[command(subcommand, visible_alias = "model")]
    Models(ModelsCommand),
    /// Create, update, list and delete secrets.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Scaling decisions, sleeps and wake-ups.
    Events(EventsArgs),
    /// Create sandboxes for AI agents, run commands and copy files in them.
    #[command(subcommand, visible_aliases = ["sandbox", "sbx"])]
    Sandboxes(SandboxesCommand),
    /// Create, list and revoke inference keys (for the gateway's
    /// OpenAI-compatible API).
    #[command(subcommand, visible_alias = "key")]
    Keys(KeysCommand),
    /// Requests, errors and tokens per inference key and model.
    Usage(UsageArgs),
    /// Export the inference gateway's request records.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `bora <client command>` on its own: the global options and one command.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "bora", version, about = "Bora's command-line client")]
pub struct ClientArgs {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Runs one client command on the process's standard streams.
///
/// Returns the exit code for outcomes that are not errors; errors carry
/// their own ([`CliError::exit_code`]).
pub async fn run(global: GlobalOpts, command: ClientCommand) -> Result<ExitCode, CliError> {
    run_with(global, command, &mut Terminal::std()).await
}

/// Like [`run`], on the given streams (tests pass [`Terminal::captured`]).
pub async fn run_with(
    global: GlobalOpts,
    command: ClientCommand,
    terminal: &mut Terminal,
) -> Result<ExitCode, CliError> {
    let result = commands::run(global, command, terminal).await;
    let _ = terminal.out.flush();
    match result {
        // `bora logs | head`: the reader left, which is no error.
        Err(e) if e.is_broken_pipe() => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// Turns [`run`]'s result into the process's exit code, printing an error
/// as `error: <message>` on stderr.
pub fn finish(result: Result<ExitCode, CliError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, Subcommand};

    use super::*;

    #[test]
    fn the_parser_is_well_formed() {
        ClientArgs::command().debug_assert();
    }

    #[test]
    fn timeout_needs_wait() {
        let err = ClientArgs::try_parse_from(["bora", "deploy", "--timeout", "5m"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let args =
            ClientArgs::try_parse_from(["bora", "deploy", "--wait", "--timeout", "5m"]).unwrap();
        let ClientCommand::Deploy(deploy) = args.command else {
            panic!("not deploy")
        };
        assert_eq!(deploy.timeout, bora_api::Duration::from_secs(300));
        assert_eq!(deploy.file, PathBuf::from("bora.yaml"));
        let err =
            ClientArgs::try_parse_from(["bora", "deploy", "--wait", "--timeout", "5"]).unwrap_err();
        assert!(
            err.to_string().contains("expected a number and a unit"),
            "{err}"
        );
    }

    /// The shape the `bora` binary uses: its own subcommands next to ours.
    #[derive(Parser)]
    struct BinaryCli {
        #[command(flatten)]
        global: GlobalOpts,
        #[command(subcommand)]
        command: BinaryCommand,
    }

    #[derive(Subcommand)]
    enum BinaryCommand {
        Server {
            #[arg(long)]
            listen: Option<String>,
        },
        #[command(hide = true)]
        Shim,
        #[command(flatten)]
        Client(ClientCommand),
    }

    #[test]
    fn composes_into_the_binarys_parser() {
        BinaryCli::command().debug_assert();
        let cli = BinaryCli::try_parse_from([
            "bora",
            "apps",
            "get",
            "hello",
            "-o",
            "json",
            "--url",
            "http://h:1",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.url.as_deref(), Some("http://h:1"));
        assert!(matches!(
            cli.command,
            BinaryCommand::Client(ClientCommand::Apps(AppsCommand::Get { ref name })) if name == "hello"
        ));
        let cli = BinaryCli::try_parse_from(["bora", "server", "--data-dir", "/tmp/x"]).unwrap();
        assert!(matches!(cli.command, BinaryCommand::Server { .. }));
        assert_eq!(cli.global.data_dir, PathBuf::from("/tmp/x"));
    }
}
