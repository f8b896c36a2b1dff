//! The inference gateway: keys, limits, bad input, streaming, retries,
//! broken replicas, prefix affinity, waking — against stand-in replicas on
//! loopback that speak the OpenAI API's shapes (the real engine is tested
//! through the gateway in `crates/bora/tests/models.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bora_api::RequestRecord;
use bora_router::{
    Backend, GatewayKey, ModelRoutes, Recorder, RouteTable, Router, RouterConfig, Waker,
    hash_secret,
};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Channel};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::harness::{TestRouter, bounded, client, eventually, full, lo, send, serve_upstream};

const SECRET: &str = "bora-sk-test-key-one";

/// Every record the gateway hands over.
#[derive(Default)]
struct Records(Mutex<Vec<RequestRecord>>);

impl Recorder for Records {
    fn record(&self, record: RequestRecord) {
        self.0.lock().unwrap().push(record);
    }
}

impl Records {
    fn all(&self) -> Vec<RequestRecord> {
        self.0.lock().unwrap().clone()
    }

    fn last(&self) -> RequestRecord {
        self.all().last().cloned().expect("a record")
    }
}

fn key(name: &str, secret: &str) -> GatewayKey {
    GatewayKey {
        id: format!("key_{name}"),
        name: name.into(),
        hash: hash_secret(secret),
        models: Vec::new(),
        rpm: None,
        tpm: None,
        expires_at: None,
        revoked: false,
    }
}

fn model(name: &str, port: u16, backends: &[(&str, std::net::IpAddr)]) -> ModelRoutes {
    ModelRoutes {
        name: name.into(),
        app: "ai".into(),
        service: name.into(),
        port,
        backends: backends
            .iter()
            .map(|(id, ip)| Backend {
                instance_id: (*id).into(),
                ip: *ip,
            })
            .collect(),
        wakeable: false,
        digest: Some("sha256:0123".into()),
        engine: "bora-engine/test".into(),
        created: 1_700_000_000,
    }
}

fn models(models: Vec<ModelRoutes>) -> RouteTable {
    RouteTable {
        models,
        ..RouteTable::default()
    }
}

/// What a stand-in replica received: headers and JSON body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

impl Seen {
    fn bodies(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn sse(value: Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn chunk(text: &str) -> Value {
    json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})
}

/// A replica named `name` answering chats with its name; streams wait at
/// `gate` (if any) after their first chunk. Usage: 10 prompt tokens, 5
/// completion tokens.
fn replica(listener: TcpListener, name: &'static str, seen: Seen, gate: Option<Arc<Notify>>) {
    serve_upstream(listener, move |request: Request<hyper::body::Incoming>| {
        let (seen, gate) = (seen.clone(), gate.clone());
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            if parts.uri.path() == "/metrics" {
                return http::Response::new(full("vllm:num_requests_waiting 0\n"));
            }
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.0.lock().unwrap().push((parts.headers, body.clone()));
            let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
            if body["stream"] == true {
                let (mut tx, stream) = Channel::<Bytes>::new(4);
                tokio::spawn(async move {
                    tx.send_data(sse(chunk(name))).await.unwrap();
                    if let Some(gate) = gate {
                        gate.notified().await;
                    }
                    tx.send_data(sse(chunk(" there"))).await.unwrap();
                    if body["stream_options"]["include_usage"] == true {
                        let last = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage});
                        tx.send_data(sse(last)).await.unwrap();
                    }
                    tx.send_data(Bytes::from_static(b"data: [DONE]\n\n"))
                        .await
                        .unwrap();
                });
                return http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(stream.boxed())
                    .unwrap();
            }
            let answer = json!({
                "id": "c1", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": name}, "finish_reason": "stop"}],
                "usage": usage,
            });
            http::Response::builder()
                .header("content-type", "application/json")
                .body(full(answer.to_string()))
                .unwrap()
        }
    });
}

/// A router with one key (unlimited, every model) and a recorder.
async fn gateway(
    table: RouteTable,
    configure: impl FnOnce(&mut RouterConfig),
) -> (TestRouter, Arc<Records>) {
    let router = TestRouter::start(table, configure).await;
    router.router.set_keys(vec![key("app1", SECRET)]);
    let records = Arc::new(Records::default());
    router.router.set_recorder(records.clone());
    (router, records)
}

/// POSTs `body` to `path` with `secret` as the key.
async fn post(
    router: &TestRouter,
    path: &str,
    secret: Option<&str>,
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let mut request = router.request("127.0.0.1", path).method("POST");
    if let Some(secret) = secret {
        request = request.header("authorization", format!("Bearer {secret}"));
    }
    send(request.body(full(body.to_string())).unwrap()).await
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]}).to_string()
}

