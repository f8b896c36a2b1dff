//! The route table: what the control plane hands the router, and the compiled,
//! read-optimised form the proxy looks requests up in.
//!
//! The control plane builds a [`RouteTable`] (plain data, cheap to construct
//! in tests) and calls `Router::set_table`. The router compiles it once into a
//! `CompiledTable`: a host → service index, routes sorted longest prefix
//! first, one shared in-flight counter per instance and one shared
//! `ServiceState` (statistics, wake failures) per service. Requests then only
//! ever read a compiled table through an `Arc`, so a swap never blocks them.
//!
//! Counters outlive tables: the registries hand every table version the same
//! counter for the same instance or service, and forget it only once no
//! table and no request references it any more.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::balance::Balancer;
use crate::hold::WakeFailures;
use crate::stats::ServiceCounters;

/// Everything the router may send traffic to: one entry per routed service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// The routed services. A service (app + service name) should appear at
    /// most once; if it appears twice, the first entry wins.
    pub services: Vec<ServiceRoutes>,
    /// Running sandboxes, reached by their id (see [`SandboxRoute`]).
    pub sandboxes: Vec<SandboxRoute>,
    /// Model services, reached only through the inference gateway (see
    /// [`ModelRoutes`]), never by host.
    pub models: Vec<ModelRoutes>,
}

/// A model service: what the inference gateway (`/v1/...` on any host
/// that is not a service's) routes a request naming `model: <name>` to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelRoutes {
    /// The name clients give in `model`: the service's name, unique across
    /// apps among model services.
    pub name: String,
    /// The app and service it belongs to (statistics, autoscaling, wake).
    pub app: String,
    pub service: String,
    /// The port the replicas serve the OpenAI API on.
    pub port: u16,
    /// Ready replicas.
    pub backends: Vec<Backend>,
    /// Whether a request may wake it when it has no ready replica.
    pub wakeable: bool,
    /// `sha256:…` of the model file, for the audit trail.
    pub digest: Option<String>,
    /// The engine and its version, for the audit trail.
    pub engine: String,
    /// Unix time (seconds) the model was deployed, shown as `created` in
    /// `/v1/models`.
    pub created: u64,
}

/// A running sandbox. A request reaches port `P` of sandbox `ID` with the
/// headers `E2b-Sandbox-Id: ID` and `E2b-Sandbox-Port: P` (how E2B's SDKs
/// address sandboxes through one URL), or at host `P-ID.<domain>`. Any
/// port of the sandbox is reachable this way, and only sandboxes listed
/// here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxRoute {
    pub id: String,
    pub ip: IpAddr,
}

/// The app name sandboxes are counted under in the statistics and metrics:
/// not a valid app name, so it never mixes with a real app's.
pub const SANDBOX_APP: &str = "@sandbox";

/// The routes and healthy instances of one service.
///
/// The service is reachable at `<service>.<app>.<domain>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRoutes {
    /// Name of the app the service belongs to.
    pub app: String,
    /// Name of the service.
    pub service: String,
    /// Path prefixes and the instance port each one goes to.
    pub routes: Vec<Route>,
    /// Healthy instances that may receive new requests. Draining instances
    /// must not be listed: requests already at them finish regardless.
    pub backends: Vec<Backend>,
    /// Whether the service can be woken when it has no instance (it scaled
    /// to zero). If so, requests are held and the `Waker` is called until a
    /// table lists instances; if not, they get 503 at once.
    pub wakeable: bool,
}

/// One path prefix of a service and the instance port that serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// A path prefix matched on segment boundaries: `/api` matches `/api`
    /// and `/api/x` but not `/apix`; `/` matches every path.
    pub path_prefix: String,
    /// The port on the instance that serves this prefix.
    pub port: u16,
}

/// One healthy instance of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The instance's ID, as `Router::in_flight` takes it.
    pub instance_id: String,
    /// The address the instance listens on.
    pub ip: IpAddr,
}

/// Counts the requests currently at each instance, across table versions.
///
/// A counter lives as long as a table or a request references it, so
/// `in_flight` keeps answering for an instance that was just removed from the
/// table while its last requests finish (that is how draining works).
#[derive(Debug, Default)]
pub(crate) struct InFlightRegistry {
    counters: Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>,
}

