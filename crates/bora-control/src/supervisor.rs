//! One task per instance: starts it, checks its health, restarts it when it
//! fails after having been healthy, and drains and stops it on command.
//!
//! Policy: an instance that never became healthy is `failed` (so a broken
//! deployment fails fast with the reason); one that was healthy and then
//! exits or fails `restart_limit` checks in a row is restarted in place,
//! with exponential back-off.
//!
//! A model (`type: model`) is `loading` from the moment its process runs
//! until its readiness check (`GET /v1/models`) passes, probed every
//! 100 ms however long that takes; only its exit fails it.
//!
//! Light sleep: on [`Command::Sleep`] a healthy instance is frozen and leaves
//! the route table; on [`Command::Wake`] it is thawed, probed tightly until
//! its check passes, and routed again. One that fails to wake is restarted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bora_api::{Deployment, HealthCheckSpec, Instance, InstanceState};
use bora_node::InstanceStatus;
use bora_node::health::Probe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep};
use tracing::Instrument;

use crate::controller::Controller;

/// Orders for a supervisor.
#[derive(Debug)]
pub enum Command {
    /// Stop receiving requests, let in-flight ones finish, then stop.
    Drain(String),
    /// Stop now.
    Stop(String),
    /// Light sleep: freeze the (healthy) instance, with this reason.
    Sleep(String),
    /// Thaw a sleeping instance and route to it once its check passes. The
    /// reply comes when it is healthy again, or says why it could not wake.
    /// An instance that is awake answers at once.
    Wake(oneshot::Sender<Result<(), String>>),
}

/// What the supervisor does next.
enum Next {
    /// Probe tightly until the first pass.
    Probe,
    /// Healthy: watch the process and check at the interval.
    Watch,
    /// Freeze, and wait to be woken.
    Sleep(String),
    /// Restart in place after this failure.
    Restart(String),
}

/// How a light sleep ended.
enum Asleep {
    /// Thawed and healthy again.
    Woke,
    /// A stop or drain ended the supervisor.
    Done,
    /// It died while asleep or could not wake: restart it.
    Failed(String),
}

/// How the supervisor takes over its instance.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A new instance: start it.
    Start,
    /// An instance found running after a server restart.
    Adopt { ip: IpAddr },
    /// A standby for a service in deep sleep: prepare it, and start it on
    /// the first [`Command::Wake`].
    Standby,
}

/// Health-check timing, with Bora's defaults for services without a check.
struct Checks {
    probe: Option<Probe>,
    /// For a model: the reason of its `loading` state. A model is probed
    /// until it is ready however long it loads; only its exit fails it.
    loading: Option<String>,
    grace: Duration,
    interval: Duration,
    timeout: Duration,
    limit: u32,
}

impl Checks {
    fn of(d: &Deployment) -> Self {
        let default = HealthCheckSpec {
            http: None,
            tcp: None,
            grace_period: bora_api::Duration::from_secs(5),
            interval: bora_api::Duration::from_secs(10),
            timeout: bora_api::Duration::from_secs(2),
            restart_limit: 3,
        };
        let hc = d.spec.health_check.as_ref().unwrap_or(&default);
        let (probe, loading) = match &d.spec.model {
            Some(model) => (
                Some(crate::models::probe(&d.spec)),
                Some(format!(
                    "loading model {}",
                    crate::models::path_in_container(&model.path)
                )),
            ),
            None => (
                Probe::for_service(
                    d.spec.health_check.as_ref(),
                    d.spec.ports.first().map(|p| p.port),
                ),
                None,
            ),
        };
        Checks {
            probe,
            loading,
            grace: hc.grace_period.get(),
            interval: hc.interval.get(),
            timeout: hc.timeout.get(),
            limit: hc.restart_limit.max(1),
        }
    }

    /// How long a starting instance has to pass its first check.
    fn startup_deadline(&self) -> Duration {
        self.grace + self.interval * self.limit
    }
}

enum Outcome {
    Healthy,
    Failed(String),
    Command(Command),
}

pub(crate) async fn run(
    ctl: Arc<Controller>,
    instance: Instance,
    mode: Mode,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let id = instance.id.clone();
    let span = tracing::info_span!("instance", instance = %id, app = %instance.app, service = %instance.service);
    if let Err(e) = supervise(&ctl, instance, mode, &mut rx)
        .instrument(span)
        .await
    {
        tracing::error!(instance = %id, error = %e, "supervisor");
        let _ = ctl.node.stop(&id, ctl.config.stop_grace).await;
        let _ = ctl.transition(&id, InstanceState::Failed, &format!("internal error: {e}"));
    }
    ctl.publish_routes();
}

