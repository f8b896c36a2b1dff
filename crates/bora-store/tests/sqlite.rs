use bora_api::{DeploymentStatus, InstanceState, ServiceSpec};
use bora_store::{DeploymentFilter, InstanceFilter, SecretCipher, SqliteStore, Store, StoreError};

fn spec(name: &str, image: &str) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({"name": name, "image": image})).unwrap()
}

fn open(dir: &std::path::Path) -> SqliteStore {
    let cipher = SecretCipher::load_or_create(&dir.join("secret.key")).unwrap();
    SqliteStore::open(&dir.join("bora.db"), cipher).unwrap()
}

#[test]
fn deployments_create_app_and_service_and_count_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d1 = store
        .create_deployment("hello", &spec("web", "img:1"))
        .unwrap();
    let d2 = store
        .create_deployment("hello", &spec("web", "img:2"))
        .unwrap();
    let other = store
        .create_deployment("hello", &spec("api", "img:1"))
        .unwrap();
    assert_eq!((d1.version, d2.version, other.version), (1, 2, 1));
    assert_eq!(d1.status, DeploymentStatus::Pending);
    assert_eq!(store.list_apps().unwrap().len(), 1);
    let svc = store.get_service("hello", "web").unwrap();
    assert_eq!(svc.latest_deployment.as_deref(), Some(d2.id.as_str()));
    assert_eq!(svc.active_deployment, None);

    let listed = store
        .list_deployments(&DeploymentFilter {
            app: Some("hello"),
            service: Some("web"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        listed.iter().map(|d| d.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(listed[0].spec.image, "img:2");

    store
        .set_deployment_status(&d1.id, DeploymentStatus::Healthy, None)
        .unwrap();
    let healthy = store
        .list_deployments(&DeploymentFilter {
            statuses: &[DeploymentStatus::Healthy],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(healthy.len(), 1);
    let svc = store.set_active_deployment(&d1.id).unwrap();
    assert_eq!(svc.active_deployment.as_deref(), Some(d1.id.as_str()));
    let d = store.set_deployment_image(&d1.id, "sha256:abc").unwrap();
    assert_eq!(d.image_digest.as_deref(), Some("sha256:abc"));
}

#[test]
fn instance_transitions_follow_the_state_machine_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = store
        .create_deployment("hello", &spec("web", "img:1"))
        .unwrap();
    let i = store.create_instance(&d.id, "local", "scheduled").unwrap();
    assert_eq!(i.state, InstanceState::Pending);
    store
        .transition_instance(&i.id, InstanceState::Pulling, "pulling img:1")
        .unwrap();
    store
        .transition_instance(&i.id, InstanceState::Starting, "container started")
        .unwrap();
    let err = store
        .transition_instance(&i.id, InstanceState::Pending, "nope")
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidTransition { .. }), "{err}");
    store
        .transition_instance(&i.id, InstanceState::Healthy, "http check passed")
        .unwrap();
    store
        .increment_instance_restarts(&i.id, "restarted after 3 failed checks")
        .unwrap();
    store.set_instance_ip(&i.id, Some("10.0.0.2")).unwrap();

    let got = store.get_instance(&i.id).unwrap();
    assert_eq!(got.state, InstanceState::Healthy);
    assert_eq!(got.restarts, 1);
    assert_eq!(got.ip.as_deref(), Some("10.0.0.2"));
    let steps: Vec<_> = got
        .history
        .iter()
        .map(|t| (t.from, t.to, t.reason.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (None, InstanceState::Pending, "scheduled"),
            (
                Some(InstanceState::Pending),
                InstanceState::Pulling,
                "pulling img:1"
            ),
            (
                Some(InstanceState::Pulling),
                InstanceState::Starting,
                "container started"
            ),
            (
                Some(InstanceState::Starting),
                InstanceState::Healthy,
                "http check passed"
            ),
            (
                Some(InstanceState::Healthy),
                InstanceState::Healthy,
                "restarted after 3 failed checks"
            ),
        ]
    );

    store
        .transition_instance(&i.id, InstanceState::Failed, "exited")
        .unwrap();
    let live = store.list_instances(&InstanceFilter::default()).unwrap();
    assert!(live.is_empty());
    let all = store
        .list_instances(&InstanceFilter {
            include_final: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].service, "web");
    assert_eq!(all[0].app, "hello");
}

#[test]
fn state_survives_reopening_and_migrations_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path());
        store
            .create_deployment("hello", &spec("web", "img:1"))
            .unwrap()
            .id
    };
    let store = open(dir.path());
    assert_eq!(store.get_deployment(&id).unwrap().spec.image, "img:1");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    mark_migrated_by_a_future_bora(dir.path());
    let cipher = SecretCipher::load_or_create(&dir.path().join("secret.key")).unwrap();
    let err = SqliteStore::open(&dir.path().join("bora.db"), cipher)
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade Bora"));
}

