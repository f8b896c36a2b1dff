//! A small in-memory stand-in for Bora's REST API, served on 127.0.0.1:0,
//! that records every request. Deployments roll out by a script chosen by
//! their image name, one step per `GET /v1/deployments/{id}`:
//!
//! - `ok`: pulling → starting → healthy (one instance follows along);
//! - `crash`: starting → failed ("instance exited with status 1");
//! - anything else: stays `starting` forever.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bora_api::{
    ApiErrorBody, App, Deployment, DeploymentStatus, ErrorCode, Instance, InstanceState, List,
    LogLine, LogStream, Secret, Service, ServiceSpec, ServiceType, Transition,
};
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

pub const TOKEN: &str = "test-token";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, as sent.
    pub target: String,
    pub authorization: Option<String>,
    pub body: String,
}

#[derive(Default)]
pub struct World {
    pub apps: Vec<App>,
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
    pub instances: Vec<Instance>,
    pub secrets: Vec<Secret>,
    pub secret_values: HashMap<String, String>,
    pub logs: Vec<LogLine>,
    pub requests: Vec<Recorded>,
    polls: HashMap<String, usize>,
    next_id: u64,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    pub world: Arc<Mutex<World>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    pub async fn start(world: World) -> Self {
        let world = Arc::new(Mutex::new(world));
        let router = Router::new().fallback(handle).with_state(world.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, world, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.world.lock().unwrap().requests.clone()
    }

    /// `METHOD target` of every request, in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }
}

/// A fixed time, so outputs are stable.
pub fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).unwrap()
}

/// IDs look like Bora's (32 hex digits); they differ in their first 8
/// and share the rest, so short IDs are stable and suffixes ambiguous.
pub fn id(n: u64) -> String {
    format!("{n:08x}{SHARED_TAIL}")
}

/// The part every fake ID ends with.
pub const SHARED_TAIL: &str = "7c3e9b2a4d1f4e6a8b0c9d2e";

impl World {
    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        id(1000 + self.next_id)
    }

    pub fn add_app(&mut self, name: &str) {
        if self.apps.iter().any(|a| a.name == name) {
            return;
        }
        let id = self.fresh_id();
        self.apps.push(App {
            id,
            name: name.into(),
            created_at: t0(),
            updated_at: t0(),
        });
    }

    pub fn add_service(&mut self, app: &str, name: &str) {
        self.add_app(app);
        if self.services.iter().any(|s| s.app == app && s.name == name) {
            return;
        }
        let id = self.fresh_id();
        self.services.push(Service {
            id,
            app: app.into(),
            name: name.into(),
            kind: ServiceType::Web,
            active_deployment: None,
            latest_deployment: None,
            scaling: None,
            url: Some(format!("http://{name}.{app}.localhost:8080/")),
            created_at: t0(),
            updated_at: t0(),
        });
    }

    pub fn add_instance(&mut self, id: String, app: &str, service: &str, state: InstanceState) {
        self.instances.push(Instance {
            id,
            app: app.into(),
            service: service.into(),
            deployment: id_of_deployment(),
            node: "local".into(),
            state,
            reason: "health check passed".into(),
            ip: Some("10.88.0.2".into()),
            restarts: 0,
            created_at: t0(),
            updated_at: t0(),
            history: vec![
                Transition {
                    at: t0(),
                    from: None,
                    to: InstanceState::Pending,
                    reason: "scheduled".into(),
                },
                Transition {
                    at: t0(),
                    from: Some(InstanceState::Pending),
                    to: state,
                    reason: "health check passed".into(),
                },
            ],
        });
    }
}

/// The deployment ID [`World::add_instance`] uses.
pub fn id_of_deployment() -> String {
    id(0xd1)
}

type Shared = Arc<Mutex<World>>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(serde_json::to_value(value).unwrap())).into_response()
}

fn error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap();
    json(status, &ApiErrorBody::new(code, message))
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

