//! Bora's data plane: the HTTP reverse proxy in front of every web service.
//!
//! Clients send HTTP/1.1 to the router. The `Host` header
//! (`<service>.<app>.<domain>`) picks a service, the longest matching route
//! prefix picks a port, and the load balancer picks one of the service's
//! healthy instances; the request then streams to `instance_ip:port` and the
//! response streams back. WebSocket and other upgrades are spliced through.
//!
//! The control plane drives the router through four calls:
//!
//! - [`Router::new`] once, with a [`RouterConfig`];
//! - [`Router::serve`] on a listener, until its shutdown future resolves;
//! - [`Router::set_table`] whenever instances become healthy or start
//!   draining: the whole [`RouteTable`] is swapped atomically;
//! - [`Router::in_flight`] to wait for a draining instance to go idle.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`table`] | the route table, its compiled form, in-flight counting |
//! | [`balance`] | least-outstanding-requests balancing (pure) |
//! | `proxy` | one request: route, pick, forward, retry |
//! | `headers` | hop-by-hop stripping, `X-Forwarded-*`, `X-Request-Id` |
//! | `body` | streaming bodies that end the request when they end |
//! | `upgrade` | splicing upgraded connections |
//! | [`error`] | [`ProxyError`] and the one place it becomes a response |
//! | [`hooks`] | request phases, the seam for metrics |
//! | `server` | accepting connections, graceful shutdown |

#![forbid(unsafe_code)]

pub mod balance;
mod body;
pub mod error;
mod headers;
pub mod hooks;
mod proxy;
mod server;
pub mod table;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use crate::balance::Balancer;
pub use crate::error::{ErrorKind, ErrorSource, ProxyError};
pub use crate::hooks::{NoHooks, Phase, ProxyHooks, RequestInfo};
pub use crate::table::{Backend, Route, RouteTable, ServiceRoutes};

use crate::body::RequestBody;
use crate::table::{CompiledTable, InFlightRegistry};

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
}

impl RouterConfig {
    /// The defaults for `domain`: connect 2s, response headers 60s, idle
    /// pooled connections 90s.
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            connect_timeout: Duration::from_secs(2),
            upstream_header_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

/// The reverse proxy. Cheap to share: the control plane keeps an
/// `Arc<Router>` to swap tables and read in-flight counts while
/// [`Router::serve`] runs.
pub struct Router {
    config: RouterConfig,
    table: ArcSwap<CompiledTable>,
    in_flight: InFlightRegistry,
    client: Client<HttpConnector, RequestBody>,
    hooks: Arc<dyn ProxyHooks>,
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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Arc::new(Router {
            config,
            table: ArcSwap::from_pointee(CompiledTable::default()),
            in_flight: InFlightRegistry::default(),
            client,
            hooks,
        })
    }

    /// The configuration the router was built with.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Replaces the whole route table at once. Requests already routed keep
    /// going to the instance they were sent to; new requests see only the
    /// new table.
    pub fn set_table(&self, table: RouteTable) {
        let services = table.services.len();
        let compiled = CompiledTable::compile(table, &self.config.domain, &self.in_flight);
        self.table.store(Arc::new(compiled));
        self.in_flight.prune();
        tracing::debug!(services, "route table swapped");
    }

    /// Requests currently at the instance `instance_id`, including open
    /// upgraded (WebSocket) connections. A request counts from when the
    /// instance is chosen until its response body is fully sent or dropped.
    /// Used to drain an instance before stopping it: remove it from the
    /// table, then wait for this to reach 0.
    pub fn in_flight(&self, instance_id: &str) -> usize {
        self.in_flight.get(instance_id)
    }

    /// Serves clients on `listener` until `shutdown` resolves, then shuts
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