async fn supervise(
    ctl: &Arc<Controller>,
    instance: Instance,
    mode: Mode,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<(), crate::ControlError> {
    let id = instance.id.clone();
    let d = ctl.store.get_deployment(&instance.deployment)?;
    let checks = Checks::of(&d);
    let mut was_healthy = matches!(
        instance.state,
        InstanceState::Healthy | InstanceState::Sleeping
    );

    let (mut ip, mut next) = match mode {
        Mode::Adopt { ip } => match instance.state {
            InstanceState::Draining => {
                return finish(ctl, &id, "drained after a server restart", true).await;
            }
            InstanceState::Sleeping => (ip, Next::Sleep("asleep after a server restart".into())),
            InstanceState::Healthy => (ip, Next::Watch),
            _ => (ip, Next::Probe),
        },
        Mode::Start => match start(ctl, &d, &id).await {
            Ok(ip) => (ip, Next::Probe),
            Err(reason) => {
                ctl.transition(&id, InstanceState::Failed, &reason)?;
                return Ok(());
            }
        },
        Mode::Standby => {
            let ip = match prepare(ctl, &d, &id).await {
                Ok(ip) => ip,
                Err(reason) => {
                    ctl.transition(&id, InstanceState::Failed, &reason)?;
                    return Ok(());
                }
            };
            let Some(reply) = standby(ctl, &id, rx).await? else {
                return Ok(());
            };
            let launched = ctl.node.launch(&id).await.map_err(|e| e.to_string());
            let _ = reply.send(launched.clone());
            if let Err(reason) = launched {
                ctl.transition(
                    &id,
                    InstanceState::Failed,
                    &format!("cannot start: {reason}"),
                )?;
                return Ok(());
            }
            ctl.transition(
                &id,
                InstanceState::Starting,
                &format!("started at {ip} by a request, waiting for its health check"),
            )?;
            (ip, Next::Probe)
        }
    };

    let mut backoff = Duration::from_secs(1);
    loop {
        next = match next {
            Next::Probe => match wait_healthy(ctl, &id, ip, &checks, rx).await {
                Outcome::Healthy => {
                    ctl.transition(&id, InstanceState::Healthy, &describe_pass(&checks))?;
                    ctl.publish_routes();
                    was_healthy = true;
                    backoff = Duration::from_secs(1);
                    Next::Watch
                }
                Outcome::Command(cmd) => return obey(ctl, &id, cmd).await,
                Outcome::Failed(reason) if !was_healthy => {
                    let _ = ctl.node.stop(&id, Duration::from_secs(1)).await;
                    ctl.transition(&id, InstanceState::Failed, &reason)?;
                    return Ok(());
                }
                Outcome::Failed(reason) => Next::Restart(reason),
            },
            Next::Watch => match watch_healthy(ctl, &id, ip, &checks, rx).await {
                Outcome::Command(Command::Sleep(reason)) => Next::Sleep(reason),
                Outcome::Command(cmd) => return obey(ctl, &id, cmd).await,
                Outcome::Failed(reason) => Next::Restart(reason),
                Outcome::Healthy => {
                    unreachable!("watch_healthy returns only on failure or command")
                }
            },
            Next::Sleep(reason) => match asleep(ctl, &id, ip, &checks, &reason, rx).await? {
                Asleep::Woke => Next::Watch,
                Asleep::Done => return Ok(()),
                Asleep::Failed(reason) => Next::Restart(reason),
            },
            Next::Restart(reason) => {
                match restart(ctl, &d, &id, &reason, &mut backoff, rx).await? {
                    Some(new_ip) => {
                        ip = new_ip;
                        Next::Probe
                    }
                    None => return Ok(()),
                }
            }
        };
    }
}

/// Answers a wake order for an instance that is not asleep; passes every
/// other command through.
fn unless_wake(cmd: Command) -> Option<Command> {
    match cmd {
        Command::Wake(reply) => {
            let _ = reply.send(Ok(()));
            None
        }
        other => Some(other),
    }
}

/// Light sleep: freezes the instance, takes it out of the route table, and
/// waits for a command. A wake thaws it and probes tightly (every
/// 2 ms) so the router can forward the held requests the moment the
/// instance answers.
async fn asleep(
    ctl: &Arc<Controller>,
    id: &str,
    ip: IpAddr,
    checks: &Checks,
    reason: &str,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<Asleep, crate::ControlError> {
    // Out of the table first, so no new request reaches a frozen process.
    if instance_state(ctl, id) != Some(InstanceState::Sleeping) {
        ctl.transition(id, InstanceState::Sleeping, reason)?;
        ctl.publish_routes();
        // Requests already sent finish before the freeze.
        let deadline = Instant::now() + ctl.config.drain_timeout;
        while ctl.router.in_flight(id) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
        }
    }
    if let Err(e) = ctl.node.pause(id).await {
        return Ok(Asleep::Failed(format!("cannot freeze it: {e}")));
    }
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = sleep(Duration::from_secs(1)) => {
                if let Some(reason) = not_running(ctl, id) {
                    return Ok(Asleep::Failed(format!("while asleep: {reason}")));
                }
                continue;
            }
        };
        match cmd {
            // The controller went away: stay asleep; a restart re-adopts.
            None => return Ok(Asleep::Done),
            Some(Command::Sleep(_)) => continue,
            Some(Command::Wake(reply)) => {
                let started = Instant::now();
                match thaw(ctl, id, ip, checks).await {
                    Ok(()) => {
                        let took = started.elapsed();
                        ctl.transition(
                            id,
                            InstanceState::Healthy,
                            &format!(
                                "woke from light sleep in {:.1} ms",
                                took.as_secs_f64() * 1e3
                            ),
                        )?;
                        ctl.publish_routes();
                        let _ = reply.send(Ok(()));
                        return Ok(Asleep::Woke);
                    }
                    Err(reason) => {
                        let reason = format!("failed to wake: {reason}");
                        let _ = reply.send(Err(reason.clone()));
                        return Ok(Asleep::Failed(reason));
                    }
                }
            }
            Some(cmd) => {
                obey(ctl, id, cmd).await?;
                return Ok(Asleep::Done);
            }
        }
    }
}