/// The OpenAI error of a response body: (code, message).
fn error_of(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn one_replica(name: &'static str) -> (u16, Seen) {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    replica(listener, name, seen.clone(), None);
    (port, seen)
}

#[tokio::test]
async fn a_chat_is_forwarded_without_the_key_and_recorded_with_its_usage() {
    bounded(async {
        let (port, seen) = one_replica("r1").await;
        let (router, records) =
            gateway(models(vec![model("smol", port, &[("r1", lo(2))])]), |_| {}).await;
        let (status, headers, body) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "r1");
        assert!(headers.contains_key("x-request-id"));
        let (upstream_headers, upstream_body) = seen.0.lock().unwrap()[0].clone();
        assert!(
            !upstream_headers.contains_key("authorization"),
            "the inference key never reaches a replica"
        );
        assert_eq!(upstream_body["model"], "smol");
        let record = records.last();
        assert_eq!(
            (
                record.status,
                record.prompt_tokens,
                record.completion_tokens
            ),
            (200, 10, 5)
        );
        assert_eq!(record.key_name.as_deref(), Some("app1"));
        assert_eq!(record.model, "smol");
        assert_eq!(record.instance.as_deref(), Some("r1"));
        assert_eq!(record.model_digest.as_deref(), Some("sha256:0123"));
        assert_eq!(record.engine.as_deref(), Some("bora-engine/test"));
        assert_eq!(record.endpoint, "chat.completions");
        assert_eq!(record.id, headers["x-request-id"].to_str().unwrap());
        assert!(
            record.prompt.is_none() && record.completion.is_none(),
            "zero retention"
        );
        // The router's per-service statistics count it (the autoscaler's input).
        assert_eq!(router.router.service_stats("ai", "smol").arrived_total, 1);
    })
    .await;
}

#[tokio::test]
async fn content_is_kept_only_with_retention_on() {
    bounded(async {
        let (port, _) = one_replica("r1").await;
        let (router, records) = gateway(models(vec![model("smol", port, &[("r1", lo(2))])]), |c| {
            c.retain_content = true
        })
        .await;
        let (status, _, _) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::OK);
        let record = records.last();
        assert!(record.prompt.unwrap().contains("Hello"));
        assert!(record.completion.unwrap().contains("\"r1\""));
    })
    .await;
}

#[tokio::test]
async fn keys_are_checked_and_every_refusal_is_recorded_in_openai_shape() {
    bounded(async {
        let (port, seen) = one_replica("r1").await;
        let (router, records) =
            gateway(models(vec![model("smol", port, &[("r1", lo(2))])]), |_| {}).await;
        let mut revoked = key("old", "bora-sk-revoked");
        revoked.revoked = true;
        let mut expired = key("late", "bora-sk-expired");
        expired.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        router
            .router
            .set_keys(vec![key("app1", SECRET), revoked, expired]);
        let cases = [
            (None, "missing_api_key", "no inference key"),
            (Some("bora-sk-nope"), "invalid_api_key", "is not valid"),
            (Some("bora-sk-revoked"), "invalid_api_key", "was revoked"),
            (Some("bora-sk-expired"), "invalid_api_key", "has expired"),
        ];
        for (secret, code, says) in cases {
            let (status, _, body) =
                post(&router, "/v1/chat/completions", secret, &chat("smol")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            let (got_code, message) = error_of(&body);
            assert_eq!(got_code, code, "{body}");
            assert!(message.contains(says), "{message}");
        }
        assert!(seen.bodies().is_empty(), "nothing reached the replica");
        let records = records.all();
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|r| r.status == 401 && r.error.is_some()));
        assert_eq!(records[2].key_name.as_deref(), None);
    })
    .await;
}