/// Marks the database as migrated by a future Bora (through Python's sqlite3,
/// so the test does not depend on the store's internals).
fn mark_migrated_by_a_future_bora(dir: &std::path::Path) {
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c=sqlite3.connect('{}'); c.execute(\"INSERT INTO schema_migrations VALUES (999, 'x')\"); c.commit()",
            dir.join("bora.db").display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn secrets_are_encrypted_at_rest_and_never_listed_with_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_secret("db-pass", "s3cr3t-value-xyz").unwrap();
    let err = store.create_secret("db-pass", "other").unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }));
    assert_eq!(store.secret_value("db-pass").unwrap(), "s3cr3t-value-xyz");
    store.update_secret("db-pass", "new-value-abc").unwrap();
    assert_eq!(store.secret_value("db-pass").unwrap(), "new-value-abc");
    let listed = serde_json::to_string(&store.list_secrets().unwrap()).unwrap();
    assert!(listed.contains("db-pass") && !listed.contains("new-value"));
    drop(store);
    for f in ["bora.db", "bora.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
            assert!(
                !bytes.windows(9).any(|w| w == b"new-value"),
                "{f} holds the plaintext"
            );
            assert!(
                !bytes.windows(9).any(|w| w == b"s3cr3t-va"),
                "{f} holds the plaintext"
            );
        }
    }
    let store = open(dir.path());
    store.delete_secret("db-pass").unwrap();
    assert!(store.secret_value("db-pass").unwrap_err().is_not_found());
}

#[test]
fn deleting_an_app_removes_everything_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = store
        .create_deployment("hello", &spec("web", "img:1"))
        .unwrap();
    let i = store.create_instance(&d.id, "local", "scheduled").unwrap();
    store.delete_app("hello").unwrap();
    assert!(store.get_deployment(&d.id).unwrap_err().is_not_found());
    assert!(store.get_instance(&i.id).unwrap_err().is_not_found());
    assert!(store.get_app("hello").unwrap_err().is_not_found());
    assert!(store.delete_app("hello").unwrap_err().is_not_found());
}

#[test]
fn events_are_listed_newest_last_filtered_pruned_and_gone_with_their_service() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_deployment("hello", &spec("web", "img:1"))
        .unwrap();
    store
        .create_deployment("hello", &spec("api", "img:1"))
        .unwrap();
    let first = store.record_event("hello", "web", "slept", "idle").unwrap();
    let second = store.record_event("hello", "web", "woke", "light").unwrap();
    store
        .record_event("hello", "api", "scaled_up", "1 → 2")
        .unwrap();
    assert!(second.seq > first.seq);

    let web = |after, limit| {
        store
            .list_events(&bora_store::EventFilter {
                app: Some("hello"),
                service: Some("web"),
                after,
                limit,
            })
            .unwrap()
    };
    let kinds: Vec<String> = web(None, 0).into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["slept", "woke"]);
    assert_eq!(web(Some(first.seq), 0).len(), 1, "after a seq");
    assert_eq!(web(None, 1)[0].kind, "woke", "a limit keeps the newest");
    let all = store
        .list_events(&bora_store::EventFilter::default())
        .unwrap();
    assert_eq!(all.len(), 3);

    for n in 0..bora_store::EVENTS_KEPT_PER_SERVICE + 5 {
        store
            .record_event("hello", "web", "scaled_up", &n.to_string())
            .unwrap();
    }
    let kept = web(None, 5000);
    assert_eq!(kept.len() as i64, bora_store::EVENTS_KEPT_PER_SERVICE);
    assert_eq!(
        kept.last().unwrap().message,
        (bora_store::EVENTS_KEPT_PER_SERVICE + 4).to_string()
    );

    store.delete_service("hello", "web").unwrap();
    assert!(web(None, 0).is_empty());
    assert_eq!(
        store
            .list_events(&bora_store::EventFilter::default())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_services_scaling_status_is_kept_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let status = bora_api::ScalingStatus {
        current: 2,
        desired: 3,
        sleeping: 0,
        panicking: true,
        reason: "panic: concurrency 9 needs 3".into(),
        updated_at: chrono::Utc::now(),
    };
    {
        let store = open(dir.path());
        store
            .create_deployment("hello", &spec("web", "img:1"))
            .unwrap();
        assert_eq!(store.get_service("hello", "web").unwrap().scaling, None);
        store.set_service_scaling("hello", "web", &status).unwrap();
        let missing = store.set_service_scaling("hello", "nope", &status);
        assert!(missing.unwrap_err().is_not_found());
    }
    let store = open(dir.path());
    assert_eq!(
        store.get_service("hello", "web").unwrap().scaling,
        Some(status)
    );
}

