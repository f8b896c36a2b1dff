//! Waking a sleeping service: the hot path of scale-from-zero.
//!
//! The router holds a request for a `min: 0` service without routable
//! instances and calls [`Controller::wake`] at once. The first call per
//! service starts one wake task (a flood of requests wakes it once); the
//! task thaws a frozen instance (light sleep) or starts one (deep sleep),
//! and the instance's supervisor publishes the route the moment its check
//! passes, which releases the held requests. If waking fails twice, the held
//! requests get an error with the reason instead of waiting for the timeout.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bora_api::{Instance, InstanceState};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::controller::{Controller, LOST};
use crate::supervisor::Command;

/// Attempts before the held requests are told waking failed.
const WAKE_ATTEMPTS: usize = 2;

/// How a service woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WakeKind {
    /// A frozen instance was thawed.
    Light,
    /// An instance was started (deep sleep, or a light sleeper that failed).
    Deep,
    /// It was awake already (a request raced a table swap).
    Awake,
}

impl WakeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WakeKind::Light => "light",
            WakeKind::Deep => "deep",
            WakeKind::Awake => "awake",
        }
    }
}

/// The router's handle on the controller. Weak, because the controller
/// owns the router.
pub(crate) struct RouterWaker {
    pub(crate) controller: Weak<Controller>,
    /// The control plane's runtime. The router calls from its own worker
    /// threads; the wake must run here, not on the router's event loops.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
}

impl bora_router::Waker for RouterWaker {
    fn wake(&self, app: &str, service: &str) {
        if let Some(ctl) = self.controller.upgrade() {
            let _entered = self.runtime.as_ref().map(|runtime| runtime.enter());
            ctl.wake(app, service);
        }
    }
}

impl Controller {
    /// Starts waking `app/service` unless a wake is already under way.
    /// Never blocks: the router calls it on the request path.
    pub fn wake(self: &Arc<Self>, app: &str, service: &str) {
        let key = format!("{app}/{service}");
        if !self.waking.lock().expect("waking lock").insert(key.clone()) {
            return;
        }
        let ctl = self.clone();
        let (app, service) = (app.to_string(), service.to_string());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = ctl.wake_service(&app, &service).await;
            let took = started.elapsed();
            ctl.waking.lock().expect("waking lock").remove(&key);
            match result {
                Ok(WakeKind::Awake) => {}
                Ok(kind) => {
                    ctl.metrics.wakeup(&app, &service, kind.as_str(), took);
                    tracing::info!(
                        app,
                        service,
                        kind = kind.as_str(),
                        ms = took.as_secs_f64() * 1e3,
                        "woke"
                    );
                    ctl.record_event(
                        &app,
                        &service,
                        "woke",
                        &format!(
                            "woke from {} sleep in {:.1} ms",
                            kind.as_str(),
                            took.as_secs_f64() * 1e3
                        ),
                    );
                }
                Err(reason) => {
                    tracing::warn!(app, service, reason, "wake failed");
                    ctl.metrics.wake_failed(&app, &service);
                    ctl.router.wake_failed(&app, &service, &reason);
                    ctl.record_event(&app, &service, "wake_failed", &reason);
                }
            }
        });
    }

    /// Whether a wake of `app/service` is under way.
    pub(crate) fn is_waking(&self, app: &str, service: &str) -> bool {
        self.waking
            .lock()
            .expect("waking lock")
            .contains(&format!("{app}/{service}"))
    }

    async fn wake_service(self: &Arc<Self>, app: &str, service: &str) -> Result<WakeKind, String> {
        fn fail(e: impl std::fmt::Display) -> String {
            e.to_string()
        }
        let svc = self.store.get_service(app, service).map_err(fail)?;
        let active = svc
            .active_deployment
            .ok_or_else(|| format!("{app}/{service} has no serving deployment"))?;
        let d = self.store.get_deployment(&active).map_err(fail)?;
        let live = self.live_instances(&active).map_err(fail)?;
        if live.iter().any(|i| i.state == InstanceState::Healthy) {
            self.publish_routes();
            return Ok(WakeKind::Awake);
        }

        let mut last_error = None;
        if let Some(sleeper) = live.iter().find(|i| i.state == InstanceState::Sleeping) {
            match self.wake_instance(&sleeper.id).await {
                Ok(()) => return Ok(WakeKind::Light),
                // Its supervisor restarts it; below waits for that.
                Err(reason) => last_error = Some(reason),
            }
        }

        // Deep: start the standby, or wait for an instance that is starting,
        // or start one.
        let mut waiting_for: Option<String> = live
            .iter()
            .find(|i| is_coming(i) || i.state == InstanceState::Sleeping)
            .map(|i| i.id.clone());
        if waiting_for.is_none()
            && let Some(standby) = live.iter().find(|i| i.state == InstanceState::Standby)
        {
            match self.wake_instance(&standby.id).await {
                Ok(()) => waiting_for = Some(standby.id.clone()),
                Err(reason) => last_error = Some(reason),
            }
        }
        let deadline = Instant::now() + self.router.config().hold_timeout;
        let mut attempts = usize::from(last_error.is_some());
        loop {
            let notified = self.changed.notified();
            let id = match &waiting_for {
                Some(id) => id.clone(),
                None => {
                    if attempts >= WAKE_ATTEMPTS {
                        return Err(format!(
                            "{app}/{service} failed to wake {attempts} times; last: {}",
                            last_error.unwrap_or_default()
                        ));
                    }
                    attempts += 1;
                    let i = self.start_instance(&d).map_err(fail)?;
                    waiting_for = Some(i.id.clone());
                    i.id
                }
            };
            let i = self.store.get_instance(&id).map_err(fail)?;
            match i.state {
                InstanceState::Healthy => return Ok(WakeKind::Deep),
                // A standby that was still being set up when the request
                // came: it waits for exactly this command.
                InstanceState::Standby => {
                    if let Err(reason) = self.wake_instance(&id).await {
                        last_error = Some(reason);
                        waiting_for = None;
                        continue;
                    }
                }
                InstanceState::Failed | InstanceState::Stopped => {
                    if !i.reason.starts_with(LOST) {
                        last_error =
                            Some(format!("instance {} {}: {}", short(&id), i.state, i.reason));
                    }
                    waiting_for = None;
                    continue;
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{app}/{service} did not wake within {}",
                    bora_api::Duration(self.router.config().hold_timeout)
                ));
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }

    /// Asks a sleeping instance's supervisor to thaw it; returns once it is
    /// healthy and routed, or why it is not.
    async fn wake_instance(&self, id: &str) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        if !self.send_command(id, Command::Wake(tx)) {
            return Err(format!("instance {} is not supervised", short(id)));
        }
        rx.await
            .unwrap_or_else(|_| Err(format!("instance {} stopped while waking", short(id))))
    }

    /// Puts a healthy instance into light sleep.
    pub(crate) fn sleep_instance(&self, id: &str, reason: &str) {
        if !self.send_command(id, Command::Sleep(reason.to_string())) {
            tracing::warn!(instance = %id, "cannot put an unsupervised instance to sleep");
        }
    }
}

fn is_coming(i: &Instance) -> bool {
    matches!(
        i.state,
        InstanceState::Pending
            | InstanceState::Pulling
            | InstanceState::Starting
            | InstanceState::Loading
    )
}

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}
