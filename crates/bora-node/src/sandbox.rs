//! Sandboxes for AI agents, driven through the E2B protocol.
//!
//! A sandbox is a container made from a template image whose first process
//! is always Bora's agent, `bora-envd` (whatever the image's entrypoint),
//! bind-mounted read-only at [`ENVD_PATH`] and serving E2B's envd protocol
//! on port [`ENVD_PORT`]. It runs as root and switches users per request.
//!
//! It reuses the instances' machinery (overlay rootfs, OCI bundle, shim,
//! runtime drivers, cgroups), with what sets sandboxes apart:
//! - a disk: the writable layer lives on a loop-mounted ext4 image of the
//!   sandbox's disk size ([`crate::disk`]), so a filler gets ENOSPC and the
//!   host never fills. Under gVisor, runsc runs with `--overlay2=none`, so
//!   writes go through its gofer to that layer rather than into the
//!   sandbox's memory, and `/tmp` is bind-mounted from the rootfs so that
//!   runsc does not put a memory-backed tmpfs there.
//! - a network of its own ([`NetworkConfig::sandbox`]): a point-to-point
//!   link per sandbox, routed and filtered by the host ([`crate::firewall`]):
//!   no outbound connection but to the allow-list, never to the host, other
//!   sandboxes, services, link-local or loopback.
//! - its own directory (`<data-dir>/sandboxes/<id>`), runtime state,
//!   cgroup (`/bora-sandboxes/<id>`) and namespace (`bora-sb-<id>`), so a
//!   sandbox's id never collides with an instance's.
//!
//! Stopping a sandbox removes everything it had, logs included.
//!
//! [`NetworkConfig::sandbox`]: crate::network::NetworkConfig::sandbox

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bora_api::{Isolation, Limits};
use bora_image::Image;

use crate::bundle::{self, Bind, Process};
use crate::node::{InstanceStatus, Kind, Node, RecoveredInstance, write_bundle, write_etc_files};
use crate::{NodeError, disk, firewall, network, rootfs};

/// Where envd is inside every sandbox.
pub const ENVD_PATH: &str = "/.bora/envd";
/// The port envd serves on (E2B's).
pub const ENVD_PORT: u16 = 49983;
/// The environment variable that hands envd its access token.
pub const ENVD_TOKEN_ENV: &str = "BORA_ENVD_ACCESS_TOKEN";

/// What a sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// CPU in thousandths of a core (a CFS quota).
    pub millicpu: u64,
    /// Memory, page cache included; no swap on top.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// The writable layer's size (the ext4 filesystem's; its own metadata
    /// takes a few percent).
    pub disk_bytes: u64,
}

impl Default for SandboxLimits {
    /// E2B's default sandbox: 2 vCPUs, 512 MiB; with a 4 GiB disk.
    fn default() -> Self {
        Self {
            millicpu: 2000,
            memory_bytes: 512 * 1024 * 1024,
            pids: 1024,
            disk_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// Host threads gVisor's sentry uses before the sandbox runs anything, and
/// per process the sandbox runs: with the ptrace platform every address
/// space has a stub process whose threads pair with the sentry's (measured
/// here: about 60, then about 8 per process).
const GVISOR_PIDS_BASE: u64 = 128;
const GVISOR_PIDS_PER_PROCESS: u64 = 10;

impl SandboxLimits {
    /// The host cgroup's limits for the sandbox. Under gVisor the host's
    /// pids controller counts the sentry's threads and stubs, not the
    /// sandbox's processes, so `pids` is scaled to bound about as many
    /// sandbox processes.
    pub fn cgroup(&self, isolation: Isolation) -> Limits {
        let pids = match isolation {
            Isolation::Container => self.pids,
            Isolation::Gvisor => self
                .pids
                .saturating_mul(GVISOR_PIDS_PER_PROCESS)
                .saturating_add(GVISOR_PIDS_BASE),
        };
        Limits {
            millicpu: self.millicpu,
            memory_bytes: self.memory_bytes,
            pids,
        }
    }
}

/// Everything needed to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Also names its container, cgroup and network namespace: letters,
    /// digits, `-` and `_`, at most 64.
    pub id: String,
    /// The template, already pulled.
    pub image: Image,
    /// gVisor by default; `Container` runs it under runc.
    pub isolation: Isolation,
    pub limits: SandboxLimits,
    /// Extra environment for the processes envd starts.
    pub env: Vec<(String, String)>,
    /// envd's access token (empty: envd starts open, until `/init` sets one).
    pub access_token: String,
    /// Addresses and CIDRs the sandbox may connect to, already resolved;
    /// empty: no outbound connection at all. IPv6 entries open nothing
    /// (sandboxes have IPv4 only). The host, other sandboxes, services,
    /// link-local and loopback stay closed whatever this says.
    pub allow_out: Vec<String>,
    pub hostname: String,
}

/// Checks a sandbox id: it ends up in paths, a namespace name and firewall
/// comments.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "sandbox id {id:?} is not usable: use 1 to 64 letters, digits, `-` or `_`"
        ))
    }
}

