//! The node agent proper: starts, watches, stops and recovers instances.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bora_api::{Isolation, Limits};
use bora_image::{Image, ImageStore};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};

use crate::bundle::{self, Bind, BundlePaths, Process};
use crate::network::{self, NetworkConfig};
use crate::runtime::{Runtime, RuntimeBinaries};
use crate::shim::{self, ExitStatus};
use crate::{NodeError, logs, rootfs};

/// How the node agent is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name, recorded on its instances.
    pub name: String,
    /// Images, instances and runtime state live under here.
    pub data_dir: PathBuf,
    /// The `bora` binary, run as `bora shim` for each instance.
    pub shim_exe: PathBuf,
    pub runtimes: RuntimeBinaries,
    pub network: NetworkConfig,
    /// The sandboxes' network: point-to-point links in a range of its own
    /// ([`NetworkConfig::sandbox`]).
    pub sandbox_network: NetworkConfig,
    /// The static `bora-envd` binary, the agent every sandbox runs as its
    /// first process (built by `scripts/build-envd.sh`).
    pub envd_binary: PathBuf,
    /// Bound on each instance's logs on disk.
    pub log_max_bytes: u64,
    /// How long a container may take to reach `running`.
    pub start_timeout: Duration,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>, shim_exe: impl Into<PathBuf>) -> Self {
        Self {
            name: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "local".into()),
            data_dir: data_dir.into(),
            shim_exe: shim_exe.into(),
            runtimes: RuntimeBinaries::default(),
            network: NetworkConfig::default(),
            sandbox_network: NetworkConfig::sandbox(),
            envd_binary: "/usr/lib/bora/bora-envd".into(),
            log_max_bytes: 10 * 1024 * 1024,
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    /// What its root filesystem is made of.
    pub root: Root,
    /// With an image, replaces its entrypoint and command; with
    /// [`Root::Host`], the program to run (required).
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// The service's environment, secrets already resolved.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub isolation: Isolation,
    pub hostname: String,
    /// Host files or directories bind-mounted read-only (a model file,
    /// the node's `bora` binary).
    pub mounts: Vec<Mount>,
    /// Runs the process as this `(uid, gid)` instead of the image's user
    /// (with [`Root::Host`], nobody — 65534 — when unset).
    pub user: Option<(u32, u32)>,
}

/// What an instance's root filesystem is made of.
#[derive(Debug, Clone)]
pub enum Root {
    /// An image's layers, stacked with overlayfs under a writable layer of
    /// the instance's own.
    Image(Box<Image>),
    /// The host's programs, read-only, and nothing else ([`hostroot`]):
    /// for running the node's own binary.
    ///
    /// [`hostroot`]: crate::hostroot
    Host,
}

/// A host path bind-mounted read-only into an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    /// Where it appears in the container, an absolute path.
    pub destination: String,
}

/// The user a [`Root::Host`] instance runs as by default: nobody.
pub const NOBODY: u32 = 65534;

/// What the node knows about an instance it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceStatus {
    /// The shim is alive and the container has not ended.
    Running,
    /// The container ended.
    Exited(ExitStatus),
    /// Neither running nor a recorded exit: the shim died or was killed.
    Lost,
}

/// An instance found on disk when the node starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredInstance {
    pub id: String,
    pub ip: Option<IpAddr>,
    pub status: InstanceStatus,
}

/// What [`Node::wait_started`] waits for.
enum Started {
    /// The runtime says the container is running.
    Running(Runtime),
    /// Something in it accepts connections here.
    Listening(std::net::SocketAddr),
}

/// Written to `instance.json` so a restarted node can clean up after itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    id: String,
    isolation: Isolation,
    ip: Option<IpAddr>,
    /// The image's `StopSignal` (e.g. `SIGQUIT`), sent instead of SIGTERM.
    #[serde(default)]
    stop_signal: Option<String>,
}

/// The node agent. Cheap to share behind an `Arc`.
pub struct Node {
    pub(crate) config: NodeConfig,
    images: ImageStore,
    /// Set once the sandboxes' host-wide firewall rules are in place.
    pub(crate) sandbox_firewall: tokio::sync::OnceCell<()>,
}

/// Instances and sandboxes live side by side on a node but apart: their own
/// directories, runtime state, cgroups and network namespaces, so an id of
/// one kind never collides with the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Instance,
    Sandbox,
}

