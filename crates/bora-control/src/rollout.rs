//! Rolling out one deployment: pull and pin the image (for a model, check
//! the model file and record its digest), start its instances,
//! wait for their health checks, shift traffic, then drain and stop the
//! deployment it replaces. If its instances never become healthy, the
//! deployment fails with the reason and the previous one keeps serving.
//!
//! Every step is idempotent, so a rollout interrupted by a server restart
//! resumes where it was: instances already running are re-adopted, not
//! started twice.

use std::sync::Arc;
use std::time::Duration;

use bora_api::{Deployment, DeploymentStatus, InstanceState};
use bora_image::PullProgress;
use bora_store::{DeploymentFilter, InstanceFilter};
use tracing::Instrument;

use crate::ControlError;
use crate::controller::{Controller, LOST};

pub(crate) async fn run(ctl: Arc<Controller>, deployment: &str) {
    let span = tracing::info_span!("rollout", deployment = %deployment);
    if let Err(e) = rollout(&ctl, deployment).instrument(span).await {
        tracing::error!(deployment, error = %e, "rollout");
        let _ = ctl.store.set_deployment_status(
            deployment,
            DeploymentStatus::Failed,
            Some(&format!("internal error: {e}")),
        );
    }
}

fn set(
    ctl: &Controller,
    id: &str,
    status: DeploymentStatus,
    reason: &str,
) -> Result<Deployment, ControlError> {
    tracing::info!(deployment = %id, %status, reason, "deployment status");
    let d = ctl.store.set_deployment_status(id, status, Some(reason))?;
    ctl.changed.notify_waiters();
    Ok(d)
}

