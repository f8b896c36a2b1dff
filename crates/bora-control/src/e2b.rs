//! E2B's sandbox API under `/e2b`, so the official E2B SDKs work with only
//! their environment changed:
//!
//! ```text
//! E2B_API_URL=http://<api-listen>/e2b
//! E2B_SANDBOX_URL=http://<http-listen>      # the router
//! E2B_API_KEY=<a Bora token>
//! ```
//!
//! A thin layer over Bora's own sandboxes (`/v1/sandboxes`): the subset of
//! E2B's REST API the SDKs call, with E2B's field names, status codes and
//! error body (`{"code": <status>, "message": …}`). Requests carry the
//! token as `X-API-KEY` (or `Authorization: Bearer`).
//!
//! Where E2B and Bora differ: outbound network is closed unless the
//! request opens it with `network.allowOut` (E2B's `allow_internet_access`
//! alone does not open it); auto-pause is not supported (the sandbox is
//! killed at its timeout).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bora_api::{NewSandbox, Sandbox, SandboxState};
use serde::{Deserialize, Serialize};

use crate::ControlError;
use crate::api::ApiState;

/// The envd protocol version Bora's agent speaks; the SDKs turn features on
/// by comparing against it. The same as `bora_envd::ENVD_COMPAT_VERSION`
/// (a test checks), without linking the agent into the server.
const ENVD_VERSION: &str = "0.6.4";
/// What E2B calls the owner of a sandbox; Bora has one.
const CLIENT_ID: &str = "bora";

/// An error in E2B's shape.
#[derive(Debug)]
struct E2bError(StatusCode, String);

impl From<ControlError> for E2bError {
    fn from(e: ControlError) -> Self {
        let status = StatusCode::from_u16(e.code().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        E2bError(status, e.to_string())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.0.as_u16(), "message": self.1 });
        (self.0, Json(body)).into_response()
    }
}

type E2bResult<T> = Result<T, E2bError>;

fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> E2bResult<T> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        E2bError(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/sandboxes", get(list).post(create))
        .route("/v2/sandboxes", get(list).post(create))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .fallback(|| async {
            E2bError(
                StatusCode::NOT_FOUND,
                "this part of E2B's API is not implemented by Bora".into(),
            )
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match given {
        Some(token) if crate::api::constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(req).await
        }
        _ => E2bError(
            StatusCode::UNAUTHORIZED,
            "missing or refused API key: set E2B_API_KEY to a Bora token (<data-dir>/admin.token)"
                .into(),
        )
        .into_response(),
    }
}

/// `POST /sandboxes`, as the SDKs send it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewE2bSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    /// Seconds.
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    network: Option<E2bNetwork>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct E2bNetwork {
    #[serde(default)]
    allow_out: Vec<String>,
}

/// What create, connect and resume answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: String,
}

impl From<&Sandbox> for CreatedSandbox {
    fn from(s: &Sandbox) -> Self {
        CreatedSandbox {
            template_id: s.template.clone(),
            sandbox_id: s.id.clone(),
            client_id: CLIENT_ID,
            envd_version: ENVD_VERSION,
            envd_access_token: s.envd_access_token.clone(),
        }
    }
}

/// What list and get answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    started_at: String,
    end_at: String,
    cpu_count: u64,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    envd_version: &'static str,
    state: &'static str,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
}

fn listed(s: &Sandbox, with_token: bool) -> ListedSandbox {
    ListedSandbox {
        template_id: s.template.clone(),
        sandbox_id: s.id.clone(),
        client_id: CLIENT_ID,
        started_at: s.created_at.to_rfc3339(),
        end_at: s.end_at.to_rfc3339(),
        cpu_count: s.resources.millicpu.div_ceil(1000),
        memory_mb: s.resources.memory_mib,
        disk_size_mb: s.resources.disk_mib,
        envd_version: ENVD_VERSION,
        state: if s.state == SandboxState::Paused {
            "paused"
        } else {
            "running"
        },
        metadata: s.metadata.clone(),
        envd_access_token: with_token.then(|| s.envd_access_token.clone()),
    }
}

async fn create(
    State(s): State<ApiState>,
    body: Bytes,
) -> E2bResult<(StatusCode, Json<CreatedSandbox>)> {
    let req: NewE2bSandbox = parse(&body)?;
    let new = NewSandbox {
        template: req.template_id,
        timeout: req.timeout.map(bora_api::Duration::from_secs),
        metadata: req.metadata.unwrap_or_default(),
        env: req.env_vars.unwrap_or_default(),
        allow_out: req.network.map(|n| n.allow_out).unwrap_or_default(),
        ..NewSandbox::default()
    };
    let sandbox = s.ctl.create_sandbox(new).await?;
    Ok((StatusCode::CREATED, Json(CreatedSandbox::from(&sandbox))))
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    /// `running`, `paused` or both, comma-separated.
    state: Option<String>,
    /// URL-encoded `key=value&key2=value2` pairs that must all match.
    metadata: Option<String>,
}

/// The pairs of a metadata filter, as E2B's API reads them. The SDKs
/// escape each key and value (Python's `quote`, JavaScript's
/// `encodeURIComponent`), join the pairs as a query string (escaping again)
/// and send that as the `metadata` parameter (escaped a third time): once
/// the parameter is decoded, the pairs are a query string whose keys and
/// values are escaped once more.
fn metadata_filter(filter: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    form_urlencoded::parse(filter.as_bytes())
        .map(|(k, v)| (unescape(&k), unescape(&v)))
        .collect()
}