impl Kind {
    fn subdir(self) -> &'static str {
        match self {
            Kind::Instance => "instances",
            Kind::Sandbox => "sandboxes",
        }
    }

    pub(crate) fn netns(self, id: &str) -> PathBuf {
        match self {
            Kind::Instance => network::netns_path(id),
            Kind::Sandbox => network::sandbox_netns_path(id),
        }
    }

    pub(crate) fn cgroup(self, id: &str) -> String {
        match self {
            Kind::Instance => crate::cgroup::path(id),
            Kind::Sandbox => crate::cgroup::sandbox_path(id),
        }
    }
}

/// The files an instance's bundle bind-mounts from its directory.
pub(crate) struct EtcFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

const DESTROYED: &str = "destroyed";
/// Marks an instance whose container is created, waiting for `start`.
const CREATED: &str = "created";

impl Node {
    pub fn new(config: NodeConfig) -> Result<Self, NodeError> {
        for dir in [
            config.data_dir.join(Kind::Instance.subdir()),
            config.data_dir.join(Kind::Sandbox.subdir()),
            config.data_dir.join("runtime"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        }
        let images = ImageStore::open(config.data_dir.join("images"))?;
        Ok(Self {
            config,
            images,
            sandbox_firewall: tokio::sync::OnceCell::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The node's own `bora` binary (the one run as `bora shim`), which
    /// instances of the built-in engine run too.
    pub fn bora_exe(&self) -> &Path {
        &self.config.shim_exe
    }

    pub(crate) fn dir(&self, kind: Kind, id: &str) -> PathBuf {
        self.config.data_dir.join(kind.subdir()).join(id)
    }

    /// Where an instance's logs are (they outlive the instance).
    pub fn log_dir(&self, id: &str) -> PathBuf {
        self.dir(Kind::Instance, id).join("logs")
    }

    pub(crate) fn runtime(&self, kind: Kind, isolation: Isolation) -> Runtime {
        let dir = self.config.data_dir.join("runtime");
        match kind {
            Kind::Instance => Runtime::new(isolation, &self.config.runtimes, &dir),
            Kind::Sandbox => Runtime {
                netns: network::sandbox_netns_path,
                // Writes must land in the sandbox's size-limited upper
                // directory, through the gofer, never in the sentry's
                // memory, whatever this runsc's default is.
                gvisor_run_flags: vec!["--overlay2=none".into()],
                ..Runtime::new(isolation, &self.config.runtimes, &dir.join("sandboxes"))
            },
        }
    }

    fn isolation(&self, kind: Kind, id: &str) -> Isolation {
        self.record(kind, id)
            .map(|r| r.isolation)
            .unwrap_or_default()
    }

    fn record(&self, kind: Kind, id: &str) -> Option<InstanceRecord> {
        let path = self.dir(kind, id).join("instance.json");
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn write_record(&self, kind: Kind, record: &InstanceRecord) -> Result<(), NodeError> {
        let path = self.dir(kind, &record.id).join("instance.json");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(record).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| NodeError::io(&path, e))
    }

    /// Starts an instance and waits until its container runs. Returns its
    /// address. On failure, whatever was set up is torn down again.
    pub async fn start(&self, spec: &InstanceSpec) -> Result<IpAddr, NodeError> {
        let started = async {
            let ip = self.try_prepare(spec).await?;
            self.try_launch(Kind::Instance, &spec.id).await?;
            self.wait_running(Kind::Instance, &spec.id).await?;
            Ok(ip)
        };
        self.or_destroy(Kind::Instance, &spec.id, started.await)
            .await
    }

    /// Sets an instance up without starting it: rootfs mounted, network
    /// attached, bundle written, and for runc the container created (`runc
    /// create`: namespaces, cgroup, mounts, its first process waiting to
    /// exec the entrypoint). [`Node::launch`] then starts it in the time it
    /// takes to exec the entrypoint: this is how a service in deep sleep
    /// keeps a *standby* instance that runs none of the service's code and
    /// holds none of its memory (only runc's waiting init, a few MiB), but
    /// wakes fast. On failure, whatever was set up is torn down.
    pub async fn prepare(&self, spec: &InstanceSpec) -> Result<IpAddr, NodeError> {
        let prepared = async {
            let ip = self.try_prepare(spec).await?;
            if spec.isolation == Isolation::Container {
                self.try_create(&spec.id).await?;
            }
            Ok(ip)
        };
        self.or_destroy(Kind::Instance, &spec.id, prepared.await)
            .await
    }

    /// Starts a prepared instance's container, without waiting for it:
    /// readiness is the health check's business, and [`Node::status`]
    /// reports an early exit.
    pub async fn launch(&self, id: &str) -> Result<(), NodeError> {
        let created = self.dir(Kind::Instance, id).join(CREATED);
        let launched = if created.exists() {
            let _ = std::fs::remove_file(&created);
            let isolation = self.isolation(Kind::Instance, id);
            self.runtime(Kind::Instance, isolation).start(id).await
        } else {
            self.try_launch(Kind::Instance, id).await
        };
        self.or_destroy(Kind::Instance, id, launched).await
    }

    /// `result`, after destroying what was set up for `id` if it is an error.
    pub(crate) async fn or_destroy<T>(
        &self,
        kind: Kind,
        id: &str,
        result: Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        if result.is_err()
            && let Err(cleanup) = self.destroy_in(kind, id).await
        {
            tracing::warn!(instance = %id, error = %cleanup, "cleanup after a failed start");
        }
        result
    }

    /// Creates the directory of instance or sandbox `id` (with its bundle
    /// directory) and records it, so that whatever follows can be undone.
    pub(crate) fn begin(
        &self,
        kind: Kind,
        id: &str,
        isolation: Isolation,
        stop_signal: Option<String>,
    ) -> Result<InstanceRecord, NodeError> {
        let dir = self.dir(kind, id);
        let bundle_dir = dir.join("bundle");
        std::fs::create_dir_all(&bundle_dir).map_err(|e| NodeError::io(&bundle_dir, e))?;
        let _ = std::fs::remove_file(dir.join(DESTROYED));
        let _ = std::fs::remove_file(dir.join(CREATED));
        let _ = std::fs::remove_file(shim::exit_path(&dir));
        let record = InstanceRecord {
            id: id.to_string(),
            isolation,
            ip: None,
            stop_signal,
        };
        self.write_record(kind, &record)?;
        Ok(record)
    }

    /// Records the address the network gave.
    pub(crate) fn record_ip(
        &self,
        kind: Kind,
        record: &mut InstanceRecord,
        ip: IpAddr,
    ) -> Result<(), NodeError> {
        record.ip = Some(ip);
        self.write_record(kind, record)
    }

    async fn try_prepare(&self, spec: &InstanceSpec) -> Result<IpAddr, NodeError> {
        let id = &spec.id;
        let dir = self.dir(Kind::Instance, id);
        let bundle_dir = dir.join("bundle");
        let rootfs = bundle_dir.join("rootfs");
        let stop_signal = match &spec.root {
            Root::Image(image) => image.config.stop_signal.clone(),
            Root::Host => None,
        };
        let mut record = self.begin(Kind::Instance, id, spec.isolation, stop_signal)?;
        let failed = |detail: String| NodeError::Start {
            instance: id.clone(),
            detail,
        };

        let mut binds: Vec<(String, PathBuf)> = Vec::new();
        let process = match &spec.root {
            Root::Image(image) => {
                if !rootfs::is_mounted(&rootfs) {
                    rootfs::mount_overlay(
                        &image.layers,
                        &dir.join("upper"),
                        &dir.join("work"),
                        &rootfs,
                    )?;
                }
                let config = &image.config;
                let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).ok();
                let (uid, gid, additional_gids) = match spec.user {
                    Some((uid, gid)) => (uid, gid, Vec::new()),
                    None => bundle::resolve_user(
                        config.user.as_deref().unwrap_or(""),
                        read("etc/passwd").as_deref(),
                        read("etc/group").as_deref(),
                    )
                    .map_err(failed)?,
                };
                let args = bundle::process_args(
                    &config.entrypoint,
                    &config.cmd,
                    spec.command.as_deref(),
                    spec.args.as_deref(),
                );
                if args.is_empty() {
                    return Err(failed(
                        "nothing to run: the image has no entrypoint or command, and the service sets no `command`"
                            .into(),
                    ));
                }
                Process {
                    args,
                    env: bundle::merge_env(&config.env, &spec.env),
                    cwd: config
                        .working_dir
                        .clone()
                        .filter(|d| !d.is_empty())
                        .unwrap_or_else(|| "/".into()),
                    uid,
                    gid,
                    additional_gids,
                }
            }
            Root::Host => {
                for bind in crate::hostroot::build(&rootfs, Path::new("/"))? {
                    binds.push((bind.destination, bind.source));
                }
                let args =
                    bundle::process_args(&[], &[], spec.command.as_deref(), spec.args.as_deref());
                if args.is_empty() {
                    return Err(failed(
                        "nothing to run: an instance without an image needs a command".into(),
                    ));
                }
                let (uid, gid) = spec.user.unwrap_or((NOBODY, NOBODY));
                Process {
                    args,
                    env: bundle::merge_env(&[], &spec.env),
                    cwd: "/".into(),
                    uid,
                    gid,
                    additional_gids: Vec::new(),
                }
            }
        };
        for mount in &spec.mounts {
            if !mount.destination.starts_with('/') {
                return Err(failed(format!(
                    "mount destination {:?} is not an absolute path",
                    mount.destination
                )));
            }
            binds.push((mount.destination.clone(), mount.source.clone()));
        }

        let ip = network::attach(&self.config.network, id).await?;
        self.record_ip(Kind::Instance, &mut record, ip)?;

        let etc = write_etc_files(&dir, ip, &spec.hostname)?;
        write_bundle(
            Kind::Instance,
            id,
            &bundle_dir,
            &process,
            &spec.hostname,
            spec.limits,
            spec.isolation,
            &etc,
            &binds
                .iter()
                .map(|(destination, source)| Bind {
                    destination,
                    source,
                    read_only: true,
                })
                .collect::<Vec<_>>(),
        )?;
        Ok(ip)
    }

    /// Creates the prepared container under a shim (see [`Node::prepare`])
    /// and waits until the runtime reports it `created`.
    async fn try_create(&self, id: &str) -> Result<(), NodeError> {
        let dir = self.dir(Kind::Instance, id);
        let runtime = self.runtime(Kind::Instance, Isolation::Container);
        std::fs::create_dir_all(&runtime.root).map_err(|e| NodeError::io(&runtime.root, e))?;
        let pid_file = dir.join("container.pid");
        let _ = std::fs::remove_file(&pid_file);
        let argv = runtime.create_argv(id, &dir.join("bundle"), &pid_file);
        self.spawn_shim(Kind::Instance, id, &argv, Some(&pid_file))?;
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            if let Some(exit) = shim::read_exit(&dir) {
                return Err(NodeError::Start {
                    instance: id.to_string(),
                    detail: format!(
                        "creating the container failed: {}{}",
                        describe_exit(&exit),
                        self.last_output_suffix(Kind::Instance, id)
                    ),
                });
            }
            if pid_file.exists() && runtime.state(id).await?.as_deref() == Some("created") {
                let path = dir.join(CREATED);
                return std::fs::write(&path, b"").map_err(|e| NodeError::io(&path, e));
            }
            if Instant::now() > deadline {
                return Err(NodeError::Start {
                    instance: id.to_string(),
                    detail: format!(
                        "the container was not created within {:?}{}",
                        self.config.start_timeout,
                        self.last_output_suffix(Kind::Instance, id)
                    ),
                });
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn try_launch(&self, kind: Kind, id: &str) -> Result<(), NodeError> {
        let dir = self.dir(kind, id);
        let bundle_dir = dir.join("bundle");
        let netns = kind.netns(id);
        let isolation =
            self.record(kind, id)
                .map(|r| r.isolation)
                .ok_or_else(|| NodeError::Start {
                    instance: id.to_string(),
                    detail: "the instance was not prepared (no instance.json)".into(),
                })?;
        let _ = std::fs::remove_file(shim::exit_path(&dir));
        let runtime = self.runtime(kind, isolation);
        std::fs::create_dir_all(&runtime.root).map_err(|e| NodeError::io(&runtime.root, e))?;
        let argv = runtime.run_argv(id, &bundle_dir, &netns);
        self.spawn_shim(kind, id, &argv, None)
    }

    /// Starts `bora shim` for instance `id` running `argv` (see
    /// [`shim::run`]), and reaps it when it ends.
    fn spawn_shim(
        &self,
        kind: Kind,
        id: &str,
        argv: &[String],
        created: Option<&Path>,
    ) -> Result<(), NodeError> {
        let dir = self.dir(kind, id);
        let mut shim = tokio::process::Command::new(&self.config.shim_exe);
        shim.arg("shim")
            .arg("--dir")
            .arg(&dir)
            .arg("--max-log-bytes")
            .arg(self.config.log_max_bytes.to_string());
        if let Some(pid_file) = created {
            shim.arg("--created").arg(pid_file);
        }
        shim.arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = shim
            .spawn()
            .map_err(|e| NodeError::io(&self.config.shim_exe, e))?;
        // The shim records its pid too, but not before it runs: write it now
        // so that `status` never sees a just-launched instance as lost.
        if let Some(pid) = child.id() {
            let path = shim::pid_path(&dir);
            std::fs::write(&path, pid.to_string()).map_err(|e| NodeError::io(&path, e))?;
        }
        // Reap the shim when it ends, so it never lingers as a zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Waits until the launched container runs, or says why it did not.
    pub(crate) async fn wait_running(&self, kind: Kind, id: &str) -> Result<(), NodeError> {
        let runtime = self.runtime(kind, self.isolation(kind, id));
        self.wait_started(kind, id, Started::Running(runtime)).await
    }

    /// Waits until something in the container accepts connections on
    /// `addr` — cheaper than asking the runtime (`runsc state` is a process
    /// per poll, competing with the boot for the CPU) when the caller knows
    /// what the container will listen on.
    pub(crate) async fn wait_listening(
        &self,
        kind: Kind,
        id: &str,
        addr: std::net::SocketAddr,
    ) -> Result<(), NodeError> {
        self.wait_started(kind, id, Started::Listening(addr)).await
    }

    /// Polls until the container is `started`; fails as soon as the shim
    /// records its exit, or at the start timeout.
    async fn wait_started(&self, kind: Kind, id: &str, started: Started) -> Result<(), NodeError> {
        let dir = self.dir(kind, id);
        let deadline = Instant::now() + self.config.start_timeout;
        let failed = |detail: String| NodeError::Start {
            instance: id.to_string(),
            detail: format!("{detail}{}", self.last_output_suffix(kind, id)),
        };
        loop {
            if let Some(exit) = shim::read_exit(&dir) {
                return Err(failed(describe_exit(&exit)));
            }
            let (ready, every) = match &started {
                Started::Running(runtime) => {
                    let state = runtime.state(id).await?;
                    (
                        state.as_deref() == Some("running"),
                        Duration::from_millis(5),
                    )
                }
                Started::Listening(addr) => {
                    let connect = tokio::net::TcpStream::connect(*addr);
                    let connected = tokio::time::timeout(Duration::from_millis(100), connect).await;
                    (matches!(connected, Ok(Ok(_))), Duration::from_millis(2))
                }
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let waited = self.config.start_timeout;
                return Err(failed(match &started {
                    Started::Running(_) => format!("the container did not start within {waited:?}"),
                    Started::Listening(addr) => {
                        format!("nothing listened on {addr} within {waited:?}")
                    }
                }));
            }
            sleep(every).await;
        }
    }

    /// The last lines the instance wrote, as `; last output: …`, or nothing.
    fn last_output_suffix(&self, kind: Kind, id: &str) -> String {
        let lines: Vec<String> = logs::tail(&self.dir(kind, id).join("logs"), 5)
            .into_iter()
            .map(|r| r.line)
            .collect();
        if lines.is_empty() {
            String::new()
        } else {
            format!("; last output: {}", lines.join(" | "))
        }
    }

    /// Why an instance ended, with its last output: for instance reasons.
    pub fn exit_reason(&self, id: &str, exit: &ExitStatus) -> String {
        format!(
            "{}{}",
            describe_exit(exit),
            self.last_output_suffix(Kind::Instance, id)
        )
    }

    /// The instance's status, from the shim's records.
    pub fn status(&self, id: &str) -> InstanceStatus {
        self.status_in(Kind::Instance, id)
    }

    pub(crate) fn status_in(&self, kind: Kind, id: &str) -> InstanceStatus {
        let dir = self.dir(kind, id);
        if let Some(exit) = shim::read_exit(&dir) {
            return InstanceStatus::Exited(exit);
        }
        let pid = std::fs::read_to_string(shim::pid_path(&dir))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        match pid {
            Some(pid) if process_alive(pid) => InstanceStatus::Running,
            _ => InstanceStatus::Lost,
        }
    }

    /// Stops an instance: SIGTERM, up to `grace` to exit, then SIGKILL; then
    /// tears down everything it had except its logs.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), NodeError> {
        self.stop_in(Kind::Instance, id, grace).await
    }

    pub(crate) async fn stop_in(
        &self,
        kind: Kind,
        id: &str,
        grace: Duration,
    ) -> Result<(), NodeError> {
        let record = self.record(kind, id);
        let isolation = record.as_ref().map(|r| r.isolation).unwrap_or_default();
        let signal = stop_signal(record.as_ref().and_then(|r| r.stop_signal.as_deref()));
        let runtime = self.runtime(kind, isolation);
        let running = || self.status_in(kind, id) == InstanceStatus::Running;
        if running() {
            // A frozen instance cannot act on a signal: thaw it first.
            if runtime.state(id).await.ok().flatten().as_deref() == Some("paused")
                && let Err(e) = self.resume_in(kind, id).await
            {
                tracing::debug!(instance = %id, error = %e, "thawing before stop");
            }
            if let Err(e) = runtime.kill(id, &signal).await {
                tracing::debug!(instance = %id, error = %e, "SIGTERM");
            }
            let deadline = Instant::now() + grace;
            while running() && Instant::now() < deadline {
                sleep(Duration::from_millis(50)).await;
            }
            if running() {
                let _ = runtime.kill(id, "KILL").await;
                let deadline = Instant::now() + Duration::from_secs(5);
                while running() && Instant::now() < deadline {
                    sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.destroy_in(kind, id).await
    }

    /// Freezes an instance (light sleep): its processes stop getting CPU
    /// and keep their memory.
    pub async fn pause(&self, id: &str) -> Result<(), NodeError> {
        self.pause_in(Kind::Instance, id).await
    }

    pub(crate) async fn pause_in(&self, kind: Kind, id: &str) -> Result<(), NodeError> {
        self.runtime(kind, self.isolation(kind, id)).pause(id).await
    }

    /// Thaws a frozen instance. For runc this writes the cgroup freezer
    /// directly (the wake-up hot path); other runtimes are asked.
    pub async fn resume(&self, id: &str) -> Result<(), NodeError> {
        self.resume_in(Kind::Instance, id).await
    }

    pub(crate) async fn resume_in(&self, kind: Kind, id: &str) -> Result<(), NodeError> {
        let isolation = self.isolation(kind, id);
        if isolation == Isolation::Container && crate::cgroup::thaw(&kind.cgroup(id)) {
            return Ok(());
        }
        self.runtime(kind, isolation).resume(id).await
    }

    /// CPU and memory the instance uses, from its cgroup.
    pub fn usage(&self, id: &str) -> Option<crate::cgroup::Usage> {
        crate::cgroup::usage(id)
    }

    /// Removes every trace of the instance but its logs: the runtime's
    /// container, the shim, the rootfs mount, the network. Idempotent.
    pub async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        self.destroy_in(Kind::Instance, id).await
    }

    /// Removes every trace of instance or sandbox `id`: see
    /// [`Node::destroy`] and [`Node::stop_sandbox`]. Derives everything
    /// from the id, so it also cleans up after a start that failed before
    /// recording anything.
    pub(crate) async fn destroy_in(&self, kind: Kind, id: &str) -> Result<(), NodeError> {
        let dir = self.dir(kind, id);
        let runtime = self.runtime(kind, self.isolation(kind, id));
        let mut first_error = None;
        if let Err(e) = runtime.delete(id).await {
            first_error.get_or_insert(e);
        }
        // The shim exits once the runtime does; if it lingers, end it.
        if let Some(pid) = std::fs::read_to_string(shim::pid_path(&dir))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let deadline = Instant::now() + Duration::from_secs(2);
            while process_alive(pid) && Instant::now() < deadline {
                sleep(Duration::from_millis(20)).await;
            }
            if process_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Err(e) = rootfs::unmount(&dir.join("bundle").join("rootfs")) {
            first_error.get_or_insert(e);
        }
        let network = match kind {
            Kind::Instance => network::detach(&self.config.network, id).await,
            Kind::Sandbox => self.destroy_sandbox_extras(id, &dir).await,
        };
        if let Err(e) = network {
            first_error.get_or_insert(e);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        match kind {
            Kind::Instance => {
                for sub in ["bundle", "upper", "work"] {
                    let _ = std::fs::remove_dir_all(dir.join(sub));
                }
                let _ = std::fs::write(dir.join(DESTROYED), b"");
            }
            // Nothing of a sandbox outlives it, logs included.
            Kind::Sandbox => match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(NodeError::io(&dir, e));
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// Deletes what is left of a destroyed instance, logs included.
    pub fn forget(&self, id: &str) {
        let dir = self.dir(Kind::Instance, id);
        if dir.join(DESTROYED).exists() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The instances this node set up and has not destroyed, as found on
    /// disk: after a restart, the caller re-adopts the running ones and
    /// destroys the rest.
    pub fn recover(&self) -> Vec<RecoveredInstance> {
        self.recover_in(Kind::Instance)
    }

    pub(crate) fn recover_in(&self, kind: Kind) -> Vec<RecoveredInstance> {
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join(kind.subdir())) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join(DESTROYED).exists() {
                continue;
            }
            let ip = self.record(kind, &id).and_then(|r| r.ip);
            out.push(RecoveredInstance {
                status: self.status_in(kind, &id),
                id,
                ip,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// Writes the instance's `/etc/hosts`, `/etc/resolv.conf` and
/// `/etc/hostname` into its directory, for the bundle to bind-mount.
pub(crate) fn write_etc_files(
    dir: &Path,
    ip: IpAddr,
    hostname: &str,
) -> Result<EtcFiles, NodeError> {
    let files = EtcFiles {
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
        hostname: dir.join("hostname"),
    };
    let write = |path: &Path, contents: String| {
        std::fs::write(path, contents).map_err(|e| NodeError::io(path, e))
    };
    write(
        &files.hosts,
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
        ),
    )?;
    write(&files.resolv_conf, host_resolv_conf())?;
    write(&files.hostname, format!("{hostname}\n"))?;
    Ok(files)
}

/// Writes `config.json` into `bundle_dir`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_bundle(
    kind: Kind,
    id: &str,
    bundle_dir: &Path,
    process: &Process,
    hostname: &str,
    limits: Limits,
    isolation: Isolation,
    etc: &EtcFiles,
    binds: &[Bind<'_>],
) -> Result<(), NodeError> {
    let netns = kind.netns(id);
    let config_json = bundle::runtime_config(
        process,
        hostname,
        limits,
        isolation,
        &kind.cgroup(id),
        &BundlePaths {
            hosts: &etc.hosts,
            resolv_conf: &etc.resolv_conf,
            hostname_file: &etc.hostname,
            netns: &netns,
            binds,
        },
    );
    let path = bundle_dir.join("config.json");
    std::fs::write(&path, config_json.to_string()).map_err(|e| NodeError::io(&path, e))
}

/// The signal that asks an instance to stop: the image's `StopSignal` when
/// it names one (`SIGQUIT`, `QUIT`, `3`), SIGTERM otherwise.
fn stop_signal(image_stop_signal: Option<&str>) -> String {
    match image_stop_signal.map(str::trim) {
        Some(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()) => {
            s.strip_prefix("SIG").unwrap_or(s).to_string()
        }
        _ => "TERM".to_string(),
    }
}

fn describe_exit(exit: &ExitStatus) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("the process exited with code {code}"),
        (None, Some(sig)) => format!("the process was killed by signal {sig}"),
        _ => "the process ended".into(),
    }
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie still "exists", so check its state.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The host's resolver configuration, usable from a network namespace:
/// a local stub resolver (127.0.0.53) cannot be reached from there, so prefer
/// systemd-resolved's upstream list when it exists.
fn host_resolv_conf() -> String {
    for path in ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"] {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.contains("nameserver 127.")
        {
            return s;
        }
    }
    "nameserver 1.1.1.1\n".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_images_stop_signal_wins_over_sigterm() {
        assert_eq!(stop_signal(None), "TERM");
        assert_eq!(stop_signal(Some("SIGQUIT")), "QUIT");
        assert_eq!(stop_signal(Some("WINCH")), "WINCH");
        assert_eq!(stop_signal(Some("3")), "3");
        assert_eq!(stop_signal(Some("")), "TERM");
        assert_eq!(stop_signal(Some("--all")), "TERM");
    }
}
