//! Sandboxes for real, under gVisor (runsc) and runc: a busybox template
//! built with umoci, the static `bora-envd` as PID 1 driven over HTTP the
//! way the E2B SDKs drive it (Connect JSON), the limits, the firewall,
//! pause and resume, and the cleanup.
//!
//! Needs root, runsc or runc, umoci, iptables, mkfs.ext4 and the static
//! envd (`scripts/build-envd.sh`, or `BORA_ENVD_BINARY`); without them each
//! test says why it skips and passes.

use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bora_api::Isolation;
use bora_image::{Image, PullOptions};
use bora_node::{InstanceStatus, Node, NodeConfig, SandboxLimits, SandboxSpec, firewall};
use serde_json::{Value, json};

const TOKEN: &str = "sandbox-test-token";
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// Prerequisites

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file()
}

fn envd_binary() -> PathBuf {
    std::env::var_os("BORA_ENVD_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/envd/bora-envd")
        })
}

fn skip_reason(isolation: Isolation) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("sandboxes need root (namespaces, mounts, iptables)".into());
    }
    let runtime = match isolation {
        Isolation::Gvisor => "runsc",
        Isolation::Container => "runc",
    };
    for program in [
        runtime,
        "umoci",
        "iptables",
        "iptables-restore",
        "mkfs.ext4",
        "nsenter",
    ] {
        if !which(program) {
            return Some(format!("{program} is not installed"));
        }
    }
    let envd = envd_binary();
    if !envd.is_file() {
        return Some(format!(
            "{} is missing: run scripts/build-envd.sh (or set BORA_ENVD_BINARY)",
            envd.display()
        ));
    }
    None
}

macro_rules! require {
    ($isolation:expr) => {
        if let Some(why) = skip_reason($isolation) {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// The template: busybox with its applets, root in /etc/passwd, and a
// command that would fail at once, to show envd runs whatever it says.

fn busybox_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("unpacked");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (apt install busybox-static)");
    for applet in run(Command::new("/bin/busybox").arg("--list")).lines() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/false",
    ]));
    layout
}

// ---------------------------------------------------------------------------
// The harness: a node in a temporary data dir; every sandbox it started is
// stopped when it is dropped, even when a test fails.

struct Harness {
    node: Arc<Node>,
    data: tempfile::TempDir,
    image: Image,
    started: Mutex<Vec<String>>,
}

impl Harness {
    async fn new() -> Harness {
        Self::with(|_| {}).await
    }

    async fn with(configure: impl FnOnce(&mut NodeConfig)) -> Harness {
        let data = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(data.path(), env!("CARGO_BIN_EXE_bora-node-shim"));
        config.envd_binary = envd_binary();
        config.start_timeout = Duration::from_secs(30);
        configure(&mut config);
        let node = Node::new(config).unwrap();
        let layout = busybox_layout(data.path());
        let image = node
            .images()
            .pull(
                &format!("oci:{}:latest", layout.display()),
                &PullOptions::default(),
                &|_| {},
            )
            .await
            .unwrap();
        Harness {
            node: Arc::new(node),
            data,
            image,
            started: Mutex::new(Vec::new()),
        }
    }

    fn spec(&self, name: &str, isolation: Isolation, allow_out: &[&str]) -> SandboxSpec {
        SandboxSpec {
            // Unique across the tests of this process and of others.
            id: format!(
                "t{}-{}-{name}",
                std::process::id(),
                match isolation {
                    Isolation::Gvisor => "g",
                    Isolation::Container => "r",
                }
            ),
            image: self.image.clone(),
            isolation,
            limits: SandboxLimits {
                millicpu: 1000,
                memory_bytes: 256 * MIB,
                pids: 256,
                disk_bytes: 256 * MIB,
            },
            env: vec![("SANDBOX_TEST".into(), "yes".into())],
            access_token: TOKEN.into(),
            allow_out: allow_out.iter().map(|s| s.to_string()).collect(),
            hostname: name.into(),
        }
    }

