//! The client's commands against a fake API server (see `fake/mod.rs`):
//! what they send, what they print, and how they exit.

mod fake;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bora_api::{InstanceState, LogStream};
use bora_cli::{Captured, CliError, ClientArgs, Terminal};
use clap::Parser;
use fake::{FakeApi, TOKEN, World, id, log};

/// What one `bora …` run left behind.
struct Run {
    result: Result<ExitCode, CliError>,
    out: Captured,
}

impl Run {
    fn stdout(&self) -> String {
        self.out.stdout()
    }
    fn stderr(&self) -> String {
        self.out.stderr()
    }
    /// The exit code the binary would use.
    fn code(&self) -> u8 {
        match &self.result {
            Ok(code) if *code == ExitCode::SUCCESS => 0,
            Ok(_) => 1,
            Err(e) => e.exit_code(),
        }
    }
    fn error(&self) -> String {
        match &self.result {
            Err(e) => e.to_string(),
            Ok(_) => panic!(
                "expected an error; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            ),
        }
    }
    #[track_caller]
    fn ok(&self) -> &Self {
        if let Err(e) = &self.result {
            panic!(
                "error: {e}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
        self
    }
}

/// Runs `bora ARGS` with `input` on stdin, bounded in time.
async fn bora_in(input: &str, args: &[&str]) -> Run {
    let cli = ClientArgs::try_parse_from(std::iter::once("bora").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("bad args {args:?}: {e}"));
    let (mut terminal, out) = Terminal::captured(input);
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        bora_cli::run_with(cli.global, cli.command, &mut terminal),
    )
    .await
    .expect("the command finished in time");
    Run { result, out }
}

/// Runs `bora --url <fake> --token <token> ARGS`.
async fn bora(api: &FakeApi, args: &[&str]) -> Run {
    let url = api.url();
    let mut all = vec!["--url", &url, "--token", TOKEN];
    all.extend_from_slice(args);
    bora_in("", &all).await
}

fn world_with_services() -> World {
    let mut w = World::default();
    w.add_service("hello", "web");
    w.add_service("hello", "worker");
    w.add_service("shop", "web");
    w
}

#[tokio::test]
async fn sends_the_token_and_prints_a_table() {
    let api = FakeApi::start(world_with_services()).await;
    let run = bora(&api, &["apps", "list"]).await;
    run.ok();
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, "/v1/apps");
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer test-token")
    );
    let out = run.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "ID", "AGE"]
    );
    assert!(lines[1].starts_with("hello  000003e9  "), "{lines:?}");
    assert!(lines[2].starts_with("shop   000003ec  "), "{lines:?}");
}

