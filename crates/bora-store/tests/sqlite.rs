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
    assert_eq!(d.model_digest, None);
    // A model service reads back as one.
    let model: ServiceSpec = serde_json::from_value(serde_json::json!(
        {"name": "smollm2", "type": "model", "model": {"path": "/srv/m.gguf"}}
    ))
    .unwrap();
    store.create_deployment("ai", &model).unwrap();
    assert_eq!(
        store.get_service("ai", "smollm2").unwrap().kind,
        bora_api::ServiceType::Model
    );
    let d = store.set_deployment_model(&d1.id, "sha256:def").unwrap();
    assert_eq!(d.model_digest.as_deref(), Some("sha256:def"));
    assert_eq!(
        store.get_deployment(&d1.id).unwrap().model_digest,
        d.model_digest
    );
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

fn new_key(id: &str, name: &str, hash_byte: u8) -> bora_store::NewKeyRecord {
    bora_store::NewKeyRecord {
        id: id.into(),
        name: name.into(),
        hint: "bora-sk-abcd".into(),
        hash: [hash_byte; 32],
        models: vec!["llama".into(), "bert".into()],
        rpm: Some(60),
        tpm: Some(100_000),
        expires_at: Some("2030-01-02T03:04:05Z".parse().unwrap()),
    }
}

fn record(
    id: &str,
    at: &str,
    key: Option<(&str, &str)>,
    model: &str,
    status: u16,
    tokens: (u64, u64),
) -> bora_api::RequestRecord {
    bora_api::RequestRecord {
        id: id.into(),
        at: at.parse().unwrap(),
        key_id: key.map(|k| k.0.to_string()),
        key_name: key.map(|k| k.1.to_string()),
        model: model.into(),
        app: Some("ai".into()),
        service: Some(model.into()),
        instance: Some("i1".into()),
        model_digest: Some("sha256:00".into()),
        engine: Some("bora-engine/0.1.0".into()),
        endpoint: "chat.completions".into(),
        stream: status == 200,
        status,
        error: None,
        prompt_tokens: tokens.0,
        completion_tokens: tokens.1,
        duration_ms: 120,
        ttft_ms: Some(30),
        prompt: None,
        completion: None,
    }
}

#[test]
fn inference_keys_are_kept_across_reopening_with_their_hash() {
    let dir = tempfile::tempdir().unwrap();
    let created = {
        let store = open(dir.path());
        store
            .create_key(&new_key("key_0000000000000001", "ci", 7))
            .unwrap()
    };
    assert_eq!(created.name, "ci");
    assert_eq!(created.models, vec!["llama", "bert"]);
    assert_eq!((created.rpm, created.tpm), (Some(60), Some(100_000)));
    assert_eq!(created.revoked_at, None);

    let store = open(dir.path());
    let keys = store.list_keys(false).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key, created);
    assert_eq!(keys[0].hash, [7; 32]);
    assert_eq!(
        keys[0].key.expires_at,
        Some("2030-01-02T03:04:05Z".parse().unwrap())
    );
}

#[test]
fn a_key_name_is_unique_until_the_key_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store
        .create_key(&new_key("key_0000000000000001", "ci", 1))
        .unwrap();
    let err = store
        .create_key(&new_key("key_0000000000000002", "ci", 2))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: "inference key", name } if name == "ci"),
        "{err}"
    );
    assert_eq!(err.to_string(), "inference key \"ci\" already exists");
    assert_eq!(store.list_keys(true).unwrap().len(), 1, "nothing recorded");

    // Revoked by name: the name is free again.
    let revoked = store.revoke_key("ci").unwrap();
    assert_eq!(revoked.id, first.id);
    assert!(revoked.revoked_at.is_some());
    assert!(store.list_keys(false).unwrap().is_empty());
    let second = store
        .create_key(&new_key("key_0000000000000002", "ci", 2))
        .unwrap();

    // By name, revoking reaches the live key; by id, either.
    let live = store.list_keys(false).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].key.id, second.id);
    let all = store.list_keys(true).unwrap();
    assert_eq!(
        all.iter().map(|k| k.key.id.as_str()).collect::<Vec<_>>(),
        vec![first.id.as_str(), second.id.as_str()]
    );
    let again = store.revoke_key(&first.id).unwrap();
    assert_eq!(
        again.revoked_at, revoked.revoked_at,
        "revoking twice changes nothing"
    );
    store.revoke_key(&second.id).unwrap();
    let err = store.revoke_key("ci").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let err = store.revoke_key("nope").unwrap_err();
    assert_eq!(err.to_string(), "inference key \"nope\" not found");
}

#[test]
fn the_same_secret_hash_cannot_be_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_key(&new_key("key_0000000000000001", "a", 9))
        .unwrap();
    let err = store
        .create_key(&new_key("key_0000000000000002", "b", 9))
        .unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err}");
    assert_eq!(store.list_keys(true).unwrap().len(), 1);
}

