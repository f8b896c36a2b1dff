//! Sandboxes: create-to-first-command latency with and without a warm
//! pool, sandboxes created per second, and the memory an idle sandbox
//! costs the host — under gVisor and runc.
//!
//! - Bora: a real `bora server` with the base template. One sample is
//!   `POST /v1/sandboxes` → the first command's exit: `echo hello` run by
//!   `/bin/bash -l -c` through the router and the sandbox's envd
//!   (`process.Process/Start`, Connect JSON, with `E2b-Sandbox-Id` and the
//!   access token, as the E2B SDK does it), timed until its end event.
//!   Without a pool, a server with none; with one, a server with
//!   `--sandbox-pool base=N` (and `base=N:container`), each create waiting
//!   first until the pool is full again (the metrics say so), and checked
//!   to have been served from it. Each sandbox is killed afterwards
//!   (untimed).
//! - peer: the same template's root filesystem as an OCI bundle running the
//!   same command as the same user, `runsc run` (`--network=none`) or
//!   `runc run`, timed from spawning the runtime to its exit.
//! - Throughput: `burst` creates-and-first-commands from `concurrency`
//!   threads, against as many `runsc run`/`runc run`s, no pool.
//! - Idle memory: `idle` sandboxes are started, run their first command
//!   and are left idle for a few seconds; then the proportional set sizes
//!   (PSS, `/proc/<pid>/smaps_rollup`) of the host processes that appeared
//!   meanwhile — the runtime's (`runsc` sentry and gofer, `runc`), Bora's
//!   shim and envd — are summed and divided by `idle`. The peer's is an
//!   idle container (`sleep infinity`) of the same bundle, measured the
//!   same way. Kernel memory (page tables, the network namespace) is not
//!   counted on either side.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::super::{Server, http_client, require_root, run as must_run, run_in_sandbox, tail};
use super::{Args, Percentiles, Table, fmt_duration, fmt_ratio, poll, ratio, tool};

/// The first command, in Bora and in the peer.
const COMMAND: &str = "echo hello";

#[derive(Clone, Debug)]
pub struct SandboxParams {
    /// Timed sandboxes per configuration (and peer runs).
    pub sandboxes: usize,
    /// Sandboxes created in the throughput run.
    pub burst: usize,
    /// Threads creating them.
    pub concurrency: usize,
    /// Sandboxes left idle for the memory figure.
    pub idle: usize,
    /// Warm sandboxes per pool.
    pub pool_size: usize,
    /// How long one create-and-command may take.
    pub timeout: Duration,
}

impl SandboxParams {
    pub const FLAGS: &[&str] = &[
        "sandboxes",
        "burst",
        "concurrency",
        "idle",
        "pool-size",
        "timeout",
    ];

    pub fn full(args: &Args) -> SandboxParams {
        SandboxParams {
            sandboxes: args.count("sandboxes", 50),
            burst: args.count("burst", 20),
            concurrency: args.count("concurrency", 4),
            idle: args.count("idle", 10),
            pool_size: args.count("pool-size", 2),
            timeout: args.duration("timeout", Duration::from_secs(60)),
        }
    }

    pub fn smoke() -> SandboxParams {
        SandboxParams {
            sandboxes: 2,
            burst: 2,
            concurrency: 2,
            idle: 1,
            pool_size: 1,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The two isolations measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    Gvisor,
    Runc,
}

impl Isolation {
    pub const ALL: [Isolation; 2] = [Isolation::Gvisor, Isolation::Runc];

    /// Bora's name for it.
    fn api_name(self) -> &'static str {
        match self {
            Isolation::Gvisor => "gvisor",
            Isolation::Runc => "container",
        }
    }

    fn runtime(self) -> &'static str {
        match self {
            Isolation::Gvisor => "runsc",
            Isolation::Runc => "runc",
        }
    }
}

