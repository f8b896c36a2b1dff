//! What the benchmarks share: the machine description, command-line
//! parameters, latency percentiles, result tables, timed HTTP requests on
//! raw sockets, and the peers they compare Bora with (nginx, `wrk`; the
//! engine bench's llama.cpp server lives in `bench/engine.rs`).
//!
//! Each benchmark lives in its own module and is driven from two places:
//! `benches/<name>.rs` (`cargo bench -p bora --bench <name>`, full
//! parameters) and `tests/bench_smoke.rs` (tiny parameters, checks only
//! that sane numbers come out, never how fast they are).
//!
//! Every load loop is bounded in count and time, and all traffic stays on
//! loopback.

pub mod engine;
pub mod gateway;
pub mod router;
pub mod sandbox;
pub mod scale;
pub mod wake;

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The machine.

/// What the numbers were measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    /// CPUs this process may run on (what `nproc` prints).
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub os: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = field(&meminfo, "MemTotal")
            .and_then(|kb| kb.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0),
            );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory,
            kernel,
            os,
        }
    }
}

/// The value of the first `key : value` line of a `/proc` file.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "machine: {} CPUs ({}), {} RAM, kernel {}, {}",
            self.cpus, self.cpu_model, self.memory, self.kernel, self.os
        )
    }
}

// ---------------------------------------------------------------------------
// Command-line parameters.

/// `--name value` (or `--name=value`) pairs after the bench binary's name.
/// `cargo bench` adds `--bench`, which is ignored.
#[derive(Clone, Debug, Default)]
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Parses the process arguments; exits with a usage line on anything
    /// other than the flags in `known`.
    pub fn from_env(bench: &str, known: &[&str]) -> Args {
        let usage = || {
            let flags: Vec<String> = known.iter().map(|k| format!("[--{k} VALUE]")).collect();
            format!(
                "usage: cargo bench -p bora --bench {bench} -- {}",
                flags.join(" ")
            )
        };
        let mut pairs = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                println!("{}", usage());
                std::process::exit(0);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                eprintln!("unexpected argument {arg:?}\n{}", usage());
                std::process::exit(2);
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => match args.next() {
                    Some(v) => (flag.to_string(), v),
                    None => {
                        eprintln!("--{flag} needs a value\n{}", usage());
                        std::process::exit(2);
                    }
                },
            };
            if !known.contains(&name.as_str()) {
                eprintln!("unknown flag --{name}\n{}", usage());
                std::process::exit(2);
            }
            pairs.push((name, value));
        }
        Args { pairs }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A count, or `default`.
    pub fn count(&self, name: &str, default: usize) -> usize {
        self.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name} takes a whole number, not {v:?}"))
        })
    }

    /// A path, if given.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.get(name).map(PathBuf::from)
    }

    /// A duration such as `10s`, `500ms` or `2m` (a bare number is seconds),
    /// or `default`.
    pub fn duration(&self, name: &str, default: Duration) -> Duration {
        self.get(name).map_or(default, |v| {
            parse_duration(v)
                .unwrap_or_else(|| panic!("--{name} takes a duration like 10s, not {v:?}"))
        })
    }
}

/// `10s`, `500ms`, `1.5m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------
// Percentiles and formatting.

/// Latency percentiles of a set of samples (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// All zero for no samples.
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[i.clamp(1, sorted.len()) - 1]
        };
        Percentiles {
            count: sorted.len(),
            p50: rank(50.0),
            p99: rank(99.0),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// `a / b` of two durations.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// A latency, in the unit that reads best.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 100.0 {
        format!("{us:.1} µs")
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A signed difference of latencies, `+120 µs`.
pub fn fmt_delta(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+{}", fmt_duration(a - b))
    } else {
        format!("-{}", fmt_duration(b - a))
    }
}

pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "-".into()
    }
}

/// A plain-text table: the first column left-aligned, the others right.
#[derive(Clone, Debug)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.header.len();
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        writeln!(f, "{}", self.title)?;
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
                let pad = " ".repeat(w - cell.chars().count());
                if i == 0 {
                    line.push_str(&format!("  {cell}{pad}"));
                } else {
                    line.push_str(&format!("   {pad}{cell}"));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Timed requests on raw sockets.

/// When a response arrived, counted from just before connecting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timed {
    /// Until its first byte.
    pub first_byte: Duration,
    /// Until its last byte.
    pub total: Duration,
}

