//! Router overhead: one backend, reached directly, through nginx, and
//! through Bora's router, under the same `wrk` load.
//!
//! - backend: nginx answering a tiny static 200 on loopback;
//! - peer: a second nginx proxying to it with keep-alive upstream
//!   connections (`keepalive 64`, HTTP/1.1, `Connection ""`);
//! - Bora: `bora_router::Router` in this process, with as many worker
//!   threads as nginx has worker processes, with a route table whose
//!   one service has the backend as its instance.
//!
//! Two load shapes, each run against every target in turn (direct, nginx,
//! Bora) for each round, after one warm-up run per target:
//!
//! - throughput: `-c<connections>` (64) connections, which saturate this
//!   machine: its p99 is mostly queueing behind the CPU that wrk, the
//!   backend and the proxy share;
//! - latency: one connection with one request in flight, where nothing
//!   queues: what a proxy adds here is its own per-request cost.
//!
//! The report averages the rounds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bora_router::{Backend, Route, RouteTable, Router, RouterConfig, ServiceRoutes};

use super::{Args, Load, Nginx, Table, fmt_delta, fmt_duration, fmt_ratio, threads_cpu, wrk};

/// The service Bora routes to: `web.bench.localhost`.
pub const HOST: &str = "web.bench.localhost";

#[derive(Clone, Debug)]
pub struct RouterParams {
    /// wrk connections (`-c`) of the throughput runs.
    pub connections: usize,
    /// wrk threads (`-t`) of the throughput runs.
    pub threads: usize,
    /// Length of each measured run (`-d`), per target, shape and round.
    pub duration: Duration,
    /// Measured runs per target and shape.
    pub rounds: usize,
    /// Length of the one warm-up run per target (zero: none).
    pub warmup: Duration,
    /// nginx `worker_processes` for backend and proxy, and the router's
    /// tokio worker threads.
    pub workers: usize,
    /// Whether to make the one-connection latency runs too.
    pub latency_runs: bool,
}

impl RouterParams {
    pub const FLAGS: &[&str] = &[
        "connections",
        "threads",
        "duration",
        "rounds",
        "warmup",
        "workers",
        "latency-runs",
    ];

    /// The full run: 64 connections, then one, 2 rounds of 10 s per target.
    pub fn full(args: &Args) -> RouterParams {
        RouterParams {
            connections: args.count("connections", 64),
            threads: args.count("threads", 2),
            duration: args.duration("duration", Duration::from_secs(10)),
            rounds: args.count("rounds", 2),
            warmup: args.duration("warmup", Duration::from_secs(2)),
            workers: args.count("workers", 2),
            latency_runs: args.count("latency-runs", 1) != 0,
        }
    }

    /// A run that only shows the bench still works.
    pub fn smoke() -> RouterParams {
        RouterParams {
            connections: 4,
            threads: 2,
            duration: Duration::from_secs(1),
            rounds: 1,
            warmup: Duration::ZERO,
            workers: 2,
            latency_runs: true,
        }
    }

    fn throughput(&self, duration: Duration) -> Load {
        Load {
            threads: self.threads.clamp(1, self.connections.max(1)),
            connections: self.connections.max(1),
            duration,
        }
    }

    fn latency(&self) -> Load {
        Load {
            threads: 1,
            connections: 1,
            duration: self.duration,
        }
    }
}

/// One target's figures, averaged over the rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TargetResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
    /// The server's CPU time (user + system) per request: the backend's
    /// for direct, the proxy's alone for nginx and Bora.
    pub cpu_per_request: Duration,
}

impl TargetResult {
    fn average(runs: &[TargetResult]) -> TargetResult {
        let n = runs.len().max(1) as u32;
        TargetResult {
            requests: runs.iter().map(|r| r.requests).sum(),
            requests_per_sec: runs.iter().map(|r| r.requests_per_sec).sum::<f64>() / f64::from(n),
            p50: runs.iter().map(|r| r.p50).sum::<Duration>() / n,
            p99: runs.iter().map(|r| r.p99).sum::<Duration>() / n,
            errors: runs.iter().map(|r| r.errors).sum(),
            cpu_per_request: runs.iter().map(|r| r.cpu_per_request).sum::<Duration>() / n,
        }
    }
}