/// envd as the sandbox's first process: root, in `/`, with the image's
/// environment, the spec's, and the token (which envd keeps from the
/// processes it starts).
pub fn envd_process(image_env: &[String], spec: &SandboxSpec) -> Process {
    let mut env = spec.env.clone();
    env.retain(|(k, _)| k != ENVD_TOKEN_ENV);
    if !spec.access_token.is_empty() {
        env.push((ENVD_TOKEN_ENV.into(), spec.access_token.clone()));
    }
    Process {
        args: vec![
            ENVD_PATH.into(),
            "--listen".into(),
            format!("0.0.0.0:{ENVD_PORT}"),
        ],
        env: bundle::merge_env(image_env, &env),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
    }
}

/// Makes, in a fresh upper directory (never in the image, and never through
/// a path the image controls), the mount point of envd and a `/tmp`.
fn seed_upper(upper: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let bora = upper.join(ENVD_PATH.trim_start_matches('/'));
    let bora_dir = bora.parent().unwrap_or(upper);
    std::fs::create_dir_all(bora_dir).map_err(|e| NodeError::io(bora_dir, e))?;
    std::fs::write(&bora, b"").map_err(|e| NodeError::io(&bora, e))?;
    let tmp = upper.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| NodeError::io(&tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| NodeError::io(&tmp, e))
}

/// How long each phase of a sandbox start took, for the debug log:
/// `disk 41ms, rootfs 2ms, …`.
struct Laps {
    last: std::time::Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.phases.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (phase, took)) in self.phases.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{phase} {}ms", took.as_millis())?;
        }
        Ok(())
    }
}

impl Node {
    fn sandbox_dir(&self, id: &str) -> std::path::PathBuf {
        self.dir(Kind::Sandbox, id)
    }

    /// Starts a sandbox and returns its address once envd, its first
    /// process, accepts connections on port 49983 (its `/health` answers
    /// from then on). On failure nothing of it is left.
    pub async fn start_sandbox(&self, spec: &SandboxSpec) -> Result<IpAddr, NodeError> {
        let invalid = |detail: String| NodeError::Start {
            instance: spec.id.clone(),
            detail,
        };
        check_id(&spec.id).map_err(invalid)?;
        let allow = firewall::parse_allow_list(&spec.allow_out).map_err(invalid)?;
        let envd = &self.config.envd_binary;
        if !envd.is_file() {
            return Err(invalid(format!(
                "the sandbox agent {} is missing: build it with scripts/build-envd.sh and set the node's envd binary",
                envd.display()
            )));
        }
        // Starting it again must not tear down the one that runs.
        if self.sandbox_dir(&spec.id).exists() {
            return Err(invalid(format!(
                "sandbox {} already exists on this node: stop it first",
                spec.id
            )));
        }
        let mut laps = Laps::start();
        let started = async {
            let ip = self.prepare_sandbox(spec, &allow, &mut laps).await?;
            self.try_launch(Kind::Sandbox, &spec.id).await?;
            laps.mark("launch");
            let envd = std::net::SocketAddr::new(ip, bora_api::ENVD_PORT);
            self.wait_listening(Kind::Sandbox, &spec.id, envd).await?;
            laps.mark("envd listening");
            tracing::debug!(sandbox = %spec.id, phases = %laps, "sandbox container started");
            Ok(ip)
        };
        self.or_destroy(Kind::Sandbox, &spec.id, started.await)
            .await
    }