impl InFlightRegistry {
    /// The counter of `instance_id`, created at zero if there is none.
    fn counter(&self, instance_id: &str) -> (Arc<str>, Arc<AtomicUsize>) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, counter)) = counters.get_key_value(instance_id) {
            return (id.clone(), counter.clone());
        }
        let id: Arc<str> = Arc::from(instance_id);
        let counter = Arc::new(AtomicUsize::new(0));
        counters.insert(id.clone(), counter.clone());
        (id, counter)
    }

    /// Requests currently at `instance_id` (0 for an unknown instance).
    pub(crate) fn get(&self, instance_id: &str) -> usize {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters
            .get(instance_id)
            .map_or(0, |counter| counter.load(Ordering::Acquire))
    }

    /// Forgets counters that no table and no request references any more.
    pub(crate) fn prune(&self) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the registry holds the Arc: no table lists the instance and no
        // lease points at it, so the count is 0 and nothing can raise it.
        counters.retain(|_, counter| Arc::strong_count(counter) > 1);
    }
}

/// What the router keeps about one service across table versions.
#[derive(Debug)]
pub(crate) struct ServiceState {
    pub(crate) app: Arc<str>,
    pub(crate) service: Arc<str>,
    pub(crate) counters: ServiceCounters,
    /// Reaches the requests held while the service wakes.
    pub(crate) wake_failures: WakeFailures,
}

impl ServiceState {
    pub(crate) fn new(app: &str, service: &str) -> Self {
        Self {
            app: Arc::from(app),
            service: Arc::from(service),
            counters: ServiceCounters::default(),
            wake_failures: WakeFailures::default(),
        }
    }
}

/// The states of one app's services, by service name.
type ServicesOfApp = HashMap<Arc<str>, Arc<ServiceState>>;

/// The [`ServiceState`] of each service, across table versions, keyed by
/// app then service name. Requests that match no service share one more
/// state, `unrouted`, named app `""`, service `""`.
#[derive(Debug)]
pub(crate) struct ServiceRegistry {
    services: Mutex<HashMap<Arc<str>, ServicesOfApp>>,
    unrouted: Arc<ServiceState>,
}

impl Default for ServiceRegistry {
    fn default() -> Self {
        Self {
            services: Mutex::default(),
            unrouted: Arc::new(ServiceState::new("", "")),
        }
    }
}

impl ServiceRegistry {
    /// The state of `service` in `app`, created if there is none.
    fn state(&self, app: &str, service: &str) -> Arc<ServiceState> {
        let mut apps = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = apps.get(app).and_then(|services| services.get(service)) {
            return state.clone();
        }
        let state = Arc::new(ServiceState::new(app, service));
        apps.entry(state.app.clone())
            .or_default()
            .insert(state.service.clone(), state.clone());
        state
    }

    /// The state of `service` in `app` if the router knows it: listed in the
    /// table or still busy with requests. `("", "")` is the unrouted state.
    pub(crate) fn get(&self, app: &str, service: &str) -> Option<Arc<ServiceState>> {
        if app.is_empty() && service.is_empty() {
            return Some(self.unrouted.clone());
        }
        let apps = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        apps.get(app)?.get(service).cloned()
    }

    /// The state requests that match no service count in.
    pub(crate) fn unrouted(&self) -> Arc<ServiceState> {
        self.unrouted.clone()
    }

    /// Every known state, the unrouted one first.
    pub(crate) fn all(&self) -> Vec<Arc<ServiceState>> {
        let apps = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = vec![self.unrouted.clone()];
        all.extend(apps.values().flat_map(HashMap::values).cloned());
        all
    }

    /// Forgets services that no table and no request references any more:
    /// they left the table and are idle, so their counters restart at zero
    /// if they come back.
    pub(crate) fn prune(&self) {
        let mut apps = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        for services in apps.values_mut() {
            services.retain(|_, state| Arc::strong_count(state) > 1);
        }
        apps.retain(|_, services| !services.is_empty());
    }
}

/// The registries a table is compiled against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Registries<'a> {
    pub(crate) in_flight: &'a InFlightRegistry,
    pub(crate) services: &'a ServiceRegistry,
}

/// A route table compiled for lookups.
#[derive(Debug, Default)]
pub(crate) struct CompiledTable {
    /// `<service>.<app>.<domain>`, lower-case, → service.
    by_host: HashMap<String, Arc<CompiledService>>,
    /// Sandbox id → the sandbox, as a service with one backend and no
    /// routes (the port comes with each request).
    sandboxes: HashMap<String, Arc<CompiledService>>,
    /// `.<domain>`, for `<port>-<id>.<domain>` hosts.
    domain_suffix: String,
    /// Model name → the model service, for the gateway.
    models: HashMap<String, Arc<CompiledModel>>,
}

