//! Router overhead: one backend, reached directly, through nginx, and
//! through Bora's router, under the same `wrk` load.
//!
//! - backend: nginx answering a tiny static 200 on loopback;
//! - peer: a second nginx proxying to it with keep-alive upstream
//!   connections (`keepalive 64`, HTTP/1.1, `Connection ""`);
//! - Bora: `bora_router::Router` in this process, on a tokio runtime with
//!   as many worker threads as nginx has workers, with a route table whose
//!   one service has the backend as its instance.
//!
//! Targets run in turn (direct, nginx, Bora) for each round after one
//! warm-up run each; the report averages the rounds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bora_router::{Backend, Route, RouteTable, Router, RouterConfig, ServiceRoutes};

use super::{Args, Load, Nginx, Table, WrkResult, fmt_delta, fmt_duration, fmt_ratio, wrk};

/// The service Bora routes to: `web.bench.localhost`.
pub const HOST: &str = "web.bench.localhost";

#[derive(Clone, Debug)]
pub struct RouterParams {
    /// wrk connections (`-c`).
    pub connections: usize,
    /// wrk threads (`-t`).
    pub threads: usize,
    /// Length of each measured run (`-d`), per target and round.
    pub duration: Duration,
    /// Measured runs per target.
    pub rounds: usize,
    /// Length of the one warm-up run per target (zero: none).
    pub warmup: Duration,
    /// nginx `worker_processes` for backend and proxy, and the router's
    /// tokio worker threads.
    pub workers: usize,
}

impl RouterParams {
    pub const FLAGS: &[&str] = &[
        "connections",
        "threads",
        "duration",
        "rounds",
        "warmup",
        "workers",
    ];

    /// The full run: 64 connections, 2 rounds of 10 s per target.
    pub fn full(args: &Args) -> RouterParams {
        RouterParams {
            connections: args.count("connections", 64),
            threads: args.count("threads", 2),
            duration: args.duration("duration", Duration::from_secs(10)),
            rounds: args.count("rounds", 2),
            warmup: args.duration("warmup", Duration::from_secs(2)),
            workers: args.count("workers", 2),
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
        }
    }

    fn load(&self, duration: Duration) -> Load {
        Load {
            threads: self.threads,
            connections: self.connections,
            duration,
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
}

impl TargetResult {
    fn average(runs: &[WrkResult]) -> TargetResult {
        let n = runs.len().max(1) as u32;
        TargetResult {
            requests: runs.iter().map(|r| r.requests).sum(),
            requests_per_sec: runs.iter().map(|r| r.requests_per_sec).sum::<f64>() / f64::from(n),
            p50: runs.iter().map(|r| r.p50).sum::<Duration>() / n,
            p99: runs.iter().map(|r| r.p99).sum::<Duration>() / n,
            errors: runs.iter().map(|r| r.errors).sum(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouterReport {
    pub params: RouterParams,
    pub direct: TargetResult,
    pub nginx: TargetResult,
    pub bora: TargetResult,
}

impl RouterReport {
    /// Bora's throughput over nginx's.
    pub fn throughput_ratio(&self) -> f64 {
        self.bora.requests_per_sec / self.nginx.requests_per_sec
    }

    /// Bora's p99 over nginx's.
    pub fn p99_ratio(&self) -> f64 {
        super::ratio(self.bora.p99, self.nginx.p99)
    }

    /// The table of every target, then Bora against the peer.
    pub fn tables(&self) -> [Table; 2] {
        let p = &self.params;
        let mut targets = Table::new(
            format!(
                "router overhead: wrk -t{} -c{} -d{}s, {} round(s) per target, {} nginx workers / router threads",
                p.threads.clamp(1, p.connections.max(1)),
                p.connections,
                p.duration.as_secs().max(1),
                p.rounds,
                p.workers
            ),
            &["target", "requests/s", "p50", "p99", "added p99", "errors"],
        );
        for (name, r, added) in [
            ("direct (backend)", &self.direct, false),
            ("nginx (peer)", &self.nginx, true),
            ("Bora router", &self.bora, true),
        ] {
            targets.row(vec![
                name.into(),
                format!("{:.0}", r.requests_per_sec),
                fmt_duration(r.p50),
                fmt_duration(r.p99),
                if added {
                    fmt_delta(r.p99, self.direct.p99)
                } else {
                    "-".into()
                },
                r.errors.to_string(),
            ]);
        }
        let mut summary = Table::new("Bora vs nginx", &["figure", "Bora", "nginx", "ratio"]);
        summary.row(vec![
            "requests/s".into(),
            format!("{:.0}", self.bora.requests_per_sec),
            format!("{:.0}", self.nginx.requests_per_sec),
            fmt_ratio(self.throughput_ratio()),
        ]);
        summary.row(vec![
            "p99".into(),
            fmt_duration(self.bora.p99),
            fmt_duration(self.nginx.p99),
            fmt_ratio(self.p99_ratio()),
        ]);
        summary.row(vec![
            "added p99 over direct".into(),
            fmt_delta(self.bora.p99, self.direct.p99),
            fmt_delta(self.nginx.p99, self.direct.p99),
            "-".into(),
        ]);
        [targets, summary]
    }
}

impl std::fmt::Display for RouterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [targets, summary] = self.tables();
        write!(f, "{targets}\n{summary}")
    }
}

/// Bora's router serving on a loopback port from its own multi-thread
/// runtime; stopped when dropped.
pub struct BoraRouter {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BoraRouter {
    /// Routes `HOST` to `backend` (an instance at the backend's IP, the
    /// route port being the backend's port).
    pub fn start(workers: usize, backend: SocketAddr) -> BoraRouter {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("bench-router")
            .enable_all()
            .build()
            .unwrap();
        let router = Router::new(RouterConfig::new("localhost"));
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
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                0,
            )))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&router);
        runtime.spawn(async move {
            let _ = serving
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
            wrk(addr, HOST, params.load(params.warmup));
        }
    }
    let mut runs: [Vec<WrkResult>; 3] = Default::default();
    for round in 1..=params.rounds.max(1) {
        for (i, (name, addr)) in targets.iter().enumerate() {
            let r = wrk(*addr, HOST, params.load(params.duration));
            eprintln!(
                "router bench: round {round} {name}: {:.0} req/s, p50 {}, p99 {}, {} errors",
                r.requests_per_sec,
                fmt_duration(r.p50),
                fmt_duration(r.p99),
                r.errors
            );
            runs[i].push(r);
        }
    }
    RouterReport {
        params: params.clone(),
        direct: TargetResult::average(&runs[0]),
        nginx: TargetResult::average(&runs[1]),
        bora: TargetResult::average(&runs[2]),
    }
}
