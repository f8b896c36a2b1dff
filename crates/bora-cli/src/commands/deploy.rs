//! `bora deploy -f bora.yaml [--wait] [--timeout 10m]`: one deployment per
//! service of the file; with `--wait`, follow them until each is healthy,
//! one fails, or the timeout passes.
//!
//! Progress goes to stderr, result lines to stdout. With `-o json|yaml`,
//! stdout gets the deployments as the API returned them instead (their last
//! state, with `--wait`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use bora_api::{AppManifest, Deployment, DeploymentStatus, Instance, InstanceState, List};
use tokio::time::Instant;

use crate::client::{ApiClient, InstanceFilter};
use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::{self, OutputFormat, short_id};

/// `bora deploy …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DeployArgs {
    /// The manifest to deploy.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "bora.yaml",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Wait until every deployment is healthy (exit 1 if one fails, 2 on timeout).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(
        long,
        default_value = "10m",
        value_name = "DURATION",
        requires = "wait"
    )]
    pub timeout: bora_api::Duration,
    /// How often --wait asks the server.
    #[arg(long, default_value = "300ms", value_name = "DURATION", hide = true)]
    pub poll_interval: bora_api::Duration,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: DeployArgs) -> Result<ExitCode, CliError> {
    // Check the file before looking for a server: bad input sends nothing.
    let source = std::fs::read_to_string(&args.file).map_err(|e| CliError::ReadFile {
        path: args.file.clone(),
        source: e,
    })?;
    let manifest = load_manifest(&source, &args.file.display().to_string())?;

    let client = ctx.client()?;
    let mut created = Vec::with_capacity(manifest.services.len());
    for spec in &manifest.services {
        let deployment = client.create_deployment(&manifest.app, spec).await?;
        let line = format!(
            "deployment {} of {}/{} created (version {})",
            deployment.id, deployment.app, deployment.service, deployment.version
        );
        result_line(ctx, &line)?;
        created.push(deployment);
    }

    let deployments = if args.wait {
        wait(ctx, &client, created, &args).await?
    } else {
        created
    };
    if ctx.format() != OutputFormat::Table {
        let text = output::render_data(ctx.format(), &List { items: deployments })?;
        ctx.print(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `bora.yaml` with the manifest crate, whose errors already say
/// file:line:column, what is wrong and how to fix it.
fn load_manifest(source: &str, file_name: &str) -> Result<AppManifest, CliError> {
    bora_manifest::parse_manifest(source, file_name).map_err(CliError::Manifest)
}

/// A line for the user: stdout in table mode; stderr when stdout carries
/// JSON or YAML.
fn result_line(ctx: &mut Ctx<'_>, line: &str) -> Result<(), CliError> {
    match ctx.format() {
        OutputFormat::Table => ctx.print(&format!("{line}\n")),
        _ => ctx.note(line),
    }
}

/// One deployment being waited on.
struct Watched {
    deployment: Deployment,
    healthy: bool,
}

/// Follows `deployments` until all are healthy; returns their last state.
pub(crate) async fn wait(
    ctx: &mut Ctx<'_>,
    client: &ApiClient,
    deployments: Vec<Deployment>,
    args: &DeployArgs,
) -> Result<Vec<Deployment>, CliError> {
    let deadline = Instant::now() + args.timeout.get();
    let mut progress = Progress::new(deployments.len() > 1);
    for d in &deployments {
        progress.seen_deployment(d);
    }
    let mut watched: Vec<Watched> = deployments
        .into_iter()
        .map(|deployment| Watched {
            deployment,
            healthy: false,
        })
        .collect();
    let mut lost_contact = false;

    loop {
        let round = poll_round(ctx, client, &mut watched, &mut progress);
        match tokio::time::timeout_at(deadline, round).await {
            Ok(Ok(())) => lost_contact = false,
            Ok(Err(e @ (CliError::Connect { .. } | CliError::Transport { .. }))) => {
                // The server may be restarting: keep trying until the deadline.
                if !lost_contact {
                    ctx.note(&format!("lost contact with the server, retrying: {e}"))?;
                    lost_contact = true;
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => return Err(timeout_error(args, &watched)),
        }
        if watched.iter().all(|w| w.healthy) {
            return Ok(watched.into_iter().map(|w| w.deployment).collect());
        }
        let next = Instant::now() + args.poll_interval.get();
        if next >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(timeout_error(args, &watched));
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Asks once about every deployment not yet healthy, printing what changed.
async fn poll_round(
    ctx: &mut Ctx<'_>,
    client: &ApiClient,
    watched: &mut [Watched],
    progress: &mut Progress,
) -> Result<(), CliError> {
    for w in watched.iter_mut().filter(|w| !w.healthy) {
        let deployment = client.get_deployment(&w.deployment.id).await?;
        let filter = InstanceFilter {
            deployment: Some(deployment.id.clone()),
            all: true,
            ..InstanceFilter::default()
        };
        let instances = client.list_instances(&filter).await?;
        if let Some(line) = progress.seen_deployment(&deployment) {
            ctx.note(&line)?;
        }
        for instance in &instances.items {
            if let Some(line) = progress.seen_instance(instance) {
                ctx.note(&line)?;
            }
        }
        w.deployment = deployment;
        let d = &w.deployment;
        match d.status {
            DeploymentStatus::Healthy => {
                w.healthy = true;
                let service = client.get_service(&d.app, &d.service).await?;
                let line = match service.url {
                    Some(url) => format!("{}/{} is healthy: {url}", d.app, d.service),
                    None => format!("{}/{} is healthy", d.app, d.service),
                };
                result_line(ctx, &line)?;
            }
            status if status.is_in_progress() => {}
            // Failed, canceled, or already replaced by a newer deployment.
            status => {
                return Err(CliError::DeploymentFailed {
                    id: d.id.clone(),
                    service: format!("{}/{}", d.app, d.service),
                    status,
                    reason: d
                        .reason
                        .clone()
                        .unwrap_or_else(|| "the server gave no reason".to_string()),
                });
            }
        }
    }
    Ok(())
}

fn timeout_error(args: &DeployArgs, watched: &[Watched]) -> CliError {
    CliError::WaitTimeout {
        timeout: args.timeout,
        waiting: watched
            .iter()
            .filter(|w| !w.healthy)
            .map(|w| {
                let d = &w.deployment;
                format!("{}/{} ({})", d.app, d.service, d.status)
            })
            .collect(),
    }
}

/// Remembers what was last seen of each deployment and instance, and
/// words the changes as progress lines.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Whether instance lines name their service (when several deploy at once).
    name_services: bool,
    deployments: HashMap<String, (DeploymentStatus, Option<String>)>,
    instances: HashMap<String, (InstanceState, String, u32)>,
}

impl Progress {
    pub fn new(name_services: bool) -> Self {
        Self {
            name_services,
            ..Self::default()
        }
    }

    /// A line if the deployment's status or reason changed since last seen
    /// (the first sighting only records it).
    pub fn seen_deployment(&mut self, d: &Deployment) -> Option<String> {
        let now = (d.status, d.reason.clone());
        let before = self.deployments.insert(d.id.clone(), now.clone())?;
        if before == now {
            return None;
        }
        let mut line = format!("{}/{} version {} {}", d.app, d.service, d.version, d.status);
        if let Some(reason) = d.reason.as_deref().filter(|r| !r.is_empty()) {
            line.push_str(": ");
            line.push_str(reason);
        }
        Some(line)
    }

    /// A line if the instance is new or its state, reason or restart count
    /// changed.
    pub fn seen_instance(&mut self, i: &Instance) -> Option<String> {
        let now = (i.state, i.reason.clone(), i.restarts);
        if self.instances.insert(i.id.clone(), now.clone()) == Some(now) {
            return None;
        }
        let mut line = format!("  instance {}", short_id(&i.id));
        if self.name_services {
            line.push_str(&format!(" of {}/{}", i.app, i.service));
        }
        line.push_str(&format!(" {}", i.state));
        if !i.reason.is_empty() {
            line.push_str(": ");
            line.push_str(&i.reason);
        }
        if i.restarts > 0 {
            line.push_str(&format!(" (restarts: {})", i.restarts));
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use bora_api::ServiceSpec;
    use chrono::Utc;

    use super::*;

    fn deployment(status: DeploymentStatus, reason: Option<&str>) -> Deployment {
        Deployment {
            id: "0000d0017c3e9b2a4d1f4e6a8b0c9d2e".into(),
            app: "hello".into(),
            service: "web".into(),
            version: 3,
            spec: serde_json::from_str::<ServiceSpec>(r#"{"name":"web","image":"busybox"}"#)
                .unwrap(),
            image_digest: None,
            model_digest: None,
            status,
            reason: reason.map(String::from),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn instance(state: InstanceState, reason: &str, restarts: u32) -> Instance {
        Instance {
            id: "000000a17c3e9b2a4d1f4e6a8b0c9d2e".into(),
            app: "hello".into(),
            service: "web".into(),
            deployment: "0000d0017c3e9b2a4d1f4e6a8b0c9d2e".into(),
            node: "local".into(),
            state,
            reason: reason.into(),
            ip: None,
            restarts,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            history: vec![],
        }
    }

    #[test]
    fn deployment_lines_only_on_change() {
        let mut p = Progress::new(false);
        assert_eq!(
            p.seen_deployment(&deployment(DeploymentStatus::Pending, None)),
            None
        );
        assert_eq!(
            p.seen_deployment(&deployment(DeploymentStatus::Pending, None)),
            None
        );
        assert_eq!(
            p.seen_deployment(&deployment(
                DeploymentStatus::Pulling,
                Some("pulling busybox")
            ))
            .as_deref(),
            Some("hello/web version 3 pulling: pulling busybox")
        );
        assert_eq!(
            p.seen_deployment(&deployment(DeploymentStatus::Healthy, None))
                .as_deref(),
            Some("hello/web version 3 healthy")
        );
    }

    #[test]
    fn instance_lines_on_new_and_changed() {
        let mut p = Progress::new(false);
        assert_eq!(
            p.seen_instance(&instance(InstanceState::Pending, "scheduled", 0))
                .as_deref(),
            Some("  instance 000000a1 pending: scheduled")
        );
        assert_eq!(
            p.seen_instance(&instance(InstanceState::Pending, "scheduled", 0)),
            None
        );
        assert_eq!(
            p.seen_instance(&instance(InstanceState::Starting, "container started", 0))
                .as_deref(),
            Some("  instance 000000a1 starting: container started")
        );
        assert_eq!(
            p.seen_instance(&instance(InstanceState::Starting, "container started", 1))
                .as_deref(),
            Some("  instance 000000a1 starting: container started (restarts: 1)")
        );

        let mut p = Progress::new(true);
        assert_eq!(
            p.seen_instance(&instance(InstanceState::Healthy, "", 0))
                .as_deref(),
            Some("  instance 000000a1 of hello/web healthy")
        );
    }
}