async fn handle(
    State(world): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = world.lock().unwrap();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_string());
    w.requests.push(Recorded {
        method: method.clone(),
        target: uri.to_string(),
        authorization: authorization.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    if authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return error(ErrorCode::Unauthenticated, "invalid or missing token");
    }
    let q = query(&uri);
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let not_found = |what: &str| error(ErrorCode::NotFound, &format!("{what} not found"));

    match (method, path.as_slice()) {
        (Method::GET, ["v1", "apps"]) => json(
            StatusCode::OK,
            &List {
                items: w.apps.clone(),
            },
        ),
        (Method::GET, ["v1", "apps", app]) => match w.apps.iter().find(|a| a.name == *app) {
            Some(a) => json(StatusCode::OK, a),
            None => not_found(&format!("app \"{app}\"")),
        },
        (Method::DELETE, ["v1", "apps", app]) => {
            let before = w.apps.len();
            w.apps.retain(|a| a.name != *app);
            if w.apps.len() == before {
                return not_found(&format!("app \"{app}\""));
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["v1", "services"]) => {
            let items = w
                .services
                .iter()
                .filter(|s| q.get("app").is_none_or(|a| *a == s.app))
                .cloned()
                .collect();
            json(StatusCode::OK, &List { items })
        }
        (Method::GET, ["v1", "apps", app, "services", service]) => {
            match w
                .services
                .iter()
                .find(|s| s.app == *app && s.name == *service)
            {
                Some(s) => json(StatusCode::OK, s),
                None => not_found(&format!("service \"{app}/{service}\"")),
            }
        }
        (Method::DELETE, ["v1", "apps", app, "services", service]) => {
            w.services
                .retain(|s| !(s.app == *app && s.name == *service));
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["v1", "apps", app, "deployments"]) => {
            let spec: ServiceSpec = match serde_json::from_slice(&body) {
                Ok(spec) => spec,
                Err(e) => return error(ErrorCode::InvalidArgument, &format!("bad spec: {e}")),
            };
            if spec.image == "rejected" {
                return error(
                    ErrorCode::InvalidArgument,
                    "image \"rejected\" is not allowed here",
                );
            }
            w.add_service(app, &spec.name);
            let version = w
                .deployments
                .iter()
                .filter(|d| d.app == *app && d.service == spec.name)
                .count() as u64
                + 1;
            let id = w.fresh_id();
            let d = Deployment {
                id,
                app: app.to_string(),
                service: spec.name.clone(),
                version,
                spec,
                image_digest: None,
                model_digest: None,
                status: DeploymentStatus::Pending,
                reason: Some("waiting for the scheduler".into()),
                created_at: t0(),
                updated_at: t0(),
            };
            w.deployments.insert(0, d.clone());
            json(StatusCode::CREATED, &d)
        }
        (Method::GET, ["v1", "deployments"]) => {
            let items = w
                .deployments
                .iter()
                .filter(|d| q.get("app").is_none_or(|a| *a == d.app))
                .filter(|d| q.get("service").is_none_or(|s| *s == d.service))
                .cloned()
                .collect();
            json(StatusCode::OK, &List { items })
        }
        (Method::GET, ["v1", "deployments", id]) => {
            let id = id.to_string();
            if !w.deployments.iter().any(|d| d.id == id) {
                return not_found(&format!("deployment \"{id}\""));
            }
            advance(&mut w, &id);
            let d = w.deployments.iter().find(|d| d.id == id).unwrap();
            json(StatusCode::OK, d)
        }
        (Method::DELETE, ["v1", "deployments", id]) => {
            let before = w.deployments.len();
            w.deployments.retain(|d| d.id != *id);
            if w.deployments.len() == before {
                return not_found(&format!("deployment \"{id}\""));
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["v1", "instances"]) => {
            let all = q.get("all").map(String::as_str) == Some("true");
            let items = w
                .instances
                .iter()
                .filter(|i| q.get("app").is_none_or(|a| *a == i.app))
                .filter(|i| q.get("service").is_none_or(|s| *s == i.service))
                .filter(|i| q.get("deployment").is_none_or(|d| *d == i.deployment))
                .filter(|i| all || !i.state.is_final())
                .map(|i| Instance {
                    history: vec![],
                    ..i.clone()
                })
                .collect();
            json(StatusCode::OK, &List { items })
        }
        (Method::GET, ["v1", "instances", id]) => match w.instances.iter().find(|i| i.id == *id) {
            Some(i) => json(StatusCode::OK, i),
            None => not_found(&format!("instance \"{id}\"")),
        },
        (Method::DELETE, ["v1", "instances", id]) => {
            w.instances.retain(|i| i.id != *id);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["v1", "secrets"]) => json(
            StatusCode::OK,
            &List {
                items: w.secrets.clone(),
            },
        ),
        (Method::POST, ["v1", "secrets"]) => {
            let create: bora_api::CreateSecret = serde_json::from_slice(&body).unwrap();
            if w.secrets.iter().any(|s| s.name == create.name) {
                return error(
                    ErrorCode::Conflict,
                    &format!("secret \"{}\" already exists", create.name),
                );
            }
            let secret = Secret {
                name: create.name.clone(),
                created_at: t0(),
                updated_at: t0(),
            };
            w.secrets.push(secret.clone());
            w.secret_values.insert(create.name, create.value);
            json(StatusCode::CREATED, &secret)
        }
        (Method::PUT, ["v1", "secrets", name]) => {
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let Some(secret) = w.secrets.iter().find(|s| s.name == *name).cloned() else {
                return not_found(&format!("secret \"{name}\""));
            };
            w.secret_values.insert(
                name.to_string(),
                body["value"].as_str().unwrap().to_string(),
            );
            json(StatusCode::OK, &secret)
        }
        (Method::DELETE, ["v1", "secrets", name]) => {
            w.secrets.retain(|s| s.name != *name);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["v1", "apps", app, "services", service, "logs"]) => {
            if !w
                .services
                .iter()
                .any(|s| s.app == *app && s.name == *service)
            {
                return not_found(&format!("service \"{app}/{service}\""));
            }
            let tail: usize = q.get("tail").and_then(|t| t.parse().ok()).unwrap_or(100);
            let skip = w.logs.len().saturating_sub(tail);
            let mut text = String::new();
            for line in &w.logs[skip..] {
                text.push_str(&serde_json::to_string(line).unwrap());
                text.push('\n');
            }
            (
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                Body::from(text),
            )
                .into_response()
        }
        (m, _) => error(
            ErrorCode::NotFound,
            &format!("no route for {m} {}", uri.path()),
        ),
    }
}

/// One rollout step of a deployment, by its image's script.
fn advance(w: &mut World, deployment_id: &str) {
    let step = {
        let n = w.polls.entry(deployment_id.to_string()).or_default();
        *n += 1;
        *n
    };
    let d = w
        .deployments
        .iter()
        .find(|d| d.id == deployment_id)
        .unwrap()
        .clone();
    let (status, reason, instance): (DeploymentStatus, &str, Option<(InstanceState, &str)>) =
        match (d.spec.image.as_str(), step) {
            ("ok", 1) => (
                DeploymentStatus::Pulling,
                "pulling image ok",
                Some((InstanceState::Pulling, "pulling image")),
            ),
            ("ok", 2) => (
                DeploymentStatus::Starting,
                "starting 1 instance",
                Some((InstanceState::Starting, "container started")),
            ),
            ("ok", _) => (
                DeploymentStatus::Healthy,
                "1 of 1 instances healthy",
                Some((InstanceState::Healthy, "health check passed")),
            ),
            ("crash", 1) => (
                DeploymentStatus::Starting,
                "starting 1 instance",
                Some((InstanceState::Starting, "container started")),
            ),
            ("crash", _) => (
                DeploymentStatus::Failed,
                "instance exited with status 1",
                Some((InstanceState::Failed, "exited with status 1")),
            ),
            _ => (
                DeploymentStatus::Starting,
                "starting 1 instance",
                Some((InstanceState::Starting, "container started")),
            ),
        };
    let d = w
        .deployments
        .iter_mut()
        .find(|d| d.id == deployment_id)
        .unwrap();
    d.status = status;
    d.reason = Some(reason.to_string());
    let (app, service) = (d.app.clone(), d.service.clone());
    if let Some((state, reason)) = instance {
        match w
            .instances
            .iter_mut()
            .find(|i| i.deployment == deployment_id)
        {
            Some(i) => {
                i.state = state;
                i.reason = reason.to_string();
            }
            None => {
                let id = w.fresh_id();
                w.instances.push(Instance {
                    id,
                    app,
                    service,
                    deployment: deployment_id.to_string(),
                    node: "local".into(),
                    state,
                    reason: reason.to_string(),
                    ip: None,
                    restarts: 0,
                    created_at: t0(),
                    updated_at: t0(),
                    history: vec![],
                });
            }
        }
    }
}

/// A log line of the first instance.
pub fn log(n: i64, stream: LogStream, line: &str) -> LogLine {
    LogLine {
        at: t0() + chrono::Duration::seconds(n),
        instance: id(0xa1),
        stream,
        line: line.into(),
    }
}
