//! `bora secrets create|update|list|delete`. A secret's value is never
//! printed; by default it is read from standard input (hidden when typed).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::OutputFormat;

/// `bora secrets …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum SecretsCommand {
    /// Create a secret; its value comes from standard input unless
    /// --value or --from-file is given.
    Create {
        /// The secret's name (letters, digits, '-', '_', '.').
        name: String,
        #[command(flatten)]
        value: ValueSource,
    },
    /// Replace a secret's value (instances see it when they next start).
    #[command(visible_alias = "set")]
    Update {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        value: ValueSource,
    },
    /// List secrets (names only, never values).
    #[command(visible_alias = "ls")]
    List,
    /// Delete a secret.
    #[command(visible_alias = "rm")]
    Delete {
        /// The secret's name.
        name: String,
    },
}

/// Where a secret's value comes from; standard input when neither is given.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ValueSource {
    /// The value itself (note: it stays in your shell's history).
    #[arg(long, value_name = "VALUE", conflicts_with = "from_file")]
    pub value: Option<String>,
    /// Read the value from this file, byte for byte.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: SecretsCommand) -> Result<ExitCode, CliError> {
    match cmd {
        SecretsCommand::Create { name, value } => {
            let client = ctx.client()?;
            let value = read_value(ctx, &name, value)?;
            let secret = client
                .create_secret(&name, &value)
                .await
                .map_err(|e| match e {
                    CliError::Api {
                        status: 409,
                        code,
                        message,
                    } => CliError::Api {
                        status: 409,
                        code,
                        message: format!(
                            "{message}; to change its value use `bora secrets update {name}`"
                        ),
                    },
                    other => other,
                })?;
            print_changed(ctx, &secret, "created")?;
        }
        SecretsCommand::Update { name, value } => {
            let client = ctx.client()?;
            let value = read_value(ctx, &name, value)?;
            let secret = client.update_secret(&name, &value).await?;
            print_changed(ctx, &secret, "updated")?;
        }
        SecretsCommand::List => {
            let secrets = ctx.client()?.list_secrets().await?;
            ctx.print_list(
                &secrets,
                "no secrets yet: create one with `bora secrets create NAME`",
            )?;
        }
        SecretsCommand::Delete { name } => {
            ctx.client()?.delete_secret(&name).await?;
            ctx.print(&format!("secret {name} deleted\n"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_value(ctx: &mut Ctx<'_>, name: &str, source: ValueSource) -> Result<String, CliError> {
    let value = match source {
        ValueSource {
            value: Some(value), ..
        } => value,
        ValueSource {
            from_file: Some(path),
            ..
        } => std::fs::read_to_string(&path).map_err(|e| CliError::ReadFile { path, source: e })?,
        ValueSource { .. } => ctx
            .term
            .read_secret(&format!("value of secret {name} (hidden): "))
            .map_err(CliError::ReadStdin)?,
    };
    if value.is_empty() {
        return Err(CliError::EmptySecret {
            name: name.to_string(),
        });
    }
    Ok(value)
}

fn print_changed(ctx: &mut Ctx<'_>, secret: &bora_api::Secret, what: &str) -> Result<(), CliError> {
    match ctx.format() {
        OutputFormat::Table => ctx.print(&format!("secret {} {what}\n", secret.name)),
        format => {
            let text = crate::output::render_data(format, secret)?;
            ctx.print(&text)
        }
    }
}