/// One isolation's figures.
#[derive(Clone, Debug)]
pub struct IsolationReport {
    pub isolation: Isolation,
    /// Create → first command's exit, no pool.
    pub cold: Percentiles,
    /// The same, taken from a warm pool.
    pub pooled: Percentiles,
    /// `runsc run`/`runc run` of the command.
    pub peer: Percentiles,
    /// Create-and-first-command per second, `concurrency` at a time.
    pub bora_per_sec: f64,
    pub peer_per_sec: f64,
    /// Host memory per idle sandbox / idle peer container, in bytes.
    pub bora_idle_bytes: f64,
    pub peer_idle_bytes: f64,
}

#[derive(Clone, Debug)]
pub struct SandboxReport {
    pub params: SandboxParams,
    pub isolations: Vec<IsolationReport>,
}

impl SandboxReport {
    pub fn table(&self) -> Table {
        let p = &self.params;
        let mut t = Table::new(
            format!(
                "sandboxes: create → first command's exit ({COMMAND:?}; {} each; peer: runsc run / runc run of the same bundle and command), \
                 throughput ({} at {} at a time), idle memory ({} sandboxes)",
                p.sandboxes, p.burst, p.concurrency, p.idle
            ),
            &["figure", "Bora", "peer", "ratio"],
        );
        for r in &self.isolations {
            let name = match r.isolation {
                Isolation::Gvisor => "gVisor",
                Isolation::Runc => "runc",
            };
            for (figure, bora, peer) in [
                ("no pool p50", r.cold.p50, r.peer.p50),
                ("no pool p99", r.cold.p99, r.peer.p99),
                ("pool p50", r.pooled.p50, r.peer.p50),
                ("pool p99", r.pooled.p99, r.peer.p99),
            ] {
                t.row(vec![
                    format!("{name} {figure}"),
                    fmt_duration(bora),
                    fmt_duration(peer),
                    fmt_ratio(ratio(bora, peer)),
                ]);
            }
            t.row(vec![
                format!("{name} sandboxes/s"),
                format!("{:.2}", r.bora_per_sec),
                format!("{:.2}", r.peer_per_sec),
                fmt_ratio(r.bora_per_sec / r.peer_per_sec),
            ]);
            t.row(vec![
                format!("{name} idle memory"),
                fmt_mib(r.bora_idle_bytes),
                fmt_mib(r.peer_idle_bytes),
                fmt_ratio(r.bora_idle_bytes / r.peer_idle_bytes),
            ]);
        }
        t
    }
}

impl std::fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table())
    }
}

fn fmt_mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// Runs the sandbox bench; progress goes to stderr.
pub fn run(params: &SandboxParams) -> SandboxReport {
    require_root();
    // Without a pool: latency, throughput, idle memory.
    let server = Server::start();
    server.base_template();
    let bundle = PeerBundle::prepare(&server);
    let mut partial = Vec::new();
    for isolation in Isolation::ALL {
        let bora = Bora::new(&server);
        let cold = Percentiles::of(&bora.one_by_one(isolation, params, "no pool", None));
        let peer = Percentiles::of(&bundle.one_by_one(isolation, params));
        let bora_per_sec = bora.burst(isolation, params);
        let peer_per_sec = bundle.burst(isolation, params);
        let bora_idle_bytes = bora.idle_memory(isolation, params);
        let peer_idle_bytes = bundle.idle_memory(isolation, params);
        partial.push((
            isolation,
            cold,
            peer,
            bora_per_sec,
            peer_per_sec,
            bora_idle_bytes,
            peer_idle_bytes,
        ));
    }
    drop(server);

    // With a pool of each isolation.
    let size = params.pool_size.to_string();
    let pools = [format!("base={size}"), format!("base={size}:container")];
    let server = Server::start_with(&[
        "--sandbox-pool",
        pools[0].as_str(),
        "--sandbox-pool",
        pools[1].as_str(),
    ]);
    server.base_template();
    let bora = Bora::new(&server);
    let isolations = partial
        .into_iter()
        .map(
            |(isolation, cold, peer, bora_per_sec, peer_per_sec, bora_idle, peer_idle)| {
                let pooled = Percentiles::of(&bora.one_by_one(
                    isolation,
                    params,
                    "pool",
                    Some(params.pool_size),
                ));
                IsolationReport {
                    isolation,
                    cold,
                    pooled,
                    peer,
                    bora_per_sec,
                    peer_per_sec,
                    bora_idle_bytes: bora_idle,
                    peer_idle_bytes: peer_idle,
                }
            },
        )
        .collect();
    SandboxReport {
        params: params.clone(),
        isolations,
    }
}