/// Sends `GET path` with `Host: host` and `Connection: close` on `stream`
/// and reads the whole response, which must be a 200; times are counted
/// from `start`.
pub fn timed_get(
    mut stream: TcpStream,
    host: &str,
    path: &str,
    start: Instant,
    timeout: Duration,
) -> Result<Timed, String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut first = [0u8; 1];
    let n = stream
        .read(&mut first)
        .map_err(|e| format!("waiting for the first byte: {e}"))?;
    let first_byte = start.elapsed();
    if n == 0 {
        return Err("the connection closed before any response".into());
    }
    let mut response = first.to_vec();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("reading the response: {e}"))?;
    let total = start.elapsed();
    let status_line = response
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    if !(status_line.starts_with("HTTP/1.") && status_line.get(9..12) == Some("200")) {
        let text = String::from_utf8_lossy(&response);
        return Err(format!(
            "expected 200, got: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    Ok(Timed { first_byte, total })
}

/// Connects to `addr` and times `GET path` (see [`timed_get`]) from just
/// before connecting.
pub fn get(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<Timed, String> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    timed_get(stream, host, path, start, timeout)
}

/// Polls `f` every `every` until it returns Some, or returns Err after
/// `timeout`.
pub fn poll<T>(
    what: &str,
    every: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------
// Tools.

/// Panics, naming the package, when `program` is not installed.
pub fn require_tool(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file();
    assert!(
        found,
        "{program} is missing: install the Debian package {package} (scripts/install-deps.sh does)"
    );
}

/// A `Command` for `program`, also looked up in `/usr/sbin` (where nginx
/// and runc live, and which a non-login PATH may lack).
pub fn tool(program: &str) -> Command {
    let sbin = Path::new("/usr/sbin").join(program);
    if sbin.is_file() {
        Command::new(sbin)
    } else {
        Command::new(program)
    }
}

// ---------------------------------------------------------------------------
// nginx, as a backend and as the peer proxy.

/// An nginx master process (and its workers) with its own prefix, config,
/// pid file and logs in a temp dir; stopped when dropped.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// CPU time the nginx processes (master and workers) used so far.
    pub fn cpu_time(&self) -> Duration {
        let master = self.child.id();
        let mut total = process_cpu(&format!("/proc/{master}/stat"));
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return total;
        };
        for entry in entries.flatten() {
            let stat = entry.path().join("stat");
            if stat_field(&stat, 1) == Some(u64::from(master)) {
                total += process_cpu(&stat.display().to_string());
            }
        }
        total
    }

    /// nginx answering every request with a tiny static 200 (`ok\n`).
    pub fn backend(workers: usize) -> Nginx {
        Nginx::start(workers, |port| {
            format!(
                "  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      default_type text/plain;\n      return 200 \"ok\\n\";\n    }}\n  }}\n"
            )
        })
    }

    /// nginx as a reverse proxy to `upstream`, tuned like Bora's router
    /// behaves: HTTP/1.1 keep-alive connections to the upstream (a pool of
    /// 64 idle ones), the client's `Host` kept, `X-Forwarded-For/-Proto/-Host`
    /// and an `X-Request-Id` (also echoed on the response).
    pub fn proxy(workers: usize, upstream: SocketAddr) -> Nginx {
        Nginx::start(workers, |port| {
            format!(
                "  upstream backend {{\n    server {upstream};\n    keepalive 64;\n    keepalive_requests 1000000;\n  }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $http_host;\n      proxy_set_header X-Request-Id $request_id;\n      add_header X-Request-Id $request_id;\n    }}\n  }}\n"
            )
        })
    }

    /// nginx answering every request (any method, path and body) with
    /// `body` as JSON: a stand-in upstream whose cost is close to nothing.
    pub fn canned_json(workers: usize, body: &str) -> Nginx {
        assert!(
            !body.contains(['\'', '$', '\\']),
            "the canned body goes into an nginx string"
        );
        Nginx::start(workers, |port| {
            format!(
                "  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      default_type application/json;\n      return 200 '{body}';\n    }}\n  }}\n"
            )
        })
    }

    fn start(workers: usize, servers: impl Fn(u16) -> String) -> Nginx {
        require_tool("nginx", "nginx-light");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        for attempt in 0..20 {
            let port = super::free_port();
            let conf = dir.path().join("nginx.conf");
            let temp = |what: &str| format!("{d}/temp/{what}");
            std::fs::write(
                &conf,
                format!(
                    "worker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{\n  worker_connections 4096;\n}}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 75s;\n  client_body_temp_path {};\n  proxy_temp_path {};\n  fastcgi_temp_path {};\n  uwsgi_temp_path {};\n  scgi_temp_path {};\n{}}}\n",
                    temp("body"),
                    temp("proxy"),
                    temp("fastcgi"),
                    temp("uwsgi"),
                    temp("scgi"),
                    servers(port)
                ),
            )
            .unwrap();
            std::fs::create_dir_all(dir.path().join("temp")).unwrap();
            let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let mut child = tool("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                // Master and workers in a group of their own, so a stuck
                // shutdown can be cut off as a whole.
                .process_group(0)
                .spawn()
                .expect("starting nginx");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = poll(
                "nginx to listen",
                Duration::from_millis(10),
                Duration::from_secs(10),
                || {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Some(false);
                    }
                    TcpStream::connect(addr).ok().map(|_| true)
                },
            );
            match up {
                Ok(true) => return Nginx { addr, child, dir },
                // Exited: most likely the port was taken in between; retry.
                Ok(false) if attempt < 19 => {}
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nginx did not start: {}{}",
                        std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default(),
                        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                    );
                }
            }
        }
        unreachable!()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        // SIGTERM: fast shutdown, the master stops its workers and exits.
        let _ = kill(pid, Signal::SIGTERM);
        let stopped = poll(
            "nginx to stop",
            Duration::from_millis(10),
            Duration::from_secs(5),
            || self.child.try_wait().ok().flatten(),
        );
        if stopped.is_err() {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// wrk.

/// What one `wrk` run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Socket errors (connect, read, write, timeout) plus responses other
    /// than 2xx/3xx.
    pub errors: u64,
}

/// The load: `wrk -t<threads> -c<connections> -d<duration> --latency`.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
}