async fn rollout(ctl: &Arc<Controller>, id: &str) -> Result<(), ControlError> {
    let mut d = ctl.store.get_deployment(id)?;
    if d.status == DeploymentStatus::Draining {
        return drain_deployment(ctl, &d).await;
    }
    if !d.status.is_in_progress() {
        return Ok(());
    }

    // 1. A model: check its file and record its digest.
    if let Some(model) = &d.spec.model
        && d.model_digest.is_none()
    {
        set(
            ctl,
            id,
            DeploymentStatus::Pulling,
            &format!("checking model file {}", model.path),
        )?;
        match crate::models::pull_model(model.path.clone(), model.engine).await {
            Ok(digest) => {
                tracing::info!(deployment = %id, path = %model.path, %digest, "model file checked");
                d = ctl.store.set_deployment_model(id, &digest)?;
            }
            Err(reason) => {
                set(ctl, id, DeploymentStatus::Failed, &reason)?;
                return Ok(());
            }
        }
    }

    // 2. Pull and pin the image (a built-in model has none).
    if d.image_digest.is_none() && !crate::models::is_builtin(&d.spec) {
        set(
            ctl,
            id,
            DeploymentStatus::Pulling,
            &format!("pulling {}", d.spec.image),
        )?;
        let opts = match ctl.pull_options(&d.spec) {
            Ok(o) => o,
            Err(reason) => {
                set(ctl, id, DeploymentStatus::Failed, &reason)?;
                return Ok(());
            }
        };
        let store = ctl.store.clone();
        let image_ref = d.spec.image.clone();
        let did = id.to_string();
        let progress = move |p: PullProgress| {
            if let Some(reason) = describe_progress(&image_ref, &p) {
                let _ = store.set_deployment_status(&did, DeploymentStatus::Pulling, Some(&reason));
            }
        };
        match ctl
            .node
            .images()
            .pull(&d.spec.image, &opts, &progress)
            .await
        {
            Ok(image) => {
                d = ctl.store.set_deployment_image(id, &image.manifest_digest)?;
            }
            Err(e) => {
                set(
                    ctl,
                    id,
                    DeploymentStatus::Failed,
                    &format!("cannot pull the image: {e}"),
                )?;
                return Ok(());
            }
        }
    }
    if superseded(ctl, &d).await? {
        return Ok(());
    }

    // 3. Start the instances the deployment still needs: at least one (a
    // `min: 0` service proves it works before it may sleep), and as many as
    // the deployment it replaces serves now, so a rollout under load keeps
    // its capacity.
    let want = initial_instances(ctl, &d)?;
    set(
        ctl,
        id,
        DeploymentStatus::Starting,
        &format!(
            "starting {want} instance(s) of {}",
            d.image_digest
                .as_deref()
                .or(d.model_digest.as_deref())
                .unwrap_or("?")
        ),
    )?;

    // 4. Wait until all are healthy, one fails, or a newer deployment wins.
    loop {
        let notified = ctl.changed.notified();
        let all = ctl.store.list_instances(&InstanceFilter {
            deployment: Some(id),
            include_final: true,
            ..Default::default()
        })?;
        let broken = all
            .iter()
            .find(|i| i.state == InstanceState::Failed && !i.reason.starts_with(LOST));
        if let Some(failed) = broken {
            let reason = format!("instance {} failed: {}", short(&failed.id), failed.reason);
            // Stop what the deployment started before calling it failed, so
            // `failed` means settled.
            let ids: Vec<String> = all
                .iter()
                .filter(|i| !i.state.is_final())
                .map(|i| i.id.clone())
                .collect();
            ctl.stop_and_wait(&ids, "its deployment failed", false)
                .await;
            set(ctl, id, DeploymentStatus::Failed, &reason)?;
            return Ok(());
        }
        // Start what is missing: at first, all of them; after a server
        // restart, replacements for instances lost with it.
        let live = all.iter().filter(|i| !i.state.is_final()).count();
        for _ in live..want {
            ctl.start_instance(&d)?;
        }
        if superseded(ctl, &d).await? {
            return Ok(());
        }
        let healthy = all
            .iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .count();
        if healthy >= want {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }

    // 5. Shift traffic, then say so (a client waiting for `healthy` must
    // find the new deployment routed), then retire the previous ones.
    ctl.store.set_active_deployment(id)?;
    ctl.publish_routes();
    set(
        ctl,
        id,
        DeploymentStatus::Healthy,
        &format!("{want} instance(s) healthy"),
    )?;
    let older = ctl.store.list_deployments(&DeploymentFilter {
        app: Some(&d.app),
        service: Some(&d.service),
        statuses: &[DeploymentStatus::Healthy, DeploymentStatus::Draining],
    })?;
    for old in older.into_iter().filter(|o| o.id != id) {
        set(
            ctl,
            &old.id,
            DeploymentStatus::Draining,
            &format!("replaced by version {}", d.version),
        )?;
        drain_deployment(ctl, &old).await?;
    }
    Ok(())
}

/// How many instances a new deployment starts with.
fn initial_instances(ctl: &Controller, d: &Deployment) -> Result<usize, ControlError> {
    let scaling = &d.spec.scaling;
    let serving = match ctl.store.get_service(&d.app, &d.service)?.active_deployment {
        Some(active) if active != d.id => ctl
            .live_instances(&active)?
            .iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .count() as u32,
        _ => 0,
    };
    Ok(serving.max(scaling.min).max(1).min(scaling.max.max(1)) as usize)
}

/// Drains and stops every instance of a replaced deployment.
async fn drain_deployment(ctl: &Arc<Controller>, old: &Deployment) -> Result<(), ControlError> {
    let ids: Vec<String> = ctl
        .live_instances(&old.id)?
        .into_iter()
        .map(|i| i.id)
        .collect();
    ctl.stop_and_wait(&ids, "its deployment was replaced", true)
        .await;
    // Keep the reason the drain started with ("replaced by version N").
    let reason = ctl
        .store
        .get_deployment(&old.id)?
        .reason
        .unwrap_or_else(|| "replaced".into());
    set(ctl, &old.id, DeploymentStatus::Stopped, &reason)?;
    Ok(())
}

/// A newer deployment of the same service was created: this one gives way,
/// stopping the instances it started.
async fn superseded(ctl: &Arc<Controller>, d: &Deployment) -> Result<bool, ControlError> {
    let svc = ctl.store.get_service(&d.app, &d.service)?;
    let current = ctl.store.get_deployment(&d.id)?;
    let canceled = current.status == DeploymentStatus::Canceled;
    if !canceled && svc.latest_deployment.as_deref() == Some(d.id.as_str()) {
        return Ok(false);
    }
    if !canceled {
        let reason = "a newer deployment of the service started before this one became healthy";
        set(ctl, &d.id, DeploymentStatus::Canceled, reason)?;
    }
    let ids: Vec<String> = ctl
        .live_instances(&d.id)?
        .into_iter()
        .map(|i| i.id)
        .collect();
    ctl.stop_and_wait(&ids, "its deployment was canceled", false)
        .await;
    Ok(true)
}

/// A progress line for the deployment's reason; `None` for events too
/// small to record.
fn describe_progress(image: &str, p: &PullProgress) -> Option<String> {
    use bora_image::LayerState;
    let text = match p {
        PullProgress::Resolving { reference } => format!("resolving {reference}"),
        PullProgress::Resolved { digest } => format!("{image} resolved to {digest}"),
        PullProgress::Layer {
            digest,
            size,
            state,
        } => {
            let what = match state {
                LayerState::Cached => "cached",
                LayerState::Downloading => "downloading",
                LayerState::Downloaded => "downloaded",
                LayerState::Unpacked => "unpacked",
            };
            format!(
                "pulling {image}: layer {} ({size} bytes) {what}",
                short_digest(digest)
            )
        }
        PullProgress::Download { .. } => return None,
        PullProgress::Done { pinned } => format!("pulled {pinned}"),
        _ => return None,
    };
    Some(text)
}

fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..12.min(hex.len())]
}

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}
