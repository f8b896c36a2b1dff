//! The HTTP client for Bora's REST API: one typed method per endpoint, and
//! the one place where HTTP failures become [`CliError`]s.

use std::time::Duration;

use bora_api::{
    ApiErrorBody, App, CreateSecret, Deployment, Event, ExecRequest, Instance, List, ModelService,
    NewSandbox, Sandbox, SandboxTimeout, Secret, Service, ServiceSpec,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::discovery::Target;
use crate::error::CliError;

mod inference;

pub use inference::{AuditPage, RequestQuery};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a non-streaming request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Filters for `GET /v1/instances`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    pub app: Option<String>,
    pub service: Option<String>,
    pub deployment: Option<String>,
    /// Include stopped and failed instances.
    pub all: bool,
}

/// A client for one Bora server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    target: Target,
}

impl ApiClient {
    pub fn new(target: Target) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("bora-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Transport {
                url: target.base_url.to_string(),
                source: e,
            })?;
        Ok(Self { http, target })
    }

    /// The server this client talks to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    // ---- apps ----

    pub async fn list_apps(&self) -> Result<List<App>, CliError> {
        self.get(&["v1", "apps"], &[]).await
    }

    pub async fn get_app(&self, app: &str) -> Result<App, CliError> {
        self.get(&["v1", "apps", app], &[]).await
    }

    pub async fn delete_app(&self, app: &str) -> Result<(), CliError> {
        self.delete(&["v1", "apps", app]).await
    }

    // ---- services ----

    /// Services of one app, or of all apps.
    pub async fn list_services(&self, app: Option<&str>) -> Result<List<Service>, CliError> {
        let query: Vec<_> = app.map(|a| ("app", a.to_string())).into_iter().collect();
        self.get(&["v1", "services"], &query).await
    }

    pub async fn get_service(&self, app: &str, service: &str) -> Result<Service, CliError> {
        self.get(&["v1", "apps", app, "services", service], &[])
            .await
    }

    /// The model services, with their replicas' state.
    pub async fn list_model_services(&self) -> Result<List<ModelService>, CliError> {
        self.get(&["v1", "model-services"], &[]).await
    }

    pub async fn delete_service(&self, app: &str, service: &str) -> Result<(), CliError> {
        self.delete(&["v1", "apps", app, "services", service]).await
    }

    // ---- deployments ----

    /// Creates a deployment (and the app and service, if missing).
    pub async fn create_deployment(
        &self,
        app: &str,
        spec: &ServiceSpec,
    ) -> Result<Deployment, CliError> {
        self.send_json(Method::POST, &["v1", "apps", app, "deployments"], spec)
            .await
    }

    /// Deployments, newest first, optionally of one service.
    pub async fn list_deployments(
        &self,
        service: Option<(&str, &str)>,
    ) -> Result<List<Deployment>, CliError> {
        let query: Vec<_> = match service {
            Some((app, service)) => {
                vec![("app", app.to_string()), ("service", service.to_string())]
            }
            None => vec![],
        };
        self.get(&["v1", "deployments"], &query).await
    }

    pub async fn get_deployment(&self, id: &str) -> Result<Deployment, CliError> {
        self.get(&["v1", "deployments", id], &[]).await
    }

    pub async fn delete_deployment(&self, id: &str) -> Result<(), CliError> {
        self.delete(&["v1", "deployments", id]).await
    }

    // ---- instances ----

    pub async fn list_instances(
        &self,
        filter: &InstanceFilter,
    ) -> Result<List<Instance>, CliError> {
        let mut query = Vec::new();
        for (key, value) in [
            ("app", &filter.app),
            ("service", &filter.service),
            ("deployment", &filter.deployment),
        ] {
            if let Some(value) = value {
                query.push((key, value.clone()));
            }
        }
        if filter.all {
            query.push(("all", "true".to_string()));
        }
        self.get(&["v1", "instances"], &query).await
    }

    /// The newest `limit` events, oldest first.
    pub async fn list_events(
        &self,
        app: Option<&str>,
        service: Option<&str>,
        limit: usize,
    ) -> Result<List<Event>, CliError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(app) = app {
            query.push(("app", app.to_string()));
        }
        if let Some(service) = service {
            query.push(("service", service.to_string()));
        }
        self.get(&["v1", "events"], &query).await
    }

    /// One instance, with its history.
    pub async fn get_instance(&self, id: &str) -> Result<Instance, CliError> {
        self.get(&["v1", "instances", id], &[]).await
    }

    pub async fn delete_instance(&self, id: &str) -> Result<(), CliError> {
        self.delete(&["v1", "instances", id]).await
    }

    // ---- secrets ----

    pub async fn list_secrets(&self) -> Result<List<Secret>, CliError> {
        self.get(&["v1", "secrets"], &[]).await
    }

    pub async fn create_secret(&self, name: &str, value: &str) -> Result<Secret, CliError> {
        let body = CreateSecret {
            name: name.to_string(),
            value: value.to_string(),
        };
        self.send_json(Method::POST, &["v1", "secrets"], &body)
            .await
    }

    pub async fn update_secret(&self, name: &str, value: &str) -> Result<Secret, CliError> {
        let body = serde_json::json!({ "value": value });
        self.send_json(Method::PUT, &["v1", "secrets", name], &body)
            .await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<(), CliError> {
        self.delete(&["v1", "secrets", name]).await
    }

    // ---- sandboxes ----

    /// Creates a sandbox; returns it running.
    pub async fn create_sandbox(&self, new: &NewSandbox) -> Result<Sandbox, CliError> {
        self.send_json(Method::POST, &["v1", "sandboxes"], new)
            .await
    }

    /// Live sandboxes; with `all`, also those ended in the last hour.
    pub async fn list_sandboxes(&self, all: bool) -> Result<List<Sandbox>, CliError> {
        let query: Vec<_> = all
            .then(|| ("all", "true".to_string()))
            .into_iter()
            .collect();
        self.get(&["v1", "sandboxes"], &query).await
    }

    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, CliError> {
        self.get(&["v1", "sandboxes", id], &[]).await
    }

    pub async fn kill_sandbox(&self, id: &str) -> Result<(), CliError> {
        self.delete(&["v1", "sandboxes", id]).await
    }

    /// Gives a sandbox `timeout` more to live, from now.
    pub async fn set_sandbox_timeout(
        &self,
        id: &str,
        timeout: bora_api::Duration,
    ) -> Result<Sandbox, CliError> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "timeout"],
            &SandboxTimeout { timeout },
        )
        .await
    }

    pub async fn pause_sandbox(&self, id: &str) -> Result<Sandbox, CliError> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "pause"],
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn resume_sandbox(&self, id: &str) -> Result<Sandbox, CliError> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "resume"],
            &serde_json::json!({}),
        )
        .await
    }

    /// Starts a command in a sandbox; the caller reads the NDJSON stream of
    /// [`bora_api::ExecEvent`]s from the body.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<(Url, Response), CliError> {
        let url = self.url(&["v1", "sandboxes", id, "exec"]);
        // No overall timeout: the command runs as long as it runs.
        let request = self.http.post(url.clone()).json(req);
        let response = self.send(request, &url).await?;
        Ok((url, response))
    }

    /// Opens a sandbox's file for download; the caller reads the body.
    pub async fn download_file(
        &self,
        id: &str,
        path: &str,
        user: Option<&str>,
    ) -> Result<(Url, Response), CliError> {
        let url = self.url(&["v1", "sandboxes", id, "files"]);
        let request = self.http.get(url.clone()).query(&file_query(path, user));
        let response = self.send(request, &url).await?;
        Ok((url, response))
    }

    /// Writes `body` to a file in a sandbox (parent directories created).
    pub async fn upload_file(
        &self,
        id: &str,
        path: &str,
        user: Option<&str>,
        body: reqwest::Body,
    ) -> Result<(), CliError> {
        let url = self.url(&["v1", "sandboxes", id, "files"]);
        let request = self
            .http
            .put(url.clone())
            .query(&file_query(path, user))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        self.send(request, &url).await?;
        Ok(())
    }

    // ---- logs ----

    /// Opens the NDJSON log stream of a service; the caller reads the body.
    pub async fn logs(
        &self,
        app: &str,
        service: &str,
        tail: u32,
        follow: bool,
    ) -> Result<(Url, Response), CliError> {
        let url = self.url(&["v1", "apps", app, "services", service, "logs"]);
        let mut query = vec![("tail", tail.to_string())];
        if follow {
            query.push(("follow", "true".to_string()));
        }
        // No overall timeout: a followed stream stays open.
        let request = self.http.get(url.clone()).query(&query);
        let response = self.send(request, &url).await?;
        Ok((url, response))
    }

    // ---- plumbing ----

    /// The URL of an API path; each segment is percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.target.base_url.clone();
        url.path_segments_mut()
            .expect("discovery only accepts http(s) URLs, which have paths")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        let url = self.url(segments);
        let request = self
            .http
            .get(url.clone())
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        let response = self.send(request, &url).await?;
        read_json(response, &url).await
    }

    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> Result<T, CliError> {
        let url = self.url(segments);
        let request = self
            .http
            .request(method, url.clone())
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        let response = self.send(request, &url).await?;
        read_json(response, &url).await
    }

    async fn delete(&self, segments: &[&str]) -> Result<(), CliError> {
        let url = self.url(segments);
        let request = self.http.delete(url.clone()).timeout(REQUEST_TIMEOUT);
        self.send(request, &url).await?;
        Ok(())
    }

    /// Sends with the token; turns transport failures and non-2xx answers
    /// into errors.
    async fn send(&self, request: RequestBuilder, url: &Url) -> Result<Response, CliError> {
        let response = request
            .bearer_auth(&self.target.token)
            .send()
            .await
            .map_err(|e| self.transport_error(url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(url, e))?;
        Err(self.status_error(status, &body))
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> CliError {
        let parsed = serde_json::from_slice::<ApiErrorBody>(body).ok();
        if status == StatusCode::UNAUTHORIZED {
            let message = parsed
                .map(|b| b.error.message)
                .unwrap_or_else(|| status.to_string());
            return CliError::Unauthorized {
                url: self.target.base_url.to_string(),
                token_source: self.target.token_source.clone(),
                message,
            };
        }
        match parsed {
            Some(body) => CliError::Api {
                status: status.as_u16(),
                code: Some(body.error.code),
                message: body.error.message,
            },
            None => CliError::Api {
                status: status.as_u16(),
                code: None,
                message: format!("the server answered {status}{}", snippet(body)),
            },
        }
    }

    fn transport_error(&self, url: &Url, e: reqwest::Error) -> CliError {
        if !(e.is_connect() || e.is_timeout()) {
            return CliError::Transport {
                url: url.to_string(),
                source: e,
            };
        }
        let cause = root_cause(&e);
        let (origin, hint) = match &self.target.addr_file {
            Some(path) => (
                format!(" (from {})", path.display()),
                format!(
                    "is `bora server` running? {} may be left over from a server that stopped",
                    path.display()
                ),
            ),
            None => (String::new(), "check BORA_URL (or --url)".to_string()),
        };
        CliError::Connect {
            url: self.target.base_url.to_string(),
            origin,
            detail: format!("{cause}; {hint}"),
        }
    }
}

/// `?path=&user=` of the sandbox files API.
fn file_query<'a>(path: &'a str, user: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut query = vec![("path", path)];
    if let Some(user) = user {
        query.push(("user", user));
    }
    query
}