async fn list(
    State(s): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> E2bResult<Json<Vec<ListedSandbox>>> {
    let wanted: Option<Vec<String>> = q
        .state
        .map(|states| states.split(',').map(|st| st.trim().to_string()).collect());
    let metadata = q
        .metadata
        .as_deref()
        .map(metadata_filter)
        .unwrap_or_default();
    let items = s
        .ctl
        .sandboxes(false)?
        .iter()
        .filter(|sb| matches!(sb.state, SandboxState::Running | SandboxState::Paused))
        .map(|sb| listed(sb, false))
        .filter(|sb| {
            wanted
                .as_ref()
                .is_none_or(|states| states.iter().any(|st| st == sb.state))
        })
        .filter(|sb| {
            metadata
                .iter()
                .all(|(k, v)| sb.metadata.get(k).is_some_and(|have| have == v))
        })
        .collect();
    Ok(Json(items))
}

async fn detail(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> E2bResult<Json<ListedSandbox>> {
    Ok(Json(listed(&s.ctl.sandbox(&id)?, true)))
}

async fn kill(State(s): State<ApiState>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    s.ctl.kill_sandbox(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct Timeout {
    /// Seconds.
    timeout: Option<u64>,
}

async fn set_timeout(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let req: Timeout = parse(&body)?;
    let timeout = req.timeout.ok_or_else(|| {
        E2bError(
            StatusCode::BAD_REQUEST,
            "missing `timeout` (seconds)".into(),
        )
    })?;
    s.ctl
        .set_sandbox_timeout(&id, bora_api::Duration::from_secs(timeout))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh(State(s): State<ApiState>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    // E2B's keep-alive: at least the default timeout from now.
    let sandbox = s.ctl.sandbox(&id)?;
    let default_end = chrono::Utc::now() + bora_api::DEFAULT_SANDBOX_TIMEOUT.get();
    if sandbox.end_at < default_end {
        s.ctl
            .set_sandbox_timeout(&id, bora_api::DEFAULT_SANDBOX_TIMEOUT)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(s): State<ApiState>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    s.ctl.pause_sandbox(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resume (201) a paused sandbox; a running one is a conflict, as in E2B.
async fn resume(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<(StatusCode, Json<CreatedSandbox>)> {
    let req: Timeout = parse(&body)?;
    let (sandbox, was_paused) = s.ctl.resume_sandbox(&id).await?;
    if !was_paused {
        return Err(E2bError(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already running"),
        ));
    }
    let sandbox = extend(&s, sandbox, req.timeout)?;
    Ok((StatusCode::CREATED, Json(CreatedSandbox::from(&sandbox))))
}

/// Connect: 200 for a running sandbox, 201 after resuming a paused one;
/// the timeout, if given, is extended to at least that much from now.
async fn connect(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<(StatusCode, Json<CreatedSandbox>)> {
    let req: Timeout = parse(&body)?;
    let (sandbox, was_paused) = s.ctl.resume_sandbox(&id).await?;
    let sandbox = extend(&s, sandbox, req.timeout)?;
    let status = if was_paused {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(CreatedSandbox::from(&sandbox))))
}

/// Extends `sandbox`'s timeout to at least `seconds` from now.
fn extend(s: &ApiState, sandbox: Sandbox, seconds: Option<u64>) -> E2bResult<Sandbox> {
    let Some(seconds) = seconds else {
        return Ok(sandbox);
    };
    let wanted = chrono::Utc::now() + std::time::Duration::from_secs(seconds);
    if sandbox.end_at >= wanted {
        return Ok(sandbox);
    }
    Ok(s.ctl
        .set_sandbox_timeout(&sandbox.id, bora_api::Duration::from_secs(seconds))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_envd_version_is_the_agents() {
        assert_eq!(ENVD_VERSION, bora_envd::ENVD_COMPAT_VERSION);
    }

    #[test]
    fn sdk_create_bodies_parse_and_unknown_fields_are_ignored() {
        let body = Bytes::from_static(
            br#"{"templateID":"base","timeout":120,"metadata":{"a":"b"},"envVars":{"X":"1"},"autoPause":false,"secure":true,"allow_internet_access":true,"network":{"allowOut":["203.0.113.0/24"]}}"#,
        );
        let req: NewE2bSandbox = parse(&body).unwrap();
        assert_eq!(req.template_id.as_deref(), Some("base"));
        assert_eq!(req.timeout, Some(120));
        assert_eq!(req.env_vars.unwrap()["X"], "1");
        assert_eq!(req.network.unwrap().allow_out, ["203.0.113.0/24"]);
        let empty: NewE2bSandbox = parse(&Bytes::new()).unwrap();
        assert!(empty.template_id.is_none());
    }

    #[test]
    fn metadata_filters_are_unescaped_as_the_sdks_escape_them() {
        // Both SDKs, for {"purpose": "pause & resume", "a=b": "1+1 100%",
        // "user": "jörg"}, once the query parameter itself is decoded.
        let sent =
            "purpose=pause%2520%2526%2520resume&a%253Db=1%252B1%2520100%2525&user=j%25C3%25B6rg";
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            metadata_filter(sent),
            pairs(&[
                ("purpose", "pause & resume"),
                ("a=b", "1+1 100%"),
                ("user", "jörg")
            ])
        );
        // Plain pairs and stray escapes are taken as they are; a key
        // without a value asks for an empty value.
        assert_eq!(
            metadata_filter("suite=bora-e2e&bad=50%&x"),
            pairs(&[("suite", "bora-e2e"), ("bad", "50%"), ("x", "")])
        );
    }
}
