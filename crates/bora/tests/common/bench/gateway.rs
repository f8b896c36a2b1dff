//! The inference gateway, two ways.
//!
//! **Overhead** — the same upstream reached directly, through Bora's
//! gateway (`bora_router::Router` in this process, the key checked, the
//! request recorded), and through LiteLLM's proxy (`litellm --config`, the
//! same upstream, a master key), under the same `wrk` load posting a chat
//! request:
//!
//! - latency: one connection, one request in flight, to the real engine
//!   (`bora engine serve`, `max_tokens` 1): what each adds at p50 and p99;
//! - throughput: `-c<connections>` connections to a stand-in upstream that
//!   costs nothing (nginx returning a canned chat completion), so the
//!   gateway is what saturates: the requests/s each sustains.
//!
//! **Prefix affinity** — N engine replicas behind the gateway, a workload
//! of G groups of requests whose system prompts are long and shared within
//! a group (more groups than one replica's prefix cache holds), C clients
//! sending `max_tokens` 1 requests: time to the (first and only) token,
//! p50 and p90, with prefix affinity and with plain least-outstanding
//! routing. The replicas restart between the two runs (cold caches both
//! times), and both runs send the same requests in the same order; the
//! first `warmup_requests` of them warm the caches and are not measured.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bora_router::{
    Backend, GatewayKey, ModelRoutes, RouteTable, Router, RouterConfig, hash_secret,
};
use serde_json::{Value, json};

use super::engine::{LlmServer, MODEL_NAME, random_words};
use super::router::BoraRouter;
use super::{Args, Load, Nginx, Table, WrkResult, fmt_duration, fmt_ratio, poll, wrk_with};

/// The key every client presents (to Bora's gateway and to LiteLLM).
const SECRET: &str = "bora-sk-bench-key-0000000000000000000000000";
/// The stand-in upstream's model name.
const CANNED: &str = "canned";
/// What the stand-in upstream answers.
const CANNED_ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"canned","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

#[derive(Clone, Debug)]
pub struct GatewayParams {
    pub model: PathBuf,
    /// LiteLLM's `litellm` command; None measures Bora alone.
    pub litellm: Option<PathBuf>,
    /// Router worker threads, LiteLLM workers, nginx workers.
    pub workers: usize,
    /// wrk connections of the throughput runs.
    pub connections: usize,
    pub duration: Duration,
    pub rounds: usize,
    pub warmup: Duration,
    /// Prefix affinity: replicas, groups, words per system prompt,
    /// requests, concurrent clients, each replica's prefix cache.
    pub replicas: usize,
    pub groups: usize,
    pub system_words: usize,
    pub requests: usize,
    /// Requests sent before the measured ones (not measured): each run
    /// starts from cold caches, and this much traffic warms them.
    pub warmup_requests: usize,
    pub concurrency: usize,
    pub prefix_cache_mib: usize,
}

impl GatewayParams {
    pub const FLAGS: &[&str] = &[
        "model",
        "litellm",
        "workers",
        "connections",
        "duration",
        "rounds",
        "warmup",
        "replicas",
        "groups",
        "system-words",
        "requests",
        "warmup-requests",
        "concurrency",
        "prefix-cache-mib",
    ];

    pub fn full(args: &Args) -> GatewayParams {
        let model = args
            .path("model")
            .unwrap_or_else(super::engine::fetch_model);
        let litellm = args.path("litellm").or_else(|| Some(install_litellm()));
        GatewayParams {
            model,
            litellm,
            workers: args.count("workers", 2),
            connections: args.count("connections", 64),
            duration: args.duration("duration", Duration::from_secs(10)),
            rounds: args.count("rounds", 2),
            warmup: args.duration("warmup", Duration::from_secs(2)),
            replicas: args.count("replicas", 4),
            groups: args.count("groups", 16),
            system_words: args.count("system-words", 300),
            requests: args.count("requests", 192),
            warmup_requests: args.count("warmup-requests", 48),
            concurrency: args.count("concurrency", 4),
            prefix_cache_mib: args.count("prefix-cache-mib", 192),
        }
    }

    /// Bora alone (CI has no LiteLLM), tiny; None without the cached model.
    pub fn smoke() -> Option<GatewayParams> {
        Some(GatewayParams {
            model: super::engine::cached_model()?,
            litellm: None,
            workers: 1,
            connections: 4,
            duration: Duration::from_secs(1),
            rounds: 1,
            warmup: Duration::ZERO,
            replicas: 2,
            groups: 2,
            system_words: 40,
            requests: 6,
            warmup_requests: 2,
            concurrency: 2,
            prefix_cache_mib: 16,
        })
    }
}

