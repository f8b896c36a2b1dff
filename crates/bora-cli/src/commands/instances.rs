//! `bora instances list|get|delete`.

use std::process::ExitCode;

use crate::client::InstanceFilter;
use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::{OutputFormat, render_history};
use crate::refs::{ServiceRef, find_deployment, find_instance};

/// `bora instances …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum InstancesCommand {
    /// List instances (by default only those not stopped or failed).
    #[command(visible_alias = "ls")]
    List {
        /// Only this service's instances (APP/SERVICE or SERVICE).
        #[arg(long, value_name = "SERVICE")]
        service: Option<ServiceRef>,
        /// Only this deployment's instances (ID or short ID).
        #[arg(long, value_name = "ID")]
        deployment: Option<String>,
        /// Include stopped and failed instances.
        #[arg(long)]
        all: bool,
    },
    /// Show one instance and the history of its states.
    Get {
        /// The instance's ID, or the short ID a table shows.
        id: String,
    },
    /// Stop and delete an instance (its deployment starts a replacement).
    #[command(visible_alias = "rm")]
    Delete {
        /// The instance's ID, or the short ID a table shows.
        id: String,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: InstancesCommand) -> Result<ExitCode, CliError> {
    let client = ctx.client()?;
    match cmd {
        InstancesCommand::List {
            service,
            deployment,
            all,
        } => {
            let mut filter = InstanceFilter {
                all,
                ..InstanceFilter::default()
            };
            if let Some(service) = service {
                let name = service.resolve(&client).await?;
                filter.app = Some(name.app);
                filter.service = Some(name.service);
            }
            if let Some(id) = deployment {
                filter.deployment = Some(find_deployment(&client, &id).await?.id);
            }
            let instances = client.list_instances(&filter).await?;
            let empty = if all {
                "no instances"
            } else {
                "no running instances (--all shows stopped and failed ones too)"
            };
            ctx.print_list(&instances, empty)?;
        }
        InstancesCommand::Get { id } => {
            let instance = find_instance(&client, &id).await?;
            ctx.print_one(&instance)?;
            if ctx.format() == OutputFormat::Table && !instance.history.is_empty() {
                ctx.print("\nHistory:\n")?;
                ctx.print(&render_history(&instance))?;
            }
        }
        InstancesCommand::Delete { id } => {
            let instance = find_instance(&client, &id).await?;
            client.delete_instance(&instance.id).await?;
            ctx.print(&format!(
                "instance {} of {}/{} deleted\n",
                instance.id, instance.app, instance.service
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