#[test]
fn usage_sums_requests_errors_and_tokens_per_key_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ci = Some(("key_1", "ci"));
    let web = Some(("key_2", "web"));
    let mut failed = record("r4", "2026-01-01T10:03:00Z", ci, "llama", 200, (5, 0));
    failed.error = Some("the stream broke off".into());
    store
        .insert_requests(&[
            record("r1", "2026-01-01T10:00:00Z", ci, "llama", 200, (10, 20)),
            record("r2", "2026-01-01T10:01:00Z", ci, "llama", 200, (1, 2)),
            record("r3", "2026-01-01T10:02:00Z", ci, "llama", 429, (0, 0)),
            failed,
            record("r5", "2026-01-01T10:04:00Z", ci, "bert", 200, (7, 0)),
            record("r6", "2026-01-01T10:05:00Z", web, "llama", 200, (100, 200)),
            record("r7", "2026-01-01T10:06:00Z", None, "llama", 401, (0, 0)),
        ])
        .unwrap();

    let rows = store.usage(&Default::default()).unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.key_name.as_deref(),
                r.model.as_str(),
                r.requests,
                r.errors,
                r.prompt_tokens,
                r.completion_tokens,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (None, "llama", 1, 1, 0, 0),
            (Some("ci"), "bert", 1, 0, 7, 0),
            (Some("ci"), "llama", 4, 2, 16, 22),
            (Some("web"), "llama", 1, 0, 100, 200),
        ]
    );

    let by_name = store
        .usage(&bora_store::UsageFilter {
            key: Some("ci"),
            model: Some("llama"),
            ..Default::default()
        })
        .unwrap();
    let by_id = store
        .usage(&bora_store::UsageFilter {
            key: Some("key_1"),
            model: Some("llama"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_name, by_id);
    assert_eq!(by_name.len(), 1);
    assert_eq!(by_name[0].key_id.as_deref(), Some("key_1"));

    let recent = store
        .usage(&bora_store::UsageFilter {
            since: Some("2026-01-01T10:02:00Z".parse().unwrap()),
            key: Some("ci"),
            ..Default::default()
        })
        .unwrap();
    let counts: Vec<_> = recent
        .iter()
        .map(|r| (r.model.as_str(), r.requests))
        .collect();
    assert_eq!(
        counts,
        vec![("bert", 1), ("llama", 2)],
        "since is inclusive"
    );
}

#[test]
fn request_records_page_by_cursor_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let batch: Vec<_> = (0..25)
            .map(|i| {
                let key = if i % 2 == 0 {
                    Some(("key_1", "ci"))
                } else {
                    Some(("key_2", "web"))
                };
                let mut r = record(
                    &format!("r{i}"),
                    &format!("2026-01-01T10:{i:02}:00Z"),
                    key,
                    if i % 5 == 0 { "bert" } else { "llama" },
                    200,
                    (i, 1),
                );
                if i == 3 {
                    r.prompt = Some("{\"messages\":[]}".into());
                    r.completion = Some("hello".into());
                    r.ttft_ms = None;
                }
                r
            })
            .collect();
        store.insert_requests(&batch[..10]).unwrap();
        store.insert_requests(&batch[10..]).unwrap();
        store.insert_requests(&[]).unwrap();
    }
    let store = open(dir.path());

    // Paging through everything returns every record once, in order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_requests(&bora_store::RequestFilter {
                after,
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        assert!(page.windows(2).all(|w| w[0].seq < w[1].seq));
        after = Some(page.last().unwrap().seq);
        seen.extend(page.into_iter().map(|s| s.record));
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(
        seen.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        (0..25).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    assert_eq!(seen[3].prompt.as_deref(), Some("{\"messages\":[]}"));
    assert_eq!(seen[3].completion.as_deref(), Some("hello"));
    assert_eq!(seen[3].ttft_ms, None);
    assert_eq!(seen[4].ttft_ms, Some(30));
    assert_eq!(seen[4].engine.as_deref(), Some("bora-engine/0.1.0"));

    // Filters: a time window (since inclusive, until exclusive), a key by
    // id or name, a model.
    let filtered = store
        .list_requests(&bora_store::RequestFilter {
            since: Some("2026-01-01T10:04:00Z".parse().unwrap()),
            until: Some("2026-01-01T10:20:00Z".parse().unwrap()),
            key: Some("ci"),
            model: Some("llama"),
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<_> = filtered.iter().map(|s| s.record.id.as_str()).collect();
    assert_eq!(ids, vec!["r4", "r6", "r8", "r12", "r14", "r16", "r18"]);
    let by_id = store
        .list_requests(&bora_store::RequestFilter {
            key: Some("key_2"),
            model: Some("bert"),
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<_> = by_id.iter().map(|s| s.record.id.as_str()).collect();
    assert_eq!(ids, vec!["r5", "r15"]);
}
