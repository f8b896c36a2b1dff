//! The node agent proper: starts, watches, stops and recovers instances.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bora_api::{Isolation, Limits};
use bora_image::{Image, ImageStore};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};

use crate::bundle::{self, BundlePaths, Process};
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
            log_max_bytes: 10 * 1024 * 1024,
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    pub image: Image,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// The service's environment, secrets already resolved.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub isolation: Isolation,
    pub hostname: String,
}

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

/// Written to `instance.json` so a restarted node can clean up after itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceRecord {
    id: String,
    isolation: Isolation,
    ip: Option<IpAddr>,
    /// The image's `StopSignal` (e.g. `SIGQUIT`), sent instead of SIGTERM.
    #[serde(default)]
    stop_signal: Option<String>,
}

/// The node agent. Cheap to share behind an `Arc`.
pub struct Node {
    config: NodeConfig,
    images: ImageStore,
}

const DESTROYED: &str = "destroyed";
/// Marks an instance whose container is created, waiting for `start`.
const CREATED: &str = "created";

impl Node {
    pub fn new(config: NodeConfig) -> Result<Self, NodeError> {
        for dir in [
            config.data_dir.join("instances"),
            config.data_dir.join("runtime"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        }
        let images = ImageStore::open(config.data_dir.join("images"))?;
        Ok(Self { config, images })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("instances").join(id)
    }

    /// Where an instance's logs are (they outlive the instance).
    pub fn log_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join("logs")
    }

    fn runtime(&self, isolation: Isolation) -> Runtime {
        Runtime::new(
            isolation,
            &self.config.runtimes,
            &self.config.data_dir.join("runtime"),
        )
    }

    fn record(&self, id: &str) -> Option<InstanceRecord> {
        serde_json::from_slice(&std::fs::read(self.dir(id).join("instance.json")).ok()?).ok()
    }

