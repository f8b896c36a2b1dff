//! The REST API under `/v1/`. Every request needs `Authorization: Bearer
//! <token>`; errors are `{"error": {"code", "message"}}`, made in one place
//! ([`ApiError`]'s `IntoResponse`). The OpenAPI document is generated from
//! the handlers' annotations and served at `/v1/openapi.json`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bora_api::{
    ApiErrorBody, App, CreateKeyRequest, CreateSecret, CreatedKey, Deployment, ENVD_PORT,
    ErrorCode, Event, ExecEvent, ExecRequest, InferenceKey, Instance, List, LogLine, NewSandbox,
    RequestRecord, Sandbox, SandboxState, SandboxTimeout, Secret, Service, ServiceSpec, UsageRow,
};
use bora_node::logs::{Follower, LogRecord};
use bora_store::{DeploymentFilter, InstanceFilter};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::OpenApi;

use crate::ControlError;
use crate::controller::Controller;
use crate::envd::Envd;

#[derive(Clone)]
pub struct ApiState {
    pub ctl: Arc<Controller>,
    pub token: Arc<str>,
    /// Served as Prometheus text at `GET /metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// An API error: a code and a message, rendered as JSON.
pub struct ApiError(pub ErrorCode, pub String);

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        if matches!(e, ControlError::Store(_) | ControlError::Internal(_)) {
            tracing::error!(error = %e, "internal error");
        }
        ApiError(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ApiErrorBody::new(self.0, self.1))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON bodies parsed with errors in the API's format (400, naming the
/// field and position), not the framework's.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            ErrorCode::InvalidArgument,
            format!("invalid request body: {e}"),
        )
    })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Bora API", description = "Deploy containers, scale them, reach them through the router."),
    paths(
        list_apps, get_app, delete_app, list_services, get_service, delete_service, create_deployment,
        list_deployments, get_deployment, delete_deployment, list_instances, get_instance, delete_instance,
        list_secrets, create_secret, update_secret, delete_secret, service_logs, list_events,
        create_sandbox, list_sandboxes, get_sandbox, kill_sandbox, set_sandbox_timeout,
        pause_sandbox, resume_sandbox, exec_in_sandbox, read_sandbox_file, write_sandbox_file,
        crate::models::list_model_services,
        create_key, list_keys, revoke_key, usage, audit
    ),
    components(schemas(ApiErrorBody, LogLine, ExecEvent, AuditPage)),
    modifiers(&BearerAuth),
    security(("token" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/apps", get(list_apps))
        .route("/apps/{app}", get(get_app).delete(delete_app))
        .route("/services", get(list_services))
        .route(
            "/apps/{app}/services/{service}",
            get(get_service).delete(delete_service),
        )
        .route("/apps/{app}/services/{service}/logs", get(service_logs))
        .route(
            "/apps/{app}/deployments",
            axum::routing::post(create_deployment),
        )
        .route("/deployments", get(list_deployments))
        .route(
            "/deployments/{id}",
            get(get_deployment).delete(delete_deployment),
        )
        .route("/instances", get(list_instances))
        .route("/instances/{id}", get(get_instance).delete(delete_instance))
        .route("/secrets", get(list_secrets).post(create_secret))
        .route(
            "/secrets/{name}",
            axum::routing::put(update_secret).delete(delete_secret),
        )
        .route("/events", get(list_events))
        .route("/model-services", get(crate::models::list_model_services))
        .route("/sandboxes", get(list_sandboxes).post(create_sandbox))
        .route("/sandboxes/{id}", get(get_sandbox).delete(kill_sandbox))
        .route(
            "/sandboxes/{id}/timeout",
            axum::routing::post(set_sandbox_timeout),
        )
        .route("/sandboxes/{id}/pause", axum::routing::post(pause_sandbox))
        .route(
            "/sandboxes/{id}/resume",
            axum::routing::post(resume_sandbox),
        )
        .route("/sandboxes/{id}/exec", axum::routing::post(exec_in_sandbox))
        .route(
            "/sandboxes/{id}/files",
            get(read_sandbox_file).put(write_sandbox_file),
        )
        .route("/keys", get(list_keys).post(create_key))
        .route("/keys/{key}", axum::routing::delete(revoke_key))
        .route("/usage", get(usage))
        .route("/audit", get(audit))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            ApiError(
                ErrorCode::NotFound,
                "no such API endpoint: see /v1/openapi.json".into(),
            )
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state.clone());
    let e2b = crate::e2b::router(state.clone());
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    Router::new()
        .nest("/v1", v1)
        .nest("/e2b", e2b)
        .merge(metrics)
        .fallback(|| async {
            ApiError(
                ErrorCode::NotFound,
                "no such API endpoint: the API is under /v1/".into(),
            )
        })
}

