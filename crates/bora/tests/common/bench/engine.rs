//! The LLM engine against llama.cpp, on the same GGUF file and the same
//! number of CPU threads, both over real HTTP on loopback with the same
//! client code (streaming SSE, every token chunk timestamped as it arrives).
//!
//! - Bora: `bora engine serve --model M` (its candle/rayon pool uses every
//!   CPU).
//! - peer: llama.cpp's `llama-server` (built by
//!   `scripts/install-llamacpp.sh`) with `--threads N --threads-batch N`,
//!   N the CPUs, `--parallel <streams> --cont-batching` and a context of
//!   `streams × (prompt + 2 × max_tokens)` tokens (and `--no-repack` on
//!   CPUs with AMX, whose ggml kernels crash on the test model).
//!
//! Measured, each run alternating between the two servers so that noise
//! from a shared machine falls on both:
//!
//! - single-stream decode tokens/s: a chat request asking for a long
//!   answer (`max_tokens` 128, temperature 0, streamed); rate =
//!   (completion tokens − 1) / (last token chunk − first token chunk);
//! - prompt processing tokens/s: `/v1/completions` of a ~512-token prompt of
//!   random words, different in every run (no prefix or prompt cache can
//!   help), `max_tokens` 1, not streamed; rate = prompt tokens / time to the
//!   response (which is the time to the first token);
//! - aggregate output tokens/s with 8 concurrent streams: 8 threads send
//!   the single-stream request at once; rate = all completion tokens / time
//!   from the first send to the last finish.
//!
//! The share of CPU time other processes took meanwhile is reported too:
//! on a busy machine the figures mean nothing.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::{BORA, free_port, tail};
use super::{Args, Table, fmt_duration, fmt_ratio, poll, process_cpu};

/// The model name both servers answer to.
pub const MODEL_NAME: &str = "bench";

/// The single-stream and concurrent request: a prompt that makes the model
/// answer at length (llama.cpp still stops a little before 128 tokens;
/// rates are per token).
const DECODE_PROMPT: &str = "Count from 1 to 200, separated by commas.";

/// Most reads of one streamed response, whatever the timeout.
const MAX_READS: usize = 1_000_000;

#[derive(Clone, Debug)]
pub struct EngineParams {
    /// The GGUF file both servers load.
    pub model: PathBuf,
    /// The peer's `llama-server` binary; None measures Bora alone.
    pub llama_server: Option<PathBuf>,
    /// The peer's `--threads` and `--threads-batch` (Bora uses every CPU).
    pub threads: usize,
    /// Single-stream decode runs per server.
    pub runs: usize,
    /// Prompt-processing runs per server.
    pub prompt_runs: usize,
    /// The prompt length those aim at, in tokens.
    pub prompt_tokens: usize,
    /// `max_tokens` of the single-stream and concurrent requests.
    pub max_tokens: usize,
    /// Concurrent streams.
    pub streams: usize,
    /// Rounds of concurrent streams per server.
    pub rounds: usize,
    /// How long one request may take.
    pub request_timeout: Duration,
}

impl EngineParams {
    pub const FLAGS: &[&str] = &[
        "model",
        "llama-server",
        "threads",
        "runs",
        "prompt-runs",
        "prompt-tokens",
        "max-tokens",
        "streams",
        "rounds",
        "request-timeout",
    ];

