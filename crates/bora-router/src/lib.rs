//! Bora's data plane: the HTTP reverse proxy in front of every web service.
//!
//! Clients send HTTP/1.1 to the router. The `Host` header
//! (`<service>.<app>.<domain>`) picks a service, the longest matching route
//! prefix picks a port, and the load balancer picks one of the service's
//! healthy instances; the request then streams to `instance_ip:port` and the
//! response streams back. WebSocket and other upgrades are spliced through.
//! Plain requests (no upgrade, no chunked upload, no `Expect`) take a fast
//! path that relays them as bytes, like nginx (`passthrough`); everything
//! else goes through hyper. Both share routing, balancing, retries,
//! statistics and error responses (`proxy`).
//! A request for a sleeping service (scaled to zero, marked
//! [`ServiceRoutes::wakeable`]) is held while the control plane wakes it.
//! A `/v1/...` request at a host that is no service's goes to the
//! inference [`gateway`], which routes it by the `model` its body names to
//! a replica of a [`ModelRoutes`] entry.
//!
//! The control plane drives the router through four calls:
//!
//! - [`Router::new`] once, with a [`RouterConfig`];
//! - [`Router::serve`] on a listener, until its shutdown future resolves;
//! - [`Router::set_table`] whenever instances become healthy or start
//!   draining, or a service falls asleep: the whole [`RouteTable`] is
//!   swapped atomically, and requests held for a service that now has
//!   instances go on at once;
//! - [`Router::in_flight`] to wait for a draining instance to go idle.
//!
//! and, for the inference gateway, through [`Router::set_keys`] (the
//! inference keys, whenever they change) and [`Router::set_recorder`]
//! (where request records go); and, for scaling (to and from zero),
//! through four more:
//!
//! - [`Router::set_waker`] once, with the [`Waker`] that starts an instance
//!   of a sleeping service when a request for it is held;
//! - [`Router::wake_failed`] when waking a service failed: the requests
//!   held for it get 503 with the reason;
//! - [`Router::service_stats`] on every autoscaler tick: requests in flight
//!   and held, arrivals, the concurrency integral, latency, last activity;
//! - [`Router::register_metrics`] once, to serve the same statistics on
//!   `/metrics` (names in [`metrics`]).
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`table`] | the route table, its compiled form, counters that outlive it |
//! | [`balance`] | least-outstanding-requests balancing (pure) |
//! | `proxy` | one request: route, pick, forward, retry (both paths) |
//! | `passthrough` | the fast path: plain HTTP/1.1 relayed as bytes |
//! | `h1` | request and response heads on the fast path (pure) |
//! | `chunked` | finding the end of a chunked body (pure) |
//! | `pool` | each worker's idle connections to instances |
//! | `prefixed` | handing a connection to hyper with the bytes read |
//! | [`hold`] | holding requests while a sleeping service wakes, [`Waker`] |
//! | [`gateway`] | the inference gateway: keys, limits, model routing with prefix affinity, usage records |
//! | [`stats`] | per-service statistics, [`LatencyHistogram`] |
//! | [`metrics`] | Prometheus metrics rendered from the statistics |
//! | `headers` | hop-by-hop stripping, `X-Forwarded-*`, `X-Request-Id` |
//! | `body` | streaming bodies that end the request when they end |
//! | `upgrade` | splicing upgraded connections |
//! | [`error`] | [`ProxyError`] and the one place it becomes a response |
//! | [`hooks`] | request phases, the seam for custom observers |
//! | `server` | worker threads, accepting connections, graceful shutdown |

#![forbid(unsafe_code)]

pub mod balance;
mod body;
mod chunked;
pub mod error;
pub mod gateway;
mod h1;
mod headers;
pub mod hold;
pub mod hooks;
pub mod metrics;
mod passthrough;
mod pool;
mod prefixed;
mod proxy;
mod server;
pub mod stats;
pub mod table;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};

