//! Scale-out reaction: a step from idle to a load that needs 4 instances.
//!
//! - Bora: a real `bora server`, one service of busybox `httpd` whose CGI
//!   script `/cgi-bin/slow` takes 200 ms, scaling `{ min: 1, max: 4,
//!   targets: { concurrency: 2 } }`. From idle, 8 clients each loop
//!   `GET /cgi-bin/slow` (8 requests in flight at a target of 2 per
//!   instance: 4 instances). Meanwhile the API is polled for healthy
//!   instances. Measured: the time until 4 are healthy, and the latency of
//!   every request of the step.
//! - peer: the same load against the same service deployed with
//!   `{ min: 4, max: 4 }`, already warm; the ratio is step p99 / warm p99.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::super::{Registry, Server, require_root, tail};
use super::{
    Api, Args, Percentiles, Table, count_in_state, deploy, fmt_duration, fmt_ratio, poll, ratio,
};

const APP: &str = "scale";
const SERVICE: &str = "web";
const HOST: &str = "web.scale.localhost";
const PATH: &str = "/cgi-bin/slow";

/// At most this many requests per client in one load run, whatever the
/// duration.
const MAX_REQUESTS_PER_CLIENT: usize = 100_000;

/// Error messages kept per load run.
const KEEP_ERRORS: usize = 5;

#[derive(Clone, Debug)]
pub struct ScaleParams {
    /// Client threads, each with one request in flight.
    pub clients: usize,
    /// How long each load runs.
    pub duration: Duration,
    /// `scaling.max`, and the healthy count the step waits for.
    pub instances: usize,
    /// `scaling.targets.concurrency`.
    pub concurrency: usize,
}

impl ScaleParams {
    pub const FLAGS: &[&str] = &["clients", "duration", "instances", "concurrency"];

    /// The full run: 8 clients for 30 s, up to 4 instances at 2 each.
    pub fn full(args: &Args) -> ScaleParams {
        ScaleParams {
            clients: args.count("clients", 8),
            duration: args.duration("duration", Duration::from_secs(30)),
            instances: args.count("instances", 4),
            concurrency: args.count("concurrency", 2),
        }
    }

    pub fn smoke() -> ScaleParams {
        ScaleParams {
            clients: 8,
            duration: Duration::from_secs(2),
            instances: 4,
            concurrency: 2,
        }
    }
}

/// What one load run saw.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Of the successful requests, from connecting to the last byte.
    pub latency: Percentiles,
    pub requests: usize,
    pub failures: usize,
    /// The first few failures.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ScaleReport {
    pub params: ScaleParams,
    /// From the step's start until `params.instances` were healthy; None if
    /// that did not happen during the step.
    pub time_to_scale: Option<Duration>,
    /// The most instances seen healthy at once during the step.
    pub max_healthy: usize,
    pub step: LoadResult,
    /// The peer: the same load on warm instances.
    pub warm: LoadResult,
}

impl ScaleReport {
    /// Step p99 over warm p99.
    pub fn p99_ratio(&self) -> f64 {
        ratio(self.step.latency.p99, self.warm.latency.p99)
    }

    pub fn table(&self) -> Table {
        let p = &self.params;
        let mut t = Table::new(
            format!(
                "scale-out step: {} clients loop GET {PATH} (200 ms) for {:?}; min 1, max {}, concurrency {} (peer: {} warm instances)",
                p.clients, p.duration, p.instances, p.concurrency, p.instances
            ),
            &["figure", "Bora (step)", "warm instances", "ratio"],
        );
        t.row(vec![
            format!("time to {} healthy", p.instances),
            self.time_to_scale.map_or_else(
                || format!("not reached (max {})", self.max_healthy),
                fmt_duration,
            ),
            "-".into(),
            "-".into(),
        ]);
        for (name, step, warm) in [
            ("p50", self.step.latency.p50, self.warm.latency.p50),
            ("p99", self.step.latency.p99, self.warm.latency.p99),
        ] {
            t.row(vec![
                name.into(),
                fmt_duration(step),
                fmt_duration(warm),
                fmt_ratio(ratio(step, warm)),
            ]);
        }
        t.row(vec![
            "requests".into(),
            self.step.requests.to_string(),
            self.warm.requests.to_string(),
            "-".into(),
        ]);
        t.row(vec![
            "failed".into(),
            self.step.failures.to_string(),
            self.warm.failures.to_string(),
            "-".into(),
        ]);
        t
    }
}