    /// The full run: the SmolLM2 test model (`scripts/fetch-models.sh`),
    /// llama-server from `scripts/install-llamacpp.sh` (built the first
    /// time; `--llama-server none` for Bora alone), 5 decode runs, 5 prompt runs of 512 tokens, 3 rounds of 8
    /// streams of 128 tokens.
    pub fn full(args: &Args) -> EngineParams {
        let model = args.path("model").unwrap_or_else(fetch_model);
        // `--llama-server none` measures Bora alone.
        let llama_server = match args.path("llama-server") {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p),
            None => Some(install_llamacpp()),
        };
        EngineParams {
            model,
            llama_server,
            threads: args.count("threads", cpus()),
            runs: args.count("runs", 5),
            prompt_runs: args.count("prompt-runs", 5),
            prompt_tokens: args.count("prompt-tokens", 512),
            max_tokens: args.count("max-tokens", 128),
            streams: args.count("streams", 8),
            rounds: args.count("rounds", 3),
            request_timeout: args.duration("request-timeout", Duration::from_secs(300)),
        }
    }

    /// Bora alone (CI has no llama.cpp), tiny: the cached test model, or
    /// None (with a loud message) when it was not fetched.
    pub fn smoke() -> Option<EngineParams> {
        Some(EngineParams {
            model: cached_model()?,
            llama_server: None,
            threads: cpus(),
            runs: 1,
            prompt_runs: 1,
            prompt_tokens: 32,
            max_tokens: 8,
            streams: 2,
            rounds: 1,
            request_timeout: Duration::from_secs(120),
        })
    }

    /// The peer's context: room for every stream's longest request.
    fn llama_ctx_size(&self) -> usize {
        self.streams.max(1) * (self.prompt_tokens + 2 * self.max_tokens)
    }

    /// llama-server's flags besides the model and the address.
    pub fn llama_flags(&self) -> Vec<String> {
        let threads = self.threads.to_string();
        let mut flags: Vec<String> = [
            "--threads",
            &threads,
            "--threads-batch",
            &threads,
            "--parallel",
            &self.streams.max(1).to_string(),
            "--cont-batching",
            "--ctx-size",
            &self.llama_ctx_size().to_string(),
        ]
        .map(str::to_string)
        .into();
        // ggml's AMX kernels (which -march=native builds on CPUs that have
        // AMX) crash on this model's first matrix product (SIGSEGV in
        // ggml_backend_amx_mul_mat, seen on the Xeon VMs here). --no-repack
        // keeps the weights out of the AMX buffers; Q4_1, the test model's
        // type, has no repacked kernels, so it changes nothing else.
        if cpu_has_amx() {
            flags.push("--no-repack".into());
        }
        flags
    }
}

fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "amx_int8"))
    })
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn repo_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// Runs `scripts/<script>` (its progress on our stderr) and returns its
/// stdout.
fn run_script(script: &str) -> String {
    let path = repo_script(script);
    let out = Command::new(&path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(out.status.success(), "{} failed", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SmolLM2 GGUF file, fetched into the cache if needed.
pub fn fetch_model() -> PathBuf {
    let out = run_script("fetch-models.sh");
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("smollm2_gguf="))
        .unwrap_or_else(|| panic!("fetch-models.sh printed no smollm2_gguf=: {out}"));
    PathBuf::from(path)
}

/// `llama-server`, built and cached by `scripts/install-llamacpp.sh`.
fn install_llamacpp() -> PathBuf {
    let out = run_script("install-llamacpp.sh");
    let path = PathBuf::from(out.trim());
    assert!(
        path.is_file(),
        "install-llamacpp.sh printed {out:?}, not a file"
    );
    path
}

/// The SmolLM2 GGUF file in the model cache (`BORA_MODEL_CACHE` or
/// `~/.cache/bora/models`, as `scripts/fetch-models.sh` fills it). Missing is
/// a skip, except under CI, where `scripts/test.sh` fetched it first.
pub fn cached_model() -> Option<PathBuf> {
    let cache = std::env::var_os("BORA_MODEL_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/bora/models"),
        PathBuf::from,
    );
    let path = cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "test model {} is missing although scripts/test.sh fetches it",
        path.display()
    );
    eprintln!(
        "\n!!! SKIPPED: test model {} is missing; run scripts/fetch-models.sh to fetch it !!!\n",
        path.display()
    );
    None
}

// ---------------------------------------------------------------------------
// Results.

/// One streamed request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Streamed {
    /// From sending the request until the first and the last chunk that
    /// carried text.
    pub first_token: Duration,
    pub last_token: Duration,
    /// Until the end of the response.
    pub total: Duration,
    /// `usage.completion_tokens` (the count of text chunks if the server
    /// sent no usage).
    pub completion_tokens: usize,
    pub prompt_tokens: usize,
    /// Chunks that carried text.
    pub text_chunks: usize,
}

impl Streamed {
    /// (completion tokens − 1) / (last token chunk − first token chunk).
    pub fn decode_rate(&self) -> f64 {
        let span = self.last_token.saturating_sub(self.first_token);
        if self.completion_tokens < 2 || span.is_zero() {
            return f64::NAN;
        }
        (self.completion_tokens - 1) as f64 / span.as_secs_f64()
    }
}

/// One prompt-processing run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prefill {
    pub prompt_tokens: usize,
    /// From sending until the whole response (one token) arrived.
    pub time_to_first_token: Duration,
}