    fn write_record(&self, record: &InstanceRecord) -> Result<(), NodeError> {
        let path = self.dir(&record.id).join("instance.json");
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
            self.try_launch(&spec.id).await?;
            self.wait_running(&spec.id).await?;
            Ok(ip)
        };
        self.or_destroy(&spec.id, started.await).await
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
        self.or_destroy(&spec.id, prepared.await).await
    }

    /// Starts a prepared instance's container, without waiting for it:
    /// readiness is the health check's business, and [`Node::status`]
    /// reports an early exit.
    pub async fn launch(&self, id: &str) -> Result<(), NodeError> {
        let created = self.dir(id).join(CREATED);
        let launched = if created.exists() {
            let _ = std::fs::remove_file(&created);
            let isolation = self.record(id).map(|r| r.isolation).unwrap_or_default();
            self.runtime(isolation).start(id).await
        } else {
            self.try_launch(id).await
        };
        self.or_destroy(id, launched).await
    }

    async fn or_destroy<T>(&self, id: &str, result: Result<T, NodeError>) -> Result<T, NodeError> {
        if result.is_err()
            && let Err(cleanup) = self.destroy(id).await
        {
            tracing::warn!(instance = %id, error = %cleanup, "cleanup after a failed start");
        }
        result
    }

    async fn try_prepare(&self, spec: &InstanceSpec) -> Result<IpAddr, NodeError> {
        let id = &spec.id;
        let dir = self.dir(id);
        let bundle_dir = dir.join("bundle");
        let rootfs = bundle_dir.join("rootfs");
        std::fs::create_dir_all(&bundle_dir).map_err(|e| NodeError::io(&bundle_dir, e))?;
        let _ = std::fs::remove_file(dir.join(DESTROYED));
        let _ = std::fs::remove_file(dir.join(CREATED));
        let _ = std::fs::remove_file(shim::exit_path(&dir));
        let mut record = InstanceRecord {
            id: id.clone(),
            isolation: spec.isolation,
            ip: None,
            stop_signal: spec.image.config.stop_signal.clone(),
        };
        self.write_record(&record)?;

        if !rootfs::is_mounted(&rootfs) {
            rootfs::mount_overlay(
                &spec.image.layers,
                &dir.join("upper"),
                &dir.join("work"),
                &rootfs,
            )?;
        }

        let config = &spec.image.config;
        let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).ok();
        let (uid, gid, additional_gids) = bundle::resolve_user(
            config.user.as_deref().unwrap_or(""),
            read("etc/passwd").as_deref(),
            read("etc/group").as_deref(),
        )
        .map_err(|detail| NodeError::Start {
            instance: id.clone(),
            detail,
        })?;
        let args = bundle::process_args(
            &config.entrypoint,
            &config.cmd,
            spec.command.as_deref(),
            spec.args.as_deref(),
        );
        if args.is_empty() {
            return Err(NodeError::Start {
                instance: id.clone(),
                detail: "nothing to run: the image has no entrypoint or command, and the service sets no `command`"
                    .into(),
            });
        }
        let process = Process {
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
        };

        let ip = network::attach(&self.config.network, id).await?;
        record.ip = Some(ip);
        self.write_record(&record)?;

        let hosts = dir.join("hosts");
        let resolv = dir.join("resolv.conf");
        let hostname_file = dir.join("hostname");
        let write = |path: &Path, contents: String| {
            std::fs::write(path, contents).map_err(|e| NodeError::io(path, e))
        };
        write(
            &hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
                spec.hostname
            ),
        )?;
        write(&resolv, host_resolv_conf())?;
        write(&hostname_file, format!("{}\n", spec.hostname))?;
        let netns = network::netns_path(id);
        let config_json = bundle::runtime_config(
            &process,
            &spec.hostname,
            spec.limits,
            spec.isolation,
            &crate::cgroup::path(id),
            &BundlePaths {
                hosts: &hosts,
                resolv_conf: &resolv,
                hostname_file: &hostname_file,
                netns: &netns,
            },
        );
        write(&bundle_dir.join("config.json"), config_json.to_string())?;
        Ok(ip)
    }

    /// Creates the prepared container under a shim (see [`Node::prepare`])
    /// and waits until the runtime reports it `created`.
    async fn try_create(&self, id: &str) -> Result<(), NodeError> {
        let dir = self.dir(id);
        let runtime = self.runtime(Isolation::Container);
        std::fs::create_dir_all(&runtime.root).map_err(|e| NodeError::io(&runtime.root, e))?;
        let pid_file = dir.join("container.pid");
        let _ = std::fs::remove_file(&pid_file);
        let argv = runtime.create_argv(id, &dir.join("bundle"), &pid_file);
        self.spawn_shim(id, &argv, Some(&pid_file))?;
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            if let Some(exit) = shim::read_exit(&dir) {
                return Err(NodeError::Start {
                    instance: id.to_string(),
                    detail: format!(
                        "creating the container failed: {}{}",
                        describe_exit(&exit),
                        self.last_output_suffix(id)
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
                        self.last_output_suffix(id)
                    ),
                });
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    async fn try_launch(&self, id: &str) -> Result<(), NodeError> {
        let dir = self.dir(id);
        let bundle_dir = dir.join("bundle");
        let netns = network::netns_path(id);
        let isolation = self
            .record(id)
            .map(|r| r.isolation)
            .ok_or_else(|| NodeError::Start {
                instance: id.to_string(),
                detail: "the instance was not prepared (no instance.json)".into(),
            })?;
        let _ = std::fs::remove_file(shim::exit_path(&dir));
        let runtime = self.runtime(isolation);
        std::fs::create_dir_all(&runtime.root).map_err(|e| NodeError::io(&runtime.root, e))?;
        let argv = runtime.run_argv(id, &bundle_dir, &netns);
        self.spawn_shim(id, &argv, None)
    }

    /// Starts `bora shim` for instance `id` running `argv` (see
    /// [`shim::run`]), and reaps it when it ends.
    fn spawn_shim(
        &self,
        id: &str,
        argv: &[String],
        created: Option<&Path>,
    ) -> Result<(), NodeError> {
        let dir = self.dir(id);
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
    async fn wait_running(&self, id: &str) -> Result<(), NodeError> {
        let dir = self.dir(id);
        let isolation = self.record(id).map(|r| r.isolation).unwrap_or_default();
        let runtime = self.runtime(isolation);
        let id = &id.to_string();
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            if let Some(exit) = shim::read_exit(&dir) {
                return Err(NodeError::Start {
                    instance: id.clone(),
                    detail: format!("{}{}", describe_exit(&exit), self.last_output_suffix(id)),
                });
            }
            if runtime.state(id).await?.as_deref() == Some("running") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(NodeError::Start {
                    instance: id.clone(),
                    detail: format!(
                        "the container did not start within {:?}{}",
                        self.config.start_timeout,
                        self.last_output_suffix(id)
                    ),
                });
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last lines the instance wrote, as `; last output: …`, or nothing.
    fn last_output_suffix(&self, id: &str) -> String {
        let lines: Vec<String> = logs::tail(&self.log_dir(id), 5)
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
        format!("{}{}", describe_exit(exit), self.last_output_suffix(id))
    }

    /// The instance's status, from the shim's records.
    pub fn status(&self, id: &str) -> InstanceStatus {
        let dir = self.dir(id);
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
        let record = self.record(id);
        let isolation = record.as_ref().map(|r| r.isolation).unwrap_or_default();
        let signal = stop_signal(record.as_ref().and_then(|r| r.stop_signal.as_deref()));
        let runtime = self.runtime(isolation);
        if self.status(id) == InstanceStatus::Running {
            // A frozen instance cannot act on a signal: thaw it first.
            if runtime.state(id).await.ok().flatten().as_deref() == Some("paused")
                && let Err(e) = self.resume(id).await
            {
                tracing::debug!(instance = %id, error = %e, "thawing before stop");
            }
            if let Err(e) = runtime.kill(id, &signal).await {
                tracing::debug!(instance = %id, error = %e, "SIGTERM");
            }
            let deadline = Instant::now() + grace;
            while self.status(id) == InstanceStatus::Running && Instant::now() < deadline {
                sleep(Duration::from_millis(50)).await;
            }
            if self.status(id) == InstanceStatus::Running {
                let _ = runtime.kill(id, "KILL").await;
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.status(id) == InstanceStatus::Running && Instant::now() < deadline {
                    sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.destroy(id).await
    }

    /// Freezes an instance (light sleep): its processes stop getting CPU
    /// and keep their memory.
    pub async fn pause(&self, id: &str) -> Result<(), NodeError> {
        let isolation = self.record(id).map(|r| r.isolation).unwrap_or_default();
        self.runtime(isolation).pause(id).await
    }

    /// Thaws a frozen instance. For runc this writes the cgroup freezer
    /// directly (the wake-up hot path); other runtimes are asked.
    pub async fn resume(&self, id: &str) -> Result<(), NodeError> {
        let isolation = self.record(id).map(|r| r.isolation).unwrap_or_default();
        if isolation == Isolation::Container && crate::cgroup::thaw(id) {
            return Ok(());
        }
        self.runtime(isolation).resume(id).await
    }

    /// CPU and memory the instance uses, from its cgroup.
    pub fn usage(&self, id: &str) -> Option<crate::cgroup::Usage> {
        crate::cgroup::usage(id)
    }

    /// Removes every trace of the instance but its logs: the runtime's
    /// container, the shim, the rootfs mount, the network. Idempotent.
    pub async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        let dir = self.dir(id);
        let isolation = self.record(id).map(|r| r.isolation).unwrap_or_default();
        let runtime = self.runtime(isolation);
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
        if let Err(e) = network::detach(&self.config.network, id).await {
            first_error.get_or_insert(e);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        for sub in ["bundle", "upper", "work"] {
            let _ = std::fs::remove_dir_all(dir.join(sub));
        }
        let _ = std::fs::write(dir.join(DESTROYED), b"");
        Ok(())
    }

    /// Deletes what is left of a destroyed instance, logs included.
    pub fn forget(&self, id: &str) {
        let dir = self.dir(id);
        if dir.join(DESTROYED).exists() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The instances this node set up and has not destroyed, as found on
    /// disk: after a restart, the caller re-adopts the running ones and
    /// destroys the rest.
    pub fn recover(&self) -> Vec<RecoveredInstance> {
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("instances")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join(DESTROYED).exists() {
                continue;
            }
            let ip = self.record(&id).and_then(|r| r.ip);
            out.push(RecoveredInstance {
                status: self.status(&id),
                id,
                ip,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
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
