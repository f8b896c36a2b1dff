//! `bora server`: the store, node agent, router, controller and API in one
//! process, on one machine — Bora's embedded default.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bora_node::network::NetworkConfig;
use bora_node::runtime::RuntimeBinaries;
use bora_node::{Node, NodeConfig};
use bora_router::{Router, RouterConfig};
use bora_store::{SecretCipher, SqliteStore, Store};
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ControlError;
use crate::api::{self, ApiState};
use crate::controller::{Controller, ControllerConfig};
use crate::records::{RecordWriter, RecorderConfig};

/// Everything `bora server` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub domain: String,
    pub insecure_registries: Vec<String>,
    pub runtimes: RuntimeBinaries,
    pub network: NetworkConfig,
    /// The `bora` binary, run as `bora shim` for each instance.
    pub shim_exe: PathBuf,
    /// Longest a request waits for a sleeping service to wake before it
    /// gets 503 with `Retry-After`.
    pub hold_timeout: Duration,
    /// Most requests held per sleeping service; more get 503 at once.
    pub max_held: usize,
    /// The static `bora-envd` every sandbox runs as its first process.
    pub envd_binary: PathBuf,
    /// Warm sandbox pools to keep full (`--sandbox-pool base=4`).
    pub sandbox_pools: Vec<crate::pool::PoolSpec>,
    /// Whether the inference gateway's request records keep the prompt and
    /// the completion (`--retain-content`); off: zero retention.
    pub retain_content: bool,
}

/// A running server.
pub struct ServerHandle {
    pub api_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub controller: Arc<Controller>,
    /// The inference gateway's recorder.
    pub records: Arc<RecordWriter>,
    shutdown: watch::Sender<bool>,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl ServerHandle {
    /// Stops serving. Instances keep running, to be re-adopted by the next
    /// server on this data directory.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Writes the request records still queued; call it after
    /// [`ServerHandle::shutdown`], before the process exits.
    pub async fn flush_records(&self) {
        self.records.flush().await;
    }
}

fn io_err(path: &Path, e: std::io::Error) -> ControlError {
    ControlError::Internal(format!("{}: {e}", path.display()))
}

/// Reads the admin token, creating it (mode 0600) on first start.
fn admin_token(data_dir: &Path) -> Result<String, ControlError> {
    let path = data_dir.join("admin.token");
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path, e)),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("bora_{}", hex::encode(bytes));
    let tmp = data_dir.join("admin.token.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    writeln!(f, "{token}")
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    Ok(token)
}

/// Only one server per data directory: a second one would fight over the
/// same instances.
fn lock_data_dir(data_dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, ControlError> {
    let path = data_dir.join("server.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        ControlError::Conflict(format!(
            "another bora server is using {}: stop it first, or pass a different --data-dir",
            data_dir.display()
        ))
    })
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ControlError> {
    TcpListener::bind(addr).await.map_err(|e| {
        ControlError::Invalid(format!(
            "cannot listen on {addr} for the {what}: {e} (pick another address with --{}-listen)",
            if what == "API" { "api" } else { "http" }
        ))
    })
}

/// Starts everything and returns once both listeners are bound and running
/// instances have been re-adopted.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ControlError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|e| io_err(&config.data_dir, e))?;
    let data_dir = fs::canonicalize(&config.data_dir).map_err(|e| io_err(&config.data_dir, e))?;
    let lock = lock_data_dir(&data_dir)?;
    let token = admin_token(&data_dir)?;

    let cipher = SecretCipher::load_or_create(&data_dir.join("secret.key"))?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data_dir.join("bora.db"), cipher)?);

    let mut node_config = NodeConfig::new(&data_dir, &config.shim_exe);
    node_config.runtimes = config.runtimes.clone();
    node_config.network = config.network.clone();
    node_config.envd_binary = config.envd_binary.clone();
    let node = Arc::new(Node::new(node_config)?);

    let api_listener = bind(config.api_listen, "API").await?;
    let http_listener = bind(config.http_listen, "router").await?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| ControlError::Internal(e.to_string()))?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let wait_shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let router = Router::new(RouterConfig {
        hold_timeout: config.hold_timeout,
        max_held: config.max_held,
        retain_content: config.retain_content,
        ..RouterConfig::new(config.domain.clone())
    });
    let records = RecordWriter::start(
        store.clone(),
        RecorderConfig {
            retain_content: config.retain_content,
            ..RecorderConfig::default()
        },
    );
    router.set_recorder(records.clone());
    tokio::spawn(
        router
            .clone()
            .serve(http_listener, wait_shutdown(shutdown_rx.clone())),
    );

    let controller = Controller::new(
        store,
        node,
        router,
        ControllerConfig {
            domain: config.domain.clone(),
            http_addr,
            insecure_registries: config.insecure_registries.clone(),
            drain_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(2),
            scale_interval: Duration::from_secs(1),
            sandbox_pools: config.sandbox_pools.clone(),
        },
    );
    controller.publish_keys()?;
    controller.recover().await?;
    controller.recover_sandboxes().await;
    tokio::spawn(controller.clone().reconcile_forever());
    tokio::spawn(controller.clone().autoscale_forever());
    tokio::spawn(controller.clone().reap_sandboxes_forever());
    tokio::spawn(controller.clone().fill_pools_forever());

    let mut metrics = prometheus_client::registry::Registry::default();
    controller.register_metrics(&mut metrics);
    records.register_metrics(&mut metrics);
    let app = api::router(ApiState {
        ctl: controller.clone(),
        token: token.into(),
        metrics: Arc::new(metrics),
    });
    let api_shutdown = wait_shutdown(shutdown_rx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(api_listener, app)
            .with_graceful_shutdown(api_shutdown)
            .await
        {
            tracing::error!(error = %e, "API server");
        }
    });

    let addr_file = data_dir.join("api.addr");
    fs::write(&addr_file, format!("{api_addr}\n")).map_err(|e| io_err(&addr_file, e))?;

    Ok(ServerHandle {
        api_addr,
        http_addr,
        controller,
        records,
        shutdown,
        _lock: lock,
    })
}
