//! Request phases, and the hook that observes them.
//!
//! This is the seam for metrics (requests per second, latency histograms,
//! requests held while a sleeping service wakes): implement [`ProxyHooks`]
//! and pass it to `Router::with_hooks`. The proxy calls it at each
//! [`Phase`] of every request, with the request's [`RequestInfo`]; the
//! default does nothing and costs one virtual call per phase.
//!
//! [`Phase`] is `#[non_exhaustive]`: new phases (like [`Phase::Held`], for
//! requests waiting while a service scales up from zero) join it without
//! breaking implementors.
//!
//! The router's own per-service statistics (`Router::service_stats`, the
//! Prometheus metrics) do not go through hooks: the request's scope carries
//! them, so they cost no virtual call.

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use http::header::HeaderValue;

use crate::error::ProxyError;
use crate::stats::RequestStats;
use crate::table::Lease;

/// Observes request phases. Every method has a no-op default.
///
/// Calls happen on the request's task, inline: keep them short and never
/// block (bump counters, record into a histogram).
pub trait ProxyHooks: Send + Sync + 'static {
    /// Called at each phase of each request.
    fn on_phase(&self, request: &RequestInfo, phase: Phase<'_>) {
        let _ = (request, phase);
    }
}

/// Hooks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl ProxyHooks for NoHooks {}

/// What is known about a request so far.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// The `X-Request-Id` the request travels with.
    pub request_id: HeaderValue,
    /// When the router started handling it.
    pub started: Instant,
    /// App of the routed service, once routed.
    pub app: Option<Arc<str>>,
    /// Routed service, once routed.
    pub service: Option<Arc<str>>,
    /// Chosen instance, once chosen (the last one, after a retry).
    pub instance_id: Option<Arc<str>>,
    /// Status sent to the client, once known.
    pub status: Option<StatusCode>,
}

/// A step in the life of a proxied request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Phase<'a> {
    /// The request's service is asleep (wakeable, no instance): the request
    /// is held while it wakes (`app` and `service` are set). `Routed`
    /// follows once the service has an instance.
    Held,
    /// Host and path matched a service that has instances (`app` and
    /// `service` are set).
    Routed,
    /// An instance was chosen and the request is being sent to it
    /// (`instance_id` is set). Fires again on a retry.
    Forwarding,
    /// The instance answered with response headers (`status` is set).
    ResponseHeaders,
    /// The request failed; the client gets the error's response.
    Failed {
        /// What went wrong.
        error: &'a ProxyError,
    },
    /// The exchange is over: response body fully sent or dropped, or the
    /// upgraded connection closed. Fires exactly once per request.
    Completed,
}

/// Per-request state that must end with the response: the in-flight lease,
/// the service statistics and the `Completed` phase. It travels inside the
/// response body (or the upgraded tunnel) and ends all three when dropped,
/// whatever the path out.
pub(crate) struct RequestScope {
    inner: Option<ScopeInner>,
}

struct ScopeInner {
    info: RequestInfo,
    hooks: Arc<dyn ProxyHooks>,
    lease: Option<Lease>,
    stats: Option<RequestStats>,
}

impl RequestScope {
    /// Starts the scope of a request.
    pub(crate) fn new(request_id: HeaderValue, hooks: Arc<dyn ProxyHooks>) -> Self {
        Self {
            inner: Some(ScopeInner {
                info: RequestInfo {
                    request_id,
                    started: Instant::now(),
                    app: None,
                    service: None,
                    instance_id: None,
                    status: None,
                },
                hooks,
                lease: None,
                stats: None,
            }),
        }
    }

    /// Updates what is known about the request (no-op on a moved-out scope).
    pub(crate) fn update(&mut self, f: impl FnOnce(&mut RequestInfo)) {
        if let Some(inner) = &mut self.inner {
            f(&mut inner.info);
        }
    }

    /// Tells the hooks about `phase`.
    pub(crate) fn phase(&self, phase: Phase<'_>) {
        if let Some(inner) = &self.inner {
            inner.hooks.on_phase(&inner.info, phase);
        }
    }

    /// Holds `lease` (dropping any previous one) until the scope ends.
    pub(crate) fn set_lease(&mut self, lease: Option<Lease>) {
        if let Some(inner) = &mut self.inner {
            inner.lease = lease;
        }
    }

    /// Counts the request in its service's statistics from now on.
    pub(crate) fn set_stats(&mut self, stats: RequestStats) {
        if let Some(inner) = &mut self.inner {
            inner.stats = Some(stats);
        }
    }

    /// The request's share of its service's statistics, once routed.
    pub(crate) fn stats(&mut self) -> Option<&mut RequestStats> {
        self.inner.as_mut()?.stats.as_mut()
    }

    /// The request was sent to `lease`'s instance.
    pub(crate) fn enter_instance(&mut self, lease: Lease) {
        self.set_lease(Some(lease));
        if let Some(stats) = self.stats() {
            stats.enter_instance();
        }
    }

    /// The instance is done with the request (it failed): stop counting it
    /// there, even though the error response is still to be sent.
    pub(crate) fn leave_instance(&mut self) {
        self.set_lease(None);
        if let Some(stats) = self.stats() {
            stats.leave_instance();
        }
    }

    /// Response headers with `status` are about to leave: record it, and
    /// the latency since the request arrived.
    pub(crate) fn respond(&mut self, status: StatusCode) {
        if let Some(inner) = &mut self.inner {
            inner.info.status = Some(status);
            if let Some(stats) = &mut inner.stats {
                stats.respond(status, inner.info.started.elapsed());
            }
        }
    }

    /// Moves the scope out, leaving an empty one that does nothing on drop.
    pub(crate) fn take(&mut self) -> Self {
        Self {
            inner: self.inner.take(),
        }
    }
}

impl Drop for RequestScope {
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            // Release the instance and the service levels first, so an
            // observer of `Completed` sees the in-flight counts already down.
            drop(inner.lease.take());
            drop(inner.stats.take());
            inner.hooks.on_phase(&inner.info, Phase::Completed);
        }
    }
}