/// A model service, compiled: a service whose one route is its API port.
#[derive(Debug)]
pub(crate) struct CompiledModel {
    pub(crate) name: Arc<str>,
    pub(crate) service: Arc<CompiledService>,
    pub(crate) port: u16,
    pub(crate) digest: Option<String>,
    pub(crate) engine: String,
    pub(crate) created: u64,
}

impl CompiledTable {
    /// Compiles `table` for `domain`, sharing counters through `registries`.
    pub(crate) fn compile(table: RouteTable, domain: &str, registries: Registries<'_>) -> Self {
        let domain = normalize_domain(domain);
        let mut by_host = HashMap::with_capacity(table.services.len());
        for service in table.services {
            let host = service_host(&service.service, &service.app, &domain);
            if by_host.contains_key(&host) {
                tracing::warn!(%host, "route table lists a service twice; keeping the first entry");
                continue;
            }
            by_host.insert(
                host,
                Arc::new(CompiledService::compile(service, registries)),
            );
        }
        let sandboxes = table
            .sandboxes
            .into_iter()
            .map(|sandbox| {
                let service = ServiceRoutes {
                    app: SANDBOX_APP.into(),
                    service: sandbox.id.clone(),
                    routes: Vec::new(),
                    backends: vec![Backend {
                        instance_id: format!("sandbox-{}", sandbox.id),
                        ip: sandbox.ip,
                    }],
                    wakeable: false,
                };
                (
                    sandbox.id,
                    Arc::new(CompiledService::compile(service, registries)),
                )
            })
            .collect();
        let mut models = HashMap::with_capacity(table.models.len());
        for model in table.models {
            if models.contains_key(&model.name) {
                tracing::warn!(model = %model.name, "route table lists a model twice; keeping the first entry");
                continue;
            }
            let service = ServiceRoutes {
                app: model.app,
                service: model.service,
                routes: vec![Route {
                    path_prefix: "/".into(),
                    port: model.port,
                }],
                backends: model.backends,
                wakeable: model.wakeable,
            };
            let compiled = CompiledModel {
                name: Arc::from(model.name.as_str()),
                service: Arc::new(CompiledService::compile(service, registries)),
                port: model.port,
                digest: model.digest,
                engine: model.engine,
                created: model.created,
            };
            models.insert(model.name, Arc::new(compiled));
        }
        Self {
            by_host,
            sandboxes,
            domain_suffix: format!(".{domain}"),
            models,
        }
    }

    /// The model clients call `name`.
    pub(crate) fn model(&self, name: &str) -> Option<&Arc<CompiledModel>> {
        self.models.get(name)
    }

    /// Every model, by name.
    pub(crate) fn models(&self) -> impl Iterator<Item = &Arc<CompiledModel>> {
        self.models.values()
    }

    /// Whether `host` (normalised) is a service's or a sandbox's: such
    /// requests are proxied, never answered by the gateway.
    pub(crate) fn routes_host(&self, host: &str) -> bool {
        self.by_host.contains_key(host) || self.sandbox_host(host).is_some()
    }

    /// The sandbox with id `id`.
    pub(crate) fn sandbox(&self, id: &str) -> Option<&Arc<CompiledService>> {
        self.sandboxes.get(id)
    }

    /// For a host `<port>-<id>.<domain>` (normalised), the sandbox id and
    /// the port.
    pub(crate) fn sandbox_host<'h>(&self, host: &'h str) -> Option<(&'h str, u16)> {
        let label = host.strip_suffix(self.domain_suffix.as_str())?;
        let (port, id) = label.split_once('-')?;
        if id.is_empty() || id.contains('.') {
            return None;
        }
        Some((id, port.parse().ok().filter(|p| *p != 0)?))
    }

    /// The service serving `host` (already normalised by [`normalize_host`]).
    pub(crate) fn service(&self, host: &str) -> Option<&Arc<CompiledService>> {
        self.by_host.get(host)
    }
}

/// One service, compiled.
#[derive(Debug)]
pub(crate) struct CompiledService {
    pub(crate) app: Arc<str>,
    pub(crate) service: Arc<str>,
    /// Normalised prefixes, longest first.
    routes: Vec<Route>,
    pub(crate) backends: Vec<CompiledBackend>,
    /// Hold requests while there is no backend, instead of answering 503.
    pub(crate) wakeable: bool,
    /// Statistics and wake failures, shared across table versions.
    pub(crate) state: Arc<ServiceState>,
    /// Load-balancing state; the lock also makes "pick + count" atomic so
    /// concurrent requests see each other's choices.
    balancer: Mutex<Balancer>,
}