impl Prefill {
    pub fn rate(&self) -> f64 {
        self.prompt_tokens as f64 / self.time_to_first_token.as_secs_f64()
    }
}

/// One round of concurrent streams.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    pub streams: Vec<Streamed>,
    /// From the first send to the last finish.
    pub wall: Duration,
}

impl Round {
    pub fn completion_tokens(&self) -> usize {
        self.streams.iter().map(|s| s.completion_tokens).sum()
    }

    /// All completion tokens / wall time.
    pub fn aggregate_rate(&self) -> f64 {
        self.completion_tokens() as f64 / self.wall.as_secs_f64()
    }
}

/// What one server measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub decode: Vec<Streamed>,
    pub prefill: Vec<Prefill>,
    pub rounds: Vec<Round>,
}

impl Figures {
    /// Median single-stream decode tokens/s.
    pub fn decode_rate(&self) -> f64 {
        median(self.decode.iter().map(Streamed::decode_rate))
    }

    /// Median prompt-processing tokens/s.
    pub fn prefill_rate(&self) -> f64 {
        median(self.prefill.iter().map(Prefill::rate))
    }

    /// Median time to first token of the long prompts.
    pub fn prefill_time(&self) -> Duration {
        Duration::from_secs_f64(median(
            self.prefill
                .iter()
                .map(|p| p.time_to_first_token.as_secs_f64()),
        ))
    }

    /// Median aggregate tokens/s of the concurrent rounds.
    pub fn aggregate_rate(&self) -> f64 {
        median(self.rounds.iter().map(Round::aggregate_rate))
    }

    /// Aggregate over single-stream: what concurrency buys.
    pub fn concurrency_gain(&self) -> f64 {
        self.aggregate_rate() / self.decode_rate()
    }

    /// The fewest and most completion tokens of the single-stream runs.
    pub fn completion_tokens(&self) -> (usize, usize) {
        min_max(self.decode.iter().map(|s| s.completion_tokens))
    }