/// A Bora server's sandbox API and router.
struct Bora<'s> {
    server: &'s Server,
    token: String,
    client: reqwest::blocking::Client,
}

impl<'s> Bora<'s> {
    fn new(server: &'s Server) -> Bora<'s> {
        Bora {
            server,
            token: server.token(),
            client: http_client(),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("{what}; server log:\n{}", tail(&self.server.log(), 60));
    }

    /// Creates a sandbox; returns its id and envd token.
    fn create(&self, isolation: Isolation) -> Result<(String, String), String> {
        let resp = self
            .client
            .post(format!("http://{}/v1/sandboxes", self.server.api))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "timeout": "10m", "isolation": isolation.api_name() }))
            .send()
            .map_err(|e| format!("POST /v1/sandboxes: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .map_err(|e| format!("POST /v1/sandboxes ({status}): {e}"))?;
        if !status.is_success() {
            return Err(format!("POST /v1/sandboxes: {status}: {body}"));
        }
        let field = |name: &str| body[name].as_str().map(str::to_string);
        match (field("id"), field("envd_access_token")) {
            (Some(id), Some(token)) => Ok((id, token)),
            _ => Err(format!("POST /v1/sandboxes answered {body}")),
        }
    }

    /// Runs [`COMMAND`] in the sandbox through the router, as the E2B SDK
    /// does, and checks it printed `hello` and exited 0.
    fn first_command(&self, id: &str, token: &str) -> Result<(), String> {
        match run_in_sandbox(&self.client, self.server.http, id, token, COMMAND)? {
            (out, 0) if out == "hello\n" => Ok(()),
            (out, exit) => Err(format!("{COMMAND:?} in {id}: stdout {out:?}, exit {exit}")),
        }
    }

    fn kill(&self, id: &str) {
        let resp = self
            .client
            .delete(format!("http://{}/v1/sandboxes/{id}", self.server.api))
            .bearer_auth(&self.token)
            .send();
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => self.fail(format!("DELETE /v1/sandboxes/{id}: {}", r.status())),
            Err(e) => self.fail(format!("DELETE /v1/sandboxes/{id}: {e}")),
        }
    }

    /// Create → first command's exit, timed.
    fn create_and_run(&self, isolation: Isolation) -> Result<(String, Duration), String> {
        let start = Instant::now();
        let (id, token) = self.create(isolation)?;
        self.first_command(&id, &token)?;
        Ok((id, start.elapsed()))
    }

    /// `params.sandboxes` timed samples, one at a time; with `pool`, each
    /// waits for the pool to hold that many warm sandboxes first and must
    /// be served from it.
    fn one_by_one(
        &self,
        isolation: Isolation,
        params: &SandboxParams,
        label: &str,
        pool: Option<usize>,
    ) -> Vec<Duration> {
        let ready = format!(
            "bora_sandbox_pool_ready{{template=\"base\",isolation=\"{}\"}}",
            isolation.api_name()
        );
        let from_pool = "bora_sandboxes_created_total{source=\"pool\"}";
        (0..params.sandboxes)
            .map(|i| {
                let pooled_before = self.server.metric(from_pool);
                if let Some(size) = pool {
                    let full = poll(
                        "the sandbox pool to fill",
                        Duration::from_millis(20),
                        params.timeout,
                        || (self.server.metric(&ready) >= size as f64).then_some(()),
                    );
                    if let Err(e) = full {
                        self.fail(e);
                    }
                }
                let (id, took) = self
                    .create_and_run(isolation)
                    .unwrap_or_else(|e| self.fail(e));
                if pool.is_some() && self.server.metric(from_pool) <= pooled_before {
                    self.fail(format!("sandbox {id} did not come from the pool"));
                }
                eprintln!(
                    "sandbox bench: {} {label} {}: {}",
                    isolation.api_name(),
                    i + 1,
                    fmt_duration(took)
                );
                self.kill(&id);
                took
            })
            .collect()
    }