/// The three targets under one load shape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Targets {
    pub direct: TargetResult,
    pub nginx: TargetResult,
    pub bora: TargetResult,
}

impl Targets {
    pub fn all(&self) -> [(&'static str, TargetResult); 3] {
        [
            ("direct", self.direct),
            ("nginx", self.nginx),
            ("bora", self.bora),
        ]
    }

    fn table(&self, title: String) -> Table {
        let mut t = Table::new(
            title,
            &[
                "target",
                "requests/s",
                "p50",
                "p99",
                "added p50",
                "added p99",
                "CPU/request",
                "errors",
            ],
        );
        for (name, r, proxied) in [
            ("direct (backend)", &self.direct, false),
            ("nginx (peer)", &self.nginx, true),
            ("Bora router", &self.bora, true),
        ] {
            let added = |d: Duration, direct: Duration| {
                if proxied {
                    fmt_delta(d, direct)
                } else {
                    "-".into()
                }
            };
            t.row(vec![
                name.into(),
                format!("{:.0}", r.requests_per_sec),
                fmt_duration(r.p50),
                fmt_duration(r.p99),
                added(r.p50, self.direct.p50),
                added(r.p99, self.direct.p99),
                fmt_duration(r.cpu_per_request),
                r.errors.to_string(),
            ]);
        }
        t
    }
}

#[derive(Clone, Debug)]
pub struct RouterReport {
    pub params: RouterParams,
    /// Under `params.connections` connections.
    pub throughput: Targets,
    /// Under one connection, if measured.
    pub latency: Option<Targets>,
}

impl RouterReport {
    /// Bora's throughput over nginx's.
    pub fn throughput_ratio(&self) -> f64 {
        self.throughput.bora.requests_per_sec / self.throughput.nginx.requests_per_sec
    }

    /// Bora's p99 over nginx's, under the throughput load.
    pub fn p99_ratio(&self) -> f64 {
        super::ratio(self.throughput.bora.p99, self.throughput.nginx.p99)
    }

    /// One table per load shape, then Bora against the peer.
    pub fn tables(&self) -> Vec<Table> {
        let p = &self.params;
        let load = p.throughput(p.duration);
        let mut tables = vec![self.throughput.table(format!(
            "router throughput: wrk -t{} -c{} -d{}s, {} round(s) per target, {} nginx workers / router threads",
            load.threads,
            load.connections,
            p.duration.as_secs().max(1),
            p.rounds,
            p.workers
        ))];
        if let Some(latency) = &self.latency {
            tables.push(latency.table(format!(
                "router latency: wrk -t1 -c1 -d{}s (one request in flight), {} round(s) per target",
                p.duration.as_secs().max(1),
                p.rounds
            )));
        }
        let (t, c) = (&self.throughput, load.connections);
        let mut summary = Table::new("Bora vs nginx", &["figure", "Bora", "nginx", "ratio"]);
        summary.row(vec![
            format!("requests/s, {c} connections"),
            format!("{:.0}", t.bora.requests_per_sec),
            format!("{:.0}", t.nginx.requests_per_sec),
            fmt_ratio(self.throughput_ratio()),
        ]);
        summary.row(vec![
            format!("proxy CPU per request, {c} connections"),
            fmt_duration(t.bora.cpu_per_request),
            fmt_duration(t.nginx.cpu_per_request),
            fmt_ratio(super::ratio(
                t.bora.cpu_per_request,
                t.nginx.cpu_per_request,
            )),
        ]);
        summary.row(vec![
            format!("p99, {c} connections"),
            fmt_duration(t.bora.p99),
            fmt_duration(t.nginx.p99),
            fmt_ratio(self.p99_ratio()),
        ]);
        summary.row(vec![
            format!("added p99 over direct, {c} connections"),
            fmt_delta(t.bora.p99, t.direct.p99),
            fmt_delta(t.nginx.p99, t.direct.p99),
            "-".into(),
        ]);
        if let Some(l) = &self.latency {
            for (name, bora, nginx, direct) in [
                ("p50", l.bora.p50, l.nginx.p50, l.direct.p50),
                ("p99", l.bora.p99, l.nginx.p99, l.direct.p99),
            ] {
                summary.row(vec![
                    format!("added {name} over direct, 1 connection"),
                    fmt_delta(bora, direct),
                    fmt_delta(nginx, direct),
                    fmt_ratio(super::ratio(
                        bora.saturating_sub(direct),
                        nginx.saturating_sub(direct),
                    )),
                ]);
            }
        }
        tables.push(summary);
        tables
    }
}

impl std::fmt::Display for RouterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables: Vec<String> = self.tables().iter().map(Table::to_string).collect();
        write!(f, "{}", tables.join("\n"))
    }
}

