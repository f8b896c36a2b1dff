//! End to end: scale to zero, light and deep sleep, waking on a request,
//! and autoscaling under load — real registry, real `bora server`, real
//! runc, real HTTP through the router.

mod common;

use std::time::Duration;

use common::*;

fn manifest(app: &str, image: &str, scaling: &str) -> String {
    format!(
        r#"app: {app}
services:
  - name: web
    type: web
    image: {image}
    ports: [{{ port: 8000, protocol: http }}]
    health_check: {{ http: {{ path: /, port: 8000 }}, grace_period: 1s, interval: 1s, restart_limit: 2 }}
    instance_type: nano
    scaling: {scaling}
"#
    )
}

/// GET through the router; on a transport error, fails with the server log.
fn get(server: &Server, host: &str) -> (u16, String) {
    server
        .get(host, "/")
        .unwrap_or_else(|e| panic!("GET {host}: {e}\nserver log:\n{}", tail(&server.log(), 80)))
}

fn deploy(server: &Server, app: &str, yaml: &str) {
    let path = server.write_manifest(&format!("{app}.yaml"), yaml);
    server.cli_ok(&[
        "deploy",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout",
        "2m",
    ]);
}

/// The live instances of `app/web` as (id, state).
fn live(server: &Server, app: &str) -> Vec<(String, String)> {
    server.api_get(&format!("/v1/instances?app={app}&service=web"))["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until the service's one instance sleeps; returns its id.
fn wait_asleep_light(server: &Server, app: &str) -> String {
    server.wait_until(
        "the service to fall into light sleep",
        Duration::from_secs(60),
        || match live(server, app).as_slice() {
            [(id, state)] if state == "sleeping" => Some(id.clone()),
            _ => None,
        },
    )
}

/// Waits until the service is in deep sleep (one standby instance, nothing
/// else); returns the standby's id.
fn wait_deep_asleep(server: &Server, app: &str) -> String {
    server.wait_until("deep sleep", Duration::from_secs(60), || {
        match live(server, app).as_slice() {
            [(id, state)] if state == "standby" => Some(id.clone()),
            _ => None,
        }
    })
}

fn events(server: &Server, app: &str, kind: &str) -> Vec<String> {
    server.api_get(&format!("/v1/events?app={app}&service=web&limit=1000"))["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

fn runc_status(id: &str) -> String {
    // The runtime root is inside the server's data dir; ask the freezer.
    let state = std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/bora/{id}/freezer.state"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/bora/{id}/cgroup.freeze")))
        .unwrap_or_default();
    state.trim().to_string()
}

/// Waits until the instance's cgroup is frozen.
fn wait_frozen(server: &Server, id: &str) {
    server.wait_until(
        "the sleeping instance's cgroup to freeze",
        Duration::from_secs(10),
        || matches!(runc_status(id).as_str(), "FROZEN" | "1").then_some(()),
    );
}

fn metrics(server: &Server) -> String {
    http_client()
        .get(format!("http://{}/metrics", server.api))
        .bearer_auth(server.token())
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn a_min_zero_service_sleeps_and_wakes_on_the_next_request() {
    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("sleepy", "1", "hello from a sleeper");
    let mut server = Server::start();
    let host = "web.sleepy.localhost";
    deploy(
        &server,
        "sleepy",
        &manifest(
            "sleepy",
            &image,
            "{ min: 0, max: 1, scale_to_zero_after: 1s, sleep: light }",
        ),
    );
    assert_eq!(get(&server, host), (200, "hello from a sleeper".into()));

    // Idle for a second: frozen, out of the table, memory kept.
    // The instance is `sleeping` (out of the table) from the moment the
    // sleep begins; its requests drain and then the cgroup freezes.
    let id = wait_asleep_light(&server, "sleepy");
    wait_frozen(&server, &id);
    // `services get` shows it (updated at the autoscaler's next tick).
    let svc = server.wait_until(
        "the service status to say asleep",
        Duration::from_secs(10),
        || {
            let svc = server.api_get("/v1/apps/sleepy/services/web");
            (svc["scaling"]["sleeping"] == 1).then_some(svc)
        },
    );
    assert_eq!(svc["scaling"]["desired"], 0, "{svc}");
    assert_eq!(svc["scaling"]["current"], 0, "{svc}");
    let shown = server.cli_ok(&["services", "get", "sleepy/web"]);
    assert!(
        shown.contains("0 current, 0 desired, 1 sleeping"),
        "{shown}"
    );

    // The next request wakes the same instance and is answered.
    assert_eq!(get(&server, host), (200, "hello from a sleeper".into()));
    assert_eq!(
        live(&server, "sleepy"),
        vec![(id.clone(), "healthy".to_string())]
    );
    let woke = events(&server, "sleepy", "woke");
    assert_eq!(woke.len(), 1, "{woke:?}");
    assert!(woke[0].contains("light"), "{woke:?}");
    assert!(!events(&server, "sleepy", "slept").is_empty());

    // A flood at a sleeping service wakes it once, and every request is
    // answered.
    wait_asleep_light(&server, "sleepy");
    let answers: Vec<_> = (0..20)
        .map(|_| {
            let http = server.http;
            std::thread::spawn(move || {
                http_client()
                    .get(format!("http://{http}/"))
                    .header("host", "web.sleepy.localhost")
                    .send()
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for a in answers {
        assert_eq!(a.join().unwrap(), Ok(200));
    }
    assert_eq!(
        events(&server, "sleepy", "woke").len(),
        2,
        "one wake per sleep"
    );
    let text = metrics(&server);
    for name in [
        "bora_wakeups_total{",
        "bora_wakeup_duration_seconds_bucket{",
        "bora_router_requests_total{",
        "bora_router_requests_held{",
        "bora_service_instances{",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(text.contains(r#"kind="light""#), "{text}");

    // Killing the server while the service sleeps leaves it asleep, and
    // the restarted server wakes it.
    let id = wait_asleep_light(&server, "sleepy");
    wait_frozen(&server, &id);
    server.restart();
    assert_eq!(
        live(&server, "sleepy"),
        vec![(id.clone(), "sleeping".to_string())]
    );
    wait_frozen(&server, &id);
    assert_eq!(get(&server, host), (200, "hello from a sleeper".into()));
    assert_eq!(live(&server, "sleepy"), vec![(id, "healthy".to_string())]);
}

#[test]
fn deep_sleep_stops_the_instance_and_a_request_cold_starts_one() {
    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("deep", "1", "hello from the deep");
    let server = Server::start();
    let host = "web.deep.localhost";
    deploy(
        &server,
        "deep",
        &manifest(
            "deep",
            &image,
            "{ min: 0, max: 1, scale_to_zero_after: 1s, sleep: deep }",
        ),
    );
    let first = live(&server, "deep");
    assert_eq!(first.len(), 1);
    // Deep sleep stops the instance and keeps a standby: set up (rootfs,
    // network, a created container), none of the service's processes.
    let standby = wait_deep_asleep(&server, "deep");
    assert_ne!(standby, first[0].0);
    assert_eq!(
        server.runc_container_states(),
        vec![(standby.clone(), "created".to_string())],
        "deep sleep leaves only the standby's created container"
    );
    assert_eq!(get(&server, host), (200, "hello from the deep".into()));
    assert_eq!(
        server.runc_container_states(),
        vec![(standby.clone(), "running".to_string())]
    );
    assert_eq!(
        live(&server, "deep"),
        vec![(standby.clone(), "healthy".to_string())]
    );
    let history = server.cli_ok(&["instances", "get", &standby]);
    assert!(history.contains("standby → starting"), "{history}");
    let woke = events(&server, "deep", "woke");
    assert!(woke.iter().any(|m| m.contains("deep")), "{woke:?}");
}

#[test]
fn an_instance_that_dies_while_asleep_is_restarted_by_the_wake_and_a_broken_wake_errors() {
    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("fragile", "1", "still here");
    let server = Server::start();
    let host = "web.fragile.localhost";
    deploy(
        &server,
        "fragile",
        &manifest(
            "fragile",
            &image,
            "{ min: 0, max: 1, scale_to_zero_after: 1s, sleep: light }",
        ),
    );
    let id = wait_asleep_light(&server, "fragile");
    // SIGKILL the frozen process: it dies the moment it is thawed.
    let pids = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/bora/{id}/cgroup.procs"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/bora/{id}/cgroup.procs")))
        .unwrap();
    for pid in pids.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    // The wake finds it dead, the instance is restarted, and the held
    // request is answered by it.
    assert_eq!(get(&server, host), (200, "still here".into()));
    let instance = server.api_get(&format!("/v1/instances/{id}"));
    assert_eq!(instance["state"], "healthy", "{instance}");
    assert!(instance["restarts"].as_u64().unwrap() >= 1, "{instance}");

    // A service whose instances can no longer start: the wake gives up and
    // the held request gets the reason, not a hang.
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 25;
    let yaml = manifest("doomed", &image, "{ min: 0, max: 1, scale_to_zero_after: 1s, sleep: deep }")
        .replace(
            "    instance_type: nano\n",
            &format!(
                "    instance_type: nano\n    command: [sh, -c, 'test $(date +%s) -lt {deadline} || exit 3; exec httpd -f -p 8000 -h /www']\n"
            ),
        );
    deploy(&server, "doomed", &yaml);
    wait_deep_asleep(&server, "doomed");
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = get(&server, "web.doomed.localhost");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("exit") || body.contains("code 3"),
        "the reason is given: {body}"
    );
    assert!(!events(&server, "doomed", "wake_failed").is_empty());
}

/// A command that serves `/cgi-bin/slow`, which takes 300 ms: load that
/// keeps requests in flight.
const SLOW_CGI: &str = "    command: [sh, -c, 'mkdir -p /www/cgi-bin && printf \"#!/bin/sh\\nsleep 0.3\\necho Content-Type: text/plain\\necho\\necho slow\\n\" > /www/cgi-bin/slow && chmod +x /www/cgi-bin/slow && exec httpd -f -p 8000 -h /www']\n";

#[test]
fn load_scales_a_service_out_and_back_in_without_a_failed_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("busy", "1", "home");
    let server = Server::start();
    let yaml = manifest(
        "busy",
        &image,
        "{ min: 1, max: 3, targets: { concurrency: 1 }, stable_window: 6s }",
    )
    .replace(
        "    instance_type: nano\n",
        &format!("    instance_type: nano\n{SLOW_CGI}"),
    );
    deploy(&server, "busy", &yaml);
    let (status, body) = server.get("web.busy.localhost", "/cgi-bin/slow").unwrap();
    assert_eq!((status, body.trim()), (200, "slow"));

    // Four clients in a loop keep ~4 requests in flight: with a target of 1
    // per instance the service needs 4, capped at max 3.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = |stop: Arc<AtomicBool>| {
        let (http, ok, failed, failures) =
            (server.http, ok.clone(), failed.clone(), failures.clone());
        std::thread::spawn(move || {
            let c = http_client();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match c
                    .get(format!("http://{http}/cgi-bin/slow"))
                    .header("host", "web.busy.localhost")
                    .send()
                {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(format!("{other:?}"));
                    }
                }
            }
        })
    };
    let heavy: Vec<_> = (0..4).map(|_| client(stop.clone())).collect();
    let mut most = 0;
    server.wait_until(
        "3 healthy instances under load",
        Duration::from_secs(60),
        || {
            let healthy = live(&server, "busy")
                .iter()
                .filter(|(_, s)| s == "healthy")
                .count();
            most = most.max(live(&server, "busy").len());
            (healthy == 3).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    most = most.max(live(&server, "busy").len());
    assert!(most <= 3, "never more than max: saw {most}");

    // Load falls to one client: back to one instance, drained gracefully.
    stop.store(true, Ordering::Relaxed);
    for t in heavy {
        t.join().unwrap();
    }
    let light_stop = Arc::new(AtomicBool::new(false));
    let light = client(light_stop.clone());
    server.wait_until("scale-in to one instance", Duration::from_secs(90), || {
        (live(&server, "busy").len() == 1).then_some(())
    });
    light_stop.store(true, Ordering::Relaxed);
    light.join().unwrap();

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {:?}",
        failures.lock().unwrap()
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    let up = events(&server, "busy", "scaled_up");
    let down = events(&server, "busy", "scaled_down");
    assert!(up.iter().any(|m| m.contains("concurrency")), "{up:?}");
    assert!(!down.is_empty(), "{down:?}");
    let shown = server.cli_ok(&["events", "busy/web"]);
    assert!(
        shown.contains("scaled_up") && shown.contains("scaled_down"),
        "{shown}"
    );
    let svc = server.api_get("/v1/apps/busy/services/web");
    assert_eq!(svc["scaling"]["current"], 1, "{svc}");
}

#[test]
fn a_gvisor_service_sleeps_and_wakes_too() {
    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("gsleepy", "1", "hello from gvisor");
    let server = Server::start();
    let yaml = manifest(
        "gsleepy",
        &image,
        "{ min: 0, max: 1, scale_to_zero_after: 1s, sleep: light }",
    )
    .replace(
        "    instance_type: nano\n",
        "    instance_type: nano\n    isolation: gvisor\n",
    );
    deploy(&server, "gsleepy", &yaml);
    let id = wait_asleep_light(&server, "gsleepy");
    assert_eq!(
        get(&server, "web.gsleepy.localhost"),
        (200, "hello from gvisor".into())
    );
    assert_eq!(live(&server, "gsleepy"), vec![(id, "healthy".to_string())]);
    let woke = events(&server, "gsleepy", "woke");
    assert!(woke.iter().any(|m| m.contains("light")), "{woke:?}");
}

/// Serves `/cgi-bin/burn`, which spins the CPU for a while.
const BURN_CGI: &str = "    command: [sh, -c, 'mkdir -p /www/cgi-bin && printf \"#!/bin/sh\\\\ni=0\\\\nwhile [ \\\\$i -lt 2000 ]; do i=\\\\$((i+1)); done\\\\necho Content-Type: text/plain\\\\necho\\\\necho burnt\\\\n\" > /www/cgi-bin/burn && chmod +x /www/cgi-bin/burn && exec httpd -f -p 8000 -h /www']\n";

#[test]
fn cpu_load_measured_from_the_cgroup_scales_a_service_out() {
    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("hot", "1", "home");
    let server = Server::start();
    // Two clients spinning a 0.1-core nano instance keep it at its CPU
    // limit, twice the 50% target: it needs 2 instances.
    let yaml = manifest(
        "hot",
        &image,
        "{ min: 1, max: 2, targets: { cpu: 50 }, stable_window: 6s }",
    )
    .replace(
        "    instance_type: nano\n",
        &format!("    instance_type: nano\n{BURN_CGI}"),
    );
    deploy(&server, "hot", &yaml);
    let (status, body) = server.get("web.hot.localhost", "/cgi-bin/burn").unwrap();
    assert_eq!((status, body.trim()), (200, "burnt"));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (http, stop) = (server.http, stop.clone());
            std::thread::spawn(move || {
                let c = http_client();
                let deadline = std::time::Instant::now() + Duration::from_secs(90);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < deadline
                {
                    let _ = c
                        .get(format!("http://{http}/cgi-bin/burn"))
                        .header("host", "web.hot.localhost")
                        .send();
                }
            })
        })
        .collect();
    server.wait_until(
        "a second instance for the CPU load",
        Duration::from_secs(80),
        || {
            (live(&server, "hot")
                .iter()
                .filter(|(_, s)| s == "healthy")
                .count()
                == 2)
                .then_some(())
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let up = events(&server, "hot", "scaled_up");
    assert!(
        up.iter().any(|m| m.contains("cpu")),
        "decided on CPU: {up:?}"
    );
}

#[test]
fn light_sleep_turns_into_deep_sleep_after_a_second_idle_period() {
    require_root();
    let registry = Registry::start();
    let image = registry.push_hello("dozy", "1", "hello from a dozer");
    let server = Server::start();
    deploy(
        &server,
        "dozy",
        &manifest(
            "dozy",
            &image,
            "{ min: 0, max: 1, scale_to_zero_after: 1s, sleep: light, deep_sleep_after: 2s }",
        ),
    );
    let frozen = wait_asleep_light(&server, "dozy");
    // Two more idle seconds: the frozen instance is stopped, memory freed,
    // and a standby takes its place.
    let standby = wait_deep_asleep(&server, "dozy");
    assert_ne!(standby, frozen);
    let gone = server.api_get(&format!("/v1/instances/{frozen}"));
    assert_eq!(gone["state"], "stopped", "{gone}");
    assert!(
        gone["reason"]
            .as_str()
            .unwrap()
            .contains("deep_sleep_after"),
        "{gone}"
    );
    assert_eq!(
        get(&server, "web.dozy.localhost"),
        (200, "hello from a dozer".into())
    );
    assert_eq!(
        live(&server, "dozy"),
        vec![(standby, "healthy".to_string())]
    );
}
