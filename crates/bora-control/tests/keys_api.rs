//! The inference keys, usage and audit endpoints over real HTTP, with a
//! real store in a temp dir, and request records written through the
//! gateway's recorder ([`RecordWriter`]), as the gateway will.

use std::sync::Arc;
use std::time::Duration;

use bora_api::RequestRecord;
use bora_control::api::{self, ApiState};
use bora_control::controller::{Controller, ControllerConfig};
use bora_control::records::{RecordWriter, RecorderConfig};
use bora_router::{Recorder, Router, RouterConfig};
use bora_store::{SecretCipher, SqliteStore, Store};
use serde_json::{Value, json};

struct Api {
    base: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    records: Arc<RecordWriter>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let cipher = SecretCipher::load_or_create(&dir.path().join("secret.key")).unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("bora.db"), cipher).unwrap());
        let node = Arc::new(
            bora_node::Node::new(bora_node::NodeConfig::new(dir.path(), "/bin/false")).unwrap(),
        );
        let router = Router::new(RouterConfig::new("localhost"));
        let records = RecordWriter::start(store.clone(), RecorderConfig::default());
        router.set_recorder(records.clone());
        let ctl = Controller::new(
            store.clone(),
            node,
            router,
            ControllerConfig {
                domain: "localhost".into(),
                http_addr: "127.0.0.1:1".parse().unwrap(),
                insecure_registries: vec![],
                drain_timeout: Duration::from_secs(1),
                stop_grace: Duration::from_secs(1),
                reconcile_interval: Duration::from_secs(1),
                scale_interval: Duration::from_secs(1),
                sandbox_pools: vec![],
            },
        );
        ctl.publish_keys().unwrap();
        let app = api::router(ApiState {
            ctl,
            token: "t0ken".into(),
            metrics: Arc::new(Default::default()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Api {
            base,
            http: reqwest::Client::new(),
            store,
            records,
            _dir: dir,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth("t0ken");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

fn record(i: usize, key: Option<&Value>, model: &str, status: u16) -> RequestRecord {
    RequestRecord {
        id: format!("req-{i}"),
        at: chrono::Utc::now() - chrono::TimeDelta::minutes(10),
        key_id: key.map(|k| k["id"].as_str().unwrap().to_string()),
        key_name: key.map(|k| k["name"].as_str().unwrap().to_string()),
        model: model.into(),
        app: Some("ai".into()),
        service: Some(model.into()),
        instance: Some("inst".into()),
        model_digest: None,
        engine: Some("bora-engine/0.1.0".into()),
        endpoint: "chat.completions".into(),
        stream: false,
        status,
        error: None,
        prompt_tokens: 10,
        completion_tokens: 5,
        duration_ms: 50,
        ttft_ms: Some(20),
        prompt: Some("secret prompt".into()),
        completion: Some("secret completion".into()),
    }
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_without_their_secret() {
    let api = Api::start().await;

    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": "ci", "models": ["llama"], "rpm": 60, "expires": "30d"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("bora-sk-") && secret.len() == 51,
        "{secret}"
    );
    let key = &created["key"];
    assert_eq!(key["hint"], secret[..12]);
    assert!(key["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(key["models"], json!(["llama"]));
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(key["expires_at"].clone()).unwrap();
    let in_days = (expires - chrono::Utc::now()).num_hours();
    assert!((719..=720).contains(&in_days), "{in_days}");

    // The store keeps the secret's SHA-256, never the secret.
    let stored = api.store.list_keys(false).unwrap();
    assert_eq!(stored[0].hash, bora_router::gateway::hash_secret(&secret));

    let (status, listed) = api.get("/v1/keys").await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(text.contains("\"ci\"") && !text.contains(&secret), "{text}");
    assert!(!text.contains(&hex(&stored[0].hash)), "{text}");

    // Bad input: 400 naming the field, nothing recorded.
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": "other", "rpm": 0})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("rpm is 0"),
        "{body}"
    );
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": "other", "colour": "red"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`bora keys revoke ci`"),
        "{body}"
    );
    assert_eq!(api.store.list_keys(true).unwrap().len(), 1);

    // Revoke by name; then the name is free, and `all` shows both.
    let (status, revoked) = api.call(reqwest::Method::DELETE, "/v1/keys/ci", None).await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (_, live) = api.get("/v1/keys").await;
    assert_eq!(live["items"], json!([]));
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, all) = api.get("/v1/keys?all=true").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let (status, body) = api
        .call(reqwest::Method::DELETE, "/v1/keys/nope", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`bora keys list`")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn usage_and_audit_read_what_the_recorder_wrote() {
    let api = Api::start().await;
    let (_, ci) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": "ci"})),
        )
        .await;
    let ci = ci["key"].clone();
    let (_, web) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": "web"})),
        )
        .await;
    let web = web["key"].clone();

    for i in 0..5 {
        api.records.record(record(i, Some(&ci), "llama", 200));
    }
    api.records.record(record(5, Some(&ci), "llama", 500));
    api.records.record(record(6, Some(&web), "bert", 200));
    api.records.record(record(7, None, "llama", 401));
    api.records.flush().await;

    let (status, usage) = api.get("/v1/usage").await;
    assert_eq!(status, 200, "{usage}");
    let rows: Vec<_> = usage["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key_name"].as_str().unwrap_or("-").to_string(),
                r["model"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
                r["errors"].as_u64().unwrap(),
                r["prompt_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("-".into(), "llama".into(), 1, 1, 10),
            ("ci".into(), "llama".into(), 6, 1, 60),
            ("web".into(), "bert".into(), 1, 0, 10),
        ]
    );
    let (_, only_ci) = api.get("/v1/usage?key=ci&since=1h").await;
    assert_eq!(only_ci["items"].as_array().unwrap().len(), 1);
    let (_, none) = api.get("/v1/usage?since=5m").await;
    assert_eq!(none["items"], json!([]), "the records are 10 minutes old");
    let (status, body) = api.get("/v1/usage?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`since` is \"yesterday\""),
        "{body}"
    );

    // The audit trail, three at a time; content not retained by default.
    let mut ids = Vec::new();
    let mut path = "/v1/audit?limit=3".to_string();
    loop {
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for r in page["items"].as_array().unwrap() {
            assert!(
                r.get("prompt").is_none() && r.get("completion").is_none(),
                "{r}"
            );
            ids.push(r["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/audit?limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(ids, (0..8).map(|i| format!("req-{i}")).collect::<Vec<_>>());

    let (_, filtered) = api
        .get("/v1/audit?key=web&model=bert&since=1h&until=2099-01-01T00:00:00Z")
        .await;
    let items = filtered["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], "req-6");
    assert_eq!(filtered["next"], Value::Null);
    let (status, body) = api.get("/v1/audit?after=abc").await;
    assert_eq!(status, 400, "{body}");
}