#[tokio::test]
async fn bad_requests_are_refused_by_name_and_leave_the_replica_alone() {
    bounded(async {
        let (port, seen) = one_replica("r1").await;
        let (router, records) = gateway(
            models(vec![
                model("smol", port, &[("r1", lo(2))]),
                model("big", port, &[("r1", lo(2))]),
            ]),
            |c| c.max_gateway_body = 2048,
        )
        .await;
        let mut limited = key("limited", "bora-sk-limited");
        limited.models = vec!["big".into()];
        router.router.set_keys(vec![key("app1", SECRET), limited]);
        let huge =
            json!({"model": "smol", "messages": [{"role": "user", "content": "x".repeat(4096)}]})
                .to_string();
        let cases: [(&str, Option<&str>, &str, StatusCode, &str); 7] = [
            (
                "/v1/chat/completions",
                Some(SECRET),
                "{not json",
                StatusCode::BAD_REQUEST,
                "invalid_json",
            ),
            (
                "/v1/chat/completions",
                Some(SECRET),
                "[1, 2]",
                StatusCode::BAD_REQUEST,
                "invalid_json",
            ),
            (
                "/v1/chat/completions",
                Some(SECRET),
                r#"{"messages": []}"#,
                StatusCode::BAD_REQUEST,
                "missing_required_parameter",
            ),
            (
                "/v1/chat/completions",
                Some(SECRET),
                &chat("nope"),
                StatusCode::NOT_FOUND,
                "model_not_found",
            ),
            (
                "/v1/chat/completions",
                Some("bora-sk-limited"),
                &chat("smol"),
                StatusCode::FORBIDDEN,
                "model_not_allowed",
            ),
            (
                "/v1/chat/completions",
                Some(SECRET),
                &huge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
            ),
            (
                "/v1/fine_tuning/jobs",
                Some(SECRET),
                "{}",
                StatusCode::NOT_FOUND,
                "unknown_url",
            ),
        ];
        for (path, secret, body, status, code) in cases {
            let (got, _, answer) = post(&router, path, secret, body).await;
            assert_eq!(
                (got, error_of(&answer).0.as_str()),
                (status, code),
                "{path} {body:.40}: {answer}"
            );
        }
        let (status, _, answer) = send(
            router
                .request("127.0.0.1", "/v1/chat/completions")
                .header("authorization", format!("Bearer {SECRET}"))
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{answer}");
        assert!(seen.bodies().is_empty(), "nothing reached the replica");
        let unknown = &records.all()[3];
        assert_eq!((unknown.status, unknown.model.as_str()), (404, "nope"));
        // The gateway still serves good requests afterwards.
        let (status, _, _) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn models_lists_what_the_key_may_use() {
    bounded(async {
        let (port, _) = one_replica("r1").await;
        let (router, _) = gateway(
            models(vec![
                model("smol", port, &[("r1", lo(2))]),
                model("big", port, &[]),
            ]),
            |_| {},
        )
        .await;
        let mut limited = key("limited", "bora-sk-limited");
        limited.models = vec!["big".into()];
        router.router.set_keys(vec![key("app1", SECRET), limited]);
        let list = |secret: &'static str| {
            let request = router
                .request("127.0.0.1:8080", "/v1/models")
                .header("authorization", format!("Bearer {secret}"))
                .body(crate::harness::empty())
                .unwrap();
            async move {
                let (status, _, body) = send(request).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["object"], "list");
                v["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list(SECRET).await, ["big", "smol"]);
        assert_eq!(list("bora-sk-limited").await, ["big"]);
    })
    .await;
}

#[tokio::test]
async fn a_key_over_its_request_rate_gets_429_with_retry_after() {
    bounded(async {
        let (port, seen) = one_replica("r1").await;
        let (router, records) =
            gateway(models(vec![model("smol", port, &[("r1", lo(2))])]), |_| {}).await;
        let mut slow = key("slow", SECRET);
        slow.rpm = Some(2);
        router.router.set_keys(vec![slow]);
        for _ in 0..2 {
            let (status, _, _) =
                post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, headers, body) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "requests");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(seen.bodies().len(), 2);
        assert_eq!(records.last().status, 429);
    })
    .await;
}

#[tokio::test]
async fn tokens_are_billed_after_the_answer_and_block_the_key_until_repaid() {
    bounded(async {
        let (port, _) = one_replica("r1").await;
        let (router, _) =
            gateway(models(vec![model("smol", port, &[("r1", lo(2))])]), |_| {}).await;
        let mut thrifty = key("thrifty", SECRET);
        // The replica reports 15 tokens per answer.
        thrifty.tpm = Some(20);
        router.router.set_keys(vec![thrifty]);
        let (status, _, _) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::OK, "5 tokens were left");
        let (status, headers, body) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "tokens");
        assert!(headers.contains_key("retry-after"));
    })
    .await;
}

/// Reads frames of `body` until `want` appears in what was read.
async fn read_until(body: &mut hyper::body::Incoming, read: &mut String, want: &str) {
    while !read.contains(want) {
        let frame = body.frame().await.expect("stream ended early").unwrap();
        if let Ok(data) = frame.into_data() {
            read.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test]
async fn streams_pass_through_as_they_come_and_usage_is_recorded() {
    bounded(async {
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, gate) = (Seen::default(), Arc::new(Notify::new()));
        replica(listener, "r1", seen.clone(), Some(gate.clone()));
        let (router, records) = gateway(models(vec![model("smol", port, &[("r1", lo(2))])]), |_| {}).await;

        for asks_usage in [false, true] {
            let mut body = json!({"model": "smol", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
            if asks_usage {
                body["stream_options"] = json!({"include_usage": true});
            }
            let request = router
                .request("127.0.0.1", "/v1/chat/completions")
                .method("POST")
                .header("authorization", format!("Bearer {SECRET}"))
                .body(full(body.to_string()))
                .unwrap();
            let response = client().request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut stream = response.into_body();
            let mut read = String::new();
            // The first token arrives while the replica is still generating.
            read_until(&mut stream, &mut read, "\"r1\"").await;
            assert!(!read.contains("there"));
            gate.notify_one();
            read_until(&mut stream, &mut read, "[DONE]").await;
            assert_eq!(
                read.contains("\"usage\""),
                asks_usage,
                "usage only when asked: {read}"
            );
            // The replica was always asked for usage.
            assert_eq!(
                seen.bodies().last().unwrap()["stream_options"]["include_usage"],
                true
            );
            drop(stream);
            eventually(|| records.all().len() == usize::from(asks_usage) + 1).await;
            let record = records.last();
            assert!(record.stream);
            assert_eq!((record.status, record.prompt_tokens, record.completion_tokens), (200, 10, 5));
            assert!(record.error.is_none(), "{record:?}");
            assert!(record.ttft_ms.unwrap() <= record.duration_ms);
        }
    })
    .await;
}

/// A replica that answers a stream's head and first event, then dies.
async fn dying_replica(ip: std::net::IpAddr, port: u16) {
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut read = Vec::new();
                // Read the head and body (a small JSON body follows the head).
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&read);
                    if let Some(end) = text.find("\r\n\r\n")
                        && text[end..].contains('}')
                    {
                        break;
                    }
                }
                let event = sse(chunk("Hi"));
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = format!(
                    "{:x}\r\n{}\r\n",
                    event.len(),
                    String::from_utf8_lossy(&event)
                );
                let _ = stream.write_all(format!("{head}{chunk}").as_bytes()).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dies: the connection closes without the last chunk.
            });
        }
    });
}