fn install_litellm() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-litellm.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

// ---------------------------------------------------------------------------
// The gateways.

/// Bora's gateway: a router in this process with the models and the key.
pub struct BoraGateway;

impl BoraGateway {
    pub fn start(workers: usize, models: Vec<ModelRoutes>, affinity: bool) -> BoraRouter {
        let router = Router::new(RouterConfig {
            workers: workers.max(1),
            prefix_affinity: affinity,
            ..RouterConfig::new("localhost")
        });
        router.set_table(RouteTable {
            models,
            ..RouteTable::default()
        });
        router.set_keys(vec![GatewayKey {
            id: "key_bench".into(),
            name: "bench".into(),
            hash: hash_secret(SECRET),
            models: Vec::new(),
            rpm: None,
            tpm: None,
            expires_at: None,
            revoked: false,
        }]);
        router.set_recorder(Arc::new(Counted::default()));
        BoraRouter::serve(router)
    }
}

/// Takes the gateway's records (as the server's recorder queues them) and
/// counts them.
#[derive(Default)]
struct Counted(AtomicUsize);

impl bora_router::Recorder for Counted {
    fn record(&self, record: bora_api::RequestRecord) {
        std::hint::black_box(record);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A model entry whose replicas are `addrs` (all on one port).
pub fn model_routes(name: &str, addrs: &[SocketAddr]) -> ModelRoutes {
    ModelRoutes {
        name: name.into(),
        app: "bench".into(),
        service: name.into(),
        port: addrs[0].port(),
        backends: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Backend {
                instance_id: format!("{name}-{i}"),
                ip: a.ip(),
            })
            .collect(),
        wakeable: false,
        digest: None,
        engine: "bench".into(),
        created: 0,
    }
}

/// LiteLLM's proxy with one model per `(name, upstream)`, a master key, on
/// a free loopback port; stopped when dropped.
pub struct LiteLlm {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl LiteLlm {
    pub fn start(binary: &Path, workers: usize, models: &[(&str, SocketAddr)]) -> LiteLlm {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from("model_list:\n");
        for (name, upstream) in models {
            config.push_str(&format!(
                "  - model_name: {name}\n    litellm_params:\n      model: openai/{name}\n      api_base: http://{upstream}/v1\n      api_key: none\n"
            ));
        }
        config.push_str(&format!(
            "general_settings:\n  master_key: {SECRET}\nlitellm_settings:\n  drop_params: true\n  telemetry: false\n"
        ));
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let port = super::super::free_port();
        let log = std::fs::File::create(dir.path().join("litellm.log")).unwrap();
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num_workers", &workers.max(1).to_string()])
            .env("LITELLM_LOG", "ERROR")
            .env("LITELLM_TELEMETRY", "False")
            .env("NO_PROXY", "*")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = poll(
            "LiteLLM to answer",
            Duration::from_millis(200),
            Duration::from_secs(180),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(status));
                }
                let resp = http
                    .get(format!("http://{addr}/health/liveliness"))
                    .send()
                    .ok()?;
                resp.status().is_success().then_some(Ok(()))
            },
        );
        let proxy = LiteLlm { addr, child, dir };
        match up {
            Ok(Ok(())) => proxy,
            other => panic!(
                "LiteLLM did not start: {other:?}; log:\n{}",
                proxy.log_tail()
            ),
        }
    }

    fn log_tail(&self) -> String {
        super::super::tail(
            &std::fs::read_to_string(self.dir.path().join("litellm.log")).unwrap_or_default(),
            40,
        )
    }

    /// litellm's version, from its package metadata.
    pub fn version(binary: &Path) -> String {
        let python = binary.with_file_name("python");
        Command::new(python)
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pid, Signal::SIGTERM);
        let stopped = poll(
            "LiteLLM to stop",
            Duration::from_millis(20),
            Duration::from_secs(10),
            || self.child.try_wait().ok().flatten(),
        );
        if stopped.is_err() {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

use std::os::unix::process::CommandExt as _;

// ---------------------------------------------------------------------------
// Overhead.

/// One target of one shape, averaged over the rounds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

impl Measured {
    fn average(runs: &[WrkResult]) -> Measured {
        let n = runs.len().max(1) as f64;
        let avg = |f: fn(&WrkResult) -> Duration| {
            Duration::from_secs_f64(runs.iter().map(|r| f(r).as_secs_f64()).sum::<f64>() / n)
        };
        Measured {
            requests: runs.iter().map(|r| r.requests).sum(),
            requests_per_sec: runs.iter().map(|r| r.requests_per_sec).sum::<f64>() / n,
            p50: avg(|r| r.p50),
            p99: avg(|r| r.p99),
            errors: runs.iter().map(|r| r.errors).sum(),
        }
    }
}

/// One load shape: direct, Bora, and LiteLLM if it ran.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    pub direct: Measured,
    pub bora: Measured,
    pub litellm: Option<Measured>,
}