    /// The fewest and most prompt tokens of the prompt-processing runs.
    pub fn prompt_tokens(&self) -> (usize, usize) {
        min_max(self.prefill.iter().map(|p| p.prompt_tokens))
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn min_max(values: impl Iterator<Item = usize>) -> (usize, usize) {
    values.fold((usize::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn fmt_range((lo, hi): (usize, usize)) -> String {
    if lo > hi {
        "-".into()
    } else if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

fn fmt_rate(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.1}")
    } else {
        "-".into()
    }
}

#[derive(Clone, Debug)]
pub struct EngineReport {
    pub params: EngineParams,
    pub bora: Figures,
    /// llama-server's figures, when it ran.
    pub peer: Option<Figures>,
    /// What `llama-server --version` said.
    pub peer_version: Option<String>,
    /// The share of the machine's CPU time that processes other than the
    /// bench and its servers used while it ran (0.0–1.0): the figures are
    /// only worth comparing when this is near 0.
    pub other_cpu: f64,
}

impl EngineReport {
    /// Bora's single-stream decode rate over llama.cpp's.
    pub fn decode_ratio(&self) -> f64 {
        self.peer
            .as_ref()
            .map_or(f64::NAN, |p| self.bora.decode_rate() / p.decode_rate())
    }

    pub fn table(&self) -> Table {
        let p = &self.params;
        let peer = self.peer.as_ref();
        let peer_desc = match (&self.peer_version, peer) {
            (Some(v), Some(_)) => format!("llama-server {v}, {}", p.llama_flags().join(" ")),
            _ => "none".into(),
        };
        let mut t = Table::new(
            format!(
                "LLM engine: {} over HTTP on loopback; Bora uses all {} CPUs; peer: {peer_desc}",
                p.model.file_name().map_or_else(
                    || p.model.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                ),
                cpus()
            ),
            &["metric", "Bora", "llama.cpp", "ratio"],
        );
        let mut rate_row = |name: String, f: &dyn Fn(&Figures) -> f64| {
            let bora = f(&self.bora);
            let peer = peer.map_or(f64::NAN, f);
            t.row(vec![
                name,
                fmt_rate(bora),
                fmt_rate(peer),
                fmt_ratio(bora / peer),
            ]);
        };
        rate_row(
            format!(
                "single-stream decode, tokens/s (median of {}, max_tokens {})",
                p.runs, p.max_tokens
            ),
            &Figures::decode_rate,
        );
        rate_row(
            format!(
                "prompt processing, tokens/s (~{}-token prompts, median of {})",
                p.prompt_tokens, p.prompt_runs
            ),
            &Figures::prefill_rate,
        );
        rate_row(
            format!(
                "{} streams, aggregate output tokens/s (median of {})",
                p.streams, p.rounds
            ),
            &Figures::aggregate_rate,
        );
        let gain = |f: &Figures| fmt_ratio(f.concurrency_gain());
        t.row(vec![
            format!("{} streams ÷ single-stream", p.streams),
            gain(&self.bora),
            peer.map_or_else(|| "-".into(), gain),
            "-".into(),
        ]);
        let ttft = self.bora.prefill_time();
        let peer_ttft = peer.map(Figures::prefill_time);
        t.row(vec![
            format!(
                "time to first token, ~{}-token prompt (lower is better)",
                p.prompt_tokens
            ),
            fmt_duration(ttft),
            peer_ttft.map_or_else(|| "-".into(), fmt_duration),
            fmt_ratio(peer_ttft.map_or(f64::NAN, |pt| super::ratio(ttft, pt))),
        ]);
        t.row(vec![
            "completion tokens per single-stream request".into(),
            fmt_range(self.bora.completion_tokens()),
            peer.map_or_else(|| "-".into(), |f| fmt_range(f.completion_tokens())),
            "-".into(),
        ]);
        t.row(vec![
            "prompt tokens per prompt-processing request".into(),
            fmt_range(self.bora.prompt_tokens()),
            peer.map_or_else(|| "-".into(), |f| fmt_range(f.prompt_tokens())),
            "-".into(),
        ]);
        t
    }
}

impl std::fmt::Display for EngineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table())?;
        write!(
            f,
            "  other processes used {:.0}% of the machine's CPU time during the run{}",
            self.other_cpu * 100.0,
            if self.other_cpu > 0.05 {
                " — noisy: run again on a quiet machine"
            } else {
                ""
            }
        )
    }
}

/// Busy and total CPU time of the whole machine so far, from `/proc/stat`.
fn machine_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let tick = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy = tick(0) + tick(1) + tick(2) + tick(5) + tick(6) + tick(7);
    let total = busy + tick(3) + tick(4);
    // USER_HZ = 100 on Linux.
    (
        Duration::from_millis(busy * 10),
        Duration::from_millis(total * 10),
    )
}

/// CPU time used so far by this process and the servers.
fn our_cpu(servers: &[&LlmServer]) -> Duration {
    servers
        .iter()
        .map(|s| process_cpu(&format!("/proc/{}/stat", s.child.id())))
        .sum::<Duration>()
        + process_cpu("/proc/self/stat")
}

/// Counts the CPU time others use while the bench runs.
struct Noise {
    machine: (Duration, Duration),
    ours: Duration,
}

impl Noise {
    fn start(servers: &[&LlmServer]) -> Noise {
        Noise {
            machine: machine_cpu(),
            ours: our_cpu(servers),
        }
    }

    /// The share of all CPU time since `start` that others used.
    fn others(&self, servers: &[&LlmServer]) -> f64 {
        let (busy, total) = machine_cpu();
        let busy = busy.saturating_sub(self.machine.0);
        let total = total.saturating_sub(self.machine.1);
        let ours = our_cpu(servers).saturating_sub(self.ours);
        if total.is_zero() {
            return 0.0;
        }
        (busy.saturating_sub(ours).as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
    }
}

// ---------------------------------------------------------------------------
// The servers.

/// An OpenAI-compatible server process with its log in a temp dir;
/// stopped when dropped.
pub struct LlmServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl LlmServer {
    /// `bora engine serve --model model --listen 127.0.0.1:0`, once it
    /// printed its address.
    pub fn bora(model: &Path) -> LlmServer {
        LlmServer::bora_with(model, "127.0.0.1:0", &[])
    }

