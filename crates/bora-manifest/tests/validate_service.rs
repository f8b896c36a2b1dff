//! `validate_service` and `normalize_service`, as the REST API uses them on
//! JSON bodies.

use bora_api::{
    Duration, EnvValue, HealthCheckSpec, HttpCheck, PortSpec, Protocol, RouteSpec, ServiceSpec,
    ServiceType, TcpCheck,
};
use bora_manifest::{Violation, normalize_service, validate_service};

/// A valid web service on port 8000.
fn web() -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": "web",
        "image": "busybox",
        "ports": [{ "port": 8000 }],
    }))
    .expect("valid JSON body")
}

fn paths(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.path.as_str()).collect()
}

fn port(port: u16) -> PortSpec {
    PortSpec {
        port,
        protocol: Protocol::Http,
    }
}

fn route(path: &str, port: u16) -> RouteSpec {
    RouteSpec {
        path: path.into(),
        port,
    }
}

fn http_check(port: u16) -> HealthCheckSpec {
    serde_json::from_value(serde_json::json!({ "http": { "port": port } })).expect("valid check")
}

#[test]
fn a_valid_service_has_no_violations() {
    assert_eq!(validate_service(&web()), vec![]);
}

#[test]
fn names_and_image() {
    let mut spec = web();
    spec.name = "Web".into();
    spec.image = String::new();
    let violations = validate_service(&spec);
    assert_eq!(paths(&violations), ["name", "image"]);
    assert_eq!(
        violations[0].message,
        "service name `Web` is not allowed; use lower-case letters, digits and '-', starting with a letter and not ending with '-', e.g. `web`"
    );
    assert_eq!(
        violations[0].to_string(),
        format!("name: {}", violations[0].message)
    );
}

#[test]
fn command_and_args() {
    let mut spec = web();
    spec.command = Some(vec![]);
    spec.args = Some(vec![String::new()]);
    assert_eq!(paths(&validate_service(&spec)), ["command", "args[0]"]);
    spec.command = Some(vec![String::new(), "x".into()]);
    spec.args = Some(vec!["-v".into(), String::new()]);
    assert_eq!(paths(&validate_service(&spec)), ["command[0]"]);
}