#[tokio::test]
async fn a_replica_that_dies_mid_stream_ends_the_stream_with_an_error_event_and_is_marked_down() {
    bounded(async {
        let good = TcpListener::bind((lo(3), 0)).await.unwrap();
        let port = good.local_addr().unwrap().port();
        replica(good, "r2", Seen::default(), None);
        dying_replica(lo(2), port).await;
        let (router, records) = gateway(models(vec![model("smol", port, &[("r1", lo(2))])]), |_| {}).await;
        let body = json!({"model": "smol", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
        let (status, _, text) = post(&router, "/v1/chat/completions", Some(SECRET), &body.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("\"Hi\""), "{text}");
        let last_event = text.trim_end().rsplit("\n\n").next().unwrap();
        let error: Value = serde_json::from_str(last_event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(error["error"]["code"], "replica_failed", "{text}");
        eventually(|| !records.all().is_empty()).await;
        let record = records.last();
        assert!(record.error.as_deref().unwrap().contains("broke off"), "{record:?}");

        // Now r2 is there too: r1 is marked down, so every request goes to r2.
        router.router.set_table(models(vec![model(
            "smol",
            port,
            &[("r1", lo(2)), ("r2", lo(3))],
        )]));
        for _ in 0..4 {
            let (status, _, body) = post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body.contains("\"r2\""), "{body}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_no_replica_answered_is_retried_on_another() {
    bounded(async {
        // r1's address refuses connections; r2 answers.
        let good = TcpListener::bind((lo(3), 0)).await.unwrap();
        let port = good.local_addr().unwrap().port();
        replica(good, "r2", Seen::default(), None);
        let (router, records) = gateway(
            models(vec![model("smol", port, &[("r1", lo(2)), ("r2", lo(3))])]),
            |_| {},
        )
        .await;
        for _ in 0..4 {
            let (status, _, body) =
                post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body.contains("\"r2\""), "{body}");
        }
        assert!(
            records
                .all()
                .iter()
                .all(|r| r.instance.as_deref() == Some("r2"))
        );
        // With no replica answering, the client gets 502 naming the failure.
        router
            .router
            .set_table(models(vec![model("smol", port, &[("r1", lo(2))])]));
        let (status, _, body) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(error_of(&body).1.contains("r1"), "{body}");
    })
    .await;
}

#[tokio::test]
async fn prompts_sharing_a_long_prefix_stick_to_one_replica() {
    bounded(async {
        let ips = [lo(2), lo(3), lo(4)];
        let listeners = crate::harness::listen_same_port(&ips).await;
        let port = listeners[0].local_addr().unwrap().port();
        for (listener, name) in listeners.into_iter().zip(["r1", "r2", "r3"]) {
            replica(listener, name, Seen::default(), None);
        }
        let (router, _) = gateway(
            models(vec![model(
                "smol",
                port,
                &[("r1", ips[0]), ("r2", ips[1]), ("r3", ips[2])],
            )]),
            |_| {},
        )
        .await;
        let ask = |system: String, question: String| {
            let body = json!({"model": "smol", "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]});
            let router = &router;
            async move {
                let (status, _, answer) = post(
                    router,
                    "/v1/chat/completions",
                    Some(SECRET),
                    &body.to_string(),
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{answer}");
                let v: Value = serde_json::from_str(&answer).unwrap();
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        };
        let system_a = "You are a careful assistant for group A. ".repeat(30);
        let system_b = "You answer in verse, for group B only. ".repeat(30);
        let mut served_a = std::collections::BTreeSet::new();
        let mut served_b = std::collections::BTreeSet::new();
        for i in 0..6 {
            served_a.insert(ask(system_a.clone(), format!("question {i}")).await);
            served_b.insert(ask(system_b.clone(), format!("question {i}")).await);
        }
        assert_eq!(served_a.len(), 1, "group A went to {served_a:?}");
        assert_eq!(served_b.len(), 1, "group B went to {served_b:?}");
        // Without a shared prefix, idle replicas take turns.
        let mut served = std::collections::BTreeSet::new();
        for i in 0..6 {
            served.insert(ask(format!("short {i}"), "q".into()).await);
        }
        assert_eq!(served.len(), 3, "{served:?}");
    })
    .await;
}

/// Puts a replica into the table when woken.
struct TableWaker {
    router: Arc<Router>,
    table: RouteTable,
    calls: Mutex<Vec<String>>,
}

impl Waker for TableWaker {
    fn wake(&self, app: &str, service: &str) {
        self.calls.lock().unwrap().push(format!("{app}/{service}"));
        let (router, table) = (self.router.clone(), self.table.clone());
        tokio::spawn(async move {
            // Loading takes a while.
            tokio::time::sleep(Duration::from_millis(200)).await;
            router.set_table(table);
        });
    }
}

#[tokio::test]
async fn a_request_for_a_sleeping_model_wakes_it_and_gets_its_answer() {
    bounded(async {
        let (port, _) = one_replica("r1").await;
        let mut asleep = model("smol", port, &[]);
        asleep.wakeable = true;
        let (router, records) = gateway(models(vec![asleep]), |c| {
            // Shorter than the load: a web service's hold timeout does not apply.
            c.hold_timeout = Duration::from_millis(50);
        })
        .await;
        let waker = Arc::new(TableWaker {
            router: router.router.clone(),
            table: models(vec![model("smol", port, &[("r1", lo(2))])]),
            calls: Mutex::default(),
        });
        router.router.set_waker(waker.clone());
        let (status, _, body) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(*waker.calls.lock().unwrap(), ["ai/smol"]);
        assert_eq!(records.last().status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_model_that_does_not_wake_in_time_is_503_with_retry_after() {
    bounded(async {
        let mut asleep = model("smol", 9, &[]);
        asleep.wakeable = true;
        let (router, _) = gateway(models(vec![asleep]), |c| {
            c.model_hold_timeout = Duration::from_millis(100);
        })
        .await;
        let (status, headers, body) =
            post(&router, "/v1/chat/completions", Some(SECRET), &chat("smol")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(headers.contains_key("retry-after"));
        assert_eq!(error_of(&body).0, "model_wake_timeout");
    })
    .await;
}

#[tokio::test]
async fn service_hosts_are_proxied_not_answered_by_the_gateway() {
    bounded(async {
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        crate::harness::serve_named(listener, "web-instance");
        let mut table = crate::harness::one_service(port, &[("i1", lo(2))]);
        table.models = vec![model("smol", port, &[])];
        let (router, records) = gateway(table, |_| {}).await;
        // A web service's own /v1 path reaches the service, with no key.
        let (status, _, body) = router.get("web.hello.localhost", "/v1/models").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "web-instance"));
        assert!(records.all().is_empty());
    })
    .await;
}