    async fn prepare_sandbox(
        &self,
        spec: &SandboxSpec,
        allow: &[firewall::Ipv4Net],
        laps: &mut Laps,
    ) -> Result<IpAddr, NodeError> {
        let id = &spec.id;
        let dir = self.sandbox_dir(id);
        let mut record = self.begin(Kind::Sandbox, id, spec.isolation, None)?;

        let disk_dir = dir.join("disk");
        let upper = disk_dir.join("upper");
        let bundle_dir = dir.join("bundle");
        let rootfs = bundle_dir.join("rootfs");
        // The disk and the network do not depend on each other: both at
        // once (each is mostly waiting for a tool: mkfs, mount, the CNI
        // plugin). A failure of either leaves what the other made for the
        // caller's clean-up, which goes by the sandbox's id.
        let storage = async {
            disk::create(&dir.join("disk.img"), &disk_dir, spec.limits.disk_bytes).await?;
            std::fs::create_dir_all(&upper).map_err(|e| NodeError::io(&upper, e))?;
            seed_upper(&upper)?;
            if !rootfs::is_mounted(&rootfs) {
                rootfs::mount_overlay(&spec.image.layers, &upper, &disk_dir.join("work"), &rootfs)?;
            }
            Ok::<_, NodeError>(())
        };
        // The host-wide rules come first: from the moment its link exists,
        // a sandbox is filtered.
        let network = async {
            self.ensure_sandbox_firewall().await?;
            network::attach_sandbox(&self.config.sandbox_network, id).await
        };
        let (storage, link) = tokio::join!(storage, network);
        laps.mark("disk and network");
        storage?;
        let link = link?;
        self.record_ip(Kind::Sandbox, &mut record, link.ip)?;
        let (IpAddr::V4(ip4), Some(host_if)) = (link.ip, &link.host_interface) else {
            return Err(NodeError::Network {
                instance: id.clone(),
                detail: format!("the ptp plugin gave {} and no IPv4 link", link.ip),
            });
        };
        if let Err(e) = firewall::add_sandbox(id, host_if, ip4, allow).await {
            // Someone may have flushed the host's rules: put them back once.
            tracing::warn!(sandbox = %id, error = %e, "adding the sandbox's firewall rules; restoring the host's");
            self.restore_sandbox_firewall().await?;
            firewall::add_sandbox(id, host_if, ip4, allow).await?;
        }
        laps.mark("firewall");

        let etc = write_etc_files(&dir, link.ip, &spec.hostname)?;
        let process = envd_process(&spec.image.config.env, spec);
        let tmp = rootfs.join("tmp");
        let mut binds = vec![Bind {
            destination: ENVD_PATH,
            source: &self.config.envd_binary,
            read_only: true,
        }];
        if spec.isolation == Isolation::Gvisor {
            // Without a mount there, runsc gives an empty /tmp a tmpfs in
            // the sandbox's memory, past the disk limit.
            binds.push(Bind {
                destination: "/tmp",
                source: &tmp,
                read_only: false,
            });
        }
        write_bundle(
            Kind::Sandbox,
            id,
            &bundle_dir,
            &process,
            &spec.hostname,
            spec.limits.cgroup(spec.isolation),
            spec.isolation,
            &etc,
            &binds,
        )?;
        Ok(link.ip)
    }

    fn firewall_ranges(&self) -> (&str, [&str; 1]) {
        (
            self.config.sandbox_network.subnet.as_str(),
            [self.config.network.subnet.as_str()],
        )
    }

    /// The host-wide sandbox rules, put in place once per node process.
    async fn ensure_sandbox_firewall(&self) -> Result<(), NodeError> {
        self.sandbox_firewall
            .get_or_try_init(|| self.restore_sandbox_firewall())
            .await
            .map(|_| ())
    }

    async fn restore_sandbox_firewall(&self) -> Result<(), NodeError> {
        let (sandboxes, blocked) = self.firewall_ranges();
        firewall::ensure_host(sandboxes, &blocked).await
    }