/// Runs wrk against `http://addr/` with `Host: host`.
pub fn wrk(addr: SocketAddr, host: &str, load: Load) -> WrkResult {
    wrk_with(addr, host, "/", load, None)
}

/// Runs wrk against `http://addr<path>` with `Host: host`, and the Lua
/// `script` (which may set the method, body and headers) if given.
pub fn wrk_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    load: Load,
    script: Option<&Path>,
) -> WrkResult {
    require_tool("wrk", "wrk");
    let secs = load.duration.as_secs().max(1);
    let connections = load.connections.max(1);
    let threads = load.threads.clamp(1, connections);
    let out = tool("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "5s", "--latency", "-H"])
        .arg(format!("Host: {host}"))
        .args(script.map(|s| format!("--script={}", s.display())))
        .arg(format!("http://{addr}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).unwrap_or_else(|e| panic!("reading wrk's output ({e}):\n{text}"))
}

/// Reads wrk's `--latency` report.
pub fn parse_wrk(text: &str) -> Result<WrkResult, String> {
    let mut r = WrkResult::default();
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            ["50%", v] => p50 = wrk_duration(v),
            ["99%", v] => p99 = wrk_duration(v),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        r.errors += n
                            .trim_end_matches(',')
                            .parse::<u64>()
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                r.errors += n.parse::<u64>().map_err(|e| e.to_string())?;
            }
            _ => {}
        }
    }
    r.requests_per_sec = rps.ok_or("no Requests/sec line")?;
    r.p50 = p50.ok_or("no 50% line")?;
    r.p99 = p99.ok_or("no 99% line")?;
    r.requests = requests.ok_or("no request count")?;
    Ok(r)
}

/// `572.00us`, `1.89ms`, `2.01s`, `1.00m`.
fn wrk_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------
// A Bora server with a deployed service, shared by the wake and scale
// benches.

/// Deploys `yaml` with the CLI and waits for it (`--wait`).
pub fn deploy(server: &super::Server, file: &str, yaml: &str) -> String {
    let path: PathBuf = server.write_manifest(file, yaml);
    server.cli_ok(&[
        "deploy",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout",
        "2m",
    ])
}