/// Thaws the instance and probes it until the check passes.
async fn thaw(ctl: &Controller, id: &str, ip: IpAddr, checks: &Checks) -> Result<(), String> {
    ctl.node.resume(id).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let deadline = started + checks.startup_deadline();
    loop {
        if let Some(reason) = not_running(ctl, id) {
            return Err(reason);
        }
        let Some(probe) = &checks.probe else {
            return Ok(());
        };
        let error = match ctl.prober.check(ip, probe, checks.timeout).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "no passing check within {} of thawing: {error}",
                humanize(checks.startup_deadline())
            ));
        }
        sleep(probe_pause(started.elapsed())).await;
    }
}

/// How long to wait between probes of an instance that is coming up:
/// tightly at first, where waking and scaling out wait on it.
fn probe_pause(since_start: Duration) -> Duration {
    if since_start < Duration::from_secs(3) {
        Duration::from_millis(2)
    } else {
        Duration::from_millis(100)
    }
}

fn instance_state(ctl: &Controller, id: &str) -> Option<InstanceState> {
    ctl.store.get_instance(id).ok().map(|i| i.state)
}

fn describe_pass(checks: &Checks) -> String {
    match &checks.probe {
        Some(Probe::Http { port, path }) if checks.loading.is_some() => {
            format!("model ready: GET {path} on port {port} answered")
        }
        Some(Probe::Http { port, path }) => format!("http check GET {path} on port {port} passed"),
        Some(Probe::Tcp { port }) => format!("tcp check on port {port} passed"),
        None => "running (no ports to check)".into(),
    }
}

/// The reason of an instance's `pulling` state.
fn loading_root(d: &Deployment) -> String {
    if crate::models::is_builtin(&d.spec) {
        "setting up the built-in engine (the node's bora binary, read-only)".to_string()
    } else {
        format!("loading image {}", d.spec.image)
    }
}

/// pending → pulling → starting: loads the pinned image and starts the
/// container. Returns the instance's address, or why it could not start.
async fn start(ctl: &Arc<Controller>, d: &Deployment, id: &str) -> Result<IpAddr, String> {
    let step = |to, reason: &str| ctl.transition(id, to, reason).map_err(|e| e.to_string());
    step(InstanceState::Pulling, &loading_root(d))?;
    let root = ctl.instance_root(d)?;
    let spec = ctl.instance_spec(d, id, root)?;
    let ip = ctl.node.start(&spec).await.map_err(|e| e.to_string())?;
    ctl.store
        .set_instance_ip(id, Some(&ip.to_string()))
        .map_err(|e| e.to_string())?;
    step(
        InstanceState::Starting,
        &format!("container running at {ip}, waiting for its health check"),
    )?;
    Ok(ip)
}