pub use crate::balance::Balancer;
pub use crate::error::{ErrorKind, ErrorSource, ProxyError};
pub use crate::gateway::{GatewayKey, Recorder, hash_secret};
pub use crate::hold::Waker;
pub use crate::hooks::{NoHooks, Phase, ProxyHooks, RequestInfo};
pub use crate::stats::{HeldOutcomes, LatencyHistogram, ServiceStats};
pub use crate::table::{
    Backend, ModelRoutes, Route, RouteTable, SANDBOX_APP, SandboxRoute, ServiceRoutes,
};

use crate::metrics::RouterCollector;
use crate::table::{CompiledTable, InFlightRegistry, Registries, ServiceRegistry};

/// How the router behaves; everything else comes from the route table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Services are reachable at `<service>.<app>.<domain>`, e.g. `localhost`.
    pub domain: String,
    /// How long to wait for a TCP connection to an instance. A timed-out
    /// connect is retried once on another instance, then answered with 504.
    pub connect_timeout: Duration,
    /// How long an instance may take to send response headers (counted from
    /// when the request is sent, upload included) before the client gets 504.
    pub upstream_header_timeout: Duration,
    /// How long an idle keep-alive connection to an instance stays pooled.
    pub pool_idle_timeout: Duration,
    /// How long a request may be held while its sleeping service wakes,
    /// before the client gets 503 with `Retry-After`.
    pub hold_timeout: Duration,
    /// The most requests held at once per sleeping service; more get 503
    /// with `Retry-After` at once.
    pub max_held: usize,
    /// Worker threads, each with its own event loop, accepting from the
    /// same socket (like nginx's `worker_processes`); 0: one per CPU.
    pub workers: usize,
    /// How long a gateway request may wait for a sleeping model to wake and
    /// load, before the client gets 503 with `Retry-After`.
    pub model_hold_timeout: Duration,
    /// The largest request body the gateway reads (413 beyond).
    pub max_gateway_body: usize,
    /// Whether request records keep the prompt and the completion (off:
    /// zero retention).
    pub retain_content: bool,
    /// Whether the gateway sends prompts that share a long prefix to the
    /// replica that holds it (off: least outstanding requests alone).
    pub prefix_affinity: bool,
}

impl RouterConfig {
    /// The defaults for `domain`: connect 2s, response headers 60s, idle
    /// pooled connections 90s, hold up to 1000 requests per sleeping
    /// service for up to 30s (a model: 10 minutes, for loading), one
    /// worker thread per CPU; gateway request bodies up to 32 MiB, no
    /// content retention.
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            connect_timeout: Duration::from_secs(2),
            upstream_header_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            hold_timeout: Duration::from_secs(30),
            max_held: 1000,
            workers: 0,
            model_hold_timeout: Duration::from_secs(600),
            max_gateway_body: 32 * 1024 * 1024,
            retain_content: false,
            prefix_affinity: true,
        }
    }

    /// The number of worker threads `serve` runs.
    pub(crate) fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// The reverse proxy. Cheap to share: the control plane keeps an
/// `Arc<Router>` to swap tables and read counts while [`Router::serve`]
/// runs.
pub struct Router {
    config: RouterConfig,
    table: ArcSwap<CompiledTable>,
    /// Notified after every table swap, for held requests.
    table_swapped: tokio::sync::Notify,
    in_flight: InFlightRegistry,
    services: ServiceRegistry,
    waker: ArcSwapOption<Arc<dyn Waker>>,
    hooks: Arc<dyn ProxyHooks>,
    /// The inference gateway's keys, limits and recorder.
    gateway: Arc<gateway::Gateway>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router with an empty table: every request gets 404 until
    /// [`Router::set_table`] is called.
    pub fn new(config: RouterConfig) -> Arc<Router> {
        Self::with_hooks(config, Arc::new(NoHooks))
    }

    /// Like [`Router::new`], with `hooks` told about every request phase
    /// (this is where metrics plug in).
    pub fn with_hooks(config: RouterConfig, hooks: Arc<dyn ProxyHooks>) -> Arc<Router> {
        Arc::new(Router {
            config,
            table: ArcSwap::from_pointee(CompiledTable::default()),
            table_swapped: tokio::sync::Notify::new(),
            in_flight: InFlightRegistry::default(),
            services: ServiceRegistry::default(),
            waker: ArcSwapOption::empty(),
            hooks,
            gateway: Arc::default(),
        })
    }

