//! Wake-up latency: the time from sending a request to a sleeping service
//! to its first response byte, for light and deep sleep.
//!
//! - Bora: a real `bora server`; two `min: 0` services of the busybox
//!   `httpd` image, one with `sleep: light`, one with `sleep: deep`, both
//!   asleep after 1 s idle. Each wake-up waits until the service is asleep
//!   (light: an instance listed as `sleeping`; deep: only a `standby`
//!   instance — set up, not started — while the active deployment is
//!   healthy), then times one request through the router on a fresh
//!   connection.
//! - peer, the floor for a cold start on this machine: the same image
//!   unpacked into a bundle and started with `runc run` in the host network
//!   namespace, timed from spawning runc to the first response byte.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::super::{Registry, Server, require_root, run as must_run, tail};
use super::{Api, Args, Percentiles, Table, deploy, fmt_duration, fmt_ratio, poll, ratio, tool};

const APP: &str = "wake";

#[derive(Clone, Debug)]
pub struct WakeParams {
    /// Timed wake-ups per kind of sleep, and cold starts of the floor.
    pub wakeups: usize,
    /// How long a service may take to fall asleep.
    pub asleep_timeout: Duration,
    /// How long one wake-up may take.
    pub request_timeout: Duration,
}

impl WakeParams {
    pub const FLAGS: &[&str] = &["wakeups", "asleep-timeout", "request-timeout"];

    /// The full run: 30 wake-ups of each kind.
    pub fn full(args: &Args) -> WakeParams {
        WakeParams {
            wakeups: args.count("wakeups", 30),
            asleep_timeout: args.duration("asleep-timeout", Duration::from_secs(60)),
            request_timeout: args.duration("request-timeout", Duration::from_secs(60)),
        }
    }

    pub fn smoke() -> WakeParams {
        WakeParams {
            wakeups: 2,
            asleep_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sleep {
    Light,
    Deep,
}

impl Sleep {
    fn service(self) -> &'static str {
        match self {
            Sleep::Light => "light",
            Sleep::Deep => "deep",
        }
    }
}

#[derive(Clone, Debug)]
pub struct WakeReport {
    pub params: WakeParams,
    pub light: Percentiles,
    pub deep: Percentiles,
    /// `runc run` to first byte.
    pub floor: Percentiles,
}

impl WakeReport {
    /// Light-sleep p50 over the floor's p50.
    pub fn light_ratio(&self) -> f64 {
        ratio(self.light.p50, self.floor.p50)
    }

    /// Deep-sleep p50 over the floor's p50.
    pub fn deep_ratio(&self) -> f64 {
        ratio(self.deep.p50, self.floor.p50)
    }

    pub fn table(&self) -> Table {
        let mut t = Table::new(
            format!(
                "wake-up latency: request to a sleeping service → first response byte ({} wake-ups each; peer: runc run → first byte)",
                self.params.wakeups
            ),
            &["figure", "Bora", "runc run floor", "ratio"],
        );
        for (name, bora, floor) in [
            ("light sleep p50", self.light.p50, self.floor.p50),
            ("light sleep p99", self.light.p99, self.floor.p99),
            ("deep sleep p50", self.deep.p50, self.floor.p50),
            ("deep sleep p99", self.deep.p99, self.floor.p99),
        ] {
            t.row(vec![
                name.into(),
                fmt_duration(bora),
                fmt_duration(floor),
                fmt_ratio(ratio(bora, floor)),
            ]);
        }
        t
    }
}

impl std::fmt::Display for WakeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table())
    }
}

/// The manifest: one light and one deep sleeper of `image`.
pub fn manifest(image: &str) -> String {
    let mut yaml = format!("app: {APP}\nservices:\n");
    for sleep in ["light", "deep"] {
        yaml.push_str(&super::service_yaml(
            sleep,
            image,
            &format!("{{ min: 0, max: 1, scale_to_zero_after: 1s, sleep: {sleep} }}"),
        ));
    }
    yaml
}

/// Runs the wake bench; progress goes to stderr.
pub fn run(params: &WakeParams) -> WakeReport {
    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("wake", "1", "awake\n");

    let floor = {
        let bundle = RuncFloor::prepare(&image);
        let samples: Vec<Duration> = (0..params.wakeups)
            .map(|i| {
                let t = bundle.cold_start(i, params.request_timeout);
                eprintln!("wake bench: runc run {}: {}", i + 1, fmt_duration(t));
                t
            })
            .collect();
        Percentiles::of(&samples)
    };

    let server = Server::start();
    deploy(&server, "wake.yaml", &manifest(&image));
    let api = Api::new(&server);
    let light = Percentiles::of(&wake_ups(&server, &api, Sleep::Light, params));
    let deep = Percentiles::of(&wake_ups(&server, &api, Sleep::Deep, params));
    WakeReport {
        params: params.clone(),
        light,
        deep,
        floor,
    }
}