    /// `bora engine serve --model model --listen listen extra…`, once it
    /// printed its address.
    pub fn bora_with(model: &Path, listen: &str, extra: &[&str]) -> LlmServer {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut child = Command::new(BORA)
            .args(["engine", "serve", "--model"])
            .arg(model)
            .args(["--listen", listen, "--name", MODEL_NAME])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting bora engine serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address, then keeps draining stdout so the server
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("bora engine: listening on http://") {
                    let _ = tx.send(a.to_string());
                    break;
                }
            }
            for _ in lines {}
        });
        let addr = rx.recv_timeout(Duration::from_secs(120)).ok();
        let mut server = LlmServer {
            name: "Bora",
            addr: "127.0.0.1:0".parse().unwrap(),
            child,
            dir,
        };
        match addr.and_then(|a| a.parse().ok()) {
            Some(addr) => server.addr = addr,
            None => panic!(
                "bora engine serve did not print its address within 2 min; log:\n{}",
                server.log_tail()
            ),
        }
        server
    }

    /// llama.cpp's `llama-server` on a free loopback port, once its
    /// `/health` answers 200 (the model is loaded).
    pub fn llama(binary: &Path, model: &Path, params: &EngineParams) -> LlmServer {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        for attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
            let port = free_port();
            let child = Command::new(binary)
                .arg("--model")
                .arg(model)
                .args(["--alias", MODEL_NAME, "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(params.llama_flags())
                .arg("--no-webui")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut server = LlmServer {
                name: "llama.cpp",
                addr,
                child,
                dir,
            };
            let up = poll(
                "llama-server to load the model",
                Duration::from_millis(100),
                Duration::from_secs(120),
                || {
                    if let Ok(Some(_)) = server.child.try_wait() {
                        return Some(false);
                    }
                    let resp = http.get(format!("http://{addr}/health")).send().ok()?;
                    resp.status().is_success().then_some(true)
                },
            );
            match up {
                Ok(true) => return server,
                // Exited: most likely the port was taken in between; retry.
                Ok(false) if attempt < 4 => {}
                _ => panic!(
                    "llama-server did not start: {up:?}; log:\n{}",
                    server.log_tail()
                ),
            }
        }
        unreachable!()
    }

    pub fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default(),
            40,
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let stopped = poll(
            "the server to stop",
            Duration::from_millis(20),
            Duration::from_secs(5),
            || self.child.try_wait().ok().flatten(),
        );
        if stopped.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `llama-server --version`'s version line, e.g. `0 (0c1e57098)`.
pub fn llama_version(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} --version: {e}", binary.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.trim().strip_prefix("version: "))
        .map_or_else(|| "unknown".into(), str::to_string)
}

// ---------------------------------------------------------------------------
// The client: the same for both servers.

pub struct Client {
    http: reqwest::blocking::Client,
    timeout: Duration,
}

impl Client {
    pub fn new(timeout: Duration) -> Client {
        Client {
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            timeout,
        }
    }

    fn post(&self, server: &LlmServer, path: &str, body: &Value) -> Result<Response, String> {
        let resp = self
            .http
            .post(server.url(path))
            .json(body)
            .send()
            .map_err(|e| format!("POST {path}: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().unwrap_or_default();
            return Err(format!("POST {path}: {status}: {text}"));
        }
        Ok(resp)
    }

    /// The decode request, streamed: every chunk timestamped on arrival.
    pub fn stream_chat(&self, server: &LlmServer, max_tokens: usize) -> Result<Streamed, String> {
        let body = json!({
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": DECODE_PROMPT}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let start = Instant::now();
        let resp = self.post(server, "/v1/chat/completions", &body)?;
        read_stream(resp, start, self.timeout)
    }

    /// `/v1/completions` of `prompt` with `max_tokens` 1, not streamed.
    pub fn prefill(&self, server: &LlmServer, prompt: &str) -> Result<Prefill, String> {
        let body = json!({
            "model": MODEL_NAME,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
        });
        let start = Instant::now();
        let resp = self.post(server, "/v1/completions", &body)?;
        let value: Value = resp
            .json()
            .map_err(|e| format!("reading the completion: {e}"))?;
        let time_to_first_token = start.elapsed();
        let prompt_tokens = value["usage"]["prompt_tokens"]
            .as_u64()
            .ok_or_else(|| format!("no usage.prompt_tokens in {value}"))?;
        Ok(Prefill {
            prompt_tokens: prompt_tokens as usize,
            time_to_first_token,
        })
    }
}

type Response = reqwest::blocking::Response;

/// Reads a streamed (SSE) chat or text completion, noting when each chunk
/// with text arrived (counted from `start`) and the usage.
pub fn read_stream(
    mut resp: Response,
    start: Instant,
    timeout: Duration,
) -> Result<Streamed, String> {
    let mut parser = SseParser::default();
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..MAX_READS {
        let n = resp
            .read(&mut buf)
            .map_err(|e| format!("reading the stream: {e}"))?;
        let now = start.elapsed();
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], now)?;
        if parser.done {
            break;
        }
        if now > timeout {
            return Err(format!("the stream took longer than {timeout:?}"));
        }
    }
    let total = start.elapsed();
    parser.finish(total)
}

/// Turns SSE `data:` lines into token arrival times and usage.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    first: Option<Duration>,
    last: Option<Duration>,
    text_chunks: usize,
    usage: Option<(usize, usize)>,
    /// `data: [DONE]` was seen.
    pub done: bool,
}