fn new_sandbox(id: &str) -> bora_store::NewSandboxRecord {
    bora_store::NewSandboxRecord {
        id: id.into(),
        template: "base".into(),
        image: "bora.local/templates/base@sha256:abc".into(),
        isolation: bora_api::Isolation::Gvisor,
        resources: bora_api::SandboxResources::default(),
        metadata: [("user".to_string(), "alice".to_string())].into(),
        allow_out: vec!["203.0.113.0/24".into()],
        end_at: chrono::Utc::now() + chrono::Duration::minutes(5),
        envd_access_token: "tok-very-secret-123".into(),
        env: [("API_KEY".to_string(), "env-very-secret-456".to_string())].into(),
    }
}

#[test]
fn sandboxes_keep_their_token_and_env_sealed_and_follow_their_states() {
    use bora_api::SandboxState;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let created = store.create_sandbox(&new_sandbox("sb1")).unwrap();
    assert_eq!(created.state, SandboxState::Starting);
    assert_eq!(created.envd_access_token, "tok-very-secret-123");
    assert_eq!(created.metadata["user"], "alice");
    assert!(matches!(
        store.create_sandbox(&new_sandbox("sb1")),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.sandbox_env("sb1").unwrap()["API_KEY"],
        "env-very-secret-456"
    );

    store.set_sandbox_ip("sb1", Some("10.89.0.2")).unwrap();
    assert!(
        store
            .set_sandbox_ip("nope", None)
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        store
            .set_sandbox_state("nope", SandboxState::Killed, "x")
            .unwrap_err()
            .is_not_found()
    );
    let running = store
        .set_sandbox_state("sb1", SandboxState::Running, "envd answers")
        .unwrap();
    assert_eq!(running.ip.as_deref(), Some("10.89.0.2"));
    let later = created.end_at + chrono::Duration::minutes(10);
    assert_eq!(
        store.set_sandbox_end_at("sb1", later).unwrap().end_at,
        later
    );
    store.create_sandbox(&new_sandbox("sb2")).unwrap();
    store
        .set_sandbox_state("sb2", SandboxState::Killed, "killed by a request")
        .unwrap();
    let live: Vec<_> = store.list_sandboxes(false).unwrap();
    assert_eq!(
        live.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["sb1"]
    );
    assert_eq!(store.list_sandboxes(true).unwrap().len(), 2);

    // Neither secret is in the database file in the clear.
    drop(store);
    let raw = std::fs::read(dir.path().join("bora.db")).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains("tok-very-secret-123"));
    assert!(!raw.contains("env-very-secret-456"));

    // Reopened (as after a crash), state is intact; pruning forgets only
    // ended sandboxes.
    let store = open(dir.path());
    assert_eq!(
        store.get_sandbox("sb1").unwrap().state,
        SandboxState::Running
    );
    let pruned = store
        .prune_sandboxes(chrono::Utc::now() + chrono::Duration::seconds(1))
        .unwrap();
    assert_eq!(pruned, 1);
    assert!(store.get_sandbox("sb2").unwrap_err().is_not_found());
    assert!(store.get_sandbox("sb1").is_ok());
}
