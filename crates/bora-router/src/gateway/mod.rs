//! The inference gateway: one OpenAI-compatible endpoint for every model
//! service, in the router's data path (no extra hop).
//!
//! A request whose `Host` is not a service's or a sandbox's and whose path
//! starts with `/v1/` comes here, on hyper's path. In order:
//!
//! 1. **authenticate** its inference key (`Authorization: Bearer bora-sk-…`,
//!    looked up by SHA-256; 401 when missing, unknown, revoked or expired);
//! 2. **limit** it by the key's requests and tokens per minute (`limits`;
//!    429 with `Retry-After`);
//! 3. **read** its body (413 past `max_gateway_body`, 400 if it is not a
//!    JSON object naming a `model`), and **authorise** the model for the
//!    key (404 unknown, 403 not allowed);
//! 4. **wake** a sleeping model: held like a web service's request, for
//!    up to `model_hold_timeout` (loading a model takes a while);
//! 5. **choose** a replica (`affinity`: least outstanding requests, plus
//!    the replica holding the prompt's longest prefix) and **forward**;
//!    a failure before any byte reached the client (refused, reset,
//!    unanswered, 502/503) is retried on another replica, at most
//!    [`MAX_ATTEMPTS`] in all;
//! 6. **relay** the answer as it comes (`tap` reads usage and the first
//!    token on the way); a stream that breaks ends with an OpenAI error
//!    event and the replica is marked down for a while;
//! 7. **record** it: a [`bora_api::RequestRecord`] to the [`Recorder`]
//!    (usage and audit), the key's token bill, metrics per model and key.
//!
//! Every error is answered in OpenAI's shape (`{"error": {"message",
//! "type", "param", "code"}}`) so SDKs raise their usual exceptions.

mod affinity;
mod limits;
mod metrics;
mod replicas;
mod tap;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::Router;
use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::headers::{self, X_REQUEST_ID};
use crate::hold::Lookup;
use crate::hooks::{Phase, RequestScope};
use crate::proxy::request_span;
use crate::server::ServeTasks;
use crate::stats::RequestStats;
use crate::table::{CompiledModel, CompiledService, normalize_host};

use metrics::GatewayMetrics;
pub(crate) use replicas::watch as watch_replicas;

/// Attempts at one request across replicas (the first and two retries).
pub const MAX_ATTEMPTS: usize = 3;
/// How long a replica that broke a stream or refused a connection gets no
/// new requests (unless no other replica is left).
const DOWN_FOR: Duration = Duration::from_secs(10);
/// The longest a replica may take to start answering (a non-streamed
/// completion sends its headers only when it is done).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// An inference key as the gateway knows it: the SHA-256 of its secret,
/// never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKey {
    pub id: String,
    pub name: String,
    /// SHA-256 of the whole secret (`bora-sk-…`, UTF-8).
    pub hash: [u8; 32],
    /// Models the key may use; empty: all.
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub expires_at: Option<SystemTime>,
    pub revoked: bool,
}

/// Receives a record of every request the gateway answered. Called on the
/// request's task: it must not block (queue the record and return).
pub trait Recorder: Send + Sync {
    fn record(&self, record: bora_api::RequestRecord);
}

/// SHA-256 of a presented secret, as [`GatewayKey::hash`] holds it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The gateway's state that is not in the route table.
#[derive(Default)]
pub(crate) struct Gateway {
    keys: ArcSwap<HashMap<[u8; 32], Arc<GatewayKey>>>,
    recorder: ArcSwapOption<Arc<dyn Recorder>>,
    /// Rate-limit buckets by key id.
    limits: Mutex<HashMap<String, limits::KeyLimits>>,
    /// Which replica holds which prompt prefix, by model name.
    prefixes: Mutex<HashMap<Arc<str>, affinity::PrefixMap>>,
    /// What the replicas report, and which are marked down.
    pub(crate) replicas: replicas::Replicas,
    /// Breaks ties between equally loaded replicas.
    turn: AtomicUsize,
    pub(crate) metrics: GatewayMetrics,
}