    /// Starts a sandbox and waits for envd; returns its client and the
    /// time from `start_sandbox` to envd's first healthy answer.
    async fn start(&self, spec: &SandboxSpec) -> (Envd, Duration) {
        self.started.lock().unwrap().push(spec.id.clone());
        let t0 = Instant::now();
        let ip = self
            .node
            .start_sandbox(spec)
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", spec.id));
        let envd = Envd::new(ip);
        envd.wait_healthy(Duration::from_secs(30)).await;
        let took = t0.elapsed();
        envd.init().await;
        (envd, took)
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data.path().join("sandboxes").join(id)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.started.lock().unwrap());
        if std::thread::panicking() {
            // What the sandboxes said, before their logs go with them.
            for id in &ids {
                let log = self.sandbox_dir(id).join("logs/current.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!("--- {id}: {:?}", self.node.sandbox_status(id));
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let node = self.node.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            for id in ids {
                if let Err(e) = rt.block_on(node.stop_sandbox(&id)) {
                    eprintln!("cleanup: stopping {id}: {e}");
                }
            }
        })
        .join();
    }
}

// ---------------------------------------------------------------------------
// An envd client: Connect JSON over HTTP/1.1, as the E2B SDKs speak it.

struct Envd {
    ip: IpAddr,
    base: String,
    client: reqwest::Client,
}

#[derive(Debug, Default)]
struct ProcessRun {
    stdout: String,
    stderr: String,
    exit_code: i64,
    end: Value,
}

