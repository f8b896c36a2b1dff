//! End to end: a warm sandbox pool on a real `bora server --sandbox-pool
//! base=2`.
//!
//! One test, so the base template is imported once: the pool fills; a
//! create that fits it is a claim of a warm sandbox (already on the node)
//! with the request's env vars and default user, and the pool refills;
//! creates that do not fit (more memory, an outbound allow-list) start
//! cold; after `kill -9` and a restart the last run's warm sandboxes are
//! stopped, the recorded one is re-adopted and the pool fills anew; after
//! SIGTERM no warm sandbox is left — not even one the filler was starting —
//! while recorded sandboxes keep running.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, http_client, run_in_sandbox, sandbox_server, tail};
use reqwest::Method;
use serde_json::{Value, json};

const POOL_READY: &str = "bora_sandbox_pool_ready{template=\"base\",isolation=\"gvisor\"}";
const FROM_POOL: &str = "bora_sandboxes_created_total{source=\"pool\"}";
const COLD: &str = "bora_sandboxes_created_total{source=\"cold\"}";
const POOL_SIZE: f64 = 2.0;
/// How long the pool may take to fill (two gVisor starts, one at a time).
const FILL_TIMEOUT: Duration = Duration::from_secs(60);

fn wait_pool_full(server: &Server) {
    server.wait_until("the pool to hold 2 warm sandboxes", FILL_TIMEOUT, || {
        (server.metric(POOL_READY) == POOL_SIZE).then_some(())
    });
}