impl Shape {
    pub fn all(&self) -> Vec<(&'static str, Measured)> {
        let mut all = vec![("direct", self.direct), ("bora", self.bora)];
        if let Some(l) = self.litellm {
            all.push(("litellm", l));
        }
        all
    }
}

/// A wrk script posting a one-token chat for `model` with the key.
fn chat_script(dir: &Path, model: &str) -> PathBuf {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 1,
        "temperature": 0,
    })
    .to_string();
    let script = format!(
        "wrk.method = \"POST\"\nwrk.body = [[{body}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {SECRET}\"\n"
    );
    let path = dir.join(format!("chat-{model}.lua"));
    std::fs::write(&path, script).unwrap();
    path
}

fn measure(
    name: &str,
    targets: &[(&'static str, SocketAddr)],
    script: &Path,
    load: Load,
    params: &GatewayParams,
) -> Vec<Measured> {
    const PATH: &str = "/v1/chat/completions";
    if !params.warmup.is_zero() {
        for (target, addr) in targets {
            eprintln!("gateway bench: warming up {target} ({name})");
            wrk_with(
                *addr,
                "127.0.0.1",
                PATH,
                Load {
                    duration: params.warmup,
                    ..load
                },
                Some(script),
            );
        }
    }
    let mut runs: Vec<Vec<WrkResult>> = vec![Vec::new(); targets.len()];
    for round in 1..=params.rounds.max(1) {
        for (i, (target, addr)) in targets.iter().enumerate() {
            let r = wrk_with(*addr, "127.0.0.1", PATH, load, Some(script));
            eprintln!(
                "gateway bench: {name} round {round} {target}: {:.0} req/s, p50 {}, p99 {}, {} errors",
                r.requests_per_sec,
                fmt_duration(r.p50),
                fmt_duration(r.p99),
                r.errors
            );
            runs[i].push(r);
        }
    }
    runs.iter().map(|r| Measured::average(r)).collect()
}

fn shape(measured: Vec<Measured>) -> Shape {
    Shape {
        direct: measured[0],
        bora: measured[1],
        litellm: measured.get(2).copied(),
    }
}

// ---------------------------------------------------------------------------
// Prefix affinity.

/// The times to the first token of one affinity run.
#[derive(Clone, Debug, Default)]
pub struct AffinityRun {
    pub ttft: Vec<Duration>,
    pub failures: usize,
    /// Prompt tokens the replicas found in their prefix caches, over all
    /// prompt tokens they were asked to process.
    pub hit_rate: f64,
}

impl AffinityRun {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.ttft.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Engine replicas on 127.0.0.2, .3, … sharing one port (as instances do
/// on their own addresses).
fn replicas(params: &GatewayParams) -> Vec<LlmServer> {
    let cache = params.prefix_cache_mib.to_string();
    'attempt: for _ in 0..20 {
        let port = super::super::free_port();
        let mut servers = Vec::new();
        for i in 0..params.replicas {
            let ip = Ipv4Addr::new(127, 0, 0, 2 + i as u8);
            // A port free on 127.0.0.1 may be taken on another address.
            if std::net::TcpListener::bind((ip, port)).is_err() {
                continue 'attempt;
            }
            let listen = format!("{ip}:{port}");
            servers.push(LlmServer::bora_with(
                &params.model,
                &listen,
                &["--prefix-cache-mib", &cache],
            ));
        }
        return servers;
    }
    panic!("no port free on every replica address");
}

/// The requests of an affinity run: (group, question), the same for both
/// runs.
fn workload(params: &GatewayParams) -> Vec<(usize, usize)> {
    // A fixed pseudo-random order (xorshift), so groups interleave.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..params.warmup_requests + params.requests)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state % params.groups.max(1) as u64) as usize, i)
        })
        .collect()
}

fn prefix_counters(server: &LlmServer, http: &reqwest::blocking::Client) -> (f64, f64) {
    let Ok(page) = http
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .and_then(|r| r.text())
    else {
        return (0.0, 0.0);
    };
    let value = |name: &str| {
        page.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (
        value("vllm:prefix_cache_hits_total"),
        value("vllm:prefix_cache_queries_total"),
    )
}

fn affinity_run(params: &GatewayParams, affinity: bool) -> AffinityRun {
    let servers = replicas(params);
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let gateway = BoraGateway::start(
        params.workers,
        vec![model_routes(MODEL_NAME, &addrs)],
        affinity,
    );
    let systems: Vec<String> = (0..params.groups)
        .map(|g| {
            format!(
                "You are assistant number {g}. Follow these notes: {}",
                random_words(1000 + g as u64, params.system_words)
            )
        })
        .collect();
    let work = workload(params);
    let next = AtomicUsize::new(0);
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let results: Vec<(usize, Result<Duration, String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..params.concurrency.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(group, question)) = work.get(i) else {
                            return out;
                        };
                        let body = json!({
                            "model": MODEL_NAME,
                            "messages": [
                                {"role": "system", "content": systems[group]},
                                {"role": "user", "content": format!("Question {question}: what is rule {}?", question % 7)},
                            ],
                            "max_tokens": 1,
                            "temperature": 0,
                        });
                        let start = Instant::now();
                        let sent = http
                            .post(format!("http://{}/v1/chat/completions", gateway.addr))
                            .bearer_auth(SECRET)
                            .json(&body)
                            .send()
                            .and_then(|r| r.error_for_status())
                            .and_then(|r| r.json::<Value>());
                        out.push((i, sent.map(|_| start.elapsed()).map_err(|e| e.to_string())));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let (mut hits, mut queries) = (0.0, 0.0);
    for server in &servers {
        let (h, q) = prefix_counters(server, &http);
        hits += h;
        queries += q;
    }
    drop(gateway);
    drop(servers);
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    if let Some(first) = failures.first() {
        eprintln!(
            "gateway bench: {} failed requests, first: {first}",
            failures.len()
        );
    }
    AffinityRun {
        // The warm-up requests are not measured.
        ttft: results
            .iter()
            .filter(|(i, _)| *i >= params.warmup_requests)
            .filter_map(|(_, r)| r.as_ref().ok().copied())
            .collect(),
        failures: failures.len(),
        hit_rate: if queries > 0.0 { hits / queries } else { 0.0 },
    }
}

// ---------------------------------------------------------------------------
// The report.

#[derive(Clone, Debug)]
pub struct GatewayReport {
    pub params: GatewayParams,
    pub litellm_version: Option<String>,
    /// One connection to the real engine.
    pub latency: Shape,
    /// Many connections to the canned upstream.
    pub throughput: Shape,
    pub least_outstanding: AffinityRun,
    pub affinity: AffinityRun,
}

impl GatewayReport {
    /// p50 Bora adds over direct, on one connection.
    pub fn added_p50(&self) -> Duration {
        self.latency
            .bora
            .p50
            .saturating_sub(self.latency.direct.p50)
    }

    /// Bora's requests/s over LiteLLM's, at saturation.
    pub fn throughput_ratio(&self) -> Option<f64> {
        let l = self.throughput.litellm?;
        Some(self.throughput.bora.requests_per_sec / l.requests_per_sec)
    }

    /// p90 time to first token without affinity over with it.
    pub fn affinity_p90_gain(&self) -> f64 {
        super::ratio(
            self.least_outstanding.percentile(0.9),
            self.affinity.percentile(0.9),
        )
    }
}

impl std::fmt::Display for GatewayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.params;
        let peer = self
            .litellm_version
            .as_ref()
            .map_or("LiteLLM not run".to_string(), |v| format!("LiteLLM {v}"));
        let mut latency = Table::new(
            format!("Gateway overhead, one connection, real engine, max_tokens 1 ({peer})"),
            &[
                "target",
                "req/s",
                "p50",
                "p99",
                "added p50",
                "added p99",
                "errors",
            ],
        );
        for (name, m) in self.latency.all() {
            latency.row(vec![
                name.to_string(),
                format!("{:.0}", m.requests_per_sec),
                fmt_duration(m.p50),
                fmt_duration(m.p99),
                super::fmt_delta(m.p50, self.latency.direct.p50),
                super::fmt_delta(m.p99, self.latency.direct.p99),
                m.errors.to_string(),
            ]);
        }
        let mut throughput = Table::new(
            format!(
                "Gateway throughput, {} connections, canned upstream ({} workers each)",
                p.connections, p.workers
            ),
            &["target", "req/s", "p50", "p99", "errors"],
        );
        for (name, m) in self.throughput.all() {
            throughput.row(vec![
                name.to_string(),
                format!("{:.0}", m.requests_per_sec),
                fmt_duration(m.p50),
                fmt_duration(m.p99),
                m.errors.to_string(),
            ]);
        }
        let mut affinity = Table::new(
            format!(
                "Prefix affinity: {} replicas, {} groups of ~{}-word system prompts, {} requests measured after {} unmeasured, {} clients, {} MiB prefix cache each",
                p.replicas,
                p.groups,
                p.system_words,
                p.requests,
                p.warmup_requests,
                p.concurrency,
                p.prefix_cache_mib
            ),
            &[
                "routing",
                "TTFT p50",
                "TTFT p90",
                "cache hit rate",
                "failures",
            ],
        );
        for (name, run) in [
            ("least outstanding", &self.least_outstanding),
            ("prefix affinity", &self.affinity),
        ] {
            affinity.row(vec![
                name.to_string(),
                fmt_duration(run.percentile(0.5)),
                fmt_duration(run.percentile(0.9)),
                format!("{:.0} %", run.hit_rate * 100.0),
                run.failures.to_string(),
            ]);
        }
        writeln!(f, "{latency}")?;
        writeln!(f, "{throughput}")?;
        writeln!(f, "{affinity}")?;
        writeln!(
            f,
            "Bora adds {} at p50 (goal < 1 ms)",
            fmt_duration(self.added_p50())
        )?;
        if let Some(r) = self.throughput_ratio() {
            writeln!(f, "Bora/LiteLLM throughput: {} (goal >= 10x)", fmt_ratio(r))?;
        }
        write!(
            f,
            "TTFT p90 least-outstanding/affinity: {} (goal >= 2x)",
            fmt_ratio(self.affinity_p90_gain())
        )
    }
}