#[tokio::test]
async fn json_and_yaml_print_the_api_objects() {
    let api = FakeApi::start(world_with_services()).await;
    let run = bora(&api, &["services", "list", "--app", "hello", "-o", "json"]).await;
    run.ok();
    assert_eq!(api.request_lines(), ["GET /v1/services?app=hello"]);
    let value: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let names: Vec<&str> = value["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "worker"]);

    let run = bora(&api, &["-o", "yaml", "apps", "get", "shop"]).await;
    run.ok();
    assert!(run.stdout().contains("name: shop\n"), "{}", run.stdout());
}

#[tokio::test]
async fn error_bodies_are_shown_with_exit_code_1() {
    let api = FakeApi::start(World::default()).await;
    let run = bora(&api, &["apps", "get", "nope"]).await;
    assert_eq!(run.error(), "app \"nope\" not found");
    assert_eq!(run.code(), 1);
    assert_eq!(run.stdout(), "");
}

#[tokio::test]
async fn a_refused_token_says_so_and_what_to_do() {
    let api = FakeApi::start(World::default()).await;
    let url = api.url();
    let run = bora_in("", &["--url", &url, "--token", "wrong", "apps", "list"]).await;
    let err = run.error();
    assert!(
        err.contains("refused the token from BORA_TOKEN (or --token): invalid or missing token; check BORA_TOKEN"),
        "{err}"
    );
    assert_eq!(
        api.requests()[0].authorization.as_deref(),
        Some("Bearer wrong")
    );
}

#[tokio::test]
async fn discovery_uses_the_data_dir() {
    let api = FakeApi::start(world_with_services()).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();

    let run = bora_in("", &["--data-dir", data_dir, "apps", "list"]).await;
    assert_eq!(
        run.error(),
        format!(
            "no Bora server found: {data_dir}/api.addr does not exist; start one with `bora server`, or set BORA_URL and BORA_TOKEN"
        )
    );

    std::fs::write(dir.path().join("api.addr"), format!("{}\n", api.addr)).unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let run = bora_in("", &["--data-dir", data_dir, "apps", "list"]).await;
    run.ok();
    assert!(run.stdout().contains("hello"));
    assert_eq!(
        api.requests()[0].authorization.as_deref(),
        Some("Bearer test-token")
    );

    // A stale token file: the error names it.
    std::fs::write(dir.path().join("admin.token"), "old\n").unwrap();
    let run = bora_in("", &["--data-dir", data_dir, "apps", "list"]).await;
    let err = run.error();
    assert!(
        err.contains(&format!("refused the token from {data_dir}/admin.token")),
        "{err}"
    );
}

#[tokio::test]
async fn a_stale_addr_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.path().join("api.addr"), format!("127.0.0.1:{port}")).unwrap();
    std::fs::write(dir.path().join("admin.token"), "t").unwrap();
    let run = bora_in(
        "",
        &["--data-dir", dir.path().to_str().unwrap(), "apps", "list"],
    )
    .await;
    let err = run.error();
    assert!(
        err.starts_with(&format!(
            "cannot reach the Bora server at http://127.0.0.1:{port}/ (from {}/api.addr): ",
            dir.path().display()
        )),
        "{err}"
    );
    assert!(err.contains("is `bora server` running?"), "{err}");
}

#[tokio::test]
async fn bare_service_names_resolve_or_list_the_candidates() {
    let api = FakeApi::start(world_with_services()).await;
    let run = bora(&api, &["services", "get", "worker"]).await;
    run.ok();
    assert!(run.stdout().starts_with("Service:"), "{}", run.stdout());
    assert!(run.stdout().contains("hello/worker"), "{}", run.stdout());
    assert_eq!(
        api.request_lines(),
        ["GET /v1/services", "GET /v1/apps/hello/services/worker"]
    );

    let run = bora(&api, &["services", "delete", "web"]).await;
    assert_eq!(
        run.error(),
        "service name \"web\" is ambiguous: hello/web, shop/web; name one as APP/SERVICE"
    );
    let run = bora(&api, &["services", "delete", "shop/web"]).await;
    run.ok();
    assert_eq!(run.stdout(), "service shop/web deleted\n");
    assert_eq!(
        api.request_lines().last().unwrap(),
        "DELETE /v1/apps/shop/services/web"
    );
}

