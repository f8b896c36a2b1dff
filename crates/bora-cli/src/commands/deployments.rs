//! `bora deployments list|get|delete`.

use std::process::ExitCode;

use crate::commands::Ctx;
use crate::error::CliError;
use crate::refs::{ServiceRef, find_deployment};

/// `bora deployments …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DeploymentsCommand {
    /// List deployments, newest first.
    #[command(visible_alias = "ls")]
    List {
        /// Only this service's deployments (APP/SERVICE or SERVICE).
        #[arg(long, value_name = "SERVICE")]
        service: Option<ServiceRef>,
    },
    /// Show one deployment.
    Get {
        /// The deployment's ID, or the short ID a table shows.
        id: String,
    },
    /// Delete a deployment and stop its instances.
    #[command(visible_alias = "rm")]
    Delete {
        /// The deployment's ID, or the short ID a table shows.
        id: String,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: DeploymentsCommand) -> Result<ExitCode, CliError> {
    let client = ctx.client()?;
    match cmd {
        DeploymentsCommand::List { service } => {
            let (deployments, empty) = match service {
                Some(service) => {
                    let name = service.resolve(&client).await?;
                    let list = client
                        .list_deployments(Some((&name.app, &name.service)))
                        .await?;
                    (list, format!("{name} has no deployments"))
                }
                None => (
                    client.list_deployments(None).await?,
                    "no deployments yet: create one with `bora deploy -f bora.yaml`".to_string(),
                ),
            };
            ctx.print_list(&deployments, &empty)?;
        }
        DeploymentsCommand::Get { id } => {
            let deployment = find_deployment(&client, &id).await?;
            ctx.print_one(&deployment)?;
        }
        DeploymentsCommand::Delete { id } => {
            let deployment = find_deployment(&client, &id).await?;
            client.delete_deployment(&deployment.id).await?;
            ctx.print(&format!(
                "deployment {} of {}/{} deleted\n",
                deployment.id, deployment.app, deployment.service
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
