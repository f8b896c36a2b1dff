//! The controller: the one owner of state changes. API handlers, rollouts
//! and instance supervisors all change state through it, and it keeps the
//! router's table in step with the store.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_api::{
    App, Deployment, DeploymentStatus, EnvValue, Instance, InstanceState, Secret, Service,
    ServiceSpec, ServiceType,
};
use bora_image::{Image, PullOptions};
use bora_node::health::Prober;
use bora_node::{InstanceSpec, InstanceStatus, Node, Root};
use bora_router::{Backend, Route, RouteTable, Router, SandboxRoute, ServiceRoutes};
use bora_store::{DeploymentFilter, InstanceFilter, Store};
use tokio::sync::{Notify, mpsc};

use crate::ControlError;
use crate::metrics::ControlMetrics;
use crate::supervisor::{self, Command, Mode};
use crate::wake::RouterWaker;

/// The reason prefix of instances found dead after a server restart: the
/// platform's failure, not the deployment's, so a resumed rollout replaces
/// them instead of failing.
pub(crate) const LOST: &str = "lost during a server restart";

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Services are reached at `<service>.<app>.<domain>`.
    pub domain: String,
    /// The router's address, for the URLs shown to users.
    pub http_addr: std::net::SocketAddr,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Longest wait for in-flight requests before stopping a drained instance.
    pub drain_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping an instance.
    pub stop_grace: Duration,
    /// How often the controller checks that every service runs as many
    /// instances as it should.
    pub reconcile_interval: Duration,
    /// How often the autoscaler samples and decides.
    pub scale_interval: Duration,
    /// Warm sandbox pools to keep full (`--sandbox-pool`).
    pub sandbox_pools: Vec<crate::pool::PoolSpec>,
}

pub struct Controller {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) node: Arc<Node>,
    pub(crate) router: Arc<Router>,
    pub(crate) prober: Prober,
    pub(crate) config: ControllerConfig,
    /// Live instance supervisors, by instance id.
    supervisors: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
    /// Deployments with a rollout task running.
    rollouts: Mutex<HashSet<String>>,
    /// Woken on every instance state change.
    pub(crate) changed: Notify,
    /// Services (`app/service`) with a wake under way.
    pub(crate) waking: Mutex<HashSet<String>>,
    pub(crate) metrics: ControlMetrics,
    /// Warm sandboxes, ready to be claimed.
    pub(crate) pools: crate::pool::Pools,
    /// Held while a route table is built and handed to the router, so that
    /// a table read from the store earlier never replaces a newer one
    /// (the inference keys too, see `keys`).
    pub(crate) publishing: Mutex<()>,
}

impl Controller {
    pub fn new(
        store: Arc<dyn Store>,
        node: Arc<Node>,
        router: Arc<Router>,
        config: ControllerConfig,
    ) -> Arc<Self> {
        let ctl = Arc::new(Self {
            pools: crate::pool::Pools::new(&config.sandbox_pools),
            store,
            node,
            router,
            prober: Prober::new(),
            config,
            supervisors: Mutex::new(HashMap::new()),
            rollouts: Mutex::new(HashSet::new()),
            changed: Notify::new(),
            waking: Mutex::new(HashSet::new()),
            metrics: ControlMetrics::default(),
            publishing: Mutex::new(()),
        });
        ctl.router.set_waker(Arc::new(RouterWaker {
            controller: Arc::downgrade(&ctl),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }));
        ctl
    }

