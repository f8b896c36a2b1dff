//! The integration harness: a real registry on loopback, real images built
//! with umoci and pushed with skopeo, and the real `bora` binary started on
//! port 0 in a temporary data directory, driven by its own CLI and by HTTP.
//!
//! Needs root and the packages `scripts/install-deps.sh` installs.

#![allow(dead_code)]

pub mod bench;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BORA: &str = env!("CARGO_BIN_EXE_bora");

pub fn require_root() {
    assert!(
        nix_is_root(),
        "these tests run real containers and need root (and scripts/install-deps.sh): run them as root"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Debian's `docker-registry` on 127.0.0.1, with storage in a temp dir.
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry (scripts/install-deps.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_for_port(&addr, Duration::from_secs(10));
        Registry {
            addr,
            storage,
            child,
            _dir: dir,
        }
    }

    /// Builds a busybox image whose `/www/index.html` says `body`, with
    /// `httpd` on port 8000 as its command, and pushes it as `name:tag`.
    /// Returns the image reference.
    pub fn push_hello(&self, name: &str, tag: &str, body: &str) -> String {
        self.push_hello_with(name, tag, body, &[])
    }

    /// Like [`Registry::push_hello`], with extra `umoci config` arguments
    /// (e.g. `--config.stopsignal=SIGQUIT`).
    pub fn push_hello_with(
        &self,
        name: &str,
        tag: &str,
        body: &str,
        config_args: &[&str],
    ) -> String {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let bundle = dir.path().join("bundle");
        let image = format!("{}:{tag}", layout.display());
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        run(Command::new("umoci").args(["new", "--image", &image]));
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "www", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "httpd", "echo", "cat", "sleep", "env", "ls", "rm", "hostname",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("www/index.html"), body).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
        let mut config = Command::new("umoci");
        config.args(["config", "--image", &image]);
        for arg in ["httpd", "-f", "-p", "8000", "-h", "/www"] {
            config.args(["--config.cmd", arg]);
        }
        config.args(config_args);
        run(&mut config);
        let reference = format!("{}/{name}:{tag}", self.addr);
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{image}"))
            .arg(format!("docker://{reference}")));
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for_port(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr} did not start listening within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real `bora server` in a temp data dir, on port 0.
pub struct Server {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub http: SocketAddr,
    /// Flags added to `bora server`'s.
    extra_args: Vec<String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with `extra_args` added to `bora server`'s flags.
    pub fn start_with(extra_args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut s = Server {
            data_dir,
            api: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            _dir: dir,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path().join("server.log"))
            .unwrap();
        let mut child = Command::new(BORA)
            .args(["--data-dir"])
            .arg(&self.data_dir)
            .args([
                "server",
                "--api-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(&self.extra_args)
            .env("BORA_LOG", "info,bora_control=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut api, mut http) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(a) = line.strip_prefix("bora: API listening on http://") {
                api = Some(a.parse().unwrap());
            } else if let Some(a) = line.strip_prefix("bora: router listening on http://") {
                http = Some(a.parse().unwrap());
            } else if line == "bora: ready" {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.api = api.unwrap_or_else(|| {
            panic!(
                "the server did not print its API address; log:\n{}",
                self.log()
            )
        });
        self.http = http.expect("router address");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kill -9` the server (instances keep running, as after a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server the way an operator does, with SIGTERM, and waits
    /// (at most a minute) for it to exit. Returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not exit within 60 s of SIGTERM; log:\n{}",
                    tail(&self.log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs the real CLI against this server (found through the data dir).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BORA)
            .args(args)
            .env("BORA_DATA_DIR", &self.data_dir)
            .env_remove("BORA_URL")
            .env_remove("BORA_TOKEN")
            .output()
            .unwrap()
    }

    /// Makes the base sandbox template available to this server. The
    /// Debian root filesystem is built once per checkout (mmdebstrap, a
    /// minute or two) into `target/tmp/base-template` and shared: each
    /// server then imports the cached tarball into its own image store
    /// (`bora templates build-base` finds the cache; seconds).
    pub fn base_template(&self) {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/base-template");
        std::fs::create_dir_all(&shared).unwrap();
        // build-base locks the cache directory: parallel tests wait for the first.
        let built = Command::new(BORA)
            .args(["templates", "build-base", "--data-dir"])
            .arg(&shared)
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "bora templates build-base (shared cache) failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let ours = self.data_dir.join("templates");
        std::fs::create_dir_all(&ours).unwrap();
        let copied = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(shared.join("templates/base"))
            .arg(&ours)
            .status()
            .unwrap();
        assert!(copied.success(), "copying the cached base template failed");
        self.cli_ok(&["templates", "build-base"]);
    }

    /// A metric's value from the API's `/metrics` (0 when absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let text = http_client()
            .get(format!("http://{}/metrics", self.api))
            .bearer_auth(self.token())
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "bora {args:?} failed ({}):\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a bora.yaml into the temp dir and returns its path.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self._dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }

    pub fn api_get(&self, path: &str) -> serde_json::Value {
        let resp = http_client()
            .get(format!("http://{}{path}", self.api))
            .bearer_auth(self.token())
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().unwrap()
    }

    /// GET through the router with `Host: <service>.<app>.localhost`.
    pub fn get(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        let resp = http_client()
            .get(format!("http://{}{path}", self.http))
            .header("host", host)
            .send()
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().map_err(|e| e.to_string())?))
    }

    /// Polls `f` until it returns Some, or panics after `timeout`.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; server log:\n{}",
                tail(&self.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A request to Bora's API with the server's token: the status and the
    /// body as JSON (null when it is not JSON).
    pub fn api_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = http_client()
            .request(method, format!("http://{}{path}", self.api))
            .bearer_auth(self.token());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// A request through the router to a sandbox's agent, the way the SDKs
    /// send them (by header), with the sandbox's access token. Returns the
    /// status and body.
    pub fn envd_request(
        &self,
        sandbox: &serde_json::Value,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, String) {
        let mut req = http_client()
            .request(method, format!("http://{}{path_and_query}", self.http))
            .header("E2b-Sandbox-Id", sandbox["id"].as_str().unwrap())
            .header(
                "X-Access-Token",
                sandbox["envd_access_token"].as_str().unwrap(),
            );
        if let Some((content_type, body)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().unwrap_or_default())
    }

    /// What the node still has of sandbox `id`: (kind, what). Empty when
    /// it is all gone.
    pub fn sandbox_leftovers(&self, id: &str) -> Vec<(&'static str, String)> {
        let mut left = Vec::new();
        let runtime = self.data_dir.join("runtime/sandboxes");
        for (binary, root) in [("runsc", "gvisor"), ("runc", "container")] {
            let root = runtime.join(root);
            let listed = Command::new(binary)
                .arg("--root")
                .arg(&root)
                .args(["list", "--quiet"])
                .output()
                .unwrap();
            if stdout(&listed).lines().any(|l| l.trim() == id) {
                left.push(("container", format!("{binary} --root {}", root.display())));
            }
            for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().contains(id) {
                    left.push(("runtime state", entry.path().display().to_string()));
                }
            }
        }
        let netns = bora_node::network::sandbox_netns_path(id);
        if netns.exists() {
            left.push(("netns", netns.display().to_string()));
        }
        let rules = Command::new("iptables").arg("-S").output().unwrap();
        let chain = bora_node::firewall::sandbox_chain(id);
        for rule in stdout(&rules).lines() {
            if rule.contains(&chain) || rule.contains(id) {
                left.push(("iptables", rule.to_string()));
            }
        }
        let cni = Path::new("/var/lib/cni/networks/bora-sandbox");
        for entry in std::fs::read_dir(cni).into_iter().flatten().flatten() {
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if owner.lines().next() == Some(id) {
                left.push(("address", entry.file_name().to_string_lossy().into_owned()));
            }
        }
        let dir = self.data_dir.join("sandboxes").join(id);
        let loops = Command::new("losetup")
            .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
            .output()
            .unwrap();
        for device in stdout(&loops).lines() {
            if device.contains(&*dir.to_string_lossy()) {
                left.push(("loop device", device.trim().to_string()));
            }
        }
        for mount in mounts_under(&dir) {
            left.push(("mount", mount));
        }
        if dir.exists() {
            left.push(("directory", dir.display().to_string()));
        }
        let cgroup = Path::new("/sys/fs/cgroup")
            .join(bora_node::cgroup::sandbox_path(id).trim_start_matches('/'));
        if cgroup.exists() {
            left.push(("cgroup", cgroup.display().to_string()));
        }
        left
    }

    /// Ids of the runc containers this server's node runs.
    /// The runc containers of this server's data dir with their status
    /// (`created`, `running`, `paused`, `stopped`).
    pub fn runc_container_states(&self) -> Vec<(String, String)> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.data_dir.join("runtime/container"))
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn runc_containers(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.data_dir.join("runtime/container"))
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // Remove every instance this server started: no leaks between tests.
        let out = Command::new(BORA)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("reset")
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!("bora reset: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// A server for sandbox tests, with the base template imported; `None`
/// (the test skips, saying why) when the sandbox agent is not built.
pub fn sandbox_server(extra_args: &[&str]) -> Option<Server> {
    require_root();
    let envd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/envd/bora-envd");
    if !envd.is_file() && std::env::var_os("BORA_ENVD_BINARY").is_none() {
        eprintln!("skipped: build the sandbox agent first (scripts/build-envd.sh)");
        return None;
    }
    let server = Server::start_with(extra_args);
    server.base_template();
    Some(server)
}

/// Runs `command` with `bash -l -c` in sandbox `id` through the router at
/// `router`, as the E2B SDK does (`process.Process/Start`, Connect JSON,
/// with `E2b-Sandbox-Id` and the access token). Returns its stdout and
/// exit code.
pub fn run_in_sandbox(
    client: &reqwest::blocking::Client,
    router: SocketAddr,
    id: &str,
    token: &str,
    command: &str,
) -> Result<(String, i64), String> {
    use base64::Engine as _;
    let message = serde_json::json!({
        "process": { "cmd": "/bin/bash", "args": ["-l", "-c", command] }
    })
    .to_string();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    let what = format!("process.Start {command:?} in {id}");
    let resp = client
        .post(format!("http://{router}/process.Process/Start"))
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .header("E2b-Sandbox-Id", id)
        .header("X-Access-Token", token)
        .body(body)
        .send()
        .map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().map_err(|e| format!("{what}: reading: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{what}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let (mut out, mut exit) = (Vec::new(), None);
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let flags = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(payload) = rest.get(5..5 + len) else {
            break;
        };
        rest = &rest[5 + len..];
        let message: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| format!("{what}: a message that is not JSON: {e}"))?;
        if flags & 2 != 0 {
            if message.get("error").is_some() {
                return Err(format!("{what} ended with {message}"));
            }
            continue;
        }
        let event = &message["event"];
        if let Some(chunk) = event["data"]["stdout"].as_str() {
            let chunk = base64::engine::general_purpose::STANDARD
                .decode(chunk)
                .map_err(|e| format!("{what}: stdout {chunk:?} is not base64: {e}"))?;
            out.extend(chunk);
        }
        if let Some(end) = event.get("end") {
            exit = Some(end["exitCode"].as_i64().unwrap_or(0));
        }
    }
    let exit =
        exit.ok_or_else(|| format!("{what} did not end: {}", String::from_utf8_lossy(&bytes)))?;
    let out = String::from_utf8(out).map_err(|e| format!("{what}: stdout: {e}"))?;
    Ok((out, exit))
}

pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Network namespaces that belong to `instance_ids`.
pub fn leftover_netns(instance_ids: &[String]) -> Vec<String> {
    let names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names
        .into_iter()
        .filter(|n| {
            instance_ids
                .iter()
                .any(|id| n.strip_prefix("bora-").is_some_and(|p| id.starts_with(p)))
        })
        .collect()
}

/// Mounts under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Addresses host-local still holds for `instance_ids` (each allocation is a
/// file named by the address, holding the container id).
pub fn leftover_ips(instance_ids: &[String]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/var/lib/cni/networks/bora") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            instance_ids
                .iter()
                .any(|id| owner.lines().next() == Some(id.as_str()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