fn write_manifest(dir: &Path, body: &str) -> String {
    let path = dir.join("bora.yaml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

/// A `bora.yaml` of app `hello` with web services `(name, image)`; the
/// image picks the fake's rollout script.
fn manifest(services: &[(&str, &str)]) -> String {
    let mut yaml = String::from("app: hello\nservices:\n");
    for (name, image) in services {
        yaml.push_str(&format!(
            "  - name: {name}\n    image: {image}\n    ports: [{{ port: 8000 }}]\n"
        ));
    }
    yaml
}

#[tokio::test]
async fn deploy_posts_one_deployment_per_service() {
    let api = FakeApi::start(World::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_manifest(dir.path(), &manifest(&[("web", "ok"), ("worker", "ok")]));
    let run = bora(&api, &["deploy", "-f", &file]).await;
    run.ok();
    assert_eq!(
        run.stdout(),
        format!(
            "deployment {} of hello/web created (version 1)\ndeployment {} of hello/worker created (version 1)\n",
            id(1003),
            id(1005)
        )
    );
    let requests = api.requests();
    assert_eq!(
        api.request_lines(),
        [
            "POST /v1/apps/hello/deployments",
            "POST /v1/apps/hello/deployments"
        ]
    );
    let spec: bora_api::ServiceSpec = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!((spec.name.as_str(), spec.image.as_str()), ("web", "ok"));

    let run = bora(&api, &["deploy", "-f", &file]).await;
    run.ok();
    assert!(
        run.stdout().contains("of hello/web created (version 2)"),
        "{}",
        run.stdout()
    );
}

#[tokio::test]
async fn deploy_wait_follows_progress_until_healthy() {
    let api = FakeApi::start(World::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_manifest(dir.path(), &manifest(&[("web", "ok")]));
    let run = bora(
        &api,
        &["deploy", "-f", &file, "--wait", "--poll-interval", "10ms"],
    )
    .await;
    run.ok();
    assert_eq!(run.code(), 0);
    let deployment = id(1003);
    let instance = bora_cli::output::short_id(&id(1004)).to_string();
    assert_eq!(
        run.stdout(),
        format!(
            "deployment {deployment} of hello/web created (version 1)\nhello/web is healthy: http://web.hello.localhost:8080/\n"
        )
    );
    assert_eq!(
        run.stderr(),
        format!(
            "\
hello/web version 1 pulling: pulling image ok
  instance {instance} pulling: pulling image
hello/web version 1 starting: starting 1 instance
  instance {instance} starting: container started
hello/web version 1 healthy: 1 of 1 instances healthy
  instance {instance} healthy: health check passed
"
        )
    );
    let lines = api.request_lines();
    assert!(
        lines.contains(&format!(
            "GET /v1/instances?deployment={deployment}&all=true"
        )),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap(), "GET /v1/apps/hello/services/web");
}

#[tokio::test]
async fn deploy_wait_fails_with_the_reason() {
    let api = FakeApi::start(World::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_manifest(dir.path(), &manifest(&[("web", "crash")]));
    let run = bora(
        &api,
        &["deploy", "-f", &file, "--wait", "--poll-interval", "10ms"],
    )
    .await;
    assert_eq!(run.code(), 1);
    assert_eq!(
        run.error(),
        format!(
            "deployment {} of hello/web failed: instance exited with status 1; see `bora logs hello/web` and `bora instances list --service hello/web --all`",
            id(1003)
        )
    );
    assert!(
        run.stderr().contains("failed: exited with status 1"),
        "{}",
        run.stderr()
    );
}

#[tokio::test]
async fn deploy_wait_times_out_with_exit_code_2() {
    let api = FakeApi::start(World::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_manifest(dir.path(), &manifest(&[("web", "slow")]));
    let run = bora(
        &api,
        &[
            "deploy",
            "-f",
            &file,
            "--wait",
            "--timeout",
            "200ms",
            "--poll-interval",
            "20ms",
        ],
    )
    .await;
    assert_eq!(run.code(), 2);
    assert!(
        run.error()
            .starts_with("timed out after 200ms waiting for hello/web (starting);"),
        "{}",
        run.error()
    );
}

#[tokio::test]
async fn deploy_json_prints_the_deployments() {
    let api = FakeApi::start(World::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_manifest(dir.path(), &manifest(&[("web", "ok")]));
    let run = bora(
        &api,
        &[
            "deploy",
            "-f",
            &file,
            "--wait",
            "--poll-interval",
            "10ms",
            "-o",
            "json",
        ],
    )
    .await;
    run.ok();
    let value: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(value["items"][0]["status"], "healthy");
    assert!(
        run.stderr().contains("hello/web is healthy"),
        "{}",
        run.stderr()
    );
}

#[tokio::test]
async fn deploy_reports_server_rejections() {
    let api = FakeApi::start(World::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_manifest(dir.path(), &manifest(&[("web", "rejected")]));
    let run = bora(&api, &["deploy", "-f", &file]).await;
    assert_eq!(run.error(), "image \"rejected\" is not allowed here");
}

#[tokio::test]
async fn deploy_sends_nothing_for_a_bad_or_missing_file() {
    let api = FakeApi::start(World::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let source = "app: hello\nservices:\n  - name: web\n    imagee: x\n";
    let file = write_manifest(dir.path(), source);
    let run = bora(&api, &["deploy", "-f", &file]).await;
    let err = run.error();
    assert!(matches!(run.result, Err(CliError::Manifest(_))), "{err}");
    assert!(
        err.starts_with(&format!("{file}:4:5: ")),
        "names file:line:column: {err}"
    );
    // With the binary's `error: ` prefix, the parser's report appears verbatim.
    let report = bora_manifest::parse_manifest(source, &file)
        .unwrap_err()
        .to_string();
    assert_eq!(format!("error: {err}"), report);
    assert_eq!(run.code(), 1);

    let missing = dir.path().join("nope.yaml");
    let run = bora(&api, &["deploy", "-f", missing.to_str().unwrap()]).await;
    assert!(
        run.error()
            .starts_with(&format!("cannot read {}: ", missing.display())),
        "{}",
        run.error()
    );
    assert!(api.requests().is_empty());
}

fn world_with_instances() -> World {
    let mut w = world_with_services();
    w.add_instance(id(0xa1), "hello", "web", InstanceState::Healthy);
    w.add_instance(id(0xa2), "hello", "web", InstanceState::Failed);
    w
}

#[tokio::test]
async fn instances_list_filters_and_shows_short_ids() {
    let api = FakeApi::start(world_with_instances()).await;
    let run = bora(
        &api,
        &["instances", "list", "--service", "hello/web", "--all"],
    )
    .await;
    run.ok();
    assert_eq!(
        api.request_lines(),
        ["GET /v1/instances?app=hello&service=web&all=true"]
    );
    let out = run.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "SERVICE",
            "DEPLOYMENT",
            "STATE",
            "IP",
            "RESTARTS",
            "AGE",
            "REASON"
        ]
    );
    assert!(
        lines[1].starts_with("000000a1  hello/web  000000d1    healthy  10.88.0.2  0 "),
        "{out}"
    );
    assert!(lines[2].contains(" failed "), "{out}");

    let run = bora(&api, &["instances", "list"]).await;
    run.ok();
    assert_eq!(
        run.stdout().lines().count(),
        2,
        "only the running one by default"
    );
}

#[tokio::test]
async fn instances_get_by_short_id_shows_history() {
    let api = FakeApi::start(world_with_instances()).await;
    let run = bora(&api, &["instances", "get", "000000a1"]).await;
    run.ok();
    assert_eq!(
        api.request_lines(),
        [
            "GET /v1/instances/000000a1".to_string(),
            "GET /v1/instances?all=true".to_string(),
            format!("GET /v1/instances/{}", id(0xa1)),
        ]
    );
    let out = run.stdout();
    assert!(
        out.starts_with(&format!("ID:         {}\n", id(0xa1))),
        "{out}"
    );
    assert!(out.contains("\nHistory:\nTIME "), "{out}");
    assert!(out.contains("(new) → pending    scheduled\n"), "{out}");
    assert!(
        out.contains("pending → healthy  health check passed\n"),
        "{out}"
    );

    // A suffix every ID shares is ambiguous.
    let run = bora(&api, &["instances", "delete", "8b0c9d2e"]).await;
    assert!(
        run.error()
            .starts_with("instance ID \"8b0c9d2e\" is ambiguous: it matches "),
        "{}",
        run.error()
    );
    let run = bora(&api, &["instances", "delete", "000000a2"]).await;
    run.ok();
    assert_eq!(
        run.stdout(),
        format!("instance {} of hello/web deleted\n", id(0xa2))
    );
}

#[tokio::test]
async fn secrets_read_from_stdin_and_never_print_the_value() {
    let api = FakeApi::start(World::default()).await;
    let url = api.url();
    let base = ["--url", url.as_str(), "--token", TOKEN];
    fn with<'a>(base: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        [base, args].concat()
    }

    let run = bora_in("hunter2\n", &with(&base, &["secrets", "create", "db-pass"])).await;
    run.ok();
    assert_eq!(run.stdout(), "secret db-pass created\n");
    assert!(!run.stderr().contains("hunter2") && !run.stdout().contains("hunter2"));
    assert_eq!(
        api.world.lock().unwrap().secret_values["db-pass"],
        "hunter2"
    );

    let run = bora_in("again", &with(&base, &["secrets", "create", "db-pass"])).await;
    assert_eq!(
        run.error(),
        "secret \"db-pass\" already exists; to change its value use `bora secrets update db-pass`"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    std::fs::write(&file, "from-file\n").unwrap();
    let run = bora_in(
        "",
        &with(
            &base,
            &[
                "secrets",
                "update",
                "db-pass",
                "--from-file",
                file.to_str().unwrap(),
            ],
        ),
    )
    .await;
    run.ok();
    assert_eq!(
        api.world.lock().unwrap().secret_values["db-pass"],
        "from-file\n"
    );

    let run = bora_in("", &with(&base, &["secrets", "create", "empty"])).await;
    assert!(
        matches!(run.result, Err(CliError::EmptySecret { .. })),
        "{}",
        run.error()
    );

    let run = bora_in("", &with(&base, &["secrets", "list"])).await;
    run.ok();
    assert!(
        run.stdout()
            .starts_with("NAME     CREATED  UPDATED\ndb-pass  "),
        "{}",
        run.stdout()
    );
    assert!(!run.stdout().contains("from-file"));
}

#[tokio::test]
async fn logs_split_stdout_and_stderr() {
    let mut world = world_with_services();
    world.logs = vec![
        log(0, LogStream::Stdout, "booting"),
        log(1, LogStream::Stderr, "warning: no config"),
        log(2, LogStream::Stdout, "listening on :8000"),
    ];
    let api = FakeApi::start(world).await;
    let run = bora(&api, &["logs", "worker", "--tail", "2", "--follow"]).await;
    run.ok();
    assert_eq!(
        api.request_lines(),
        [
            "GET /v1/services",
            "GET /v1/apps/hello/services/worker/logs?tail=2&follow=true"
        ]
    );
    assert_eq!(
        run.stdout(),
        "2023-11-14T22:13:22.000Z 000000a1 listening on :8000\n"
    );
    assert_eq!(
        run.stderr(),
        "2023-11-14T22:13:21.000Z 000000a1 warning: no config\n"
    );

    let run = bora(&api, &["logs", "hello/web", "-o", "json"]).await;
    run.ok();
    let first: bora_api::LogLine =
        serde_json::from_str(run.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(first.line, "booting");
}

#[tokio::test]
async fn deployments_list_and_delete_by_short_id() {
    let mut world = World::default();
    world.add_service("hello", "web");
    let api = FakeApi::start(world).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_manifest(dir.path(), &manifest(&[("web", "slow")]));
    bora(&api, &["deploy", "-f", &file]).await.ok();

    let run = bora(&api, &["deployments", "list", "--service", "web"]).await;
    run.ok();
    assert!(
        api.request_lines()
            .contains(&"GET /v1/deployments?app=hello&service=web".to_string())
    );
    let out = run.stdout();
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("000003eb  hello/web  1        pending  slow "),
        "{out}"
    );

    let run = bora(&api, &["deployments", "delete", "000003eb"]).await;
    run.ok();
    assert_eq!(
        run.stdout(),
        format!("deployment {} of hello/web deleted\n", id(1003))
    );
    assert_eq!(
        api.request_lines().last().unwrap(),
        &format!("DELETE /v1/deployments/{}", id(1003))
    );
}