/// Runs the gateway bench; progress goes to stderr.
pub fn run(params: &GatewayParams) -> GatewayReport {
    // Overhead.
    let engine = LlmServer::bora(&params.model);
    let canned = Nginx::canned_json(params.workers, CANNED_ANSWER);
    let bora = BoraGateway::start(
        params.workers,
        vec![
            model_routes(MODEL_NAME, &[engine.addr]),
            model_routes(CANNED, &[canned.addr]),
        ],
        true,
    );
    let litellm = params.litellm.as_ref().map(|binary| {
        eprintln!("gateway bench: starting LiteLLM");
        LiteLlm::start(
            binary,
            params.workers,
            &[(MODEL_NAME, engine.addr), (CANNED, canned.addr)],
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let engine_script = chat_script(dir.path(), MODEL_NAME);
    let canned_script = chat_script(dir.path(), CANNED);
    let mut latency_targets = vec![("direct", engine.addr), ("bora", bora.addr)];
    let mut throughput_targets = vec![("direct", canned.addr), ("bora", bora.addr)];
    if let Some(l) = &litellm {
        latency_targets.push(("litellm", l.addr));
        throughput_targets.push(("litellm", l.addr));
    }
    let one = Load {
        threads: 1,
        connections: 1,
        duration: params.duration,
    };
    let many = Load {
        threads: params.workers.clamp(1, 2),
        connections: params.connections,
        duration: params.duration,
    };
    let latency = shape(measure(
        "latency",
        &latency_targets,
        &engine_script,
        one,
        params,
    ));
    let throughput = shape(measure(
        "throughput",
        &throughput_targets,
        &canned_script,
        many,
        params,
    ));
    drop(litellm);
    drop(bora);
    drop(engine);
    drop(canned);

    // Prefix affinity.
    eprintln!("gateway bench: prefix affinity, least-outstanding run");
    let least_outstanding = affinity_run(params, false);
    eprintln!("gateway bench: prefix affinity, affinity run");
    let affinity = affinity_run(params, true);
    GatewayReport {
        params: params.clone(),
        litellm_version: params.litellm.as_deref().map(LiteLlm::version),
        latency,
        throughput,
        least_outstanding,
        affinity,
    }
}