/// Reads a 2xx body as `T`.
async fn read_json<T: DeserializeOwned>(response: Response, url: &Url) -> Result<T, CliError> {
    let body = response.bytes().await.map_err(|e| CliError::Transport {
        url: url.to_string(),
        source: e,
    })?;
    serde_json::from_slice(&body).map_err(|e| CliError::InvalidResponse {
        url: url.to_string(),
        detail: format!("{e}{}", snippet(&body)),
    })
}

/// The innermost error message (e.g. "Connection refused (os error 111)"),
/// which says more than reqwest's "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_timeout() && !cause.to_string().contains("timed out") {
        return "timed out".to_string();
    }
    cause.to_string()
}

/// The start of a body, for messages about unexpected answers.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(MAX).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!(": {cut}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TokenSource;

    fn client(base: &str) -> ApiClient {
        ApiClient::new(Target {
            base_url: crate::discovery::parse_base_url(base).unwrap(),
            token: "t".into(),
            token_source: TokenSource::Flag,
            addr_file: None,
        })
        .unwrap()
    }

    #[test]
    fn urls_encode_segments_and_keep_a_base_path() {
        let c = client("http://h:1");
        assert_eq!(c.url(&["v1", "apps"]).as_str(), "http://h:1/v1/apps");
        assert_eq!(
            c.url(&["v1", "secrets", "a/b?c"]).as_str(),
            "http://h:1/v1/secrets/a%2Fb%3Fc"
        );
        let c = client("http://h:1/bora/");
        assert_eq!(c.url(&["v1", "apps"]).as_str(), "http://h:1/bora/v1/apps");
    }

    #[test]
    fn error_bodies_become_messages() {
        let c = client("http://h:1");
        let body = br#"{"error":{"code":"not_found","message":"app \"x\" not found"}}"#;
        let err = c.status_error(StatusCode::NOT_FOUND, body);
        assert!(err.is_not_found());
        assert_eq!(err.to_string(), "app \"x\" not found");

        let err = c.status_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(
            err.to_string(),
            "the server answered 502 Bad Gateway: <html>bad gateway</html>"
        );

        let err = c.status_error(StatusCode::UNAUTHORIZED, b"");
        assert!(matches!(err, CliError::Unauthorized { .. }), "{err}");
    }
}
