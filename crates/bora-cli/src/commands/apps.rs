//! `bora apps list|get|delete`.

use std::process::ExitCode;

use crate::commands::Ctx;
use crate::error::CliError;

/// `bora apps …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AppsCommand {
    /// List apps.
    #[command(visible_alias = "ls")]
    List,
    /// Show one app.
    Get {
        /// The app's name.
        name: String,
    },
    /// Delete an app and everything in it.
    #[command(visible_alias = "rm")]
    Delete {
        /// The app's name.
        name: String,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: AppsCommand) -> Result<ExitCode, CliError> {
    let client = ctx.client()?;
    match cmd {
        AppsCommand::List => {
            let apps = client.list_apps().await?;
            ctx.print_list(
                &apps,
                "no apps yet: create one with `bora deploy -f bora.yaml`",
            )?;
        }
        AppsCommand::Get { name } => {
            let app = client.get_app(&name).await?;
            ctx.print_one(&app)?;
        }
        AppsCommand::Delete { name } => {
            client.delete_app(&name).await?;
            ctx.print(&format!("app {name} deleted\n"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