impl SseParser {
    /// Takes bytes that arrived at `at`.
    pub fn feed(&mut self, bytes: &[u8], at: Duration) -> Result<(), String> {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                self.done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(data)
                .map_err(|e| format!("a chunk is not JSON ({e}): {data}"))?;
            if !chunk["error"].is_null() {
                return Err(format!("the server sent an error: {chunk}"));
            }
            let choice = &chunk["choices"][0];
            let text = choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .unwrap_or_default();
            if !text.is_empty() {
                self.first.get_or_insert(at);
                self.last = Some(at);
                self.text_chunks += 1;
            }
            if let (Some(prompt), Some(completion)) = (
                chunk["usage"]["prompt_tokens"].as_u64(),
                chunk["usage"]["completion_tokens"].as_u64(),
            ) {
                self.usage = Some((prompt as usize, completion as usize));
            }
        }
        Ok(())
    }

    /// The result, once the stream ended at `total`.
    pub fn finish(self, total: Duration) -> Result<Streamed, String> {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return Err("the stream carried no text".into());
        };
        let (prompt_tokens, completion_tokens) = self.usage.unwrap_or((0, self.text_chunks));
        Ok(Streamed {
            first_token: first,
            last_token: last,
            total,
            completion_tokens,
            prompt_tokens,
            text_chunks: self.text_chunks,
        })
    }
}

// ---------------------------------------------------------------------------
// Prompts.

/// Words for the prompt-processing prompts.
const WORDS: &[&str] = &[
    "river", "window", "garden", "silver", "mountain", "quiet", "engine", "yellow", "paper",
    "forest", "little", "harbor", "winter", "candle", "market", "orange", "bridge", "thunder",
    "pocket", "island", "copper", "meadow", "shadow", "letter", "violet", "basket", "rocket",
    "summer", "pencil", "valley", "marble", "ocean", "ladder", "castle", "cotton", "planet",
    "button", "desert", "feather", "kettle", "lantern", "mirror", "needle", "orchard", "pillow",
    "saddle", "tunnel", "wallet", "anchor", "blanket", "cabinet", "dolphin", "elbow", "falcon",
    "glacier", "hammer", "insect", "jacket", "kitchen", "lemon", "magnet", "napkin", "oyster",
    "parrot", "quilt", "rabbit", "spider", "tomato", "umbrella", "velvet", "walnut", "zebra",
    "slowly", "bright", "gentle", "heavy", "ancient", "curious", "distant", "eager", "fragile",
    "golden", "hollow", "jolly", "narrow", "polite", "rapid", "simple", "tender", "wild", "carry",
    "follow", "gather", "listen", "open", "remember", "travel", "whisper", "build",
];

/// `words` random words, a different text for every `seed`.
pub fn random_words(seed: u64, words: usize) -> String {
    // splitmix64: enough for picking words, no dependency.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut text = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
    }
    text
}

/// How many random words make about `target` prompt tokens, from one probe
/// (whose prompt is used for nothing else).
fn words_for(client: &Client, server: &LlmServer, target: usize) -> Result<usize, String> {
    let probe_words = target.max(16);
    let probe = client.prefill(server, &random_words(u64::MAX, probe_words))?;
    let per_word = probe.prompt_tokens as f64 / probe_words as f64;
    Ok(((target as f64 / per_word).round() as usize).max(1))
}

// ---------------------------------------------------------------------------
// The run.