/// Is the service asleep the way `sleep` puts it to sleep?
pub fn is_asleep(api: &Api, sleep: Sleep) -> Result<bool, String> {
    let instances = api.instances(APP, sleep.service())?;
    Ok(match sleep {
        Sleep::Light => super::count_in_state(&instances, "sleeping") > 0,
        Sleep::Deep => {
            !instances.is_empty()
                && super::count_in_state(&instances, "standby") == instances.len()
                && api
                    .active_deployment_status(APP, sleep.service())?
                    .as_deref()
                    == Some("healthy")
        }
    })
}

/// Times `params.wakeups` wake-ups of the service.
fn wake_ups(server: &Server, api: &Api, sleep: Sleep, params: &WakeParams) -> Vec<Duration> {
    let host = format!("{}.{APP}.localhost", sleep.service());
    let fail = |what: String| -> ! {
        panic!("{what}; server log:\n{}", tail(&server.log(), 60));
    };
    // One untimed request first, so there is an instance to put to sleep
    // whether or not the deployment started one.
    if let Err(e) = super::get(server.http, &host, "/", params.request_timeout) {
        fail(format!("the first request to {host} failed: {e}"));
    }
    let mut samples = Vec::with_capacity(params.wakeups);
    for i in 0..params.wakeups {
        let asleep = poll(
            &format!("{host} to fall asleep"),
            Duration::from_millis(20),
            params.asleep_timeout,
            || is_asleep(api, sleep).ok().filter(|a| *a),
        );
        if let Err(e) = asleep {
            fail(e);
        }
        match super::get(server.http, &host, "/", params.request_timeout) {
            Ok(t) => {
                eprintln!(
                    "wake bench: {} wake-up {}: {}",
                    sleep.service(),
                    i + 1,
                    fmt_duration(t.first_byte)
                );
                samples.push(t.first_byte);
            }
            Err(e) => fail(format!("wake-up {} of {host} failed: {e}", i + 1)),
        }
    }
    samples
}

/// The image as a plain OCI bundle run by `runc` in the host network
/// namespace, with `httpd` on a loopback port; its containers are removed
/// when dropped.
pub struct RuncFloor {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    root: PathBuf,
    pub addr: SocketAddr,
}

impl RuncFloor {
    /// Copies `image` out of the registry and unpacks it.
    pub fn prepare(image: &str) -> RuncFloor {
        let dir = tempfile::tempdir().unwrap();
        let layout = format!("{}:x", dir.path().join("layout").display());
        must_run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{image}"))
                .arg(format!("oci:{layout}")),
        );
        let bundle = dir.path().join("bundle");
        must_run(
            Command::new("umoci")
                .args(["unpack", "--image", &layout])
                .arg(&bundle),
        );
        let port = super::super::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

        let config_path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
            namespaces.retain(|ns| ns["type"] != "network");
        }
        config["process"]["terminal"] = false.into();
        config["process"]["args"] =
            serde_json::json!(["httpd", "-f", "-p", addr.to_string(), "-h", "/www"]);
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let root = dir.path().join("runc");
        RuncFloor {
            _dir: dir,
            bundle,
            root,
            addr,
        }
    }

    fn runc(&self) -> Command {
        let mut c = tool("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    /// Starts the container, times `runc run` → first response byte, then
    /// removes the container (not timed).
    pub fn cold_start(&self, i: usize, timeout: Duration) -> Duration {
        let id = format!("bora-bench-floor-{}-{i}", std::process::id());
        // A file, not a pipe: the container inherits runc's stdio.
        let log = self.root.with_file_name(format!("{id}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let start = Instant::now();
        let mut runc = self
            .runc()
            .args(["run", "--detach", "--no-new-keyring", "--bundle"])
            .arg(&self.bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting runc");
        let mut last_error = String::new();
        let answered = poll(
            "the runc container to answer",
            Duration::from_millis(1),
            timeout,
            || {
                if let Ok(Some(status)) = runc.try_wait()
                    && !status.success()
                {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    return Some(Err(format!("runc run failed ({status}): {log}")));
                }
                let stream = TcpStream::connect(self.addr).ok()?;
                match super::timed_get(stream, "localhost", "/", start, timeout) {
                    Ok(t) => Some(Ok(t.first_byte)),
                    Err(e) => {
                        last_error = e;
                        None
                    }
                }
            },
        );
        let _ = runc.wait();
        let _ = self.runc().args(["kill", &id, "KILL"]).output();
        let deleted = self
            .runc()
            .args(["delete", "--force", &id])
            .output()
            .expect("runc delete");
        let first_byte = answered
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("{e} {last_error}"));
        assert!(
            deleted.status.success(),
            "runc delete {id}: {}",
            String::from_utf8_lossy(&deleted.stderr)
        );
        first_byte
    }
}

impl Drop for RuncFloor {
    fn drop(&mut self) {
        let Ok(out) = self.runc().args(["list", "-q"]).output() else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.runc().args(["delete", "--force", id]).output();
        }
    }
}