/// The server's API, with one client kept for polling.
pub struct Api {
    client: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(server: &super::Server) -> Api {
        Api {
            client: super::http_client(),
            base: format!("http://{}", server.api),
            token: server.token(),
        }
    }

    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| format!("GET {path}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {path}: {}", resp.status()));
        }
        resp.json().map_err(|e| format!("GET {path}: {e}"))
    }

    /// The live instances of `app/service`.
    pub fn instances(&self, app: &str, service: &str) -> Result<Vec<serde_json::Value>, String> {
        let list = self.get(&format!("/v1/instances?app={app}&service={service}"))?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// The status of the service's active deployment, if it has one.
    pub fn active_deployment_status(
        &self,
        app: &str,
        service: &str,
    ) -> Result<Option<String>, String> {
        let svc = self.get(&format!("/v1/apps/{app}/services/{service}"))?;
        let Some(id) = svc["active_deployment"].as_str() else {
            return Ok(None);
        };
        let d = self.get(&format!("/v1/deployments/{id}"))?;
        Ok(d["status"].as_str().map(str::to_string))
    }
}

/// How many of `instances` are in `state`.
pub fn count_in_state(instances: &[serde_json::Value], state: &str) -> usize {
    instances.iter().filter(|i| i["state"] == state).count()
}

/// A service in `bora.yaml` running the busybox `httpd` image `image` on
/// port 8000, health-checked on `/`, with `scaling` (a YAML flow mapping).
pub fn service_yaml(name: &str, image: &str, scaling: &str) -> String {
    format!(
        r#"  - name: {name}
    type: web
    image: {image}
    ports: [{{ port: 8000, protocol: http }}]
    routes: [{{ path: /, port: 8000 }}]
    health_check: {{ http: {{ path: /, port: 8000 }}, grace_period: 1s, interval: 1s, restart_limit: 2 }}
    instance_type: nano
    scaling: {scaling}
"#
    )
}

// ---------------------------------------------------------------------------
// Images.

/// What `/www/cgi-bin/slow` does in [`Registry::push_slow_cgi`]'s image.
pub const SLOW_CGI: &str =
    "#!/bin/sh\nsleep 0.2\necho 'Content-Type: text/plain'\necho\necho slow\n";

impl super::Registry {
    /// Builds a busybox image serving `/www` with `httpd` on port 8000
    /// (like [`super::Registry::push_hello`]), whose CGI script
    /// `/cgi-bin/slow` answers after 200 ms (busybox's `sleep` takes
    /// fractions), and pushes it as `name:tag`. `/` answers at once, for
    /// health checks. Returns the image reference.
    pub fn push_slow_cgi(&self, name: &str, tag: &str) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let bundle = dir.path().join("bundle");
        let image = format!("{}:{tag}", layout.display());
        super::run(
            Command::new("umoci")
                .args(["init", "--layout"])
                .arg(&layout),
        );
        super::run(Command::new("umoci").args(["new", "--image", &image]));
        super::run(
            Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(&bundle),
        );
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "www/cgi-bin", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "httpd", "echo", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("www/index.html"), "ok\n").unwrap();
        let script = rootfs.join("www/cgi-bin/slow");
        std::fs::write(&script, SLOW_CGI).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::run(
            Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(&bundle),
        );
        let mut config = Command::new("umoci");
        config.args(["config", "--image", &image]);
        for arg in ["httpd", "-f", "-p", "8000", "-h", "/www"] {
            config.args(["--config.cmd", arg]);
        }
        super::run(&mut config);
        let reference = format!("{}/{name}:{tag}", self.addr);
        super::run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{image}"))
                .arg(format!("docker://{reference}")),
        );
        reference
    }
}

/// Field `index` after the command name of a `/proc/…/stat` file (0 is the
/// state, 1 the parent pid, 11 utime, 12 stime), as a number.
fn stat_field(path: &std::path::Path, index: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(index)?.parse().ok()
}

/// User plus system CPU time of the process or thread whose `stat` file is
/// `path` (zero if it is gone).
pub fn process_cpu(path: &str) -> Duration {
    let path = std::path::Path::new(path);
    let ticks = stat_field(path, 11).unwrap_or(0) + stat_field(path, 12).unwrap_or(0);
    // The kernel counts in clock ticks, USER_HZ = 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// CPU time used so far by this process's threads whose name starts with
/// `prefix` (e.g. the router's `bora-router-` workers).
pub fn threads_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .map(|task| process_cpu(&task.path().join("stat").display().to_string()))
        .sum()
}