/// The sandboxes the node has set up, as found in `<data_dir>/sandboxes`.
fn node_sandboxes(server: &Server) -> BTreeSet<String> {
    std::fs::read_dir(server.data_dir.join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.path().join("destroyed").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The live sandboxes the API knows.
fn recorded(server: &Server) -> BTreeSet<String> {
    let listed = server.api_get("/v1/sandboxes");
    listed["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The sandboxes on the node that no record owns: the pool's.
fn warm(server: &Server) -> BTreeSet<String> {
    &node_sandboxes(server) - &recorded(server)
}

fn create(server: &Server, body: Value) -> Value {
    let (status, sandbox) = server.api_request(Method::POST, "/v1/sandboxes", Some(body.clone()));
    assert_eq!(
        status,
        201,
        "POST /v1/sandboxes {body}: {sandbox}\n{}",
        tail(&server.log(), 40)
    );
    assert_eq!(sandbox["state"], "running", "{sandbox}");
    sandbox
}

fn kill(server: &Server, id: &str) {
    let (status, body) = server.api_request(Method::DELETE, &format!("/v1/sandboxes/{id}"), None);
    assert_eq!(status, 204, "DELETE /v1/sandboxes/{id}: {body}");
}

/// Runs `command` in the sandbox through the router; its stdout and exit
/// code.
fn run(server: &Server, id: &str, token: &str, command: &str) -> (String, i64) {
    run_in_sandbox(&http_client(), server.http, id, token, command)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The access token a sandbox's envd was started with, from its bundle.
fn started_token(server: &Server, id: &str) -> String {
    let path = server
        .data_dir
        .join("sandboxes")
        .join(id)
        .join("bundle/config.json");
    let config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let prefix = format!("{}=", bora_node::sandbox::ENVD_TOKEN_ENV);
    config["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.as_str()?.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("no access token in {}", path.display()))
}

/// Every sandbox the server's log names (`sandbox=<id>`): with the debug
/// log the tests run with, every warm sandbox started or stopped.
fn logged_sandboxes(server: &Server) -> BTreeSet<String> {
    // Without its colours (`\x1b[...m`) the log may have.
    let mut log = String::new();
    let raw = server.log();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            log.push(c);
        }
    }
    log.split("sandbox=")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect::<String>()
        })
        .filter(|id| !id.is_empty())
        .collect()
}

/// The runtime's status of gVisor sandbox `id` (`running`, …), if it has it.
fn runsc_status(server: &Server, id: &str) -> Option<String> {
    let out = Command::new("runsc")
        .arg("--root")
        .arg(server.data_dir.join("runtime/sandboxes/gvisor"))
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.as_array()?
        .iter()
        .find(|c| c["id"] == id)
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
}

/// Waits (briefly: the kernel lets go of mounts and devices a moment
/// later) until nothing of `ids` is left on the node.
fn assert_gone(server: &Server, ids: &BTreeSet<String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<_> = ids
            .iter()
            .flat_map(|id| server.sandbox_leftovers(id))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left of {what}: {left:?}\n{}",
            tail(&server.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_warm_pool_serves_fitting_creates_and_leaves_nothing_behind() {
    let Some(mut server) = sandbox_server(&["--sandbox-pool", "base=2"]) else {
        return;
    };

    // 1. The pool fills once the template is there.
    wait_pool_full(&server);
    let warm_before = warm(&server);
    assert_eq!(warm_before.len(), 2, "{warm_before:?}");
    assert!(recorded(&server).is_empty());

    // 2. A create that fits is a claim: one of the warm sandboxes, with the
    // request's env vars and default user.
    let (pooled, cold) = (server.metric(FROM_POOL), server.metric(COLD));
    let claimed = create(
        &server,
        json!({"env": {"FOO": "bar"}, "metadata": {"k": "v"}}),
    );
    let id = claimed["id"].as_str().unwrap().to_string();
    let token = claimed["envd_access_token"].as_str().unwrap().to_string();
    assert_eq!(server.metric(FROM_POOL), pooled + 1.0);
    assert_eq!(server.metric(COLD), cold);
    assert!(
        warm_before.contains(&id),
        "{id} is not one of the warm sandboxes {warm_before:?}"
    );
    assert_eq!(claimed["metadata"]["k"], "v", "{claimed}");
    assert_eq!(run(&server, &id, &token, "echo $FOO"), ("bar\n".into(), 0));
    assert_eq!(run(&server, &id, &token, "id -un"), ("user\n".into(), 0));
    let (status, envs) = server.envd_request(&claimed, Method::GET, "/envs", None);
    assert_eq!(status, 200, "{envs}");
    assert!(envs.contains(r#""FOO":"bar""#), "{envs}");
    // Another warm sandbox's token does not open the claimed one.
    let other = warm_before.iter().find(|w| **w != id).unwrap();
    let other_token = started_token(&server, other);
    assert_ne!(other_token, token);
    let wrong = json!({"id": id, "envd_access_token": other_token});
    let (status, body) = server.envd_request(&wrong, Method::GET, "/envs", None);
    assert_eq!(status, 401, "{body}");

    // 3. The pool refills.
    wait_pool_full(&server);

    // 4. Creates the pool cannot serve start cold, and work.
    for body in [
        json!({"resources": {"memory_mib": 256}}),
        json!({"allow_out": ["10.0.0.1"]}),
    ] {
        let (pooled, cold) = (server.metric(FROM_POOL), server.metric(COLD));
        let warm_now = warm(&server);
        let sandbox = create(&server, body.clone());
        let cold_id = sandbox["id"].as_str().unwrap();
        assert_eq!(server.metric(COLD), cold + 1.0, "{body}");
        assert_eq!(server.metric(FROM_POOL), pooled, "{body}");
        assert!(!warm_now.contains(cold_id), "{body}: {cold_id} was warm");
        let cold_token = sandbox["envd_access_token"].as_str().unwrap();
        assert_eq!(
            run(&server, cold_id, cold_token, "echo cold"),
            ("cold\n".into(), 0)
        );
        kill(&server, cold_id);
        assert_gone(
            &server,
            &[cold_id.to_string()].into(),
            "a killed cold sandbox",
        );
    }
    assert_eq!(server.metric(POOL_READY), POOL_SIZE);

    // 5. A crash: the next start stops the warm sandboxes of the last run,
    // keeps the recorded one and fills the pool anew.
    let warm_old = warm(&server);
    assert_eq!(warm_old.len(), 2, "{warm_old:?}");
    server.kill9();
    server.restart();
    assert_gone(&server, &warm_old, "the crashed run's warm sandboxes");
    assert_eq!(run(&server, &id, &token, "echo $FOO"), ("bar\n".into(), 0));
    wait_pool_full(&server);
    let warm_new = warm(&server);
    assert_eq!(warm_new.len(), 2, "{warm_new:?}");
    assert!(warm_new.is_disjoint(&warm_old), "{warm_new:?} {warm_old:?}");
    assert_eq!(recorded(&server), [id.clone()].into());

    // 6. A graceful stop takes the warm sandboxes along, and leaves the
    // recorded one running.
    let status = server.terminate();
    assert!(status.success(), "bora server exited with {status}");
    assert_gone(&server, &warm_new, "the warm sandboxes after SIGTERM");
    assert_eq!(node_sandboxes(&server), [id.clone()].into());
    assert_eq!(runsc_status(&server, &id).as_deref(), Some("running"));
    server.restart();
    assert_eq!(run(&server, &id, &token, "id -un"), ("user\n".into(), 0));

    // SIGTERM while the filler is starting a warm sandbox (a claim makes
    // it start a replacement at once): that one is stopped too.
    kill(&server, &id);
    wait_pool_full(&server);
    let before = node_sandboxes(&server);
    let last = create(&server, json!({}));
    let status = server.terminate();
    assert!(status.success(), "bora server exited with {status}");
    let last_id = last["id"].as_str().unwrap().to_string();
    assert!(before.contains(&last_id), "{last}");
    let mut seen = &before | &node_sandboxes(&server);
    seen.insert(id.clone());
    assert_eq!(
        node_sandboxes(&server),
        [last_id.clone()].into(),
        "a warm sandbox outlived SIGTERM\n{}",
        tail(&server.log(), 40)
    );
    assert_gone(
        &server,
        &(&seen - &[last_id.clone()].into()),
        "the sandboxes after SIGTERM mid-fill",
    );

    // Clean up: kill the recorded sandbox, stop with a full pool, and
    // nothing is left.
    server.restart();
    assert_eq!(
        run(
            &server,
            &last_id,
            last["envd_access_token"].as_str().unwrap(),
            "id -un"
        ),
        ("user\n".into(), 0)
    );
    kill(&server, &last_id);
    wait_pool_full(&server);
    seen.extend(node_sandboxes(&server));
    let status = server.terminate();
    assert!(status.success(), "bora server exited with {status}");
    assert_eq!(node_sandboxes(&server), BTreeSet::new());
    let logged = logged_sandboxes(&server);
    assert!(logged.is_superset(&warm_before), "{logged:?}");
    seen.extend(logged);
    assert_gone(&server, &seen, "the sandboxes after the last SIGTERM");
}