/// One instance of a compiled service.
#[derive(Debug)]
pub(crate) struct CompiledBackend {
    pub(crate) instance_id: Arc<str>,
    pub(crate) ip: IpAddr,
    in_flight: Arc<AtomicUsize>,
}

impl CompiledBackend {
    /// Requests at this instance now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts one more request at this instance, until the lease drops.
    pub(crate) fn lease(&self) -> Lease {
        Lease::acquire(self.in_flight.clone())
    }
}

impl CompiledService {
    fn compile(service: ServiceRoutes, registries: Registries<'_>) -> Self {
        let mut routes: Vec<Route> = service
            .routes
            .into_iter()
            .map(|route| Route {
                path_prefix: normalize_prefix(&route.path_prefix),
                port: route.port,
            })
            .collect();
        // Longest prefix first; the stable sort keeps the table's order among
        // equal prefixes, so the first one listed wins.
        routes.sort_by_key(|route| std::cmp::Reverse(route.path_prefix.len()));
        let backends = service
            .backends
            .into_iter()
            .map(|backend| {
                let (instance_id, in_flight) = registries.in_flight.counter(&backend.instance_id);
                CompiledBackend {
                    instance_id,
                    ip: backend.ip,
                    in_flight,
                }
            })
            .collect();
        let state = registries.services.state(&service.app, &service.service);
        Self {
            app: state.app.clone(),
            service: state.service.clone(),
            routes,
            backends,
            wakeable: service.wakeable,
            state,
            balancer: Mutex::new(Balancer::default()),
        }
    }

    /// The port of the longest route prefix matching `path`.
    pub(crate) fn port_for(&self, path: &str) -> Option<u16> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.path_prefix, path))
            .map(|route| route.port)
    }

    /// Picks a backend (least outstanding requests, ties round-robin),
    /// skipping the indices in `excluded`, and counts a request at it.
    pub(crate) fn pick(&self, excluded: &[usize]) -> Option<(usize, Lease)> {
        let mut balancer = self.balancer.lock().unwrap_or_else(PoisonError::into_inner);
        let index = balancer.pick_by(
            self.backends.len(),
            |index| self.backends[index].in_flight.load(Ordering::Acquire),
            excluded,
        )?;
        let lease = Lease::acquire(self.backends[index].in_flight.clone());
        Some((index, lease))
    }
}

/// One request (or upgraded connection) counted at an instance; the count
/// goes back down when the lease is dropped, whatever the path out.
#[derive(Debug)]
pub(crate) struct Lease {
    counter: Arc<AtomicUsize>,
}

impl Lease {
    pub(crate) fn acquire(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self { counter }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The host name of a service: `<service>.<app>.<domain>`, lower-case.
fn service_host(service: &str, app: &str, domain: &str) -> String {
    format!("{service}.{app}.{domain}").to_ascii_lowercase()
}

/// Lower-case, without surrounding dots.
fn normalize_domain(domain: &str) -> String {
    domain.trim_matches('.').to_ascii_lowercase()
}

/// The host part of a `Host` header value: port stripped, lower-case,
/// without a trailing dot. IPv6 literals keep their brackets. Borrowed
/// when nothing needs lower-casing (the usual case: no allocation).
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let name = if host.starts_with('[') {
        // `[::1]:8080` → `[::1]`
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    let name = name.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// `/api/` → `/api`, `api` → `/api`, `` and `/` → `/`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_matches('/');
    format!("/{trimmed}")
}

/// Does the normalised `prefix` match `path` on a segment boundary?
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(routes: &[(&str, u16)], backends: &[&str]) -> ServiceRoutes {
        ServiceRoutes {
            app: "hello".into(),
            service: "web".into(),
            routes: routes
                .iter()
                .map(|(prefix, port)| Route {
                    path_prefix: (*prefix).into(),
                    port: *port,
                })
                .collect(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, id)| Backend {
                    instance_id: (*id).into(),
                    ip: IpAddr::from([127, 0, 0, 2 + i as u8]),
                })
                .collect(),
            wakeable: false,
        }
    }

    /// Both registries, for compiling.
    #[derive(Default)]
    struct Counters {
        in_flight: InFlightRegistry,
        services: ServiceRegistry,
    }

