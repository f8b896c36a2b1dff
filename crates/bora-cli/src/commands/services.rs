//! `bora services list|get|delete`.

use std::process::ExitCode;

use crate::commands::Ctx;
use crate::error::CliError;
use crate::refs::ServiceRef;

/// `bora services …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ServicesCommand {
    /// List services, of all apps or of one.
    #[command(visible_alias = "ls")]
    List {
        /// Only this app's services.
        #[arg(long, value_name = "APP")]
        app: Option<String>,
    },
    /// Show one service.
    Get {
        /// APP/SERVICE, or SERVICE when only one app has a service by that name.
        service: ServiceRef,
    },
    /// Delete a service, its deployments and its instances.
    #[command(visible_alias = "rm")]
    Delete {
        /// APP/SERVICE, or SERVICE when only one app has a service by that name.
        service: ServiceRef,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: ServicesCommand) -> Result<ExitCode, CliError> {
    let client = ctx.client()?;
    match cmd {
        ServicesCommand::List { app } => {
            let services = client.list_services(app.as_deref()).await?;
            let empty = match &app {
                Some(app) => format!("app {app} has no services"),
                None => "no services yet: create one with `bora deploy -f bora.yaml`".to_string(),
            };
            ctx.print_list(&services, &empty)?;
        }
        ServicesCommand::Get { service } => {
            let name = service.resolve(&client).await?;
            let service = client.get_service(&name.app, &name.service).await?;
            ctx.print_one(&service)?;
        }
        ServicesCommand::Delete { service } => {
            let name = service.resolve(&client).await?;
            client.delete_service(&name.app, &name.service).await?;
            ctx.print(&format!("service {name} deleted\n"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