/// pending → pulling → standby: sets the instance up without starting it.
async fn prepare(ctl: &Arc<Controller>, d: &Deployment, id: &str) -> Result<IpAddr, String> {
    ctl.transition(id, InstanceState::Pulling, &loading_root(d))
        .map_err(|e| e.to_string())?;
    let root = ctl.instance_root(d)?;
    let spec = ctl.instance_spec(d, id, root)?;
    let ip = ctl.node.prepare(&spec).await.map_err(|e| e.to_string())?;
    ctl.store
        .set_instance_ip(id, Some(&ip.to_string()))
        .map_err(|e| e.to_string())?;
    ctl.transition(
        id,
        InstanceState::Standby,
        &format!("standby at {ip}: rootfs, network and bundle ready; starts on the first request"),
    )
    .map_err(|e| e.to_string())?;
    Ok(ip)
}

/// Waits, as a standby, for the wake that starts it; `None` if a stop came
/// instead (obeyed) or the controller went away.
async fn standby(
    ctl: &Arc<Controller>,
    id: &str,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<Option<oneshot::Sender<Result<(), String>>>, crate::ControlError> {
    loop {
        match rx.recv().await {
            None => return Ok(None),
            Some(Command::Wake(reply)) => return Ok(Some(reply)),
            Some(Command::Sleep(_)) => {}
            Some(cmd) => {
                obey(ctl, id, cmd).await?;
                return Ok(None);
            }
        }
    }
}

/// Why the instance's process is no longer running, or `None` while it is.
fn not_running(ctl: &Controller, id: &str) -> Option<String> {
    match ctl.node.status(id) {
        InstanceStatus::Running => None,
        InstanceStatus::Exited(exit) => Some(ctl.node.exit_reason(id, &exit)),
        InstanceStatus::Lost => Some("the instance's supervisor process (shim) disappeared".into()),
    }
}

/// Probes tightly until the first pass, the process exits, or the startup
/// deadline passes.
async fn wait_healthy(
    ctl: &Controller,
    id: &str,
    ip: IpAddr,
    checks: &Checks,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Outcome {
    let started = Instant::now();
    if let Some(reason) = &checks.loading
        && instance_state(ctl, id) == Some(InstanceState::Starting)
        && not_running(ctl, id).is_none()
        && let Err(e) = ctl.transition(id, InstanceState::Loading, reason)
    {
        return Outcome::Failed(format!("recording its loading state: {e}"));
    }
    // Every 2 ms for the first seconds (a cold start waking a service is
    // on the hot path, and a refused connection costs microseconds), then
    // every 100 ms. A loading model: every 100 ms, as long as it takes.
    loop {
        if let Ok(cmd) = rx.try_recv() {
            match unless_wake(cmd) {
                // Only a healthy instance can be put to sleep.
                None | Some(Command::Sleep(_)) => {}
                Some(cmd) => return Outcome::Command(cmd),
            }
        }
        if let Some(reason) = not_running(ctl, id) {
            return Outcome::Failed(reason);
        }
        let Some(probe) = &checks.probe else {
            return Outcome::Healthy;
        };
        let last_error = match ctl.prober.check(ip, probe, checks.timeout).await {
            Ok(()) => return Outcome::Healthy,
            Err(e) => e,
        };
        if checks.loading.is_none() && started.elapsed() > checks.startup_deadline() {
            return Outcome::Failed(format!(
                "never became healthy within {}: {last_error}",
                humanize(checks.startup_deadline())
            ));
        }
        let pause = if checks.loading.is_some() {
            Duration::from_millis(100)
        } else {
            probe_pause(started.elapsed())
        };
        tokio::select! {
            cmd = rx.recv() => match cmd.and_then(unless_wake) {
                None | Some(Command::Sleep(_)) => {}
                Some(cmd) => return Outcome::Command(cmd),
            },
            _ = sleep(pause) => {}
        }
    }
}

/// Watches a healthy instance until it fails or a command comes.
async fn watch_healthy(
    ctl: &Controller,
    id: &str,
    ip: IpAddr,
    checks: &Checks,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Outcome {
    let mut failures = 0u32;
    let mut next_check = Instant::now() + checks.interval;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => if let Some(cmd) = unless_wake(cmd) { return Outcome::Command(cmd) },
                None => return Outcome::Command(Command::Stop("the controller went away".into())),
            },
            _ = sleep(Duration::from_millis(250)) => {}
        }
        if let Some(reason) = not_running(ctl, id) {
            return Outcome::Failed(reason);
        }
        if Instant::now() < next_check {
            continue;
        }
        next_check = Instant::now() + checks.interval;
        let Some(probe) = &checks.probe else { continue };
        match ctl.prober.check(ip, probe, checks.timeout).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::info!(instance = %id, failures, error = %e, "health check failed");
                if failures >= checks.limit {
                    return Outcome::Failed(format!(
                        "{failures} health checks failed in a row: {e}"
                    ));
                }
            }
        }
    }
}