impl Gateway {
    pub(crate) fn set_keys(&self, keys: Vec<GatewayKey>) {
        let keys: HashMap<_, _> = keys.into_iter().map(|k| (k.hash, Arc::new(k))).collect();
        // Forget the buckets of keys that are gone.
        let ids: std::collections::HashSet<&str> = keys.values().map(|k| k.id.as_str()).collect();
        self.lock_limits().retain(|id, _| ids.contains(id.as_str()));
        self.keys.store(Arc::new(keys));
    }

    pub(crate) fn set_recorder(&self, recorder: Arc<dyn Recorder>) {
        self.recorder.store(Some(Arc::new(recorder)));
    }

    fn lock_limits(&self) -> std::sync::MutexGuard<'_, HashMap<String, limits::KeyLimits>> {
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key a request presents, or why it may not pass.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<GatewayKey>, GatewayError> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty());
        let Some(secret) = presented else {
            return Err(GatewayError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_api_key",
                "no inference key: send `Authorization: Bearer <key>` (create a key with `bora keys create --name NAME`)",
            ));
        };
        let Some(key) = self.keys.load().get(&hash_secret(secret)).cloned() else {
            let hint: String = secret.chars().take(12).collect();
            return Err(GatewayError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                format!(
                    "the inference key {hint}… is not valid: check it, or create one with `bora keys create --name NAME`"
                ),
            ));
        };
        if key.revoked {
            return Err(GatewayError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                format!(
                    "the inference key {:?} was revoked: create a new one with `bora keys create`",
                    key.name
                ),
            ));
        }
        if key.expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Err(GatewayError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                format!(
                    "the inference key {:?} has expired: create a new one with `bora keys create`",
                    key.name
                ),
            ));
        }
        Ok(key)
    }

    /// Admits one request of `key` under its limits.
    fn admit(&self, key: &GatewayKey) -> Result<(), GatewayError> {
        if key.rpm.is_none() && key.tpm.is_none() {
            return Ok(());
        }
        let mut limits = self.lock_limits();
        let buckets = limits.entry(key.id.clone()).or_default();
        buckets
            .admit(key.rpm, key.tpm, Instant::now())
            .map_err(|(limit, wait)| {
                let (what, rate) = match limit {
                    limits::Limit::Requests => {
                        ("requests", key.rpm.map(u64::from).unwrap_or_default())
                    }
                    limits::Limit::Tokens => ("tokens", key.tpm.unwrap_or_default()),
                };
                let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                let mut error = GatewayError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    what,
                    "rate_limit_exceeded",
                    format!(
                        "key {:?} is over its limit of {rate} {what} per minute: try again in {seconds} s",
                        key.name
                    ),
                );
                error.retry_after = Some(seconds);
                error
            })
    }

    /// Bills a finished request's tokens to its key.
    fn charge(&self, key_id: &str, tokens: u64) {
        if let Some(buckets) = self.lock_limits().get_mut(key_id) {
            buckets.charge_tokens(tokens, Instant::now());
        }
    }

    fn record(&self, record: bora_api::RequestRecord) {
        if let Some(recorder) = self.recorder.load_full() {
            recorder.record(record);
        }
    }
}

/// A gateway failure, answered in OpenAI's error shape.
#[derive(Debug)]
pub(crate) struct GatewayError {
    status: StatusCode,
    /// OpenAI's `type`.
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    message: String,
    retry_after: Option<u64>,
    /// The replica failed (for the down mark and the record).
    replica: Option<Arc<str>>,
}

impl GatewayError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after: None,
            replica: None,
        }
    }

    fn bad_request(code: &'static str, param: Option<&'static str>, message: String) -> Self {
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        );
        error.param = param;
        error
    }

    fn body(&self) -> String {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        format!("{body}\n")
    }
}