    impl Counters {
        fn registries(&self) -> Registries<'_> {
            Registries {
                in_flight: &self.in_flight,
                services: &self.services,
            }
        }
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            normalize_host("Web.Hello.Localhost:8080"),
            "web.hello.localhost"
        );
        assert_eq!(
            normalize_host("web.hello.localhost."),
            "web.hello.localhost"
        );
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("web.hello.localhost"), "web.hello.localhost");
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
        assert!(prefix_matches("/", "/anything"));
        assert_eq!(normalize_prefix("/api/"), "/api");
        assert_eq!(normalize_prefix("api"), "/api");
        assert_eq!(normalize_prefix(""), "/");
        assert_eq!(normalize_prefix("/"), "/");
    }

    #[test]
    fn longest_prefix_wins() {
        let registry = Counters::default();
        let svc = CompiledService::compile(
            service(&[("/", 1), ("/api/v2", 3), ("/api", 2)], &[]),
            registry.registries(),
        );
        assert_eq!(svc.port_for("/"), Some(1));
        assert_eq!(svc.port_for("/apix"), Some(1));
        assert_eq!(svc.port_for("/api"), Some(2));
        assert_eq!(svc.port_for("/api/v1"), Some(2));
        assert_eq!(svc.port_for("/api/v2/x"), Some(3));

        let no_root = CompiledService::compile(service(&[("/api", 2)], &[]), registry.registries());
        assert_eq!(no_root.port_for("/other"), None);
    }

    #[test]
    fn table_indexes_hosts_case_insensitively() {
        let registry = Counters::default();
        let mut svc = service(&[("/", 80)], &["a"]);
        svc.service = "Web".into();
        let table = CompiledTable::compile(
            RouteTable {
                services: vec![svc],
                sandboxes: Vec::new(),
                models: Vec::new(),
            },
            ".LocalHost",
            registry.registries(),
        );
        assert!(table.service("web.hello.localhost").is_some());
        assert!(table.service("api.hello.localhost").is_none());
    }

    #[test]
    fn counters_outlive_tables_while_leased_and_are_pruned_after() {
        let registry = Counters::default();
        let table = CompiledTable::compile(
            RouteTable {
                services: vec![service(&[("/", 80)], &["a", "b"])],
                sandboxes: Vec::new(),
                models: Vec::new(),
            },
            "localhost",
            registry.registries(),
        );
        let svc = table.service("web.hello.localhost").unwrap().clone();
        let (first, lease) = svc.pick(&[]).unwrap();
        let id = svc.backends[first].instance_id.clone();
        assert_eq!(registry.in_flight.get(&id), 1);

        drop((table, svc));
        registry.in_flight.prune();
        assert_eq!(
            registry.in_flight.get(&id),
            1,
            "a leased counter survives the table"
        );
        drop(lease);
        assert_eq!(registry.in_flight.get(&id), 0);
        registry.in_flight.prune();
        assert!(registry.in_flight.counters.lock().unwrap().is_empty());
    }

    #[test]
    fn pick_counts_and_spreads() {
        let registry = Counters::default();
        let svc =
            CompiledService::compile(service(&[("/", 80)], &["a", "b"]), registry.registries());
        let (i, _l1) = svc.pick(&[]).unwrap();
        let (j, _l2) = svc.pick(&[]).unwrap();
        assert_ne!(i, j, "the second pick goes to the idle backend");
        assert_eq!(registry.in_flight.get("a"), 1);
        assert_eq!(registry.in_flight.get("b"), 1);
        assert!(svc.pick(&[0, 1]).is_none());
    }

    #[test]
    fn service_state_outlives_tables_while_referenced() {
        let registry = Counters::default();
        let compile = || {
            CompiledTable::compile(
                RouteTable {
                    services: vec![service(&[("/", 80)], &["a"])],
                    sandboxes: Vec::new(),
                    models: Vec::new(),
                },
                "localhost",
                registry.registries(),
            )
        };
        let first = compile();
        let second = compile();
        let state =
            |table: &CompiledTable| table.service("web.hello.localhost").unwrap().state.clone();
        assert!(
            Arc::ptr_eq(&state(&first), &state(&second)),
            "one state per service"
        );
        assert!(registry.services.get("hello", "web").is_some());
        assert!(registry.services.get("hello", "api").is_none());

        let request = state(&first);
        drop((first, second));
        registry.services.prune();
        assert!(
            registry.services.get("hello", "web").is_some(),
            "a request still uses it"
        );
        drop(request);
        registry.services.prune();
        assert!(registry.services.get("hello", "web").is_none());
        assert_eq!(
            registry.services.all().len(),
            1,
            "only the unrouted state is left"
        );
        assert!(registry.services.get("", "").is_some());
    }
}
