//! End to end: real registry, real images, real `bora server`, real CLI,
//! real HTTP through the router.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

const HOST: &str = "web.hello.localhost";

fn manifest(image: &str, extra: &str) -> String {
    format!(
        r#"app: hello
services:
  - name: web
    type: web
    image: {image}
    ports: [{{ port: 8000, protocol: http }}]
    routes: [{{ path: /, port: 8000 }}]
    health_check: {{ http: {{ path: /, port: 8000 }}, grace_period: 1s, interval: 1s, restart_limit: 2 }}
    instance_type: nano
{extra}"#
    )
}

/// Deploys with `--wait` and expects success.
fn deploy_ok(server: &Server, file: &str, yaml: &str) -> String {
    let path = server.write_manifest(file, yaml);
    server.cli_ok(&[
        "deploy",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout",
        "2m",
    ])
}

/// Deploys with `--wait` and expects the deployment to fail (exit code 1);
/// returns everything the CLI printed.
fn deploy_fails(server: &Server, file: &str, yaml: &str) -> String {
    let path = server.write_manifest(file, yaml);
    let out = server.cli(&[
        "deploy",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout",
        "2m",
    ]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    all
}

fn body(server: &Server) -> String {
    let (status, body) = server.get(HOST, "/").expect("request through the router");
    assert_eq!(status, 200, "body: {body}");
    body
}

fn instances(server: &Server, query: &str) -> Vec<serde_json::Value> {
    server.api_get(&format!("/v1/instances{query}"))["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The ids of the instances `GET /v1/instances{query}` lists.
fn instance_ids(server: &Server, query: &str) -> Vec<String> {
    instances(server, query)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn deploy_roll_out_a_new_version_without_failures_and_survive_a_restart() {
    require_root();
    let registry = Registry::start();
    let v1 = registry.push_hello("hello", "1", "hello v1\n");
    let v2 = registry.push_hello("hello", "2", "hello v2\n");
    let mut server = Server::start();

    // A secret, referenced from env, reaches the process; so does plain env.
    server.cli_ok(&["secrets", "create", "db-pass", "--value", "s3cret"]);
    let listed = server.cli_ok(&["secrets", "list", "-o", "json"]);
    assert!(
        listed.contains("db-pass") && !listed.contains("s3cret"),
        "{listed}"
    );
    let env_cmd = r#"    command: ["sh", "-c", "echo $GREETING $DB_PASSWORD > /www/env.txt && echo started $GREETING && exec httpd -f -p 8000 -h /www"]
    env:
      GREETING: hi
      DB_PASSWORD: { secret: db-pass }
"#;

    // 1. Deploy: --wait returns once healthy and prints the URL.
    let out = deploy_ok(&server, "v1.yaml", &manifest(&v1, env_cmd));
    let url = format!("http://web.hello.localhost:{}/", server.http.port());
    assert!(
        out.contains(&url),
        "deploy output names the URL {url}: {out}"
    );
    assert_eq!(body(&server), "hello v1\n");
    assert_eq!(server.get(HOST, "/env.txt").unwrap().1, "hi s3cret\n");

    // What the process wrote is in its logs.
    let logs = server.cli_ok(&["logs", "hello/web", "--tail", "20"]);
    assert!(logs.contains("started hi"), "{logs}");

    // The deployment is pinned to the digest it resolved.
    let deployments = server.api_get("/v1/deployments?app=hello&service=web");
    let d1 = &deployments["items"][0];
    assert!(
        d1["image_digest"].as_str().unwrap().starts_with("sha256:"),
        "{d1}"
    );
    assert_eq!(d1["status"], "healthy");

    // The instance records every transition with its reason.
    let first = instance_ids(&server, "?app=hello");
    assert_eq!(first.len(), 1);
    let id = first[0].clone();
    let got = server.cli_ok(&["instances", "get", &id, "-o", "json"]);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    let states: Vec<&str> = got["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "pulling", "starting", "healthy"]);

    // 2. Rolling update to v2 while a client hammers the URL.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let http = server.http;
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let c = http_client();
            let mut errors = Vec::new();
            // Bounded in count and time.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(format!("http://{http}/")).header("host", HOST).send() {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{} {}", r.status(), r.text().unwrap_or_default()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    deploy_ok(&server, "v2.yaml", &manifest(&v2, ""));
    // Let the old instance drain and stop while the client keeps going.
    server.wait_until("the old instance to stop", Duration::from_secs(60), || {
        (instances(&server, "?app=hello").len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let errors = client.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 20, "the client made progress");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the rollout: {errors:?}"
    );
    assert_eq!(body(&server), "hello v2\n");
    let old = server.api_get(&format!("/v1/instances/{id}"));
    assert_eq!(old["state"], "stopped", "{old}");
    let d = server.api_get("/v1/deployments?app=hello&service=web");
    assert_eq!(d["items"][0]["status"], "healthy");
    assert_eq!(d["items"][1]["status"], "stopped");

    // 3. kill -9 the server: the instance keeps running, the restarted
    // server re-adopts it (same instance, no duplicate) and keeps serving.
    let live_id = instance_ids(&server, "?app=hello").remove(0);
    server.restart();
    assert_eq!(body(&server), "hello v2\n");
    let after = instances(&server, "?app=hello");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["id"], live_id.as_str());
    assert_eq!(after[0]["state"], "healthy");
    assert_eq!(server.runc_containers(), vec![live_id.clone()]);

    // 4. Deleting the app stops everything and leaks nothing.
    server.cli_ok(&["apps", "delete", "hello"]);
    assert!(server.runc_containers().is_empty());
    let ids = [id, live_id];
    assert!(leftover_ips(&ids).is_empty(), "{:?}", leftover_ips(&ids));
    assert!(leftover_netns(&ids).is_empty());
    assert!(
        mounts_under(&server.data_dir).is_empty(),
        "{:?}",
        mounts_under(&server.data_dir)
    );
    let (status, msg) = server.get(HOST, "/").unwrap();
    assert_eq!(status, 404, "{msg}");
}

#[test]
fn broken_deployments_fail_with_the_reason_and_the_previous_one_keeps_serving() {
    require_root();
    let registry = Registry::start();
    let v1 = registry.push_hello("hello", "1", "still v1\n");
    let server = Server::start();
    deploy_ok(&server, "v1.yaml", &manifest(&v1, ""));
    assert_eq!(body(&server), "still v1\n");

    // A command that exits at once.
    let exits = "    command: [\"sh\", \"-c\", \"echo boom >&2; exit 3\"]\n";
    let all = deploy_fails(&server, "exits.yaml", &manifest(&v1, exits));
    assert!(all.contains("exited with code 3"), "{all}");
    assert!(
        all.contains("boom"),
        "the reason shows the last output: {all}"
    );
    assert_eq!(body(&server), "still v1\n");

    // A port nothing listens on.
    let wrong_port = "    command: [\"httpd\", \"-f\", \"-p\", \"8001\", \"-h\", \"/www\"]\n";
    let all = deploy_fails(&server, "noport.yaml", &manifest(&v1, wrong_port));
    assert!(all.contains("never became healthy"), "{all}");
    assert_eq!(body(&server), "still v1\n");

    // An image that does not exist.
    let missing = format!("{}/nope:1", registry.addr);
    let all = deploy_fails(&server, "missing.yaml", &manifest(&missing, ""));
    assert!(all.contains("not found"), "{all}");

    // A registry that is down.
    let all = deploy_fails(&server, "down.yaml", &manifest("127.0.0.1:1/hello:1", ""));
    assert!(
        all.contains("127.0.0.1:1"),
        "the error names the registry: {all}"
    );

    // Through all of it, v1 served, and only its instance runs.
    assert_eq!(body(&server), "still v1\n");
    assert_eq!(server.runc_containers().len(), 1);
    let svc = server.api_get("/v1/apps/hello/services/web");
    let active = svc["active_deployment"].as_str().unwrap();
    let d = server.api_get(&format!("/v1/deployments/{active}"));
    assert_eq!(d["version"], 1);
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    require_root();
    let registry = Registry::start();
    let v1 = registry.push_hello("hello", "1", "v1\n");
    let server = Server::start();
    let client = http_client();

    // No token, a wrong token: 401 with the API's error shape.
    let r = client
        .get(format!("http://{}/v1/apps", server.api))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: serde_json::Value = r.json().unwrap();
    assert_eq!(e["error"]["code"], "unauthenticated");
    let r = client
        .get(format!("http://{}/v1/apps", server.api))
        .bearer_auth("bora_wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The OpenAPI document is served (authenticated) and lists the API.
    let doc = server.api_get("/v1/openapi.json");
    assert!(
        doc["paths"]["/v1/apps/{app}/deployments"]["post"].is_object(),
        "{doc}"
    );

    // A secret that does not exist: refused before anything is recorded.
    let yaml = manifest(&v1, "    env:\n      DB: { secret: nope }\n");
    let path = server.write_manifest("nosecret.yaml", &yaml);
    let out = server.cli(&["deploy", "-f", path.to_str().unwrap(), "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bora secrets create nope"),
        "{}",
        stderr(&out)
    );
    assert!(
        server.api_get("/v1/apps")["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Unknown field in bora.yaml: file:line:column, nothing sent.
    let path = server.write_manifest(
        "typo.yaml",
        "app: hello\nservices:\n  - name: web\n    imagee: x\n",
    );
    let out = server.cli(&["deploy", "-f", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("typo.yaml:4:5"), "{err}");
    assert!(err.contains("image"), "suggests the right field: {err}");

    // Duplicate secret: 409, the first value kept.
    server.cli_ok(&["secrets", "create", "k", "--value", "one"]);
    let out = server.cli(&["secrets", "create", "k", "--value", "two"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    // A malformed API body names the problem.
    let r = client
        .post(format!("http://{}/v1/apps/hello/deployments", server.api))
        .bearer_auth(server.token())
        .body(r#"{"name":"web","image":"x","replicas":3}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("replicas"),
        "{e}"
    );
    assert!(
        server.api_get("/v1/apps")["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_deployment_interrupted_by_kill_9_completes_after_restart_and_nothing_leaks() {
    require_root();
    let registry = Registry::start();
    let v1 = registry.push_hello("hello", "1", "v1\n");
    let v2 = registry.push_hello("hello", "2", "v2\n");
    let mut server = Server::start();
    deploy_ok(&server, "v1.yaml", &manifest(&v1, ""));

    // Start v2 without waiting, and kill the server as soon as v2 has an
    // instance on its way.
    let path = server.write_manifest("v2.yaml", &manifest(&v2, ""));
    server.cli_ok(&["deploy", "-f", path.to_str().unwrap()]);
    server.wait_until("a v2 instance", Duration::from_secs(60), || {
        (instances(&server, "?app=hello&all=true").len() >= 2).then_some(())
    });
    server.kill9();
    server.restart();

    // v2 completes (or fails with a reason); either way the service serves.
    let status = server.wait_until(
        "the v2 deployment to finish",
        Duration::from_secs(90),
        || {
            let d = server.api_get("/v1/deployments?app=hello&service=web");
            let s = d["items"][0]["status"].as_str().unwrap().to_string();
            matches!(s.as_str(), "healthy" | "failed").then_some(s)
        },
    );
    let b = body(&server);
    if status == "healthy" {
        server.wait_until("v2 to serve alone", Duration::from_secs(60), || {
            (instances(&server, "?app=hello").len() == 1).then_some(())
        });
        assert_eq!(body(&server), "v2\n");
    } else {
        assert_eq!(b, "v1\n");
    }
    // No duplicates: exactly the live instances run.
    let mut running = server.runc_containers();
    running.sort();
    let mut live = instance_ids(&server, "?app=hello");
    live.sort();
    assert_eq!(running, live);

    let all = instance_ids(&server, "?all=true");
    server.cli_ok(&["apps", "delete", "hello"]);
    assert!(server.runc_containers().is_empty());
    assert!(
        leftover_netns(&all).is_empty(),
        "{:?}",
        leftover_netns(&all)
    );
    assert!(leftover_ips(&all).is_empty(), "{:?}", leftover_ips(&all));
    assert!(mounts_under(&server.data_dir).is_empty());
}

#[test]
fn gvisor_isolation_serves_too() {
    require_root();
    let registry = Registry::start();
    let v1 = registry.push_hello("hello", "1", "from gvisor\n");
    let server = Server::start();
    deploy_ok(&server, "g.yaml", &manifest(&v1, "    isolation: gvisor\n"));
    assert_eq!(body(&server), "from gvisor\n");
    // The kernel the process sees is gVisor's, not the host's.
    server.cli_ok(&["apps", "delete", "hello"]);
}

#[test]
fn replicas_share_traffic_and_failing_instances_restart_in_place() {
    require_root();
    let registry = Registry::start();
    let v1 = registry.push_hello("hello", "1", "ok\n");
    let server = Server::start();
    let check = "    ports: [{ port: 8000 }]\n    health_check: { http: { path: /, port: 8000 }, grace_period: 1s, interval: 1s, restart_limit: 2 }\n    instance_type: nano\n";
    let yaml = format!(
        r#"app: hello
services:
  - name: web
    image: {v1}
    command: ["sh", "-c", "hostname > /www/host.txt && grep Seccomp: /proc/self/status > /www/seccomp.txt && exec httpd -f -p 8000 -h /www"]
    scaling: {{ min: 2, max: 2 }}
{check}  - name: crashy
    image: {v1}
    command: ["sh", "-c", "echo booted; httpd -p 8000 -h /www; sleep 8; echo crashing; exit 7"]
{check}  - name: sick
    image: {v1}
    command: ["sh", "-c", "httpd -p 8000 -h /www; sleep 8; rm /www/index.html; exec sleep 1000"]
{check}  - name: ticker
    type: worker
    image: {v1}
    command: ["sh", "-c", "while true; do echo tick; sleep 1; done"]
    instance_type: nano
"#
    );
    deploy_ok(&server, "many.yaml", &yaml);
    let follower = std::process::Command::new(BORA)
        .args(["logs", "hello/crashy", "--follow", "--tail", "0"])
        .env("BORA_DATA_DIR", &server.data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // A worker runs without a route or a URL.
    let ticker = server.api_get("/v1/apps/hello/services/ticker");
    assert!(ticker["url"].is_null(), "{ticker}");
    assert_eq!(
        instances(&server, "?app=hello&service=ticker")[0]["state"],
        "healthy"
    );
    let (status, _) = server.get("ticker.hello.localhost", "/").unwrap();
    assert_eq!(status, 404);

    // Two replicas, both reached through the router.
    let web = instances(&server, "?app=hello&service=web");
    assert_eq!(web.len(), 2);
    let mut hosts = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, host) = server.get(HOST, "/host.txt").unwrap();
        assert_eq!(status, 200);
        hosts.insert(host);
    }
    assert_eq!(hosts.len(), 2, "both replicas answered: {hosts:?}");

    // Processes run under Bora's seccomp filter (mode 2: filtering).
    let (_, seccomp) = server.get(HOST, "/seccomp.txt").unwrap();
    assert_eq!(
        seccomp.split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"],
        "{seccomp}"
    );

    // Each runs under its instance type's cgroup limits (nano).
    for i in &web {
        let id = i["id"].as_str().unwrap();
        let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).unwrap();
        assert_eq!(
            read(&format!("memory/bora/{id}/memory.limit_in_bytes")).trim(),
            "268435456"
        );
        assert_eq!(read(&format!("pids/bora/{id}/pids.max")).trim(), "128");
        assert_eq!(
            read(&format!("cpu/bora/{id}/cpu.cfs_quota_us")).trim(),
            "10000"
        );
    }

    // A healthy instance whose process exits is restarted in place, and one
    // that keeps failing its checks too; both come back healthy.
    for (service, why) in [
        ("crashy", "exited with code 7"),
        ("sick", "health checks failed in a row"),
    ] {
        let id = instances(&server, &format!("?app=hello&service={service}"))[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let instance = server.wait_until(
            &format!("{service} to restart and recover"),
            Duration::from_secs(90),
            || {
                let i = server.api_get(&format!("/v1/instances/{id}"));
                (i["restarts"].as_u64().unwrap() >= 1 && i["state"] == "healthy").then_some(i)
            },
        );
        let reasons: Vec<&str> = instance["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["reason"].as_str().unwrap())
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("restarting") && r.contains(why)),
            "{reasons:?}"
        );
    }

    // `bora logs --follow` showed the crashy instance's lines as they came.
    let _ = std::process::Command::new("kill")
        .arg(follower.id().to_string())
        .status();
    let out = follower.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&out.stdout);
    assert!(followed.contains("crashing"), "{followed}");
    assert!(followed.matches("booted").count() >= 1, "{followed}");

    // Deleting an instance drains it; the controller starts a replacement.
    let gone = web[0]["id"].as_str().unwrap().to_string();
    server.cli_ok(&["instances", "delete", &gone]);
    server.wait_until("a replacement instance", Duration::from_secs(90), || {
        let now = instances(&server, "?app=hello&service=web");
        let healthy = now.iter().filter(|i| i["state"] == "healthy").count();
        (healthy == 2 && now.iter().all(|i| i["id"] != gone.as_str())).then_some(())
    });
    assert_eq!(
        server.api_get(&format!("/v1/instances/{gone}"))["state"],
        "stopped"
    );

    // The deployment that serves cannot be deleted; the service can.
    let active = server.api_get("/v1/apps/hello/services/sick")["active_deployment"]
        .as_str()
        .unwrap()
        .to_string();
    let out = server.cli(&["deployments", "delete", &active]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bora services delete hello/sick"),
        "{}",
        stderr(&out)
    );
    server.cli_ok(&["services", "delete", "hello/sick"]);
    let out = server.cli(&["services", "get", "hello/sick"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    server.cli_ok(&["apps", "delete", "hello"]);
}

/// A network namespace standing for "another machine": linked to the host
/// by a veth pair, with a route to the instance network through the host.
struct OutsideHost {
    netns: String,
    veth: String,
}

impl OutsideHost {
    fn create() -> OutsideHost {
        let n = std::process::id() % 100_000;
        let o = OutsideHost {
            netns: format!("bora-test-outside-{n}"),
            veth: format!("vbo{n}"),
        };
        let peer = format!("vbp{n}");
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &o.netns]);
        ip(&[
            "link", "add", &o.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &o.netns]);
        ip(&["addr", "add", "192.168.250.1/30", "dev", &o.veth]);
        ip(&["link", "set", &o.veth, "up"]);
        ip(&[
            "-n",
            &o.netns,
            "addr",
            "add",
            "192.168.250.2/30",
            "dev",
            &peer,
        ]);
        ip(&["-n", &o.netns, "link", "set", &peer, "up"]);
        ip(&["-n", &o.netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &o.netns,
            "route",
            "add",
            "10.88.0.0/16",
            "via",
            "192.168.250.1",
        ]);
        o
    }

    /// Tries an HTTP GET from the outside host; true when it got an answer.
    fn can_reach(&self, url: &str) -> bool {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "3",
                url,
            ])
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
fn instances_are_reachable_through_the_router_but_not_from_outside_the_host() {
    require_root();
    let registry = Registry::start();
    let v1 = registry.push_hello("hello", "1", "inside\n");
    let server = Server::start();
    deploy_ok(&server, "v1.yaml", &manifest(&v1, ""));
    let ip = instances(&server, "?app=hello")[0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{ip}:8000/");
    // The host (where the router runs) reaches the instance directly...
    assert_eq!(
        http_client().get(&url).send().unwrap().text().unwrap(),
        "inside\n"
    );
    // ...another machine routing through this host does not, even with IP
    // forwarding on.
    let outside = OutsideHost::create();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    assert!(
        !outside.can_reach(&url),
        "an outside host reached the instance at {url}"
    );
    // Control: with an exception for this one outside address put in front
    // of Bora's rule, the same request gets through, so it is that rule (not
    // a broken test network) that keeps outsiders out.
    let exception = [
        "FORWARD",
        "-s",
        "192.168.250.2",
        "-d",
        ip.as_str(),
        "-j",
        "ACCEPT",
    ];
    let iptables = |op: &str| {
        std::process::Command::new("iptables")
            .args(["-w", op])
            .args(exception)
            .status()
            .unwrap()
            .success()
    };
    assert!(iptables("-I"));
    let reached = outside.can_reach(&url);
    assert!(iptables("-D"));
    assert!(
        reached,
        "the test network is broken: the outside host cannot reach {url} even when allowed"
    );
    server.cli_ok(&["apps", "delete", "hello"]);
}

#[test]
fn instances_are_stopped_with_the_images_stop_signal() {
    require_root();
    let registry = Registry::start();
    let quits = registry.push_hello_with("hello", "1", "ok\n", &["--config.stopsignal=SIGQUIT"]);
    let server = Server::start();
    // PID 1 ignores SIGTERM (as shells and many servers do) but exits
    // cleanly on SIGQUIT, the image's stop signal.
    let cmd = "    command: [\"sh\", \"-c\", \"trap 'exit 0' QUIT; httpd -p 8000 -h /www; while true; do sleep 1; done\"]\n";
    deploy_ok(&server, "q.yaml", &manifest(&quits, cmd));
    let id = instances(&server, "?app=hello")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.cli_ok(&["instances", "delete", &id]);
    server.wait_until("the instance to stop", Duration::from_secs(60), || {
        (server.api_get(&format!("/v1/instances/{id}"))["state"] == "stopped").then_some(())
    });
    // Stopped by its stop signal (exit 0), not killed after the grace period.
    let exit: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            server
                .data_dir
                .join("instances")
                .join(&id)
                .join("exit.json"),
        )
        .unwrap_or_default(),
    )
    .unwrap_or(serde_json::Value::Null);
    assert_eq!(exit["code"], 0, "exit record: {exit}");
    server.cli_ok(&["apps", "delete", "hello"]);
}