    /// The configuration the router was built with.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Replaces the whole route table at once. Requests already routed keep
    /// going to the instance they were sent to; new requests see only the
    /// new table. Held requests look their service up again at once: those
    /// whose service now has instances are forwarded.
    pub fn set_table(&self, table: RouteTable) {
        let services = table.services.len();
        let registries = Registries {
            in_flight: &self.in_flight,
            services: &self.services,
        };
        let compiled = CompiledTable::compile(table, &self.config.domain, registries);
        self.table.store(Arc::new(compiled));
        self.table_swapped.notify_waiters();
        self.in_flight.prune();
        self.services.prune();
        tracing::debug!(services, "route table swapped");
    }

    /// Replaces the inference keys the gateway accepts (revoked ones are
    /// listed too, to be refused by name).
    pub fn set_keys(&self, keys: Vec<GatewayKey>) {
        self.gateway.set_keys(keys);
    }

    /// Sets where the gateway sends a [`bora_api::RequestRecord`] for every
    /// request it answers. Until one is set, records are dropped.
    pub fn set_recorder(&self, recorder: Arc<dyn Recorder>) {
        self.gateway.set_recorder(recorder);
    }

    /// Sets the [`Waker`] called for every request held for a sleeping
    /// service. Until one is set, held requests just wait for a table in
    /// which their service has instances (or for the hold timeout).
    pub fn set_waker(&self, waker: Arc<dyn Waker>) {
        self.waker.store(Some(Arc::new(waker)));
    }

    /// Waking service `service` of app `app` failed: every request held for
    /// it now gets 503 with `Retry-After` and a body that includes `reason`
    /// (e.g. "instance abc failed while waking: exited with code 1").
    /// Requests held after this call wait as usual, for a retried wake.
    pub fn wake_failed(&self, app: &str, service: &str, reason: &str) {
        let Some(state) = self.services.get(app, service) else {
            return;
        };
        let held = state.counters.held();
        state.wake_failures.report(reason);
        tracing::info!(
            app,
            service,
            held,
            reason,
            "wake failed: releasing held requests"
        );
    }

    /// The statistics of service `service` in app `app` since the router
    /// started; zeroes for a service the router does not know. `("", "")`
    /// gives the requests that matched no service.
    ///
    /// A service that leaves the table is forgotten at the first table swap
    /// after its last request ended; if it comes back, its counters start
    /// from zero again.
    pub fn service_stats(&self, app: &str, service: &str) -> ServiceStats {
        self.services
            .get(app, service)
            .map(|state| state.counters.snapshot())
            .unwrap_or_default()
    }

    /// Adds the router's Prometheus metrics (see [`metrics`] for names and
    /// labels) to `registry`. They are rendered from [`Router::service_stats`]
    /// at scrape time; the registry holds only a weak reference to the
    /// router.
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        registry.register_collector(Box::new(RouterCollector::new(self)));
        self.gateway.metrics.register(registry);
    }

    /// Requests currently at the instance `instance_id`, including open
    /// upgraded (WebSocket) connections. A request counts from when the
    /// instance is chosen until its response body is fully sent or dropped.
    /// Used to drain an instance before stopping it: remove it from the
    /// table, then wait for this to reach 0.
    pub fn in_flight(&self, instance_id: &str) -> usize {
        self.in_flight.get(instance_id)
    }

    /// Serves clients on `listener` from [`RouterConfig::workers`] threads
    /// of its own (see `server`) until `shutdown` resolves, then shuts
    /// down gracefully: stops accepting, closes idle connections, lets
    /// requests and upgraded connections in progress finish, and returns
    /// when they have. To bound the wait, wrap the call in a timeout:
    /// dropping the returned future cuts whatever is still open.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(self, listener, shutdown).await
    }
}