    /// Removes what only sandboxes have: firewall rules, network, disk.
    /// Tries every step; returns the first failure.
    pub(crate) async fn destroy_sandbox_extras(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<(), NodeError> {
        let firewall = firewall::remove_sandbox(id).await;
        let network = network::detach_sandbox(&self.config.sandbox_network, id).await;
        let disk = disk::remove(&dir.join("disk.img"), &dir.join("disk")).await;
        firewall.and(network).and(disk)
    }

    /// Freezes a sandbox: its processes stop and keep their memory and
    /// files (the cgroup freezer under runc, `runsc pause` under gVisor).
    pub async fn pause_sandbox(&self, id: &str) -> Result<(), NodeError> {
        self.known_sandbox(id)?;
        self.pause_in(Kind::Sandbox, id).await
    }

    /// Thaws a paused sandbox.
    pub async fn resume_sandbox(&self, id: &str) -> Result<(), NodeError> {
        self.known_sandbox(id)?;
        self.resume_in(Kind::Sandbox, id).await
    }

    /// Kills a sandbox and removes everything it had: container, rootfs,
    /// disk, network namespace and address, firewall rules, logs.
    /// Idempotent: stopping an unknown or stopped sandbox succeeds.
    pub async fn stop_sandbox(&self, id: &str) -> Result<(), NodeError> {
        check_id(id).map_err(|detail| NodeError::Start {
            instance: id.to_string(),
            detail,
        })?;
        self.stop_in(Kind::Sandbox, id, Duration::ZERO).await
    }

    /// The sandbox's status, from its shim's records.
    pub fn sandbox_status(&self, id: &str) -> InstanceStatus {
        if check_id(id).is_err() {
            return InstanceStatus::Lost;
        }
        self.status_in(Kind::Sandbox, id)
    }

    /// The sandboxes found on disk (apart from instances): after a restart,
    /// the caller re-adopts the running ones and stops the rest.
    pub fn recover_sandboxes(&self) -> Vec<RecoveredInstance> {
        self.recover_in(Kind::Sandbox)
    }

    fn known_sandbox(&self, id: &str) -> Result<(), NodeError> {
        if check_id(id).is_ok() && self.sandbox_dir(id).join("instance.json").exists() {
            Ok(())
        } else {
            Err(NodeError::UnknownInstance(id.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_image::{ImageConfig, Platform};

    fn spec() -> SandboxSpec {
        SandboxSpec {
            id: "sb-1".into(),
            image: Image {
                pinned: "oci:/x@sha256:0".into(),
                manifest_digest: "sha256:0".into(),
                config_digest: "sha256:1".into(),
                platform: Platform::host(),
                config: ImageConfig {
                    entrypoint: vec!["/docker-entrypoint.sh".into()],
                    cmd: vec!["nginx".into()],
                    env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
                    user: Some("nginx".into()),
                    ..Default::default()
                },
                layers: vec![],
            },
            isolation: Isolation::Gvisor,
            limits: SandboxLimits {
                millicpu: 500,
                memory_bytes: 256 << 20,
                pids: 100,
                disk_bytes: 1 << 30,
            },
            env: vec![
                ("FOO".into(), "bar".into()),
                (ENVD_TOKEN_ENV.into(), "spoofed".into()),
            ],
            access_token: "t0k3n".into(),
            allow_out: vec![],
            hostname: "sb".into(),
        }
    }

    #[test]
    fn envd_is_the_process_whatever_the_image_says() {
        let spec = spec();
        let p = envd_process(&spec.image.config.env, &spec);
        assert_eq!(p.args, ["/.bora/envd", "--listen", "0.0.0.0:49983"]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (0, 0, "/"));
        assert_eq!(
            p.env,
            [
                "PATH=/usr/bin:/bin",
                "LANG=C.UTF-8",
                "FOO=bar",
                "BORA_ENVD_ACCESS_TOKEN=t0k3n"
            ]
        );
        let open = SandboxSpec {
            access_token: String::new(),
            ..spec.clone()
        };
        let p = envd_process(&[], &open);
        assert!(!p.env.iter().any(|e| e.starts_with(ENVD_TOKEN_ENV)));
    }

    #[test]
    fn limits_reach_the_bundle() {
        let spec = spec();
        let paths = bundle::BundlePaths {
            hosts: Path::new("/s/hosts"),
            resolv_conf: Path::new("/s/resolv.conf"),
            hostname_file: Path::new("/s/hostname"),
            netns: &network::sandbox_netns_path("sb-1"),
            binds: &[],
        };
        let c = bundle::runtime_config(
            &envd_process(&[], &spec),
            "sb",
            spec.limits.cgroup(Isolation::Container),
            Isolation::Container,
            &crate::cgroup::sandbox_path("sb-1"),
            &paths,
        );
        let r = &c["linux"]["resources"];
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 256u64 << 20);
        assert_eq!(r["memory"]["swap"], 256u64 << 20, "no swap on top");
        assert_eq!(r["pids"]["limit"], 100);
        assert_eq!(c["linux"]["cgroupsPath"], "/bora-sandboxes/sb-1");
        // gVisor's host threads are not the sandbox's processes.
        let g = spec.limits.cgroup(Isolation::Gvisor);
        assert_eq!(g.pids, 100 * GVISOR_PIDS_PER_PROCESS + GVISOR_PIDS_BASE);
        assert_eq!((g.millicpu, g.memory_bytes), (500, 256 << 20));
        let huge = SandboxLimits {
            pids: u64::MAX,
            ..spec.limits
        };
        assert_eq!(huge.cgroup(Isolation::Gvisor).pids, u64::MAX);
        assert!(
            c["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["path"] == "/run/netns/bora-sb-sb-1")
        );
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "sb-1", "i_8d7f6e", &"x".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a b", "a\"b", "é", &"x".repeat(65)] {
            assert!(check_id(bad).unwrap_err().contains("sandbox id"), "{bad}");
        }
    }

    #[test]
    fn the_upper_layer_gets_envds_mount_point_and_a_tmp() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        seed_upper(dir.path()).unwrap();
        assert!(dir.path().join(".bora/envd").is_file());
        let mode = std::fs::metadata(dir.path().join("tmp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }
}