    /// Creates-and-first-commands per second, `params.concurrency` at a
    /// time.
    fn burst(&self, isolation: Isolation, params: &SandboxParams) -> f64 {
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        let ids: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..params.concurrency)
                .map(|_| {
                    scope.spawn(|| {
                        let mut ids = Vec::new();
                        while next.fetch_add(1, Ordering::Relaxed) < params.burst {
                            match self.create_and_run(isolation) {
                                Ok((id, _)) => ids.push(id),
                                Err(e) => return Err(e),
                            }
                        }
                        Ok(ids)
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap().unwrap_or_else(|e| self.fail(e)))
                .collect()
        });
        let rate = ids.len() as f64 / start.elapsed().as_secs_f64();
        eprintln!(
            "sandbox bench: {} burst: {rate:.2} sandboxes/s",
            isolation.api_name()
        );
        for id in ids {
            self.kill(&id);
        }
        rate
    }

    /// Host memory per idle sandbox.
    fn idle_memory(&self, isolation: Isolation, params: &SandboxParams) -> f64 {
        let before = pids();
        let ids: Vec<String> = (0..params.idle)
            .map(|_| {
                let (id, token) = self.create(isolation).unwrap_or_else(|e| self.fail(e));
                // One command, so the sandbox has done what a used one has.
                self.first_command(&id, &token)
                    .unwrap_or_else(|e| self.fail(e));
                id
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        let used = pss_of_new_processes(&before);
        for id in &ids {
            self.kill(id);
        }
        let per = used as f64 / params.idle as f64;
        eprintln!(
            "sandbox bench: {} idle: {} each",
            isolation.api_name(),
            fmt_mib(per)
        );
        per
    }
}

/// The host's process ids.
fn pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a sandbox's host processes run: the runtimes, Bora's shim (the
/// `bora` binary), envd (seen from the host under its path in the
/// container), and the peer's idle command.
const SANDBOX_PROGRAMS: &[&str] = &["runsc", "runc", "bora", "envd", "bora-envd", "sleep"];

/// The summed PSS, in bytes, of the processes not in `before` that run
/// one of [`SANDBOX_PROGRAMS`] (so that anything else starting meanwhile,
/// a compiler say, is left out).
fn pss_of_new_processes(before: &HashSet<u32>) -> u64 {
    pids()
        .difference(before)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                let name = exe.file_name().unwrap_or_default().to_string_lossy();
                let name = name.trim_end_matches(" (deleted)");
                SANDBOX_PROGRAMS.contains(&name)
            })
        })
        .filter_map(|pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            rollup.lines().find_map(|l| {
                let kib: u64 = l
                    .strip_prefix("Pss:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kib * 1024)
            })
        })
        .sum()
}

/// The base template's root filesystem as an OCI bundle, run by the bare
/// runtimes.
pub struct PeerBundle {
    dir: tempfile::TempDir,
    bundle: PathBuf,
}