    /// Registers the controller's and the router's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.router.register_metrics(registry);
        self.metrics.register(registry);
    }

    /// Runs the autoscaler until the process ends.
    pub async fn autoscale_forever(self: Arc<Self>) {
        crate::scaler::run_forever(self).await
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    // ---- deployments -----------------------------------------------------

    /// Checks and records a new deployment of `spec` in `app`, and starts
    /// rolling it out.
    pub fn deploy(
        self: &Arc<Self>,
        app: &str,
        mut spec: ServiceSpec,
    ) -> Result<Deployment, ControlError> {
        bora_api::names::validate_name(app)
            .map_err(|e| ControlError::Invalid(format!("app: {e}")))?;
        bora_manifest::normalize_service(&mut spec);
        let violations = bora_manifest::validate_service(&spec);
        if !violations.is_empty() {
            let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
            return Err(ControlError::Invalid(format!(
                "the deployment definition is invalid: {}",
                list.join("; ")
            )));
        }
        self.check_secrets(&spec)?;
        self.check_model_name(app, &spec)?;
        let deployment = self.store.create_deployment(app, &spec)?;
        tracing::info!(app, service = %spec.name, deployment = %deployment.id, version = deployment.version, "deployment created");
        self.spawn_rollout(deployment.id.clone());
        Ok(deployment)
    }

    fn check_secrets(&self, spec: &ServiceSpec) -> Result<(), ControlError> {
        for name in spec.secret_refs() {
            match self.store.secret_value(name) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    return Err(ControlError::Invalid(format!(
                        "secret {name:?} does not exist: create it with `bora secrets create {name}`"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether a rollout task runs for `deployment`.
    pub(crate) fn rollout_running(&self, deployment: &str) -> bool {
        self.rollouts
            .lock()
            .expect("rollouts lock")
            .contains(deployment)
    }

    pub(crate) fn spawn_rollout(self: &Arc<Self>, deployment: String) {
        if !self
            .rollouts
            .lock()
            .expect("rollouts lock")
            .insert(deployment.clone())
        {
            return;
        }
        let ctl = self.clone();
        tokio::spawn(async move {
            crate::rollout::run(ctl.clone(), &deployment).await;
            ctl.rollouts
                .lock()
                .expect("rollouts lock")
                .remove(&deployment);
            ctl.changed.notify_waiters();
        });
    }

    /// Image pull options for a spec: insecure registries, and registry
    /// credentials from the secret the spec names.
    pub(crate) fn pull_options(&self, spec: &ServiceSpec) -> Result<PullOptions, String> {
        let mut opts = PullOptions {
            insecure_registries: self.config.insecure_registries.clone(),
            ..PullOptions::default()
        };
        if let Some(name) = &spec.registry_secret {
            let value = self
                .store
                .secret_value(name)
                .map_err(|e| format!("registry secret: {e}"))?;
            let (username, password) = value
                .split_once(':')
                .ok_or_else(|| format!("registry secret {name:?} must hold `username:password`"))?;
            opts.credentials = Some(bora_image::Credentials {
                username: username.to_string(),
                password: password.to_string(),
            });
        }
        Ok(opts)
    }

    /// The pinned image of a deployment, from the local cache.
    pub(crate) fn deployment_image(&self, d: &Deployment) -> Result<Image, String> {
        let digest = d
            .image_digest
            .as_deref()
            .ok_or_else(|| "the deployment's image has not been pulled".to_string())?;
        let reference = bora_image::Reference::parse(&d.spec.image).map_err(|e| e.to_string())?;
        self.node
            .images()
            .load(&reference.pinned(digest))
            .map_err(|e| e.to_string())
    }

    /// What to start for one instance of `d`, on `root` (see
    /// [`Controller::instance_root`]).
    pub(crate) fn instance_spec(
        &self,
        d: &Deployment,
        instance: &str,
        root: Root,
    ) -> Result<InstanceSpec, String> {
        let mut env = Vec::new();
        for (name, value) in &d.spec.env {
            let value = match value {
                EnvValue::Plain(v) => v.clone(),
                EnvValue::Secret { secret } => self.store.secret_value(secret).map_err(|e| {
                    format!("env {name}: {e}; create it with `bora secrets create {secret}`")
                })?,
            };
            env.push((name.clone(), value));
        }
        // Like Koyeb and Heroku, tell the process which port to listen on.
        let port = match crate::models::engine_of(&d.spec) {
            Some(_) => Some(crate::models::api_port(&d.spec)),
            None => d.spec.ports.first().map(|p| p.port),
        };
        if let Some(port) = port
            && !d.spec.env.contains_key("PORT")
        {
            env.push(("PORT".into(), port.to_string()));
        }
        let (mut command, mut user) = (d.spec.command.clone(), None);
        if let Some(model) = &d.spec.model {
            let inside = crate::models::path_in_container(&model.path);
            if crate::models::is_builtin(&d.spec) {
                command = Some(crate::models::builtin_command(&d.spec, &inside));
                user = Some((bora_node::NOBODY, bora_node::NOBODY));
            } else if !d.spec.env.contains_key(crate::models::MODEL_PATH_ENV) {
                env.push((crate::models::MODEL_PATH_ENV.into(), inside));
            }
        }
        Ok(InstanceSpec {
            id: instance.to_string(),
            root,
            command,
            args: d.spec.args.clone(),
            env,
            limits: d.spec.instance_type.limits(),
            isolation: d.spec.isolation,
            hostname: format!("{}-{}", d.spec.name, &instance[..8.min(instance.len())]),
            mounts: crate::models::replica_mounts(self, d),
            user,
        })
    }

    // ---- instances -------------------------------------------------------

    /// Records a new instance of `d` and starts supervising it.
    pub(crate) fn start_instance(
        self: &Arc<Self>,
        d: &Deployment,
    ) -> Result<Instance, ControlError> {
        let instance = self.store.create_instance(
            &d.id,
            self.node.name(),
            &format!("scheduled on node {}", self.node.name()),
        )?;
        self.supervise(instance.clone(), Mode::Start);
        Ok(instance)
    }

    /// Records a standby instance of `d` (deep sleep): set up, not started.
    pub(crate) fn start_standby(
        self: &Arc<Self>,
        d: &Deployment,
    ) -> Result<Instance, ControlError> {
        let instance = self.store.create_instance(
            &d.id,
            self.node.name(),
            "standby for deep sleep: set up now, started by the first request",
        )?;
        self.supervise(instance.clone(), Mode::Standby);
        Ok(instance)
    }

    pub(crate) fn supervise(self: &Arc<Self>, instance: Instance, mode: Mode) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.supervisors
            .lock()
            .expect("supervisors lock")
            .insert(instance.id.clone(), tx);
        let ctl = self.clone();
        tokio::spawn(async move {
            let id = instance.id.clone();
            supervisor::run(ctl.clone(), instance, mode, rx).await;
            ctl.supervisors
                .lock()
                .expect("supervisors lock")
                .remove(&id);
            ctl.changed.notify_waiters();
        });
    }

    /// Sends a command to an instance's supervisor; false if it has none.
    pub(crate) fn send_command(&self, id: &str, command: Command) -> bool {
        let sender = self
            .supervisors
            .lock()
            .expect("supervisors lock")
            .get(id)
            .cloned();
        sender.is_some_and(|tx| tx.send(command).is_ok())
    }

    /// Records an event of a service (best effort: a failure is logged).
    pub(crate) fn record_event(&self, app: &str, service: &str, kind: &str, message: &str) {
        if let Err(e) = self.store.record_event(app, service, kind, message) {
            tracing::warn!(app, service, kind, error = %e, "recording an event");
        }
    }

    pub(crate) fn event(&self, svc: &Service, kind: &str, message: &str) {
        self.record_event(&svc.app, &svc.name, kind, message);
    }

    /// Asks an instance to drain (finish in-flight requests) and stop, or to
    /// stop at once. Instances without a supervisor are cleaned up here.
    pub(crate) async fn stop_instance(
        &self,
        id: &str,
        reason: &str,
        drain: bool,
    ) -> Result<(), ControlError> {
        let command = if drain {
            Command::Drain(reason.to_string())
        } else {
            Command::Stop(reason.to_string())
        };
        if self.send_command(id, command) {
            return Ok(());
        }
        let instance = self.store.get_instance(id)?;
        if !instance.state.is_final() {
            self.node.stop(id, self.config.stop_grace).await?;
            self.store
                .transition_instance(id, InstanceState::Stopped, reason)?;
            self.publish_routes();
        }
        Ok(())
    }

    /// Stops the given instances and waits until they are stopped.
    pub(crate) async fn stop_and_wait(&self, ids: &[String], reason: &str, drain: bool) {
        for id in ids {
            if let Err(e) = self.stop_instance(id, reason, drain).await {
                tracing::warn!(instance = %id, error = %e, "stopping instance");
            }
        }
        loop {
            let notified = self.changed.notified();
            let pending: Vec<&String> = ids
                .iter()
                .filter(|id| {
                    self.store
                        .get_instance(id)
                        .map(|i| !i.state.is_final())
                        .unwrap_or(false)
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            // An instance whose supervisor is gone (it ended, or its task
            // panicked) would wait forever: stop it here instead.
            for id in pending {
                let supervised = self
                    .supervisors
                    .lock()
                    .expect("supervisors lock")
                    .get(id.as_str())
                    .is_some_and(|tx| !tx.is_closed());
                if !supervised && let Err(e) = self.stop_instance(id, reason, false).await {
                    tracing::warn!(instance = %id, error = %e, "stopping an unsupervised instance");
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }

    /// Records a state change and wakes whoever waits on one.
    pub(crate) fn transition(
        &self,
        id: &str,
        to: InstanceState,
        reason: &str,
    ) -> Result<Instance, ControlError> {
        let i = self.store.transition_instance(id, to, reason)?;
        tracing::info!(instance = %id, state = %to, reason, "instance state");
        self.changed.notify_waiters();
        Ok(i)
    }

    /// The instances of a deployment that are not stopped or failed.
    pub(crate) fn live_instances(&self, deployment: &str) -> Result<Vec<Instance>, ControlError> {
        Ok(self.store.list_instances(&InstanceFilter {
            deployment: Some(deployment),
            ..Default::default()
        })?)
    }

    // ---- routing ---------------------------------------------------------

    /// Rebuilds the router's table from the store: each web service routes
    /// to the healthy instances of its active deployment. Callers run
    /// concurrently (supervisors, rollouts, sandboxes); reading the store
    /// and swapping the table happen under one lock, so the last table
    /// handed over is always the newest.
    pub fn publish_routes(&self) {
        let _publishing = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        match self.route_table() {
            Ok(table) => self.router.set_table(table),
            Err(e) => tracing::error!(error = %e, "cannot rebuild the route table"),
        }
    }

    fn route_table(&self) -> Result<RouteTable, ControlError> {
        let mut services = Vec::new();
        for svc in self.store.list_services(None)? {
            let Some(active) = &svc.active_deployment else {
                continue;
            };
            let d = self.store.get_deployment(active)?;
            // Models are reached through the gateway only (`models` below).
            if d.spec.kind != ServiceType::Web {
                continue;
            }
            let backends = self.healthy_backends(active)?;
            services.push(ServiceRoutes {
                app: svc.app.clone(),
                service: svc.name.clone(),
                routes: d
                    .spec
                    .routes
                    .iter()
                    .map(|r| Route {
                        path_prefix: r.path.clone(),
                        port: r.port,
                    })
                    .collect(),
                backends,
                // A service that may sleep is woken by the requests it gets.
                wakeable: d.spec.scaling.min == 0,
            });
        }
        let sandboxes = self
            .sandbox_routes()
            .into_iter()
            .map(|(id, ip)| SandboxRoute { id, ip })
            .collect();
        Ok(RouteTable {
            services,
            sandboxes,
            models: self.model_routes()?,
        })
    }

    /// The healthy instances of a deployment, as the router reaches them.
    pub(crate) fn healthy_backends(&self, deployment: &str) -> Result<Vec<Backend>, ControlError> {
        Ok(self
            .live_instances(deployment)?
            .into_iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .filter_map(|i| {
                let ip: IpAddr = i.ip.as_deref()?.parse().ok()?;
                Some(Backend {
                    instance_id: i.id,
                    ip,
                })
            })
            .collect())
    }

    /// Where users reach a web service.
    pub fn service_url(&self, svc: &Service) -> Option<String> {
        if svc.kind != ServiceType::Web {
            return None;
        }
        let port = self.config.http_addr.port();
        let port = if port == 80 {
            String::new()
        } else {
            format!(":{port}")
        };
        Some(format!(
            "http://{}.{}.{}{}/",
            svc.name, svc.app, self.config.domain, port
        ))
    }

    pub fn with_url(&self, mut svc: Service) -> Service {
        svc.url = self.service_url(&svc);
        svc
    }

    // ---- deletion --------------------------------------------------------

    fn instance_ids(&self, filter: &InstanceFilter<'_>) -> Result<Vec<String>, ControlError> {
        Ok(self
            .store
            .list_instances(filter)?
            .into_iter()
            .map(|i| i.id)
            .collect())
    }

    fn forget_instances(&self, filter: &InstanceFilter<'_>) -> Result<(), ControlError> {
        for i in self.store.list_instances(&InstanceFilter {
            include_final: true,
            ..filter.clone()
        })? {
            self.node.forget(&i.id);
        }
        Ok(())
    }

    pub async fn delete_service(&self, app: &str, name: &str) -> Result<(), ControlError> {
        self.store.get_service(app, name)?;
        let filter = InstanceFilter {
            app: Some(app),
            service: Some(name),
            ..Default::default()
        };
        for d in self.store.list_deployments(&DeploymentFilter {
            app: Some(app),
            service: Some(name),
            ..Default::default()
        })? {
            if !d.status.is_final() {
                self.store.set_deployment_status(
                    &d.id,
                    DeploymentStatus::Canceled,
                    Some("the service was deleted"),
                )?;
            }
        }
        let ids = self.instance_ids(&filter)?;
        self.stop_and_wait(&ids, "the service was deleted", false)
            .await;
        self.forget_instances(&filter)?;
        self.store.delete_service(app, name)?;
        self.publish_routes();
        Ok(())
    }

    pub async fn delete_app(&self, app: &str) -> Result<(), ControlError> {
        self.store.get_app(app)?;
        for svc in self.store.list_services(Some(app))? {
            self.delete_service(app, &svc.name).await?;
        }
        self.store.delete_app(app)?;
        Ok(())
    }

    pub async fn delete_deployment(&self, id: &str) -> Result<(), ControlError> {
        let d = self.store.get_deployment(id)?;
        let svc = self.store.get_service(&d.app, &d.service)?;
        if svc.active_deployment.as_deref() == Some(id) {
            return Err(ControlError::Conflict(format!(
                "deployment {id} serves {}/{}: deploy a new version, or delete the service with `bora services delete {}/{}`",
                d.app, d.service, d.app, d.service
            )));
        }
        if !d.status.is_final() {
            self.store.set_deployment_status(
                id,
                DeploymentStatus::Canceled,
                Some("the deployment was deleted"),
            )?;
        }
        let filter = InstanceFilter {
            deployment: Some(id),
            ..Default::default()
        };
        let ids = self.instance_ids(&filter)?;
        self.stop_and_wait(&ids, "the deployment was deleted", false)
            .await;
        self.forget_instances(&filter)?;
        self.store.delete_deployment(id)?;
        Ok(())
    }

    /// Stops an instance; if its deployment is serving, the controller starts
    /// a replacement.
    pub async fn delete_instance(&self, id: &str) -> Result<(), ControlError> {
        let i = self.store.get_instance(id)?;
        if i.state.is_final() {
            return Ok(());
        }
        self.stop_instance(id, "deleted by a user", true).await
    }

    pub fn delete_secret(&self, name: &str) -> Result<(), ControlError> {
        self.store.secret_value(name)?;
        let mut users = Vec::new();
        for svc in self.store.list_services(None)? {
            for d in [&svc.active_deployment, &svc.latest_deployment]
                .into_iter()
                .flatten()
            {
                let d = self.store.get_deployment(d)?;
                if !d.status.is_final() && d.spec.secret_refs().any(|s| s == name) {
                    users.push(format!("{}/{}", d.app, d.service));
                }
            }
        }
        users.dedup();
        if !users.is_empty() {
            return Err(ControlError::Conflict(format!(
                "secret {name:?} is used by {}: deploy them without it first",
                users.join(", ")
            )));
        }
        Ok(self.store.delete_secret(name)?)
    }

    pub fn create_secret(&self, name: &str, value: &str) -> Result<Secret, ControlError> {
        bora_api::names::validate_secret_name(name)
            .map_err(|e| ControlError::Invalid(format!("secret {e}")))?;
        Ok(self.store.create_secret(name, value)?)
    }

    pub fn apps(&self) -> Result<Vec<App>, ControlError> {
        Ok(self.store.list_apps()?)
    }

    // ---- recovery and reconciliation ------------------------------------

    /// After a (re)start: re-adopt the instances still running, clean up the
    /// rest, and resume unfinished rollouts.
    pub async fn recover(self: &Arc<Self>) -> Result<(), ControlError> {
        let on_node: HashMap<String, bora_node::RecoveredInstance> = self
            .node
            .recover()
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let known = self.store.list_instances(&InstanceFilter::default())?;
        let known_ids: HashSet<&str> = known.iter().map(|i| i.id.as_str()).collect();

        // Instances the node runs but the store does not want: orphans of a
        // crash between starting and recording, or already stopped.
        for id in on_node.keys().filter(|id| !known_ids.contains(id.as_str())) {
            tracing::info!(instance = %id, "removing an instance the store does not know");
            if let Err(e) = self.node.destroy(id).await {
                tracing::warn!(instance = %id, error = %e, "cleanup");
            }
        }

        for instance in known {
            if instance.node != self.node.name() {
                continue;
            }
            let found = on_node.get(&instance.id);
            let running = matches!(found.map(|r| &r.status), Some(InstanceStatus::Running));
            let ip = found.and_then(|r| r.ip);
            match (instance.state, running, ip) {
                (
                    InstanceState::Healthy
                    | InstanceState::Starting
                    | InstanceState::Loading
                    | InstanceState::Draining
                    | InstanceState::Sleeping,
                    true,
                    Some(ip),
                ) => {
                    tracing::info!(instance = %instance.id, %ip, "re-adopting a running instance");
                    self.supervise(instance, Mode::Adopt { ip });
                }
                _ => {
                    if found.is_some() {
                        let _ = self.node.destroy(&instance.id).await;
                    }
                    let why = match found.map(|r| &r.status) {
                        Some(InstanceStatus::Exited(exit)) => {
                            self.node.exit_reason(&instance.id, exit)
                        }
                        _ => "the instance was not running when the server restarted".to_string(),
                    };
                    self.transition(
                        &instance.id,
                        InstanceState::Failed,
                        &format!("lost during a server restart: {why}"),
                    )?;
                }
            }
        }

        for d in self.store.list_deployments(&DeploymentFilter::default())? {
            if d.status.is_in_progress() || d.status == DeploymentStatus::Draining {
                self.spawn_rollout(d.id.clone());
            }
        }
        self.publish_routes();
        Ok(())
    }

    /// Keeps every serving deployment at its instance count, replacing
    /// instances that failed or were deleted.
    pub async fn reconcile_forever(self: Arc<Self>) {
        loop {
            if let Err(e) = self.reconcile_once() {
                tracing::error!(error = %e, "reconcile");
            }
            let notified = self.changed.notified();
            let _ = tokio::time::timeout(self.config.reconcile_interval, notified).await;
        }
    }

    fn reconcile_once(self: &Arc<Self>) -> Result<(), ControlError> {
        for svc in self.store.list_services(None)? {
            let Some(active) = svc.active_deployment.as_deref() else {
                continue;
            };
            let d = self.store.get_deployment(active)?;
            // The autoscaler keeps autoscaled services at their count.
            if d.status != DeploymentStatus::Healthy
                || (matches!(d.spec.kind, ServiceType::Web | ServiceType::Model)
                    && d.spec.scaling.is_autoscaled())
                || self.rollout_running(active)
            {
                continue;
            }
            let live = self
                .live_instances(active)?
                .into_iter()
                .filter(|i| i.state != InstanceState::Draining)
                .count();
            let want = d.spec.scaling.min as usize;
            for _ in live..want {
                let i = self.start_instance(&d)?;
                tracing::info!(instance = %i.id, deployment = %d.id, "starting a replacement instance");
            }
        }
        Ok(())
    }
}
