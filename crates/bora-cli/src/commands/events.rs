//! `bora events`: what the platform did on its own — scaling decisions with
//! their inputs, sleeps and wake-ups.

use std::process::ExitCode;

use crate::commands::Ctx;
use crate::error::CliError;
use crate::refs::ServiceRef;

/// `bora events [SERVICE]`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct EventsArgs {
    /// Only this service's events (APP/SERVICE or SERVICE).
    pub service: Option<ServiceRef>,
    /// How many of the newest events to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: EventsArgs) -> Result<ExitCode, CliError> {
    let client = ctx.client()?;
    let (mut app, mut service) = (None, None);
    if let Some(svc) = args.service {
        let name = svc.resolve(&client).await?;
        app = Some(name.app);
        service = Some(name.service);
    }
    let events = client
        .list_events(app.as_deref(), service.as_deref(), args.limit)
        .await?;
    ctx.print_list(&events, "no events yet")?;
    Ok(ExitCode::SUCCESS)
}
