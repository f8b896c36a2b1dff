//! Accepting connections (HTTP/1.1, and HTTP/2 with prior knowledge, on
//! one port), routing every request, and the plain HTTP endpoints: `/health`,
//! `/init`, `/envs`, `/metrics`. Authentication happens here, once, before
//! any handler runs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::connect::{Body, RpcError, empty, full};
use crate::files::FilesError;
use crate::metrics::Sampler;
use crate::state::Shared;
use crate::{auth, files, rpc};

/// How long open connections get to finish after shutdown.
const CONNECTION_DRAIN: Duration = Duration::from_secs(2);
/// Largest `/init` body.
const MAX_INIT_BODY: usize = 1024 * 1024;

pub struct Server {
    shared: Arc<Shared>,
    metrics: Sampler,
}

impl Server {
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            shared,
            metrics: Sampler::default(),
        })
    }

    /// Serves until `shutdown` resolves; then stops accepting, stops the
    /// processes (SIGTERM, SIGKILL after `grace`) so their streams end, lets
    /// open connections finish briefly, and returns.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let service = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        self.shared.processes.shutdown(grace).await;
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(CONNECTION_DRAIN) => {
                tracing::debug!("connections still open at shutdown were dropped");
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let mut resp = if method == Method::OPTIONS {
            preflight(&req)
        } else {
            self.route(req).await
        };
        // The SDKs also run in browsers, which need CORS to reach envd.
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("*"),
        );
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
        resp
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if path == "/health" {
            return status(StatusCode::NO_CONTENT);
        }
        let token = self.shared.settings().access_token;
        let authorized = auth::has_token(token.as_deref(), req.headers());
        if rpc::is_rpc_path(path) {
            if !authorized {
                return RpcError::unauthenticated(
                    "missing or invalid access token: send the sandbox's token in X-Access-Token",
                )
                .into_response();
            }
            return rpc::handle(self.shared.clone(), req).await;
        }
        // `/files` checks the token itself: a signed URL may stand in for it.
        if path == "/files" {
            return files::handle(self.shared.clone(), req).await;
        }
        if !authorized {
            return FilesError {
                status: StatusCode::UNAUTHORIZED,
                message:
                    "missing or invalid access token: send the sandbox's token in X-Access-Token"
                        .into(),
            }
            .into_response();
        }
        match (req.method().clone(), path) {
            (Method::POST, "/init") => self.init(req).await,
            (Method::GET, "/envs") => json(&self.shared.settings().env_vars),
            (Method::GET, "/metrics") => json(&self.metrics.sample().await),
            (_, "/init" | "/envs" | "/metrics") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {path} is not allowed", req.method()),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        }
    }

    /// `POST /init`: the orchestrator's settings for this sandbox.
    async fn init(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match http_body_util::Limited::new(req.into_body(), MAX_INIT_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading /init body: {e}")),
        };
        let init: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
            InitRequest::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(i) => i,
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, format!("invalid /init body: {e}"));
                }
            }
        };
        if let Some(user) = init.default_user.as_deref().filter(|u| !u.is_empty())
            && let Err(e) = self.shared.accounts.lookup(user)
        {
            return error(
                StatusCode::BAD_REQUEST,
                format!("defaultUser {user:?} cannot be used: {e}"),
            );
        }
        let workdir = match init.default_workdir.as_deref().filter(|w| !w.is_empty()) {
            Some(w) if !w.starts_with('/') => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("defaultWorkdir {w:?} must be an absolute path"),
                );
            }
            Some(w) => Some(crate::paths::clean(&PathBuf::from(w))),
            None => None,
        };
        if let Some(ts) = &init.timestamp {
            // A container shares the host's clock; a VM would set it here.
            tracing::debug!(timestamp = %ts, "init timestamp (clock not changed)");
        }
        self.shared.update_settings(|s| {
            if let Some(vars) = init.env_vars {
                s.env_vars.extend(vars);
            }
            if let Some(token) = init.access_token.filter(|t| !t.is_empty()) {
                s.access_token = Some(token);
            }
            if let Some(user) = init.default_user.filter(|u| !u.is_empty()) {
                s.default_user = user;
            }
            if workdir.is_some() {
                s.default_workdir = workdir;
            }
        });
        tracing::info!("initialized by the orchestrator");
        status(StatusCode::NO_CONTENT)
    }
}

/// The body of `POST /init` (fields envd does not use are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct InitRequest {
    env_vars: Option<HashMap<String, String>>,
    access_token: Option<String>,
    default_user: Option<String>,
    default_workdir: Option<String>,
    timestamp: Option<String>,
}

/// A CORS preflight: anything is allowed from anywhere (the access token,
/// not the origin, is what guards envd). Preflights carry no token.
fn preflight(req: &Request<Incoming>) -> Response<Body> {
    let mut resp = status(StatusCode::NO_CONTENT);
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    let requested = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    resp
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = code;
    r
}

fn error(code: StatusCode, message: String) -> Response<Body> {
    FilesError {
        status: code,
        message,
    }
    .into_response()
}

fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
