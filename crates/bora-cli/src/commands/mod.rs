//! One module per command group; each has its clap arguments and a `run`.
//! [`Ctx`] is what they share: the output format, the streams, and the way
//! to reach the server.

use std::io::Write;
use std::process::ExitCode;

use bora_api::List;
use chrono::Utc;

use crate::client::ApiClient;
use crate::discovery::find_target;
use crate::error::CliError;
use crate::output::{self, Fields, OutputFormat, Row};
use crate::terminal::Terminal;
use crate::{ClientCommand, GlobalOpts};

pub mod apps;
pub mod audit;
pub mod deploy;
pub mod deployments;
pub mod events;
pub mod instances;
pub mod keys;
pub mod logs;
pub mod models;
pub mod sandboxes;
pub mod secrets;
pub mod services;
pub mod usage;

/// What every command gets.
pub(crate) struct Ctx<'t> {
    pub global: GlobalOpts,
    pub term: &'t mut Terminal,
}

impl Ctx<'_> {
    pub fn format(&self) -> OutputFormat {
        self.global.output
    }

    /// Finds the server (see [`crate::discovery`]) and makes a client for it.
    /// Commands call this after checking their own input, so bad input is
    /// reported even without a server.
    pub fn client(&self) -> Result<ApiClient, CliError> {
        let target = find_target(
            self.global.url.as_deref(),
            self.global.token.as_deref(),
            &self.global.data_dir,
        )?;
        ApiClient::new(target)
    }

    /// Writes a result to stdout.
    pub fn print(&mut self, text: &str) -> Result<(), CliError> {
        self.term.out.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Writes a line of progress or a note to stderr.
    pub fn note(&mut self, line: &str) -> Result<(), CliError> {
        writeln!(self.term.err, "{line}")?;
        self.term.err.flush()?;
        Ok(())
    }

    /// Prints a list in the chosen format; an empty table prints `empty` on
    /// stderr instead, so stdout stays empty for scripts.
    pub fn print_list<T: Row>(&mut self, list: &List<T>, empty: &str) -> Result<(), CliError> {
        if self.format() == OutputFormat::Table && list.items.is_empty() {
            return self.note(empty);
        }
        let text = output::render_list(self.format(), list, Utc::now())?;
        self.print(&text)
    }

    /// Prints one resource in the chosen format.
    pub fn print_one<T: Fields>(&mut self, item: &T) -> Result<(), CliError> {
        let text = output::render_one(self.format(), item, Utc::now())?;
        self.print(&text)
    }
}

/// Dispatches a command.
pub(crate) async fn run(
    global: GlobalOpts,
    command: ClientCommand,
    term: &mut Terminal,
) -> Result<ExitCode, CliError> {
    let mut ctx = Ctx { global, term };
    match command {
        ClientCommand::Deploy(args) => deploy::run(&mut ctx, args).await,
        ClientCommand::Apps(cmd) => apps::run(&mut ctx, cmd).await,
        ClientCommand::Services(cmd) => services::run(&mut ctx, cmd).await,
        ClientCommand::Deployments(cmd) => deployments::run(&mut ctx, cmd).await,
        ClientCommand::Instances(cmd) => instances::run(&mut ctx, cmd).await,
        ClientCommand::Logs(args) => logs::run(&mut ctx, args).await,
        ClientCommand::Models(cmd) => models::run(&mut ctx, cmd).await,
        ClientCommand::Secrets(cmd) => secrets::run(&mut ctx, cmd).await,
        ClientCommand::Events(args) => events::run(&mut ctx, args).await,
        ClientCommand::Sandboxes(cmd) => sandboxes::run(&mut ctx, cmd).await,
        ClientCommand::Keys(cmd) => keys::run(&mut ctx, cmd).await,
        ClientCommand::Usage(args) => usage::run(&mut ctx, args).await,
        ClientCommand::Audit(cmd) => audit::run(&mut ctx, cmd).await,
    }
}