#[test]
fn env_names_and_secret_refs() {
    let mut spec = web();
    spec.env
        .insert("GOOD_1".into(), EnvValue::Plain("x".into()));
    spec.env
        .insert("bad-name".into(), EnvValue::Plain("x".into()));
    spec.env.insert("A.B".into(), EnvValue::Plain("x".into()));
    spec.env.insert(
        "TOKEN".into(),
        EnvValue::Secret {
            secret: "no spaces please".into(),
        },
    );
    assert_eq!(
        paths(&validate_service(&spec)),
        [r#"env["A.B"]"#, "env.TOKEN.secret", "env.bad-name"]
    );
}

#[test]
fn registry_secret_is_a_secret_name() {
    let mut spec = web();
    spec.registry_secret = Some("registry-login".into());
    assert_eq!(validate_service(&spec), vec![]);
    spec.registry_secret = Some("registry login".into());
    assert_eq!(paths(&validate_service(&spec)), ["registry_secret"]);
}

#[test]
fn ports_are_nonzero_and_unique() {
    let mut spec = web();
    spec.ports = vec![port(8000), port(0), port(8000)];
    assert_eq!(
        paths(&validate_service(&spec)),
        ["ports[1].port", "ports[2].port"]
    );
}

#[test]
fn web_services_need_a_port() {
    let mut spec = web();
    spec.ports.clear();
    let violations = validate_service(&spec);
    assert_eq!(paths(&violations), ["ports"]);
    assert!(
        violations[0].message.contains("ports: [{ port: 8000 }]"),
        "{}",
        violations[0]
    );
    spec.kind = ServiceType::Worker;
    assert_eq!(validate_service(&spec), vec![]);
}

#[test]
fn routes() {
    let mut spec = web();
    spec.routes = vec![
        route("/", 8000),
        route("api", 8000),
        route("/", 8000),
        route("/x", 9000),
    ];
    assert_eq!(
        paths(&validate_service(&spec)),
        ["routes[1].path", "routes[2].path", "routes[3].port"]
    );
    spec.kind = ServiceType::Worker;
    assert_eq!(paths(&validate_service(&spec)), ["routes"]);
}

#[test]
fn health_checks() {
    let mut spec = web();
    spec.health_check = Some(http_check(8000));
    assert_eq!(validate_service(&spec), vec![]);

    let mut check = http_check(9000);
    check.tcp = Some(TcpCheck { port: 8000 });
    spec.health_check = Some(check);
    assert_eq!(paths(&validate_service(&spec)), ["health_check.tcp"]);

    let mut check = http_check(9000);
    check.http = Some(HttpCheck {
        path: "healthz".into(),
        port: 9000,
    });
    check.interval = Duration::from_secs(0);
    check.timeout = Duration::from_millis(0);
    check.restart_limit = 0;
    spec.health_check = Some(check.clone());
    assert_eq!(
        paths(&validate_service(&spec)),
        [
            "health_check.http.path",
            "health_check.http.port",
            "health_check.interval",
            "health_check.timeout",
            "health_check.restart_limit"
        ]
    );

    check.http = None;
    spec.health_check = Some(check);
    assert_eq!(paths(&validate_service(&spec))[0], "health_check");
}

#[test]
fn scaling() {
    let cases: [(u32, u32, &[&str]); 6] = [
        (1, 1, &[]),
        (1, 100, &[]),
        (0, 3, &[]),
        (3, 2, &["scaling.min"]),
        (1, 0, &["scaling.max"]),
        (1, 101, &["scaling.max"]),
    ];
    for (min, max, expected) in cases {
        let mut spec = web();
        spec.scaling.min = min;
        spec.scaling.max = max;
        assert_eq!(
            paths(&validate_service(&spec)),
            expected,
            "min {min}, max {max}"
        );
    }

    // Only web services wake on requests.
    let mut worker = web();
    worker.kind = bora_api::ServiceType::Worker;
    worker.ports.clear();
    worker.routes.clear();
    worker.scaling.min = 0;
    let violations = validate_service(&worker);
    assert_eq!(paths(&violations), ["scaling.min"]);
    assert!(violations[0].message.contains("cannot scale to zero"));
}

#[test]
fn scaling_targets_and_durations() {
    use bora_api::{Duration, SleepMode};
    let mut spec = web();
    spec.scaling.min = 0;
    spec.scaling.max = 5;
    spec.scaling.targets.concurrency = Some(0);
    spec.scaling.targets.requests_per_second = Some(0);
    spec.scaling.targets.cpu = Some(0);
    spec.scaling.targets.memory = Some(101);
    spec.scaling.targets.p95_latency = Some(Duration::from_millis(0));
    spec.scaling.scale_to_zero_after = Duration::from_millis(500);
    spec.scaling.stable_window = Duration::from_secs(7200);
    spec.scaling.sleep = SleepMode::Deep;
    spec.scaling.deep_sleep_after = Some(Duration::from_secs(60));
    assert_eq!(
        paths(&validate_service(&spec)),
        [
            "scaling.targets.concurrency",
            "scaling.targets.requests_per_second",
            "scaling.targets.cpu",
            "scaling.targets.memory",
            "scaling.targets.p95_latency",
            "scaling.scale_to_zero_after",
            "scaling.stable_window",
            "scaling.deep_sleep_after",
        ]
    );

    spec.scaling.targets.concurrency = Some(20);
    spec.scaling.targets.requests_per_second = Some(100);
    spec.scaling.targets.cpu = Some(70);
    spec.scaling.targets.memory = Some(100);
    spec.scaling.targets.p95_latency = Some(Duration::from_millis(250));
    spec.scaling.scale_to_zero_after = Duration::from_secs(1);
    spec.scaling.stable_window = Duration::from_secs(6);
    spec.scaling.sleep = SleepMode::Light;
    spec.scaling.deep_sleep_after = Some(Duration::from_secs(1));
    assert_eq!(paths(&validate_service(&spec)), Vec::<String>::new());
}

#[test]
fn normalize_adds_a_route_to_the_first_http_port() {
    let mut spec = web();
    spec.ports = vec![
        PortSpec {
            port: 5432,
            protocol: Protocol::Tcp,
        },
        port(8080),
        port(8000),
    ];
    normalize_service(&mut spec);
    assert_eq!(spec.routes, vec![route("/", 8080)]);
    let once = spec.clone();
    normalize_service(&mut spec);
    assert_eq!(spec, once, "idempotent");
    assert_eq!(validate_service(&spec), vec![]);
}

#[test]
fn normalize_leaves_explicit_routes_workers_and_tcp_only_services() {
    let mut spec = web();
    spec.routes = vec![route("/api", 8000)];
    normalize_service(&mut spec);
    assert_eq!(spec.routes, vec![route("/api", 8000)]);

    let mut worker = web();
    worker.kind = ServiceType::Worker;
    normalize_service(&mut worker);
    assert!(worker.routes.is_empty());

    let mut tcp_only = web();
    tcp_only.ports = vec![PortSpec {
        port: 5432,
        protocol: Protocol::Tcp,
    }];
    normalize_service(&mut tcp_only);
    assert!(tcp_only.routes.is_empty());
}