/// Restarts a once-healthy instance after `reason`, with back-off. Returns
/// the new address, or `None` if a command ended the supervisor meanwhile.
async fn restart(
    ctl: &Arc<Controller>,
    d: &Deployment,
    id: &str,
    reason: &str,
    backoff: &mut Duration,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<Option<IpAddr>, crate::ControlError> {
    loop {
        ctl.transition(
            id,
            InstanceState::Starting,
            &format!("restarting: {reason}"),
        )?;
        ctl.store
            .increment_instance_restarts(id, &format!("restart after: {reason}"))?;
        ctl.publish_routes();
        let _ = ctl.node.stop(id, ctl.config.stop_grace).await;
        let until = Instant::now() + *backoff;
        loop {
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd.unwrap_or(Command::Stop("the controller went away".into())),
                _ = tokio::time::sleep_until(until) => break,
            };
            // A wake is answered at once: the waker then waits for health.
            match unless_wake(cmd) {
                None | Some(Command::Sleep(_)) => {}
                Some(cmd) => {
                    obey(ctl, id, cmd).await?;
                    return Ok(None);
                }
            }
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(60));
        let started = async {
            let root = ctl.instance_root(d)?;
            let spec = ctl.instance_spec(d, id, root)?;
            ctl.node.start(&spec).await.map_err(|e| e.to_string())
        };
        match started.await {
            Ok(ip) => {
                ctl.store.set_instance_ip(id, Some(&ip.to_string()))?;
                return Ok(Some(ip));
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "restart failed");
                // Try again after the next back-off, recording why.
                let _ = ctl
                    .store
                    .increment_instance_restarts(id, &format!("restart failed: {e}"));
            }
        }
    }
}

async fn obey(ctl: &Arc<Controller>, id: &str, cmd: Command) -> Result<(), crate::ControlError> {
    match cmd {
        Command::Drain(reason) => finish(ctl, id, &reason, true).await,
        Command::Stop(reason) => finish(ctl, id, &reason, false).await,
        // Callers handle these; reaching here means there is nothing to do.
        Command::Sleep(_) => Ok(()),
        Command::Wake(reply) => {
            let _ = reply.send(Err("the instance is stopping".into()));
            Ok(())
        }
    }
}

/// draining → stopped: out of the route table, in-flight requests finish
/// (up to the drain timeout), then SIGTERM, then SIGKILL after the grace.
async fn finish(
    ctl: &Arc<Controller>,
    id: &str,
    reason: &str,
    drain: bool,
) -> Result<(), crate::ControlError> {
    let state = instance_state(ctl, id);
    if drain
        && matches!(
            state,
            Some(
                InstanceState::Healthy
                    | InstanceState::Starting
                    | InstanceState::Loading
                    | InstanceState::Sleeping
            )
        )
    {
        ctl.transition(id, InstanceState::Draining, reason)?;
    }
    ctl.publish_routes();
    if drain {
        let deadline = Instant::now() + ctl.config.drain_timeout;
        while ctl.router.in_flight(id) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(50)).await;
        }
    }
    ctl.node.stop(id, ctl.config.stop_grace).await?;
    if !instance_state(ctl, id)
        .map(|s| s.is_final())
        .unwrap_or(true)
    {
        ctl.transition(id, InstanceState::Stopped, reason)?;
    }
    Ok(())
}

fn humanize(d: Duration) -> String {
    bora_api::Duration(d).to_string()
}