/// Bora's router serving on a loopback port with `workers` worker threads;
/// stopped when dropped.
pub struct BoraRouter {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BoraRouter {
    /// Routes `HOST` to `backend` (an instance at the backend's IP, the
    /// route port being the backend's port).
    pub fn start(workers: usize, backend: SocketAddr) -> BoraRouter {
        let router = Router::new(RouterConfig {
            workers: workers.max(1),
            ..RouterConfig::new("localhost")
        });
        router.set_table(RouteTable {
            services: vec![ServiceRoutes {
                app: "bench".into(),
                service: "web".into(),
                routes: vec![Route {
                    path_prefix: "/".into(),
                    port: backend.port(),
                }],
                backends: vec![Backend {
                    instance_id: "backend".into(),
                    ip: backend.ip(),
                }],
                wakeable: false,
            }],
            sandboxes: Vec::new(),
            models: Vec::new(),
        });
        BoraRouter::serve(router)
    }

    /// Serves an already configured `router` on a free loopback port.
    pub fn serve(router: Arc<Router>) -> BoraRouter {
        // The router runs its own worker threads; this runtime only waits
        // for the shutdown signal.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                0,
            )))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let _ = router
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await;
        });
        BoraRouter {
            addr,
            shutdown: Some(tx),
            runtime: Some(runtime),
        }
    }
}

impl Drop for BoraRouter {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Runs the router bench; progress goes to stderr.
pub fn run(params: &RouterParams) -> RouterReport {
    let backend = Nginx::backend(params.workers);
    let nginx = Nginx::proxy(params.workers, backend.addr);
    let bora = BoraRouter::start(params.workers, backend.addr);
    let targets = [
        ("direct", backend.addr),
        ("nginx", nginx.addr),
        ("bora", bora.addr),
    ];

    // Every target must answer before any load starts.
    for (name, addr) in targets {
        super::get(addr, HOST, "/", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name} at {addr} does not answer: {e}"));
    }

    if !params.warmup.is_zero() {
        for (name, addr) in targets {
            eprintln!("router bench: warming up {name}");
            wrk(addr, HOST, params.throughput(params.warmup));
        }
    }
    let mut shapes = vec![("throughput", params.throughput(params.duration))];
    if params.latency_runs {
        shapes.push(("latency", params.latency()));
    }
    let mut results = Vec::new();
    for (shape, load) in shapes {
        let mut runs: [Vec<TargetResult>; 3] = Default::default();
        let cpu = |i: usize| match i {
            0 => backend.cpu_time(),
            1 => nginx.cpu_time(),
            _ => threads_cpu("bora-router-"),
        };
        for round in 1..=params.rounds.max(1) {
            for (i, (name, addr)) in targets.iter().enumerate() {
                let cpu_before = cpu(i);
                let r = wrk(*addr, HOST, load);
                let cpu_used = cpu(i).saturating_sub(cpu_before);
                eprintln!(
                    "router bench: {shape} round {round} {name}: {:.0} req/s, p50 {}, p99 {}, {} errors",
                    r.requests_per_sec,
                    fmt_duration(r.p50),
                    fmt_duration(r.p99),
                    r.errors
                );
                runs[i].push(TargetResult {
                    requests: r.requests,
                    requests_per_sec: r.requests_per_sec,
                    p50: r.p50,
                    p99: r.p99,
                    errors: r.errors,
                    cpu_per_request: cpu_used
                        / u32::try_from(r.requests.max(1)).unwrap_or(u32::MAX),
                });
            }
        }
        results.push(Targets {
            direct: TargetResult::average(&runs[0]),
            nginx: TargetResult::average(&runs[1]),
            bora: TargetResult::average(&runs[2]),
        });
    }
    let mut results = results.into_iter();
    RouterReport {
        params: params.clone(),
        throughput: results.next().unwrap(),
        latency: results.next(),
    }
}