async fn authenticate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError(
            ErrorCode::Unauthenticated,
            "the token was refused: use the one in <data-dir>/admin.token (BORA_TOKEN)".into(),
        )
        .into_response(),
        None => ApiError(
            ErrorCode::Unauthenticated,
            "missing `Authorization: Bearer <token>`: the token is in <data-dir>/admin.token"
                .into(),
        )
        .into_response(),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[utoipa::path(get, path = "/v1/apps", responses((status = 200, body = List<App>)))]
async fn list_apps(State(s): State<ApiState>) -> ApiResult<Json<List<App>>> {
    Ok(Json(List {
        items: s.ctl.apps()?,
    }))
}

#[utoipa::path(get, path = "/v1/apps/{app}", responses((status = 200, body = App), (status = 404, body = ApiErrorBody)))]
async fn get_app(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult<Json<App>> {
    Ok(Json(
        s.ctl.store().get_app(&app).map_err(ControlError::from)?,
    ))
}

#[utoipa::path(delete, path = "/v1/apps/{app}", responses((status = 204), (status = 404, body = ApiErrorBody)))]
async fn delete_app(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult<StatusCode> {
    s.ctl.delete_app(&app).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ServiceQuery {
    app: Option<String>,
}

#[utoipa::path(get, path = "/v1/services", params(ServiceQuery), responses((status = 200, body = List<Service>)))]
async fn list_services(
    State(s): State<ApiState>,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<List<Service>>> {
    let items = s
        .ctl
        .store()
        .list_services(q.app.as_deref())
        .map_err(ControlError::from)?
        .into_iter()
        .map(|svc| s.ctl.with_url(svc))
        .collect();
    Ok(Json(List { items }))
}

#[utoipa::path(get, path = "/v1/apps/{app}/services/{service}", responses((status = 200, body = Service), (status = 404, body = ApiErrorBody)))]
async fn get_service(
    State(s): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
) -> ApiResult<Json<Service>> {
    let svc = s
        .ctl
        .store()
        .get_service(&app, &service)
        .map_err(ControlError::from)?;
    Ok(Json(s.ctl.with_url(svc)))
}

#[utoipa::path(delete, path = "/v1/apps/{app}/services/{service}", responses((status = 204), (status = 404, body = ApiErrorBody)))]
async fn delete_service(
    State(s): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.ctl.delete_service(&app, &service).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/v1/apps/{app}/deployments", request_body = ServiceSpec,
    responses((status = 201, body = Deployment), (status = 400, body = ApiErrorBody))
)]
async fn create_deployment(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let spec: ServiceSpec = parse_body(&body)?;
    Ok((StatusCode::CREATED, Json(s.ctl.deploy(&app, spec)?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct DeploymentQuery {
    app: Option<String>,
    service: Option<String>,
}

#[utoipa::path(get, path = "/v1/deployments", params(DeploymentQuery), responses((status = 200, body = List<Deployment>)))]
async fn list_deployments(
    State(s): State<ApiState>,
    Query(q): Query<DeploymentQuery>,
) -> ApiResult<Json<List<Deployment>>> {
    let items = s
        .ctl
        .store()
        .list_deployments(&DeploymentFilter {
            app: q.app.as_deref(),
            service: q.service.as_deref(),
            ..Default::default()
        })
        .map_err(ControlError::from)?;
    Ok(Json(List { items }))
}

#[utoipa::path(get, path = "/v1/deployments/{id}", responses((status = 200, body = Deployment), (status = 404, body = ApiErrorBody)))]
async fn get_deployment(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(
        s.ctl
            .store()
            .get_deployment(&id)
            .map_err(ControlError::from)?,
    ))
}

#[utoipa::path(delete, path = "/v1/deployments/{id}", responses((status = 204), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
async fn delete_deployment(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.ctl.delete_deployment(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct InstanceQuery {
    app: Option<String>,
    service: Option<String>,
    deployment: Option<String>,
    /// Include stopped and failed instances.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/v1/instances", params(InstanceQuery), responses((status = 200, body = List<Instance>)))]
async fn list_instances(
    State(s): State<ApiState>,
    Query(q): Query<InstanceQuery>,
) -> ApiResult<Json<List<Instance>>> {
    let items = s
        .ctl
        .store()
        .list_instances(&InstanceFilter {
            app: q.app.as_deref(),
            service: q.service.as_deref(),
            deployment: q.deployment.as_deref(),
            include_final: q.all,
        })
        .map_err(ControlError::from)?;
    Ok(Json(List { items }))
}

#[utoipa::path(get, path = "/v1/instances/{id}", responses((status = 200, body = Instance), (status = 404, body = ApiErrorBody)))]
async fn get_instance(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(
        s.ctl
            .store()
            .get_instance(&id)
            .map_err(ControlError::from)?,
    ))
}

#[utoipa::path(delete, path = "/v1/instances/{id}", responses((status = 204), (status = 404, body = ApiErrorBody)))]
async fn delete_instance(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.ctl.delete_instance(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/secrets", responses((status = 200, body = List<Secret>)))]
async fn list_secrets(State(s): State<ApiState>) -> ApiResult<Json<List<Secret>>> {
    Ok(Json(List {
        items: s.ctl.store().list_secrets().map_err(ControlError::from)?,
    }))
}

#[utoipa::path(post, path = "/v1/secrets", request_body = CreateSecret, responses((status = 201, body = Secret), (status = 409, body = ApiErrorBody)))]
async fn create_secret(
    State(s): State<ApiState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Secret>)> {
    let req: CreateSecret = parse_body(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(s.ctl.create_secret(&req.name, &req.value)?),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateSecret {
    value: String,
}

#[utoipa::path(put, path = "/v1/secrets/{name}", request_body = UpdateSecret, responses((status = 200, body = Secret), (status = 404, body = ApiErrorBody)))]
async fn update_secret(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Secret>> {
    let req: UpdateSecret = parse_body(&body)?;
    Ok(Json(
        s.ctl
            .store()
            .update_secret(&name, &req.value)
            .map_err(ControlError::from)?,
    ))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", responses((status = 204), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
async fn delete_secret(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.ctl.delete_secret(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes", request_body = NewSandbox, responses((status = 201, body = Sandbox), (status = 400, body = ApiErrorBody)))]
async fn create_sandbox(
    State(s): State<ApiState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Sandbox>)> {
    let new: NewSandbox = if body.is_empty() {
        NewSandbox::default()
    } else {
        parse_body(&body)?
    };
    Ok((StatusCode::CREATED, Json(s.ctl.create_sandbox(new).await?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct SandboxQuery {
    /// Include killed, timed-out and failed sandboxes (kept for an hour).
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/v1/sandboxes", params(SandboxQuery), responses((status = 200, body = List<Sandbox>)))]
async fn list_sandboxes(
    State(s): State<ApiState>,
    Query(q): Query<SandboxQuery>,
) -> ApiResult<Json<List<Sandbox>>> {
    Ok(Json(List {
        items: s.ctl.sandboxes(q.all)?,
    }))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", responses((status = 200, body = Sandbox), (status = 404, body = ApiErrorBody)))]
async fn get_sandbox(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(
        s.ctl.store().get_sandbox(&id).map_err(ControlError::from)?,
    ))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", responses((status = 204), (status = 404, body = ApiErrorBody)))]
async fn kill_sandbox(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.ctl.kill_sandbox(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/timeout", request_body = SandboxTimeout, responses((status = 200, body = Sandbox), (status = 404, body = ApiErrorBody)))]
async fn set_sandbox_timeout(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Sandbox>> {
    let req: SandboxTimeout = parse_body(&body)?;
    Ok(Json(s.ctl.set_sandbox_timeout(&id, req.timeout)?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", responses((status = 200, body = Sandbox), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
async fn pause_sandbox(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(s.ctl.pause_sandbox(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", responses((status = 200, body = Sandbox), (status = 404, body = ApiErrorBody)))]
async fn resume_sandbox(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(s.ctl.resume_sandbox(&id).await?.0))
}

/// The agent of a running sandbox: 404 for an unknown sandbox, 409 for one
/// that does not run (paused, starting, ended).
fn running_envd(s: &ApiState, id: &str) -> ApiResult<Envd> {
    let sandbox = s.ctl.store().get_sandbox(id).map_err(ControlError::from)?;
    let refused = match sandbox.state {
        SandboxState::Running => None,
        SandboxState::Paused => Some(format!(
            "sandbox {id} is paused: resume it first (POST /v1/sandboxes/{id}/resume, `bora sandboxes resume {id}`)"
        )),
        SandboxState::Starting => Some(format!(
            "sandbox {id} is still starting: try again in a moment"
        )),
        ended => Some(format!(
            "sandbox {id} is {ended} ({}): it no longer runs; create a new one",
            sandbox.reason
        )),
    };
    if let Some(message) = refused {
        return Err(ControlError::Conflict(message).into());
    }
    let ip: IpAddr = sandbox
        .ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            ControlError::Internal(format!(
                "sandbox {id} is running but has no address on record"
            ))
        })?;
    Ok(Envd::new(
        SocketAddr::new(ip, ENVD_PORT),
        &sandbox.envd_access_token,
    ))
}

/// Runs a shell command in a sandbox and streams what happens, one JSON
/// event per line: `start`, then `stdout`/`stderr` chunks as the command
/// writes them, then `exit` (with `error` set if the command's end could
/// not be known: the stream is cut short by the sandbox stopping).
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/exec", request_body = ExecRequest,
    responses(
        (status = 200, description = "JSON Lines of ExecEvent, sent as they happen", content_type = "application/x-ndjson", body = ExecEvent),
        (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)
    )
)]
async fn exec_in_sandbox(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ExecRequest = parse_body(&body)?;
    if req.cmd.trim().is_empty() {
        return Err(ApiError(
            ErrorCode::InvalidArgument,
            "`cmd` is empty: give the shell command to run, e.g. {\"cmd\": \"ls -l\"}".into(),
        ));
    }
    let envd = running_envd(&s, &id)?;
    let events = envd.run(&req).await.map_err(|e| e.in_sandbox(&id))?;
    tracing::debug!(sandbox = %id, user = req.user.as_deref().unwrap_or("(default)"), "exec started");
    let lines = events.map(move |event| {
        let event = event.unwrap_or_else(|e| {
            let error = e.in_sandbox(&id).to_string();
            tracing::warn!(sandbox = %id, %error, "exec stream cut short");
            ExecEvent::Exit {
                exit_code: -1,
                signal: None,
                error: Some(error),
            }
        });
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct FileQuery {
    /// The file's path in the sandbox: absolute, or relative to the user's
    /// home.
    path: Option<String>,
    /// The sandbox user to act as; the sandbox's default user when absent.
    user: Option<String>,
}

impl FileQuery {
    fn path(&self) -> ApiResult<&str> {
        self.path
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ApiError(
                    ErrorCode::InvalidArgument,
                    "missing `path`: name the file in the sandbox, e.g. ?path=/home/user/data.csv"
                        .into(),
                )
            })
    }
}

/// Downloads a file from a sandbox.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/files", params(FileQuery),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
        (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)
    )
)]
async fn read_sandbox_file(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    let path = q.path()?;
    let envd = running_envd(&s, &id)?;
    let (len, body) = envd
        .download(path, q.user.as_deref())
        .await
        .map_err(|e| e.in_sandbox(&id))?;
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    }
    Ok(response)
}

/// Uploads a file into a sandbox: the request body, byte for byte,
/// replaces the file; missing parent directories are created (owned by
/// the user).
#[utoipa::path(
    put, path = "/v1/sandboxes/{id}/files", params(FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody)
    )
)]
async fn write_sandbox_file(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let path = q.path()?;
    let envd = running_envd(&s, &id)?;
    envd.write_file(
        path,
        q.user.as_deref(),
        reqwest::Body::wrap_stream(body.into_data_stream()),
    )
    .await
    .map_err(|e| e.in_sandbox(&id))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct LogQuery {
    /// Lines per instance to start with (default 100).
    tail: Option<usize>,
    /// Keep the response open and stream new lines.
    #[serde(default)]
    follow: bool,
}

fn log_line(instance: &str, r: LogRecord) -> LogLine {
    LogLine {
        at: r.at,
        instance: instance.to_string(),
        stream: r.stream,
        line: r.line,
    }
}

fn ndjson(line: &LogLine) -> Bytes {
    let mut v = serde_json::to_vec(line).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[utoipa::path(
    get, path = "/v1/apps/{app}/services/{service}/logs", params(LogQuery),
    responses((status = 200, description = "JSON Lines of LogLine", content_type = "application/x-ndjson"))
)]
async fn service_logs(
    State(s): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let ctl = s.ctl.clone();
    let svc = ctl
        .store()
        .get_service(&app, &service)
        .map_err(ControlError::from)?;
    // Logs of the live instances, and of the latest deployment's (which
    // explain a failed rollout).
    let mut instances = ctl
        .store()
        .list_instances(&InstanceFilter {
            app: Some(&app),
            service: Some(&service),
            ..Default::default()
        })
        .map_err(ControlError::from)?;
    if let Some(latest) = &svc.latest_deployment {
        for i in ctl
            .store()
            .list_instances(&InstanceFilter {
                deployment: Some(latest),
                include_final: true,
                ..Default::default()
            })
            .map_err(ControlError::from)?
        {
            if !instances.iter().any(|x| x.id == i.id) {
                instances.push(i);
            }
        }
    }
    let tail = q.tail.unwrap_or(100);
    let mut lines: Vec<LogLine> = instances
        .iter()
        .flat_map(|i| {
            bora_node::logs::tail(&ctl.node().log_dir(&i.id), tail)
                .into_iter()
                .map(|r| log_line(&i.id, r))
        })
        .collect();
    lines.sort_by_key(|l| l.at);
    let initial: Vec<Bytes> = lines.iter().map(ndjson).collect();

    let content_type = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !q.follow {
        return Ok((content_type, Body::from(initial.concat())).into_response());
    }
    let stream = async_stream(ctl, app, service, initial);
    Ok((content_type, Body::from_stream(stream)).into_response())
}

/// Initial lines, then new lines of every live instance of the service as
/// they are written (instances that appear later are picked up too).
fn async_stream(
    ctl: Arc<Controller>,
    app: String,
    service: String,
    initial: Vec<Bytes>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let mut followers: HashMap<String, Follower> = HashMap::new();
        loop {
            if let Ok(live) = ctl.store().list_instances(&InstanceFilter {
                app: Some(&app),
                service: Some(&service),
                ..Default::default()
            }) {
                for i in live {
                    followers
                        .entry(i.id.clone())
                        .or_insert_with(|| Follower::from_end(&ctl.node().log_dir(&i.id)));
                }
            }
            for (id, f) in followers.iter_mut() {
                for r in f.poll() {
                    if tx.send(ndjson(&log_line(id, r))).await.is_err() {
                        return;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
struct EventQuery {
    app: Option<String>,
    service: Option<String>,
    /// Only events with a larger `seq` (to follow).
    after: Option<i64>,
    /// At most this many, the newest (default 100, at most 1000).
    limit: Option<usize>,
}

/// Scaling decisions, sleeps and wake-ups, oldest first.
#[utoipa::path(get, path = "/v1/events", params(EventQuery), responses((status = 200, body = List<Event>)))]
async fn list_events(
    State(s): State<ApiState>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<List<Event>>> {
    let items = s
        .ctl
        .store()
        .list_events(&bora_store::EventFilter {
            app: q.app.as_deref(),
            service: q.service.as_deref(),
            after: q.after,
            limit: q.limit.unwrap_or(100).clamp(1, 1000),
        })
        .map_err(ControlError::from)?;
    Ok(Json(List { items }))
}

/// Creates an inference key. The answer holds its secret, which is shown
/// this once and never again.
#[utoipa::path(
    post, path = "/v1/keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKey), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody))
)]
async fn create_key(
    State(s): State<ApiState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let req: CreateKeyRequest = parse_body(&body)?;
    Ok((StatusCode::CREATED, Json(s.ctl.create_key(req)?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct KeyQuery {
    /// Include revoked keys.
    #[serde(default)]
    all: bool,
}

/// Inference keys, oldest first (never their secrets).
#[utoipa::path(get, path = "/v1/keys", params(KeyQuery), responses((status = 200, body = List<InferenceKey>)))]
async fn list_keys(
    State(s): State<ApiState>,
    Query(q): Query<KeyQuery>,
) -> ApiResult<Json<List<InferenceKey>>> {
    Ok(Json(List {
        items: s.ctl.keys(q.all)?,
    }))
}

/// Revokes an inference key, named by its id or its name.
#[utoipa::path(delete, path = "/v1/keys/{key}", responses((status = 200, body = InferenceKey), (status = 404, body = ApiErrorBody)))]
async fn revoke_key(
    State(s): State<ApiState>,
    Path(key): Path<String>,
) -> ApiResult<Json<InferenceKey>> {
    Ok(Json(s.ctl.revoke_key(&key)?))
}

/// A time in a query: a duration meaning that long ago (`24h`, `30m`), or
/// an RFC 3339 time (`2026-01-02T15:04:05Z`).
pub fn parse_time_bound(
    param: &str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ControlError> {
    let invalid = || {
        ControlError::Invalid(format!(
            "`{param}` is {value:?}: give a duration meaning that long ago (24h, 30m, 7d) or an RFC 3339 time (2026-01-02T15:04:05Z)"
        ))
    };
    if let Ok(ago) = value.parse::<bora_api::Duration>() {
        let ago = chrono::TimeDelta::from_std(ago.get()).map_err(|_| invalid())?;
        return now.checked_sub_signed(ago).ok_or_else(invalid);
    }
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| invalid())
}

fn time_bound(
    param: &str,
    value: &Option<String>,
    now: DateTime<Utc>,
) -> ApiResult<Option<DateTime<Utc>>> {
    Ok(value
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| parse_time_bound(param, v, now))
        .transpose()?)
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct UsageQuery {
    /// Only this key (its id or name).
    key: Option<String>,
    /// Only this model.
    model: Option<String>,
    /// Only requests since then: a duration meaning that long ago (`24h`)
    /// or an RFC 3339 time. All requests when absent.
    since: Option<String>,
}

/// Requests, errors and tokens per key and model.
#[utoipa::path(
    get, path = "/v1/usage", params(UsageQuery),
    responses((status = 200, body = List<UsageRow>), (status = 400, body = ApiErrorBody))
)]
async fn usage(
    State(s): State<ApiState>,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<List<UsageRow>>> {
    let since = time_bound("since", &q.since, Utc::now())?;
    let items = s.ctl.usage(&bora_store::UsageFilter {
        key: non_empty(&q.key),
        model: non_empty(&q.model),
        since,
    })?;
    Ok(Json(List { items }))
}

/// A page of the audit trail.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Request records, oldest first.
    pub items: Vec<RequestRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
struct AuditQuery {
    /// Requests that arrived at or after: a duration meaning that long ago
    /// (`24h`) or an RFC 3339 time.
    since: Option<String>,
    /// Requests that arrived before: a duration meaning that long ago or an
    /// RFC 3339 time.
    until: Option<String>,
    /// Only this key (its id or name).
    key: Option<String>,
    /// Only this model.
    model: Option<String>,
    /// The cursor: the `next` of the previous page.
    after: Option<String>,
    /// At most this many records (default 1000, at most 10000).
    limit: Option<usize>,
}

/// The audit trail: a record of every request the inference gateway
/// answered, in the order written, a page at a time.
#[utoipa::path(
    get, path = "/v1/audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ApiErrorBody))
)]
async fn audit(
    State(s): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let now = Utc::now();
    let after = match non_empty(&q.after) {
        None => None,
        Some(after) => Some(after.parse::<i64>().map_err(|_| {
            ControlError::Invalid(format!(
                "`after` is {after:?}: pass the `next` of the previous page as it was given"
            ))
        })?),
    };
    let (items, next) = s.ctl.audit(&bora_store::RequestFilter {
        since: time_bound("since", &q.since, now)?,
        until: time_bound("until", &q.until, now)?,
        key: non_empty(&q.key),
        model: non_empty(&q.model),
        after,
        limit: q.limit.unwrap_or(1000),
    })?;
    Ok(Json(AuditPage { items, next }))
}

/// Prometheus text exposition of the router's and the controller's metrics.
async fn metrics(State(s): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &s.metrics)
        .map_err(|e| ApiError(ErrorCode::Internal, format!("encoding metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_covers_events_and_scaling() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(
            doc["paths"]["/v1/events"]["get"].is_object(),
            "{}",
            doc["paths"]
        );
        let schemas = &doc["components"]["schemas"];
        for name in [
            "Event",
            "ScalingStatus",
            "ScalingSpec",
            "ScalingTargets",
            "SleepMode",
        ] {
            assert!(schemas[name].is_object(), "schema {name} missing");
        }
        let states = schemas["InstanceState"].to_string();
        assert!(
            states.contains("sleeping") && states.contains("standby"),
            "{states}"
        );
    }

    #[test]
    fn the_openapi_document_covers_keys_usage_and_audit() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = &doc["paths"];
        assert!(paths["/v1/keys"]["post"].is_object(), "{paths}");
        assert!(paths["/v1/keys"]["get"].is_object(), "{paths}");
        assert!(paths["/v1/keys/{key}"]["delete"].is_object(), "{paths}");
        assert!(paths["/v1/usage"]["get"].is_object(), "{paths}");
        assert!(paths["/v1/audit"]["get"].is_object(), "{paths}");
        let schemas = &doc["components"]["schemas"];
        for name in [
            "CreateKeyRequest",
            "CreatedKey",
            "InferenceKey",
            "UsageRow",
            "RequestRecord",
            "AuditPage",
        ] {
            assert!(schemas[name].is_object(), "schema {name} missing");
        }
    }

    #[test]
    fn time_bounds_are_durations_ago_or_rfc3339_times() {
        let now: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
        let at = |v: &str| parse_time_bound("since", v, now);
        assert_eq!(
            at("24h").unwrap(),
            "2026-02-28T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            at("30m").unwrap(),
            "2026-03-01T11:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            at("7d").unwrap(),
            "2026-02-22T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            at("2026-01-02T03:04:05+01:00").unwrap(),
            "2026-01-02T02:04:05Z".parse::<DateTime<Utc>>().unwrap()
        );
        for bad in ["yesterday", "5", "2026-01-02", ""] {
            let err = at(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("`since` is {bad:?}: give a duration")),
                "{err}"
            );
        }
    }

    #[test]
    fn the_openapi_document_covers_exec_and_files() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = &doc["paths"];
        assert!(
            paths["/v1/sandboxes/{id}/exec"]["post"].is_object(),
            "{paths}"
        );
        let files = &paths["/v1/sandboxes/{id}/files"];
        assert!(
            files["get"].is_object() && files["put"].is_object(),
            "{files}"
        );
        let event = doc["components"]["schemas"]["ExecEvent"].to_string();
        for variant in ["start", "stdout", "stderr", "exit"] {
            assert!(event.contains(variant), "{event}");
        }
    }
}