impl std::fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table())
    }
}

/// The manifest of the service with `scaling`.
pub fn manifest(image: &str, scaling: &str) -> String {
    format!(
        "app: {APP}\nservices:\n{}",
        super::service_yaml(SERVICE, image, scaling)
    )
}

/// Runs the scale bench; progress goes to stderr.
pub fn run(params: &ScaleParams) -> ScaleReport {
    require_root();
    let registry = Registry::start();
    let image = registry.push_slow_cgi("slow", "1");
    let server = Server::start();
    let api = Api::new(&server);
    let fail = |what: String| -> ! {
        panic!("{what}; server log:\n{}", tail(&server.log(), 60));
    };

    // The step, from one idle instance.
    let scaling = format!(
        "{{ min: 1, max: {}, targets: {{ concurrency: {} }} }}",
        params.instances, params.concurrency
    );
    deploy(&server, "step.yaml", &manifest(&image, &scaling));
    if let Err(e) = wait_for_healthy(&api, 1) {
        fail(e);
    }
    eprintln!("scale bench: step from 1 instance");
    let (step, time_to_scale, max_healthy) = load(&api, server.http, params, true);
    eprintln!(
        "scale bench: step: {} requests, {} failed, p99 {}, {} healthy {}",
        step.requests,
        step.failures,
        fmt_duration(step.latency.p99),
        params.instances,
        time_to_scale.map_or_else(
            || format!("not reached (at most {max_healthy})"),
            |t| format!("after {}", fmt_duration(t))
        )
    );

    // The peer: the same service, already at full size.
    let fixed = format!("{{ min: {0}, max: {0} }}", params.instances);
    deploy(&server, "warm.yaml", &manifest(&image, &fixed));
    if let Err(e) = wait_for_healthy(&api, params.instances) {
        fail(e);
    }
    eprintln!(
        "scale bench: the same load on {} warm instances",
        params.instances
    );
    let (warm, _, _) = load(&api, server.http, params, false);
    eprintln!(
        "scale bench: warm: {} requests, {} failed, p99 {}",
        warm.requests,
        warm.failures,
        fmt_duration(warm.latency.p99)
    );
    ScaleReport {
        params: params.clone(),
        time_to_scale,
        max_healthy,
        step,
        warm,
    }
}

/// Waits until the service lists exactly `n` live instances, all healthy.
fn wait_for_healthy(api: &Api, n: usize) -> Result<(), String> {
    poll(
        &format!("{n} healthy instances and no others"),
        Duration::from_millis(100),
        Duration::from_secs(120),
        || {
            let instances = api.instances(APP, SERVICE).ok()?;
            (instances.len() == n && count_in_state(&instances, "healthy") == n).then_some(())
        },
    )
}

/// Runs `params.clients` clients for `params.duration`; with `watch`, also
/// polls the healthy count. Returns the load's result, when the healthy
/// count first reached `params.instances`, and the most seen at once.
fn load(
    api: &Api,
    router: SocketAddr,
    params: &ScaleParams,
    watch: bool,
) -> (LoadResult, Option<Duration>, usize) {
    let start = Instant::now();
    let deadline = start + params.duration;
    let result = Mutex::new(LoadResult::default());
    let mut latencies = Vec::new();
    let (mut reached, mut max_healthy) = (None, 0);
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..params.clients)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    for _ in 0..MAX_REQUESTS_PER_CLIENT {
                        if Instant::now() >= deadline {
                            break;
                        }
                        match super::get(router, HOST, PATH, Duration::from_secs(30)) {
                            Ok(t) => mine.push(t.total),
                            Err(e) => {
                                let mut r = result.lock().unwrap();
                                r.failures += 1;
                                if r.errors.len() < KEEP_ERRORS {
                                    r.errors.push(e);
                                }
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        if watch {
            while Instant::now() < deadline {
                if let Ok(instances) = api.instances(APP, SERVICE) {
                    let healthy = count_in_state(&instances, "healthy");
                    max_healthy = max_healthy.max(healthy);
                    if healthy >= params.instances && reached.is_none() {
                        reached = Some(start.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for c in clients {
            latencies.extend(c.join().expect("a load client panicked"));
        }
    });
    let mut result = result.into_inner().unwrap();
    result.requests = latencies.len() + result.failures;
    result.latency = Percentiles::of(&latencies);
    (result, reached, max_healthy)
}