/// Runs the engine bench; progress goes to stderr.
pub fn run(params: &EngineParams) -> EngineReport {
    let client = Client::new(params.request_timeout);
    eprintln!("engine bench: starting bora engine serve");
    let bora = LlmServer::bora(&params.model);
    let peer = params.llama_server.as_ref().map(|binary| {
        eprintln!(
            "engine bench: starting {} --threads {}",
            binary.display(),
            params.threads
        );
        (
            LlmServer::llama(binary, &params.model, params),
            llama_version(binary),
        )
    });
    let servers: Vec<&LlmServer> = std::iter::once(&bora)
        .chain(peer.as_ref().map(|(s, _)| s))
        .collect();
    let fail = |server: &LlmServer, what: String| -> ! {
        panic!("{}: {what}; its log:\n{}", server.name, server.log_tail());
    };

    // Warm-up (not timed): one short stream and one prompt each.
    for &server in &servers {
        if let Err(e) = client.stream_chat(server, params.max_tokens.min(16)) {
            fail(server, format!("the warm-up request failed: {e}"));
        }
    }
    let words = match words_for(&client, &bora, params.prompt_tokens) {
        Ok(w) => w,
        Err(e) => fail(&bora, format!("counting prompt tokens: {e}")),
    };

    let noise = Noise::start(&servers);
    let mut figures: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();
    for i in 0..params.runs {
        for (server, f) in servers.iter().zip(&mut figures) {
            match client.stream_chat(server, params.max_tokens) {
                Ok(s) => {
                    eprintln!(
                        "engine bench: {} decode {}: {} tokens, {:.1} tokens/s",
                        server.name,
                        i + 1,
                        s.completion_tokens,
                        s.decode_rate()
                    );
                    f.decode.push(s);
                }
                Err(e) => fail(server, format!("decode run {} failed: {e}", i + 1)),
            }
        }
    }
    for i in 0..params.prompt_runs {
        // The same new text for each server, used once per server.
        let prompt = random_words(i as u64 + 1, words);
        for (server, f) in servers.iter().zip(&mut figures) {
            match client.prefill(server, &prompt) {
                Ok(p) => {
                    eprintln!(
                        "engine bench: {} prompt {}: {} tokens in {}, {:.1} tokens/s",
                        server.name,
                        i + 1,
                        p.prompt_tokens,
                        fmt_duration(p.time_to_first_token),
                        p.rate()
                    );
                    f.prefill.push(p);
                }
                Err(e) => fail(server, format!("prompt run {} failed: {e}", i + 1)),
            }
        }
    }
    for i in 0..params.rounds {
        for (server, f) in servers.iter().zip(&mut figures) {
            match concurrent(&client, server, params) {
                Ok(r) => {
                    eprintln!(
                        "engine bench: {} {} streams, round {}: {} tokens in {}, {:.1} tokens/s",
                        server.name,
                        params.streams,
                        i + 1,
                        r.completion_tokens(),
                        fmt_duration(r.wall),
                        r.aggregate_rate()
                    );
                    f.rounds.push(r);
                }
                Err(e) => fail(server, format!("{} streams failed: {e}", params.streams)),
            }
        }
    }

    let other_cpu = noise.others(&servers);
    eprintln!(
        "engine bench: other processes used {:.0}% of the CPU time",
        other_cpu * 100.0
    );
    let mut figures = figures.into_iter();
    EngineReport {
        params: params.clone(),
        bora: figures.next().unwrap(),
        peer: figures.next(),
        peer_version: peer.as_ref().map(|(_, v)| v.clone()),
        other_cpu,
    }
}

/// `params.streams` threads send the decode request at once.
fn concurrent(client: &Client, server: &LlmServer, params: &EngineParams) -> Result<Round, String> {
    let barrier = Barrier::new(params.streams);
    let results: Vec<Result<(Instant, Instant, Streamed), String>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..params.streams)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let sent = Instant::now();
                    let streamed = client.stream_chat(server, params.max_tokens)?;
                    Ok((sent, sent + streamed.total, streamed))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a stream thread panicked"))
            .collect()
    });
    let results: Vec<(Instant, Instant, Streamed)> =
        results.into_iter().collect::<Result<_, _>>()?;
    let first_sent = results.iter().map(|r| r.0).min().ok_or("no stream ran")?;
    let last_done = results.iter().map(|r| r.1).max().ok_or("no stream ran")?;
    Ok(Round {
        wall: last_done - first_sent,
        streams: results.into_iter().map(|r| r.2).collect(),
    })
}