impl From<ProxyError> for GatewayError {
    fn from(error: ProxyError) -> Self {
        let status = error.status();
        let code = match &error.kind {
            ErrorKind::UnknownModel { .. } => "model_not_found",
            ErrorKind::NoHealthyInstance { .. } => "model_not_ready",
            ErrorKind::WakeTimeout { .. } => "model_wake_timeout",
            ErrorKind::WakeFailed { .. } => "model_wake_failed",
            ErrorKind::TooManyHeld { .. } => "model_overloaded",
            ErrorKind::ConnectTimeout { .. } | ErrorKind::UpstreamTimeout { .. } => "timeout",
            _ if status.is_server_error() => "replica_failed",
            _ => "invalid_request",
        };
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let mut gateway = GatewayError::new(status, kind, code, error.to_string());
        gateway.retry_after = error.kind.retry_after().map(|d| d.as_secs().max(1));
        if let ErrorKind::UnknownModel { .. } = error.kind {
            gateway.param = Some("model");
        }
        gateway
    }
}

/// What the gateway serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Models,
    Model,
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn of(path: &str) -> Option<Self> {
        Some(match path.trim_end_matches('/') {
            "/v1/models" => Self::Models,
            p if p.starts_with("/v1/models/") => Self::Model,
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            _ => return None,
        })
    }

    fn method(self) -> Method {
        match self {
            Self::Models | Self::Model => Method::GET,
            _ => Method::POST,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Models | Self::Model => "models",
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// What is known about a request so far, for its record.
pub(crate) struct Call {
    request_id: String,
    at: chrono::DateTime<chrono::Utc>,
    started: Instant,
    endpoint: &'static str,
    key: Option<Arc<GatewayKey>>,
    model: String,
    app: Option<String>,
    service: Option<String>,
    instance: Option<Arc<str>>,
    digest: Option<String>,
    engine: Option<String>,
    stream: bool,
    prompt: Option<String>,
    /// Sent to the replica (for the queue-time metric).
    sent: Option<Instant>,
    held: bool,
}

impl Call {
    fn new(request_id: &HeaderValue, path: &str) -> Self {
        Self {
            request_id: request_id.to_str().unwrap_or_default().to_string(),
            at: chrono::Utc::now(),
            started: Instant::now(),
            endpoint: Endpoint::of(path).map_or("unknown", Endpoint::name),
            key: None,
            model: String::new(),
            app: None,
            service: None,
            instance: None,
            digest: None,
            engine: None,
            stream: false,
            prompt: None,
            sent: None,
            held: false,
        }
    }

    /// The record of this call, ended with `status`.
    fn record(&self, status: StatusCode, outcome: Outcome) -> bora_api::RequestRecord {
        let elapsed = |at: Instant| at.saturating_duration_since(self.started).as_millis() as u64;
        bora_api::RequestRecord {
            id: self.request_id.clone(),
            at: self.at,
            key_id: self.key.as_ref().map(|k| k.id.clone()),
            key_name: self.key.as_ref().map(|k| k.name.clone()),
            model: self.model.clone(),
            app: self.app.clone(),
            service: self.service.clone(),
            instance: self.instance.as_deref().map(str::to_string),
            model_digest: self.digest.clone(),
            engine: self.engine.clone(),
            endpoint: self.endpoint.to_string(),
            stream: self.stream,
            status: status.as_u16(),
            error: outcome.error,
            prompt_tokens: outcome.usage.prompt_tokens,
            completion_tokens: outcome.usage.completion_tokens,
            duration_ms: elapsed(Instant::now()),
            ttft_ms: outcome.first_token.map(elapsed),
            prompt: self.prompt.clone(),
            completion: outcome.content,
        }
    }
}

/// How a call ended.
#[derive(Default)]
struct Outcome {
    error: Option<String>,
    usage: tap::Usage,
    first_token: Option<Instant>,
    content: Option<String>,
}

impl Router {
    /// Whether a request is for the gateway: a `/v1` path at a host that
    /// routes to no service and no sandbox.
    pub(crate) fn is_gateway_request(&self, host: Option<&str>, path: &str) -> bool {
        if path != "/v1" && !path.starts_with("/v1/") {
            return false;
        }
        host.is_none_or(|host| !self.table.load().routes_host(&normalize_host(host)))
    }

    /// The model service called `name`, from the current table.
    pub(crate) fn model_service(&self, name: &str) -> Result<Arc<CompiledService>, ProxyError> {
        self.table
            .load()
            .model(name)
            .map(|model| model.service.clone())
            .ok_or_else(|| {
                ErrorKind::UnknownModel {
                    model: name.to_string(),
                }
                .into()
            })
    }

    /// Answers one gateway request. Never fails: errors become OpenAI
    /// error responses, and every request is recorded.
    pub(crate) async fn gateway(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        tasks: &ServeTasks,
    ) -> Response<ProxyBody> {
        let request_id = headers::request_id(request.headers());
        let span = request_span(&request_id);
        let mut scope = RequestScope::new(request_id.clone(), self.hooks.clone());
        let mut call = Call::new(&request_id, request.uri().path());
        async {
            match self
                .serve_gateway(request, client, tasks, &mut scope, &mut call)
                .await
            {
                Ok(mut response) => {
                    response.headers_mut().insert(X_REQUEST_ID, request_id);
                    response
                }
                Err(error) => self.gateway_failed(error, &request_id, call, scope),
            }
        }
        .instrument(span)
        .await
    }

    async fn serve_gateway(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        tasks: &ServeTasks,
        scope: &mut RequestScope,
        call: &mut Call,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let gateway = &self.gateway;
        let path = request.uri().path().to_string();
        let key = gateway.authenticate(request.headers())?;
        call.key = Some(key.clone());
        let Some(endpoint) = Endpoint::of(&path) else {
            return Err(GatewayError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                format!(
                    "unknown request URL: {} {path}: the gateway serves GET /v1/models, POST /v1/chat/completions, /v1/completions and /v1/embeddings",
                    request.method()
                ),
            ));
        };
        if request.method() != endpoint.method() {
            return Err(GatewayError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                format!(
                    "{path} takes {}, not {}",
                    endpoint.method(),
                    request.method()
                ),
            ));
        }
        match endpoint {
            Endpoint::Models => return Ok(self.list_models(&key, scope)),
            Endpoint::Model => {
                let name = path.trim_end_matches('/').trim_start_matches("/v1/models/");
                return self.show_model(&key, name, scope);
            }
            _ => {}
        }
        gateway.admit(&key)?;

        // The body: bounded, a JSON object naming a model.
        let (parts, body) = request.into_parts();
        let body = read_body(body, &parts.headers, self.config.max_gateway_body).await?;
        if self.config.retain_content {
            call.prompt = Some(String::from_utf8_lossy(&body).into_owned());
        }
        let mut json: Value = serde_json::from_slice(&body).map_err(|e| {
            GatewayError::bad_request(
                "invalid_json",
                None,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        let Some(object) = json.as_object_mut() else {
            return Err(GatewayError::bad_request(
                "invalid_json",
                None,
                "the request body must be a JSON object".into(),
            ));
        };
        let model_name = match object.get("model") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            Some(_) => {
                return Err(GatewayError::bad_request(
                    "invalid_type",
                    Some("model"),
                    "`model` must be a model's name, a string (GET /v1/models lists them)".into(),
                ));
            }
            None => {
                return Err(GatewayError::bad_request(
                    "missing_required_parameter",
                    Some("model"),
                    "the request names no `model`: GET /v1/models lists the models your key may use"
                        .into(),
                ));
            }
        };
        call.model = model_name.clone();
        let model = self.authorise(&key, &model_name)?;
        call.app = Some(model.service.app.to_string());
        call.service = Some(model.service.service.to_string());
        call.digest = model.digest.clone();
        call.engine = Some(model.engine.clone());
        scope.update(|info| {
            info.app = Some(model.service.app.clone());
            info.service = Some(model.service.service.clone());
        });
        scope.set_stats(RequestStats::arrive(model.service.state.clone()));

        // Streams: ask the replica for usage; drop it later if the client
        // did not ask.
        call.stream = endpoint != Endpoint::Embeddings
            && object.get("stream").and_then(Value::as_bool) == Some(true);
        let mut strip_usage = false;
        let body = if call.stream {
            let asked = object
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                == Some(true);
            if asked {
                body
            } else {
                strip_usage = true;
                let options = object.entry("stream_options").or_insert_with(|| json!({}));
                if !options.is_object() {
                    *options = json!({});
                }
                options["include_usage"] = Value::Bool(true);
                Bytes::from(serde_json::to_vec(&json).map_err(|e| {
                    GatewayError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "internal",
                        format!("cannot re-encode the request: {e}"),
                    )
                })?)
            }
        } else {
            body
        };
        let hashes = match endpoint {
            Endpoint::ChatCompletions => json
                .get("messages")
                .map(|m| affinity::block_hashes(m.to_string().as_bytes()))
                .unwrap_or_default(),
            Endpoint::Completions => match json.get("prompt") {
                Some(Value::String(prompt)) => affinity::block_hashes(prompt.as_bytes()),
                Some(other) => affinity::block_hashes(other.to_string().as_bytes()),
                None => Vec::new(),
            },
            _ => Vec::new(),
        };

        // A sleeping model wakes (and loads) while the request waits.
        if model.service.backends.is_empty() {
            if !model.service.wakeable {
                return Err(ProxyError::from(ErrorKind::NoHealthyInstance {
                    app: model.service.app.clone(),
                    service: model.service.service.clone(),
                })
                .into());
            }
            call.held = true;
            self.gateway.metrics.held(&model_name);
            self.hold(
                model.service.clone(),
                Lookup::Model(&model_name),
                self.config.model_hold_timeout,
                scope,
            )
            .await?;
        }

        // Forward, retrying on another replica while nothing reached the
        // client.
        let mut upstream_headers = parts.headers;
        headers::strip_hop_by_hop(&mut upstream_headers, false);
        let host = upstream_headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        upstream_headers.remove(AUTHORIZATION);
        upstream_headers.remove(HOST);
        upstream_headers.remove(CONTENT_LENGTH);
        headers::add_forwarding(&mut upstream_headers, client.ip().to_canonical(), &host);
        upstream_headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&call.request_id).unwrap_or(HeaderValue::from_static("-")),
        );
        upstream_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or(path.as_str(), |p| p.as_str())
            .to_string();

        let mut failed: Vec<Arc<str>> = Vec::new();
        let mut last_error: Option<GatewayError> = None;
        let response = loop {
            if failed.len() >= MAX_ATTEMPTS {
                break None;
            }
            // The current table: the model may have gained or lost replicas.
            let model = self.authorise(&key, &model_name)?;
            let Some(index) = self.choose_replica(&model, &hashes, &failed) else {
                break None;
            };
            let backend = &model.service.backends[index];
            let instance = backend.instance_id.clone();
            tracing::Span::current().record("instance", &*instance);
            scope.enter_instance(backend.lease());
            scope.update(|info| info.instance_id = Some(instance.clone()));
            scope.phase(Phase::Forwarding);
            call.instance = Some(instance.clone());
            call.sent = Some(Instant::now());
            let addr = SocketAddr::new(backend.ip, model.port);
            let mut attempt = Request::new(Full::new(body.clone()));
            *attempt.method_mut() = Method::POST;
            *attempt.uri_mut() =
                Uri::try_from(format!("http://{addr}{path_and_query}")).map_err(|e| {
                    GatewayError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "internal",
                        format!("cannot build the replica's URI: {e}"),
                    )
                })?;
            *attempt.version_mut() = Version::HTTP_11;
            *attempt.headers_mut() = upstream_headers.clone();
            let sent =
                tokio::time::timeout(RESPONSE_TIMEOUT, tasks.gateway_client.request(attempt)).await;
            let reason = match sent {
                Ok(Ok(response))
                    if matches!(
                        response.status(),
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    ) && failed.len() + 1 < MAX_ATTEMPTS
                        && model.service.backends.len() > failed.len() + 1 =>
                {
                    format!("answered {}", response.status())
                }
                Ok(Ok(response)) => {
                    if let Some(hashes) = (!hashes.is_empty()).then_some(&hashes) {
                        self.gateway
                            .prefixes
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(model.name.clone())
                            .or_default()
                            .record(hashes, &instance);
                    }
                    break Some(response);
                }
                Ok(Err(error)) => {
                    // Refused, reset or closed unanswered: nothing was
                    // answered, so another replica may try.
                    self.gateway.replicas.mark_down(&instance, DOWN_FOR);
                    crate::proxy::describe(&error)
                }
                Err(_elapsed) => {
                    scope.leave_instance();
                    let mut error = GatewayError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "server_error",
                        "timeout",
                        format!(
                            "replica {instance} of model {model_name} did not answer within {} s",
                            RESPONSE_TIMEOUT.as_secs()
                        ),
                    );
                    error.replica = Some(instance);
                    return Err(error);
                }
            };
            tracing::debug!(%instance, %reason, "replica failed before answering; trying another");
            scope.leave_instance();
            let mut error = GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "replica_failed",
                format!("replica {instance} of model {model_name} failed: {reason}"),
            );
            error.replica = Some(instance.clone());
            last_error = Some(error);
            failed.push(instance);
        };
        let Some(mut response) = response else {
            return Err(last_error.unwrap_or_else(|| {
                ProxyError::from(ErrorKind::NoHealthyInstance {
                    app: model.service.app.clone(),
                    service: model.service.service.clone(),
                })
                .into()
            }));
        };
        if let Some(sent) = call.sent {
            self.gateway
                .metrics
                .queued(&model_name, sent.saturating_duration_since(call.started));
        }
        scope.respond(response.status());
        scope.phase(Phase::ResponseHeaders);
        headers::strip_hop_by_hop(response.headers_mut(), false);
        let event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if event_stream {
            // Events may be dropped: the length changes.
            response.headers_mut().remove(CONTENT_LENGTH);
        }
        let status = response.status();
        let tap = tap::Tap::new(event_stream, strip_usage, self.config.retain_content);
        let relay = Relay {
            tap,
            ended: false,
            finish: Some(Finish {
                gateway: self.gateway.clone(),
                call: std::mem::replace(call, Call::new(&HeaderValue::from_static(""), "")),
                status,
                first_token: None,
            }),
        };
        Ok(response.map(|body| ProxyBody::gateway(body, relay, scope.take())))
    }

    /// The model called `name`, if `key` may use it.
    fn authorise(&self, key: &GatewayKey, name: &str) -> Result<Arc<CompiledModel>, GatewayError> {
        let allowed = key.models.is_empty() || key.models.iter().any(|m| m == name);
        let model = self.table.load().model(name).cloned();
        match model {
            Some(model) if allowed => Ok(model),
            Some(_) => {
                let mut error = GatewayError::new(
                    StatusCode::FORBIDDEN,
                    "invalid_request_error",
                    "model_not_allowed",
                    format!(
                        "key {:?} may not use model {name:?}; it may use: {}",
                        key.name,
                        key.models.join(", ")
                    ),
                );
                error.param = Some("model");
                Err(error)
            }
            None => Err(ProxyError::from(ErrorKind::UnknownModel {
                model: name.to_string(),
            })
            .into()),
        }
    }

    /// The replica of `model` a request with prompt blocks `hashes` goes
    /// to, skipping `failed`.
    fn choose_replica(
        &self,
        model: &CompiledModel,
        hashes: &[u64],
        failed: &[Arc<str>],
    ) -> Option<usize> {
        let backends = &model.service.backends;
        let ids: Vec<Arc<str>> = backends.iter().map(|b| b.instance_id.clone()).collect();
        let affinity = !hashes.is_empty() && self.config.prefix_affinity;
        let (matched, held) = if affinity {
            let prefixes = self
                .gateway
                .prefixes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match prefixes.get(&model.name) {
                Some(map) => (map.matched(hashes, &ids), map.held(&ids)),
                None => (vec![0; ids.len()], vec![0; ids.len()]),
            }
        } else {
            (vec![0; ids.len()], vec![0; ids.len()])
        };
        let mut candidates: Vec<affinity::Candidate> = backends
            .iter()
            .zip(matched.into_iter().zip(held))
            .map(|(backend, (matched, held))| {
                let report = self.gateway.replicas.get(&backend.instance_id);
                affinity::Candidate {
                    outstanding: backend.in_flight(),
                    waiting: report.waiting,
                    kv_usage: report.kv_usage,
                    matched,
                    held,
                    excluded: failed.contains(&backend.instance_id) || report.down,
                }
            })
            .collect();
        // Every replica marked down: try them anyway rather than refuse.
        if candidates.iter().all(|c| c.excluded) {
            for (candidate, backend) in candidates.iter_mut().zip(backends) {
                candidate.excluded = failed.contains(&backend.instance_id);
            }
        }
        let turn = self.gateway.turn.fetch_add(1, Ordering::Relaxed);
        let long_prompt = affinity && hashes.len() >= affinity::MIN_MATCHED_BLOCKS;
        affinity::choose(&candidates, long_prompt, turn)
    }

    /// `GET /v1/models`: the models `key` may use.
    fn list_models(&self, key: &GatewayKey, scope: &mut RequestScope) -> Response<ProxyBody> {
        let table = self.table.load();
        let mut data: Vec<Value> = table
            .models()
            .filter(|m| key.models.is_empty() || key.models.iter().any(|k| **k == *m.name))
            .map(|m| model_object(m))
            .collect();
        data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json_response(
            StatusCode::OK,
            json!({"object": "list", "data": data}),
            scope,
        )
    }

    /// `GET /v1/models/{name}`.
    fn show_model(
        &self,
        key: &GatewayKey,
        name: &str,
        scope: &mut RequestScope,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let model = self.authorise(key, name)?;
        Ok(json_response(StatusCode::OK, model_object(&model), scope))
    }

    /// The answer to a failed gateway request, recorded.
    fn gateway_failed(
        &self,
        error: GatewayError,
        request_id: &HeaderValue,
        call: Call,
        mut scope: RequestScope,
    ) -> Response<ProxyBody> {
        scope.leave_instance();
        if scope.stats().is_none() {
            scope.set_stats(RequestStats::arrive(self.services.unrouted()));
        }
        scope.respond(error.status);
        if error.status.is_server_error() {
            tracing::warn!(status = %error.status, error = %error.message, "gateway request failed");
        } else {
            tracing::debug!(status = %error.status, error = %error.message, "gateway request refused");
        }
        let outcome = Outcome {
            error: Some(error.message.clone()),
            ..Outcome::default()
        };
        self.gateway
            .metrics
            .finished(&call, error.status, &tap::Usage::default(), None);
        self.gateway.record(call.record(error.status, outcome));
        let mut response = Response::new(ProxyBody::message(error.body(), scope));
        *response.status_mut() = error.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(X_REQUEST_ID, request_id.clone());
        if let Some(seconds) = error.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A model as `/v1/models` shows it.
fn model_object(model: &CompiledModel) -> Value {
    json!({
        "id": &*model.name,
        "object": "model",
        "created": model.created,
        "owned_by": &*model.service.app,
    })
}

fn json_response(status: StatusCode, body: Value, scope: &mut RequestScope) -> Response<ProxyBody> {
    scope.respond(status);
    let mut response = Response::new(ProxyBody::message(format!("{body}\n"), scope.take()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is larger than the gateway's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            GatewayError::bad_request(
                "invalid_body",
                None,
                format!("could not read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// What happens when a relayed answer ends.
struct Finish {
    gateway: Arc<Gateway>,
    call: Call,
    status: StatusCode,
    first_token: Option<Instant>,
}

impl Finish {
    fn complete(self, tap: &tap::Tap, error: Option<String>) {
        let usage = tap.usage.unwrap_or_default();
        let error = error.or_else(|| tap.error.clone()).or_else(|| {
            // A replica's own error answer: its message.
            (self.status.as_u16() >= 400).then(|| {
                tap.content()
                    .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("the replica answered {}", self.status))
            })
        });
        let gateway = &self.gateway;
        if let Some(key) = &self.call.key {
            gateway.charge(&key.id, usage.prompt_tokens + usage.completion_tokens);
        }
        gateway
            .metrics
            .finished(&self.call, self.status, &usage, self.first_token);
        if error.is_some() && self.status.as_u16() < 400 {
            gateway.metrics.broken(&self.call);
        }
        let content = if self.call.prompt.is_some() {
            tap.content()
        } else {
            None
        };
        let outcome = Outcome {
            error,
            usage,
            first_token: self.first_token,
            content,
        };
        gateway.record(self.call.record(self.status, outcome));
    }
}

/// The relay of one answer: taps it, ends it cleanly if it breaks, and
/// records the call when it is over (or dropped: the client went away).
pub(crate) struct Relay {
    tap: tap::Tap,
    ended: bool,
    finish: Option<Finish>,
}

impl Relay {
    pub(crate) fn poll_frame(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers: pass them on.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    let mut out = self.tap.feed(data);
                    if self.tap.first_data
                        && let Some(finish) = &mut self.finish
                        && finish.first_token.is_none()
                    {
                        finish.first_token = Some(Instant::now());
                    }
                    // The last frame: end now, as the client side may not
                    // poll again once it has the whole length.
                    if body.is_end_stream() {
                        let rest = self.end();
                        if !rest.is_empty() {
                            let mut joined = BytesMut::from(&out[..]);
                            joined.extend_from_slice(&rest);
                            out = joined.freeze();
                        }
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    if self.ended {
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(None) => {
                    let rest = self.end();
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
                Poll::Ready(Some(Err(error))) => {
                    self.ended = true;
                    let reason = format!(
                        "the replica's answer broke off: {}",
                        crate::proxy::describe(&error)
                    );
                    if let Some(finish) = self.finish.take() {
                        if let Some(instance) = &finish.call.instance {
                            finish.gateway.replicas.mark_down(instance, DOWN_FOR);
                        }
                        finish.complete(&self.tap, Some(reason.clone()));
                    }
                    if self.tap.is_stream() {
                        // End the stream with an error event the SDKs raise.
                        return Poll::Ready(Some(Ok(Frame::data(tap::error_event(&reason)))));
                    }
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    /// The replica's answer is over: what is left to send, and the record.
    fn end(&mut self) -> Bytes {
        self.ended = true;
        let rest = self.tap.finish();
        if let Some(finish) = self.finish.take() {
            finish.complete(&self.tap, None);
        }
        rest
    }

    pub(crate) fn is_end_stream(&self, _body: &Incoming) -> bool {
        self.ended
    }

    pub(crate) fn size_hint(&self, body: &Incoming) -> SizeHint {
        if self.tap.is_stream() {
            SizeHint::default()
        } else {
            body.size_hint()
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.complete(
                &self.tap,
                Some("the client went away before the answer ended".into()),
            );
        }
    }
}