impl Envd {
    fn new(ip: IpAddr) -> Envd {
        Envd {
            ip,
            base: format!("http://{ip}:49983"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    async fn healthy(&self, timeout: Duration) -> bool {
        matches!(
            self.client.get(format!("{}/health", self.base)).timeout(timeout).send().await,
            Ok(r) if r.status().as_u16() == 204
        )
    }

    async fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.healthy(Duration::from_millis(500)).await {
            assert!(
                Instant::now() < deadline,
                "envd at {} never got healthy",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn init(&self) {
        let resp = self
            .client
            .post(format!("{}/init", self.base))
            .header("x-access-token", TOKEN)
            .json(&json!({"defaultUser": "root", "envVars": {"FROM_INIT": "1"}}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "/init: {}", resp.status());
    }

    /// Runs `/bin/sh -c script` through `process.Process/Start`.
    async fn sh(&self, script: &str) -> Result<ProcessRun, String> {
        let body = json!({"process": {"cmd": "/bin/sh", "args": ["-c", script]}, "stdin": false})
            .to_string();
        let mut envelope = vec![0u8];
        envelope.extend((body.len() as u32).to_be_bytes());
        envelope.extend(body.as_bytes());
        let resp = self
            .client
            .post(format!("{}/process.Process/Start", self.base))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .header("x-access-token", TOKEN)
            .body(envelope)
            .send()
            .await
            .map_err(|e| format!("sending: {e}"))?;
        if resp.status().as_u16() != 200 {
            return Err(format!("HTTP {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| format!("reading: {e}"))?;
        let mut run = ProcessRun::default();
        let mut rest = &bytes[..];
        while rest.len() >= 5 {
            let flags = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let msg: Value = serde_json::from_slice(&rest[5..5 + len]).unwrap();
            rest = &rest[5 + len..];
            if flags & 2 != 0 {
                if let Some(e) = msg.get("error") {
                    return Err(format!("end of stream: {e}"));
                }
                continue;
            }
            let event = &msg["event"];
            if let Some(data) = event.get("data") {
                for (key, out) in [("stdout", &mut run.stdout), ("stderr", &mut run.stderr)] {
                    if let Some(b) = data.get(key).and_then(Value::as_str) {
                        use base64::Engine;
                        let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                        out.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
            } else if let Some(end) = event.get("end") {
                run.exit_code = end.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
                run.end = end.clone();
            }
        }
        if run.end.is_null() {
            return Err(format!("the stream ended without an end event: {run:?}"));
        }
        Ok(run)
    }

    async fn ok(&self, script: &str) -> String {
        let run = self
            .sh(script)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        assert_eq!(run.exit_code, 0, "{script}: {run:?}");
        run.stdout
    }
}

// ---------------------------------------------------------------------------
// What a stopped sandbox must not leave behind.

fn assert_nothing_left(h: &Harness, id: &str, ip: Option<IpAddr>) {
    assert!(
        !Path::new("/run/netns")
            .join(format!("bora-sb-{id}"))
            .exists(),
        "netns of {id}"
    );
    if let Some(ip) = ip {
        let lease = Path::new("/var/lib/cni/networks/bora-sandbox").join(ip.to_string());
        assert!(!lease.exists(), "{} (address of {id})", lease.display());
    }
    let rules = run(Command::new("iptables").args(["-w", "-S"]));
    let chain = firewall::sandbox_chain(id);
    assert!(!rules.contains(&chain), "{chain} is still in:\n{rules}");
    assert!(
        !rules.contains(&format!("bora sandbox {id}\"")),
        "a rule names {id}"
    );
    let dir = h.sandbox_dir(id);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "mounts under {} remain",
        dir.display()
    );
    assert!(!dir.exists(), "{} remains", dir.display());
    let loops = run(Command::new("losetup").arg("-a"));
    assert!(
        !loops.contains(&dir.display().to_string()),
        "a loop device: {loops}"
    );
    for runtime in ["gvisor", "container"] {
        let root = h.data.path().join("runtime/sandboxes").join(runtime);
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(id),
                    "runtime state {name} in {}",
                    root.display()
                );
            }
        }
    }
    for controller in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
        let cg = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("bora-sandboxes")
            .join(id);
        assert!(!cg.exists(), "{} remains", cg.display());
    }
}

// ---------------------------------------------------------------------------
// 1. Start, run a command, stop: nothing left.

async fn lifecycle(isolation: Isolation) {
    let h = Harness::new().await;
    let spec = h.spec("life", isolation, &[]);
    let (envd, took) = h.start(&spec).await;
    eprintln!("{isolation}: start_sandbox → envd healthy in {took:?}");
    assert_eq!(h.node.sandbox_status(&spec.id), InstanceStatus::Running);

    let run = envd.sh("echo hi").await.unwrap();
    assert_eq!((run.stdout.as_str(), run.exit_code), ("hi\n", 0), "{run:?}");
    // envd is PID 1 whatever the image's entrypoint (`/bin/false`) says,
    // runs as root, and hands its environment (not its token) down.
    let out = envd
        .ok("cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u; echo $SANDBOX_TEST $FROM_INIT; env | grep -c BORA_ENVD || true; hostname")
        .await;
    assert_eq!(
        out, "/.bora/envd --listen 0.0.0.0:49983 \n0\nyes 1\n0\nlife\n",
        "{out}"
    );
    // envd is read-only, and its mount point is not in the image.
    let run = envd.sh("echo x > /.bora/envd").await.unwrap();
    assert_ne!(run.exit_code, 0, "envd must be read-only: {run:?}");
    assert!(!h.image.layers.iter().any(|l| l.join(".bora").exists()));
    // No token, no service.
    let resp = reqwest::Client::new()
        .post(format!("{}/process.Process/Start", envd.base))
        .header("content-type", "application/connect+json")
        .body(vec![0, 0, 0, 0, 2, b'{', b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let recovered = h.node.recover_sandboxes();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].id, spec.id);
    assert_eq!(recovered[0].ip, Some(envd.ip));
    assert!(h.node.recover().is_empty(), "sandboxes are not instances");

    h.node.stop_sandbox(&spec.id).await.unwrap();
    assert_nothing_left(&h, &spec.id, Some(envd.ip));
    assert!(!envd.healthy(Duration::from_millis(500)).await);
    assert_eq!(h.node.sandbox_status(&spec.id), InstanceStatus::Lost);
    // Stopping again, or a sandbox never started, is fine.
    h.node.stop_sandbox(&spec.id).await.unwrap();
    h.node.stop_sandbox("never-started").await.unwrap();
    assert!(h.node.recover_sandboxes().is_empty());
}

#[tokio::test]
async fn lifecycle_gvisor() {
    require!(Isolation::Gvisor);
    lifecycle(Isolation::Gvisor).await;
}

#[tokio::test]
async fn lifecycle_runc() {
    require!(Isolation::Container);
    lifecycle(Isolation::Container).await;
}

#[tokio::test]
async fn a_failed_start_leaves_nothing() {
    require!(Isolation::Gvisor);
    // Everything is set up (disk, overlay, namespace, address, firewall,
    // bundle, shim) before the runtime fails to run the container; it
    // answers everything else as runsc does.
    let wrapper = tempfile::tempdir().unwrap();
    let runtime = wrapper.path().join("failing-runsc");
    std::fs::write(
        &runtime,
        "#!/bin/sh\ncase \" $* \" in *\" run \"*) echo 'cannot run: injected failure' >&2; exit 1;; esac\nexec runsc \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = Harness::with(|c| c.runtimes.gvisor = runtime.clone()).await;
    let spec = h.spec("fail", Isolation::Gvisor, &["203.0.113.0/24"]);
    let leases_before = leases();
    let err = h.node.start_sandbox(&spec).await.unwrap_err().to_string();
    assert!(err.contains("injected failure"), "{err}");
    assert_nothing_left(&h, &spec.id, None);
    assert_eq!(leases(), leases_before, "an address leaked");

    // Bad input is refused before anything is made.
    let bad = SandboxSpec {
        allow_out: vec!["example.com".into()],
        ..h.spec("bad", Isolation::Gvisor, &[])
    };
    let err = h.node.start_sandbox(&bad).await.unwrap_err().to_string();
    assert!(err.contains("example.com"), "{err}");
    assert!(!h.sandbox_dir(&bad.id).exists());
    let err = h
        .node
        .start_sandbox(&SandboxSpec {
            id: "../escape".into(),
            ..bad.clone()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("sandbox id"), "{err}");
}

fn leases() -> Vec<String> {
    let dir = Path::new("/var/lib/cni/networks/bora-sandbox");
    let pid = format!("t{}-", std::process::id());
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .map(|s| s.contains(&pid))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// 2. Limits, with a neighbour that stays usable.

fn cgroup_file(controller: &str, id: &str, file: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("bora-sandboxes")
        .join(id)
        .join(file)
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Runs `echo` in the neighbour every 100 ms until told to stop; returns
/// the slowest round trip.
fn neighbour_prober(envd: Arc<Envd>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let out = envd.ok("echo alive").await;
            assert_eq!(out, "alive\n");
            slowest = slowest.max(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slowest
    })
}

async fn limits(isolation: Isolation) {
    let h = Harness::new().await;
    let mut spec = h.spec("hog", isolation, &[]);
    spec.limits = SandboxLimits {
        millicpu: 500,
        memory_bytes: 128 * MIB,
        pids: 64,
        disk_bytes: 64 * MIB,
    };
    let (hog, _) = h.start(&spec).await;
    let (neighbour, _) = h.start(&h.spec("calm", isolation, &[])).await;
    let neighbour = Arc::new(neighbour);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = neighbour_prober(neighbour.clone(), stop.clone());
    let id = &spec.id;

    // Disk: a filler gets ENOSPC at the limit, in / and in /tmp; the host
    // holds no more than the disk's size for it.
    let run = hog
        .sh("dd if=/dev/zero of=/fill bs=1M count=200; echo rc=$?; dd if=/dev/zero of=/tmp/fill bs=1M count=200; echo rc=$?; sync")
        .await
        .unwrap();
    assert_eq!(
        run.stderr.matches("No space left on device").count(),
        2,
        "{run:?}"
    );
    assert_eq!(run.stdout, "rc=1\nrc=1\n");
    use std::os::unix::fs::MetadataExt;
    let image = std::fs::metadata(h.sandbox_dir(id).join("disk.img")).unwrap();
    assert!(
        image.blocks() * 512 <= 64 * MIB,
        "the disk image holds {} bytes",
        image.blocks() * 512
    );
    hog.ok("rm /fill /tmp/fill; echo after > /ok; cat /ok")
        .await;

    // CPU: two spinners on a half-core quota get throttled.
    let cpu = |f: &str| cgroup_file("cpu", id, f);
    let cpuacct = |f: &str| cgroup_file("cpuacct", id, f);
    assert_eq!(read_u64(&cpu("cpu.cfs_quota_us")), 50_000);
    let used_before = read_u64(&cpuacct("cpuacct.usage"));
    let t0 = Instant::now();
    hog.ok("timeout 3 sh -c 'while :; do :; done' & timeout 3 sh -c 'while :; do :; done' & wait; true")
        .await;
    let cores = (read_u64(&cpuacct("cpuacct.usage")) - used_before) as f64
        / 1e9
        / t0.elapsed().as_secs_f64();
    let stat = std::fs::read_to_string(cpu("cpu.stat")).unwrap();
    eprintln!(
        "{isolation}: two spinners used {cores:.2} cores on a 0.5 quota; {}",
        stat.replace('\n', ", ")
    );
    assert!(cores < 0.8, "the spinners used {cores:.2} cores");
    assert!(
        !stat.contains("nr_throttled 0\n"),
        "never throttled: {stat}"
    );

    // Memory, last (under gVisor it ends the sandbox): a hog is killed at
    // the limit; no swap.
    let limit = read_u64(&cgroup_file("memory", id, "memory.limit_in_bytes"));
    assert_eq!(limit, 128 * MIB);
    let memsw = cgroup_file("memory", id, "memory.memsw.limit_in_bytes");
    if memsw.exists() {
        assert_eq!(read_u64(&memsw), 128 * MIB, "no swap on top of memory");
    }
    let run = hog
        .sh("dd if=/dev/zero of=/dev/null bs=300M count=1; echo rc=$?")
        .await;
    let max_usage = std::fs::read_to_string(cgroup_file("memory", id, "memory.max_usage_in_bytes"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = max_usage {
        // The kernel may charge a page past the limit before reclaiming.
        assert!(max <= 128 * MIB + 64 * 1024, "used {max} bytes");
    }
    match (isolation, run) {
        (Isolation::Container, Ok(run)) => {
            assert!(
                run.stdout.contains("rc=137"),
                "the hog was not killed: {run:?}"
            );
            // Only the hog died: envd is alive.
            assert_eq!(hog.ok("echo still here").await, "still here\n");
        }
        (Isolation::Container, Err(e)) => panic!("under runc only the hog dies: {e}"),
        (Isolation::Gvisor, run) => {
            // gVisor's sentry holds all of the sandbox's memory: the host's
            // OOM killer ends the whole sandbox.
            eprintln!("gvisor: the memory hog's request ended with {run:?}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while h.node.sandbox_status(id) == InstanceStatus::Running && run.as_ref().is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the sandbox neither killed the hog nor ended"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!(
                "gvisor: after the memory hog the sandbox is {:?}",
                h.node.sandbox_status(id)
            );
        }
    }

    // Processes, in a sandbox of their own: a fork bomb stops at the pids
    // limit (runc: forks fail, the sandbox lives on). gVisor's guest
    // processes are not host processes (its platforms need no host thread
    // per task): an unbounded bomb grows inside the sentry until the
    // sandbox's memory or host-thread limit ends it — that sandbox alone.
    let mut bomb_spec = h.spec("bomb", isolation, &[]);
    bomb_spec.limits.pids = 64;
    let (bomb, _) = h.start(&bomb_spec).await;
    let host_pids = read_u64(&cgroup_file("pids", &bomb_spec.id, "pids.max"));
    assert_eq!(host_pids, bomb_spec.limits.cgroup(isolation).pids);
    let script = match isolation {
        Isolation::Container => {
            "i=0; while [ $i -lt 300 ]; do sleep 5 >/dev/null 2>&1 & i=$((i+1)); done; echo all forked"
        }
        Isolation::Gvisor => "b() { b | b & }; b; sleep 30; echo all forked",
    };
    let run = bomb.sh(script).await;
    match (isolation, run) {
        (Isolation::Container, Ok(run)) => {
            // The shell gives up at the first fork that fails.
            assert!(run.stderr.contains("can't fork"), "{run:?}");
            assert!(!run.stdout.contains("all forked"));
            let current = read_u64(&cgroup_file("pids", &bomb_spec.id, "pids.current"));
            assert!(current <= 64, "{current} processes");
            let events =
                std::fs::read_to_string(cgroup_file("pids", &bomb_spec.id, "pids.events")).unwrap();
            eprintln!(
                "runc: the fork bomb stopped at {current} processes ({})",
                events.trim()
            );
            assert_ne!(events.trim(), "max 0");
            // Once the sleeps end, the sandbox is usable again.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match bomb.sh("echo survived").await {
                    Ok(run) if run.stdout == "survived\n" => break,
                    other => assert!(
                        Instant::now() < deadline,
                        "the sandbox did not recover: {other:?}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        (Isolation::Container, Err(e)) => {
            panic!("under runc the sandbox outlives a fork bomb: {e}")
        }
        (Isolation::Gvisor, run) => {
            eprintln!("gvisor: the fork bomb's request ended with {run:?}");
            if let Ok(run) = &run {
                assert!(!run.stdout.contains("all forked"), "{run:?}");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while h.node.sandbox_status(&bomb_spec.id) == InstanceStatus::Running {
                assert!(
                    Instant::now() < deadline,
                    "the fork bomb neither stopped nor ended the sandbox"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!(
                "gvisor: after the fork bomb the sandbox is {:?}",
                h.node.sandbox_status(&bomb_spec.id)
            );
        }
    }

    stop.store(true, Ordering::Relaxed);
    let slowest = prober.await.unwrap();
    eprintln!("{isolation}: the neighbour's slowest echo round trip: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(5),
        "the neighbour's echo took {slowest:?}"
    );
    assert_eq!(neighbour.ok("echo fine").await, "fine\n");
    // The host still forks.
    assert!(Command::new("true").status().unwrap().success());
}

#[tokio::test]
async fn limits_gvisor() {
    require!(Isolation::Gvisor);
    limits(Isolation::Gvisor).await;
}

#[tokio::test]
async fn limits_runc() {
    require!(Isolation::Container);
    limits(Isolation::Container).await;
}

// ---------------------------------------------------------------------------
// 3. Isolation: processes, files, network.

const BANNER: &str = "bora-test-banner";

/// A TCP listener that counts the connections it accepts and greets each
/// with [`BANNER`] before closing it.
fn count_accepts(listener: TcpListener) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(format!("{BANNER}\n").as_bytes());
        }
    });
    count
}

/// A network namespace of the test's own behind a veth, holding addresses
/// in an outside network, in the services' range and at the cloud metadata
/// address, with a listener on all of them.
struct OutsideNet {
    name: String,
    host_if: String,
    accepted: Arc<AtomicUsize>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

const OUTSIDE: &str = "10.123.45.2";
const OUTSIDE_NET: &str = "10.123.45.0/24";
const SERVICE_ADDR: &str = "10.88.255.250";
const METADATA: &str = "169.254.169.254";
const PORT: u16 = 18080;

impl OutsideNet {
    fn new() -> OutsideNet {
        // Tests in other processes use the same addresses: one at a time.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/bora-sandbox-test-net.lock")
            .unwrap();
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let name = format!("bora-test-out-{}", std::process::id());
        let host_if = format!("bto{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        if Path::new("/run/netns").join(&name).exists() {
            ip(&["netns", "delete", &name]);
        }
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["addr", "add", "10.123.45.1/24", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for dst in [SERVICE_ADDR, METADATA] {
            ip(&["route", "replace", &format!("{dst}/32"), "dev", &host_if]);
        }
        let inside = |args: &[&str]| {
            run(Command::new("ip").args(["-n", &name]).args(args));
        };
        for addr in [
            &format!("{OUTSIDE}/24"),
            &format!("{SERVICE_ADDR}/32"),
            &format!("{METADATA}/32"),
        ] {
            inside(&["addr", "add", addr, "dev", "eth0"]);
        }
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", "10.123.45.1"]);
        let ns = std::fs::File::open(Path::new("/run/netns").join(&name)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            tx.send(TcpListener::bind(("0.0.0.0", PORT)).unwrap())
                .unwrap();
        });
        let accepted = count_accepts(rx.recv().unwrap());
        OutsideNet {
            name,
            host_if,
            accepted,
            _lock: lock,
        }
    }
}

impl Drop for OutsideNet {
    fn drop(&mut self) {
        // Deleting the veth (both ends at once, its routes with it) now:
        // a deleted namespace lets go of its interfaces only later.
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn host_addresses() -> Vec<String> {
    run(Command::new("ip").args(["-4", "-o", "addr", "show"]))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .filter(|a| !a.starts_with("127.") && !a.starts_with("10.123.45."))
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Tries each `ip:port` from inside the sandbox at once; returns those it
/// could connect to.
async fn reachable(envd: &Envd, targets: &[String]) -> Vec<String> {
    let script: String = targets
        .iter()
        .map(|t| {
            let (ip, port) = t.rsplit_once(':').unwrap();
            // Reached means greeted: a connect that only seems to succeed
            // does not count.
            format!(
                "(nc -w 2 {ip} {port} </dev/null 2>/dev/null | grep -q {BANNER} && echo {t}) & "
            )
        })
        .chain(["wait".to_string()])
        .collect();
    let out = envd.ok(&script).await;
    let mut ok: Vec<String> = out.lines().map(str::to_string).collect();
    ok.sort();
    ok
}

async fn isolation(isolation: Isolation) {
    let h = Harness::new().await;
    let outside = OutsideNet::new();
    let host_loopback = TcpListener::bind("127.0.0.1:0").unwrap();
    let loopback_port = host_loopback.local_addr().unwrap().port();
    let loopback_accepts = count_accepts(host_loopback);
    let host_any = TcpListener::bind("0.0.0.0:0").unwrap();
    let any_port = host_any.local_addr().unwrap().port();
    let host_accepts = count_accepts(host_any);
    let marker = format!("/root/bora-sandbox-test-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret").unwrap();
    std::fs::write(h.data.path().join("marker"), "data dir secret").unwrap();

    // `open` allows everything; `narrow` only the outside network; `closed`
    // nothing.
    let (open, _) = h.start(&h.spec("open", isolation, &["0.0.0.0/0"])).await;
    let (narrow, _) = h.start(&h.spec("narrow", isolation, &[OUTSIDE_NET])).await;
    let (closed, _) = h.start(&h.spec("closed", isolation, &[])).await;

    // Processes and files.
    narrow
        .ok("echo narrow secret > /secret; sleep 4321 >/dev/null 2>&1 &")
        .await;
    let seen = open
        .ok(&format!(
            "pidof sleep; cat /secret {marker} 2>&1; ls {} 2>&1; ls /proc | grep -c '^[0-9]'",
            h.data.path().display()
        ))
        .await;
    assert!(
        !seen.contains("secret\n") && !seen.contains("host secret"),
        "{seen}"
    );
    assert!(seen.contains("No such file"), "{seen}");
    let procs: u32 = seen.lines().last().unwrap().parse().unwrap();
    assert!(procs < 10, "the sandbox sees {procs} processes: {seen}");

    // The network. Every forbidden target, tried by the sandbox whose
    // allow-list says 0.0.0.0/0 and by the one that allows nothing.
    let gateway = "10.89.0.1";
    let mut forbidden = vec![
        format!("127.0.0.1:{loopback_port}"),
        format!("{gateway}:{any_port}"),
        format!("{SERVICE_ADDR}:{PORT}"),
        format!("{METADATA}:{PORT}"),
    ];
    forbidden.extend(host_addresses().iter().map(|a| format!("{a}:{any_port}")));
    let allowed = format!("{OUTSIDE}:{PORT}");
    let sandboxes = [&open, &narrow, &closed];
    // Each tries the others' envd, and the outside network.
    let targets = |me: &Envd| -> Vec<String> {
        let others = sandboxes
            .iter()
            .filter(|s| s.ip != me.ip)
            .map(|s| format!("{}:49983", s.ip));
        forbidden
            .iter()
            .cloned()
            .chain(others)
            .chain([allowed.clone()])
            .collect()
    };

    let from_open = reachable(&open, &targets(&open)).await;
    let from_narrow = reachable(&narrow, &targets(&narrow)).await;
    let from_closed = reachable(&closed, &targets(&closed)).await;
    // The listeners' own counts first: they are the ground truth.
    assert_eq!(loopback_accepts.load(Ordering::SeqCst), 0);
    assert_eq!(
        host_accepts.load(Ordering::SeqCst),
        0,
        "a sandbox reached a host port"
    );
    assert_eq!(
        outside.accepted.load(Ordering::SeqCst),
        2,
        "only the two allowed connections"
    );
    assert_eq!(
        from_open,
        vec![allowed.clone()],
        "the open sandbox reached {from_open:?}"
    );
    assert_eq!(
        from_narrow,
        vec![allowed.clone()],
        "the narrow sandbox reached {from_narrow:?}"
    );
    assert!(
        from_closed.is_empty(),
        "the closed sandbox reached {from_closed:?}"
    );

    // The host reaches every sandbox's envd (that is how these tests talk).
    for envd in [&open, &narrow, &closed] {
        assert!(envd.healthy(Duration::from_secs(2)).await);
    }
    // DNS: resolv.conf is there, pointing at the host's resolver.
    let resolv = closed.ok("cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver"), "{resolv}");
    // No IPv6 to go around the firewall.
    let v6 = closed
        .ok("cat /proc/net/if_inet6 2>/dev/null | wc -l")
        .await;
    assert_eq!(v6.trim(), "0", "the sandbox has IPv6 addresses");

    let _ = std::fs::remove_file(&marker);
}

#[tokio::test]
async fn isolation_gvisor() {
    require!(Isolation::Gvisor);
    isolation(Isolation::Gvisor).await;
}

#[tokio::test]
async fn isolation_runc() {
    require!(Isolation::Container);
    isolation(Isolation::Container).await;
}

// ---------------------------------------------------------------------------
// 4. Pause and resume keep processes and files.

async fn pause_resume(isolation: Isolation) {
    let h = Harness::new().await;
    let spec = h.spec("nap", isolation, &[]);
    let (envd, _) = h.start(&spec).await;
    envd.ok("echo kept > /root/file; sleep 4242 >/dev/null 2>&1 &")
        .await;
    let pid = envd.ok("pidof sleep").await;
    assert!(!pid.trim().is_empty());

    h.node.pause_sandbox(&spec.id).await.unwrap();
    assert!(
        !envd.healthy(Duration::from_millis(500)).await,
        "a paused sandbox answers"
    );
    assert_eq!(h.node.sandbox_status(&spec.id), InstanceStatus::Running);
    h.node.pause_sandbox(&spec.id).await.unwrap();
    h.node.resume_sandbox(&spec.id).await.unwrap();
    envd.wait_healthy(Duration::from_secs(10)).await;

    assert_eq!(envd.ok("pidof sleep").await, pid, "the process survived");
    assert_eq!(envd.ok("cat /root/file").await, "kept\n");
    assert!(h.node.pause_sandbox("unknown").await.is_err());
    h.node.stop_sandbox(&spec.id).await.unwrap();
    assert_nothing_left(&h, &spec.id, Some(envd.ip));
}

#[tokio::test]
async fn pause_resume_gvisor() {
    require!(Isolation::Gvisor);
    pause_resume(Isolation::Gvisor).await;
}

#[tokio::test]
async fn pause_resume_runc() {
    require!(Isolation::Container);
    pause_resume(Isolation::Container).await;
}

// ---------------------------------------------------------------------------
// Start time, start_sandbox → envd healthy: printed, never asserted (run
// with `--ignored`).

async fn start_times(isolation: Isolation) {
    let h = Harness::new().await;
    let mut times = Vec::new();
    for i in 0..10 {
        let spec = h.spec(&format!("time{i}"), isolation, &[]);
        let (_, took) = h.start(&spec).await;
        times.push(took);
        h.node.stop_sandbox(&spec.id).await.unwrap();
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    eprintln!(
        "{isolation}: start_sandbox → envd /health over {} runs: min {:?}, median {:?}, mean {mean:?}, max {:?}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::test]
#[ignore = "a measurement, not a test: run with --ignored"]
async fn start_time_gvisor() {
    require!(Isolation::Gvisor);
    start_times(Isolation::Gvisor).await;
}

#[tokio::test]
#[ignore = "a measurement, not a test: run with --ignored"]
async fn start_time_runc() {
    require!(Isolation::Container);
    start_times(Isolation::Container).await;
}