impl PeerBundle {
    /// Unpacks the template's cached root filesystem (the tarball
    /// `bora templates build-base` imported) into a bundle whose process is
    /// [`COMMAND`] as `user`, like Bora's.
    pub fn prepare(server: &Server) -> PeerBundle {
        let tarball = find_rootfs_tar(&server.data_dir.join("templates/base"))
            .expect("the base template's rootfs.tar in the server's data dir");
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        must_run(
            Command::new("tar")
                .args(["-xpf"])
                .arg(&tarball)
                .arg("-C")
                .arg(&rootfs)
                .arg("--numeric-owner"),
        );
        must_run(tool("runc").arg("spec").current_dir(&bundle));
        let config_path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["/bin/bash", "-l", "-c", COMMAND]);
        config["process"]["user"] = serde_json::json!({ "uid": 1000, "gid": 1000 });
        config["process"]["cwd"] = "/home/user".into();
        config["process"]["env"] = serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/home/user",
            "LANG=C.UTF-8"
        ]);
        config["root"]["readonly"] = true.into();
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        PeerBundle { dir, bundle }
    }

    fn runtime(&self, isolation: Isolation) -> Command {
        let mut c = tool(isolation.runtime());
        c.arg("--root")
            .arg(self.dir.path().join(isolation.runtime()));
        if isolation == Isolation::Gvisor {
            c.arg("--network=none");
        }
        c
    }

    /// `run` of the command in a fresh container; returns how long it took.
    fn run_once(&self, isolation: Isolation, id: &str) -> Result<Duration, String> {
        let start = Instant::now();
        let out = self
            .runtime(isolation)
            .args(["run", "--bundle"])
            .arg(&self.bundle)
            .arg(id)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", isolation.runtime()))?;
        let took = start.elapsed();
        let _ = self
            .runtime(isolation)
            .args(["delete", "--force", id])
            .output();
        if !out.status.success() || out.stdout != b"hello\n" {
            return Err(format!(
                "{} run {id}: {}: stdout {:?}, stderr {}",
                isolation.runtime(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(took)
    }

    fn one_by_one(&self, isolation: Isolation, params: &SandboxParams) -> Vec<Duration> {
        (0..params.sandboxes)
            .map(|i| {
                let id = format!("bora-bench-sbx-{}-{i}", std::process::id());
                let took = self
                    .run_once(isolation, &id)
                    .unwrap_or_else(|e| panic!("{e}"));
                eprintln!(
                    "sandbox bench: {} run {}: {}",
                    isolation.runtime(),
                    i + 1,
                    fmt_duration(took)
                );
                took
            })
            .collect()
    }

    fn burst(&self, isolation: Isolation, params: &SandboxParams) -> f64 {
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..params.concurrency {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= params.burst {
                            break;
                        }
                        let id = format!("bora-bench-burst-{}-{i}", std::process::id());
                        self.run_once(isolation, &id)
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                });
            }
        });
        let rate = params.burst as f64 / start.elapsed().as_secs_f64();
        eprintln!(
            "sandbox bench: {} burst: {rate:.2} containers/s",
            isolation.runtime()
        );
        rate
    }

    /// Host memory per idle container (`sleep infinity` in the same
    /// bundle, detached).
    fn idle_memory(&self, isolation: Isolation, params: &SandboxParams) -> f64 {
        let idle_bundle = self.dir.path().join("idle");
        if !idle_bundle.exists() {
            std::fs::create_dir_all(&idle_bundle).unwrap();
            let mut config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(self.bundle.join("config.json")).unwrap())
                    .unwrap();
            config["process"]["args"] = serde_json::json!(["/bin/sleep", "infinity"]);
            config["root"]["path"] = self.bundle.join("rootfs").to_string_lossy().into();
            std::fs::write(
                idle_bundle.join("config.json"),
                serde_json::to_vec_pretty(&config).unwrap(),
            )
            .unwrap();
        }
        let before = pids();
        let ids: Vec<String> = (0..params.idle)
            .map(|i| {
                let id = format!("bora-bench-idle-{}-{i}", std::process::id());
                must_run(
                    self.runtime(isolation)
                        .args(["run", "--detach", "--bundle"])
                        .arg(&idle_bundle)
                        .arg(&id)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                );
                id
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        let used = pss_of_new_processes(&before);
        for id in &ids {
            let _ = self
                .runtime(isolation)
                .args(["delete", "--force", id])
                .output();
        }
        let per = used as f64 / params.idle as f64;
        eprintln!(
            "sandbox bench: {} idle: {} each",
            isolation.runtime(),
            fmt_mib(per)
        );
        per
    }
}

/// `<dir>/<key>/rootfs.tar`, the cached base template.
fn find_rootfs_tar(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join("rootfs.tar"))
        .find(|p| p.is_file())
}
