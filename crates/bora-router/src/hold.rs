//! Holding requests while a sleeping service wakes (scale from zero).
//!
//! A service the control plane lists as `wakeable` with no instances is
//! asleep. A request routed to it is *held* instead of answered 503:
//!
//! 1. it is counted as held, unless `max_held` requests already are held for
//!    the service: then it gets 503 at once ([`ErrorKind::TooManyHeld`]);
//! 2. the [`Waker`] is told at once, on every held request (waking is
//!    idempotent, and a later request thus retries a wake that failed);
//! 3. it waits for the first of: a table swap that gives the service
//!    instances (it is then forwarded like any request), a
//!    `Router::wake_failed` for the service ([`ErrorKind::WakeFailed`]), or
//!    `hold_timeout` ([`ErrorKind::WakeTimeout`]). A table in which the
//!    service is gone, or no longer wakeable, ends the hold with the error
//!    such a table gives (404, or 503 "no healthy instance").
//!
//! Nothing polls: `set_table` wakes every held request, which looks its
//! service up again in the new table. A client that goes away drops its
//! request's future, and with it the hold.

use std::sync::Arc;

use tokio::sync::watch;

use crate::Router;
use crate::error::{ErrorKind, ProxyError};
use crate::hooks::{Phase, RequestScope};
use crate::proxy::no_healthy_instance;
use crate::stats::HoldOutcome;
use crate::table::CompiledService;

/// Starts instances of sleeping services. The control plane implements it
/// and hands it to `Router::set_waker`.
///
/// The router calls [`Waker::wake`] on the request's task for every request
/// it holds, so a flood of requests calls it many times for one service: it
/// must be idempotent and return at once (record the wish, or spawn), never
/// block.
pub trait Waker: Send + Sync + 'static {
    /// Requests are waiting for service `service` of app `app`: start an
    /// instance, then list it in the route table (or call
    /// `Router::wake_failed` if that fails).
    fn wake(&self, app: &str, service: &str);
}

/// Tells the requests held for one service that waking it failed.
///
/// A held request subscribes before it starts waiting and sees only the
/// failures reported after that, so a failure reaches exactly the requests
/// held at that moment.
#[derive(Debug)]
pub(crate) struct WakeFailures(watch::Sender<Arc<str>>);

impl Default for WakeFailures {
    fn default() -> Self {
        Self(watch::Sender::new(Arc::from("")))
    }
}

impl WakeFailures {
    /// Reports a failure to every current subscriber.
    pub(crate) fn report(&self, reason: &str) {
        self.0.send_replace(Arc::from(reason));
    }

    fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        self.0.subscribe()
    }
}

/// How a held request finds its service again in a new table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lookup<'a> {
    /// A web service, by the host the client named.
    Host(&'a str),
    /// A model service, by its name (the gateway).
    Model(&'a str),
}

impl Router {
    /// Holds a request for the sleeping `service` (found by `lookup`) until
    /// a table gives it instances, for at most `timeout`; returns the
    /// service from that table.
    pub(crate) async fn hold(
        &self,
        service: Arc<CompiledService>,
        lookup: Lookup<'_>,
        timeout: std::time::Duration,
        scope: &mut RequestScope,
    ) -> Result<Arc<CompiledService>, ProxyError> {
        // Subscribe first: a failure reported from here on concerns us.
        let mut failures = service.state.wake_failures.subscribe();
        let max_held = self.config.max_held;
        // (The scope has the stats of every routed request.)
        if !scope.stats().is_some_and(|stats| stats.hold(max_held)) {
            return Err(ErrorKind::TooManyHeld {
                app: service.app.clone(),
                service: service.service.clone(),
                limit: max_held,
            }
            .into());
        }
        scope.phase(Phase::Held);
        tracing::debug!("service asleep: holding the request until it wakes");
        self.wake(&service);

        let woken = self
            .wait_for_instances(&service, lookup, timeout, &mut failures)
            .await;
        let outcome = match &woken {
            Ok(_) => HoldOutcome::Forwarded,
            Err(error) if matches!(error.kind, ErrorKind::WakeTimeout { .. }) => {
                HoldOutcome::Timeout
            }
            Err(_) => HoldOutcome::WakeFailed,
        };
        if let Some(stats) = scope.stats() {
            stats.unhold(outcome);
        }
        woken
    }

    /// Calls the waker, if one is set.
    fn wake(&self, service: &CompiledService) {
        if let Some(waker) = self.waker.load_full() {
            waker.wake(&service.app, &service.service);
        }
    }

    /// Waits until the table gives the service instances, the wake fails,
    /// or the hold times out.
    async fn wait_for_instances(
        &self,
        asleep: &CompiledService,
        lookup: Lookup<'_>,
        timeout: std::time::Duration,
        failures: &mut watch::Receiver<Arc<str>>,
    ) -> Result<Arc<CompiledService>, ProxyError> {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            // Register for the next swap before reading the table, so a swap
            // in between is not missed.
            let swapped = self.table_swapped.notified();
            tokio::pin!(swapped);
            swapped.as_mut().enable();

            let current = match lookup {
                Lookup::Host(host) => self.route(host)?,
                Lookup::Model(name) => self.model_service(name)?,
            };
            if !current.backends.is_empty() {
                return Ok(current);
            }
            if !current.wakeable {
                return Err(no_healthy_instance(&current));
            }
            tokio::select! {
                () = &mut swapped => {}
                Ok(()) = failures.changed() => {
                    let reason = failures.borrow_and_update().to_string();
                    return Err(ErrorKind::WakeFailed {
                        app: asleep.app.clone(),
                        service: asleep.service.clone(),
                        reason,
                    }
                    .into());
                }
                () = &mut deadline => {
                    return Err(ErrorKind::WakeTimeout {
                        app: asleep.app.clone(),
                        service: asleep.service.clone(),
                        timeout,
                    }
                    .into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_reach_only_current_subscribers() {
        let failures = WakeFailures::default();
        failures.report("before anyone waited");
        let mut early = failures.subscribe();
        assert!(!early.has_changed().unwrap());
        failures.report("instance abc failed while waking");
        let late = failures.subscribe();
        assert!(early.has_changed().unwrap());
        assert_eq!(
            &**early.borrow_and_update(),
            "instance abc failed while waking"
        );
        assert!(!late.has_changed().unwrap());
    }
}
