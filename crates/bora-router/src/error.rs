//! Proxy errors, and the one place they become HTTP responses.
//!
//! Every failure the router reports to a client is a [`ProxyError`]: what
//! went wrong ([`ErrorKind`], whose message is the response body), which side
//! caused it ([`ErrorSource`]) and whether trying another instance is safe.
//! `error_response` is the only function that turns one into a response,
//! and the only place errors are logged.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::headers::X_REQUEST_ID;

/// The `Retry-After` of a service that has no instance yet.
const RETRY_AFTER_DELAY: Duration = Duration::from_secs(1);

/// The error type underneath an upstream failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which side of the proxy a failure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The instance: refused, reset, timed out, answered garbage.
    Upstream,
    /// The client: asked for something that does not exist.
    Downstream,
    /// The router itself, or the state the control plane gave it.
    Internal,
}

/// The instance a request was sent to, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// App of the service.
    pub app: Arc<str>,
    /// Service name.
    pub service: Arc<str>,
    /// Instance ID.
    pub instance_id: Arc<str>,
    /// Address connected to.
    pub addr: SocketAddr,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} in app {}: instance {} at {}",
            self.service, self.app, self.instance_id, self.addr
        )
    }
}

/// What went wrong. The message is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The request names no host at all.
    #[error(
        "request has no Host header: name the service as <service>.<app>.<domain> in the Host header"
    )]
    MissingHost,
    /// The request is not one the router forwards.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No service is routed at the host.
    #[error("no service at host {host:?}: deploy one with bora deploy, or check the host name")]
    UnknownHost {
        /// The host as normalised for lookup.
        host: String,
    },
    /// No running sandbox has the id the request names. Answered as E2B's
    /// proxy does — 502 with "… was not found" — which the E2B SDKs read as
    /// "the sandbox is not running" (`is_running()` is false, calls raise
    /// `SandboxNotRunningException`).
    #[error(
        "sandbox {id:?} was not found running: it was killed, timed out, is paused or never existed (GET /v1/sandboxes lists the live ones)"
    )]
    UnknownSandbox { id: String },
    /// No model service has the name a gateway request gives.
    #[error(
        "the model {model:?} does not exist: `bora models list` shows the deployed models, GET /v1/models the ones your key may use"
    )]
    UnknownModel { model: String },
    /// The sandbox port a request names is not a port.
    #[error("E2b-Sandbox-Port {port:?} is not a port number (1-65535)")]
    BadSandboxPort { port: String },
    /// The service has no route prefix matching the path.
    #[error(
        "service {service} in app {app} has no route for path {path:?}: check the routes of the service"
    )]
    NoRoute {
        /// App of the service.
        app: Arc<str>,
        /// Service name.
        service: Arc<str>,
        /// The request path.
        path: String,
    },
    /// The service exists but no instance of it is healthy.
    #[error("service {service} in app {app} has no healthy instance yet")]
    NoHealthyInstance {
        /// App of the service.
        app: Arc<str>,
        /// Service name.
        service: Arc<str>,
    },
    /// The TCP connection to the instance failed (nothing was sent).
    #[error("{upstream}: could not connect: {reason}")]
    ConnectFailed {
        /// Where the request went.
        upstream: Box<Upstream>,
        /// Short reason, e.g. "connection refused".
        reason: String,
        /// The underlying error.
        #[source]
        cause: BoxError,
    },
    /// The TCP connection to the instance did not complete in time.
    #[error("{upstream}: could not connect within {timeout:?}")]
    ConnectTimeout {
        /// Where the request went.
        upstream: Box<Upstream>,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The exchange with the instance broke after the request was sent:
    /// connection reset or closed, or a malformed response.
    #[error("{upstream}: {reason}")]
    UpstreamFailed {
        /// Where the request went.
        upstream: Box<Upstream>,
        /// Short reason.
        reason: String,
        /// The underlying error, if any.
        #[source]
        cause: Option<BoxError>,
    },
    /// The instance did not send response headers in time.
    #[error("{upstream}: no response within {timeout:?}")]
    UpstreamTimeout {
        /// Where the request went.
        upstream: Box<Upstream>,
        /// The upstream header timeout.
        timeout: Duration,
    },
    /// The service was asleep and no instance of it became healthy within
    /// the hold timeout.
    #[error("service {service} in app {app} did not wake within {timeout:?}")]
    WakeTimeout {
        /// App of the service.
        app: Arc<str>,
        /// Service name.
        service: Arc<str>,
        /// The hold timeout.
        timeout: Duration,
    },
    /// The service is asleep and `limit` requests already wait for it.
    #[error("too many requests waiting for service {service} in app {app} to wake ({limit} held)")]
    TooManyHeld {
        /// App of the service.
        app: Arc<str>,
        /// Service name.
        service: Arc<str>,
        /// The most requests held per service.
        limit: usize,
    },
    /// The control plane could not wake the service.
    #[error("service {service} in app {app} did not wake: {reason}")]
    WakeFailed {
        /// App of the service.
        app: Arc<str>,
        /// Service name.
        service: Arc<str>,
        /// What the control plane reported, e.g. "instance abc failed
        /// while waking: exited with code 1".
        reason: String,
    },
    /// A bug or an impossible state in the router.
    #[error("internal router error: {0}")]
    Internal(String),
}

impl ErrorKind {
    /// The HTTP status a client gets for this kind.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost | Self::BadRequest(_) | Self::BadSandboxPort { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownHost { .. } | Self::NoRoute { .. } | Self::UnknownModel { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::UnknownSandbox { .. } => StatusCode::BAD_GATEWAY,
            Self::NoHealthyInstance { .. }
            | Self::WakeTimeout { .. }
            | Self::TooManyHeld { .. }
            | Self::WakeFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailed { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout { .. } | Self::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn default_source(&self) -> ErrorSource {
        match self {
            Self::MissingHost
            | Self::BadRequest(_)
            | Self::UnknownHost { .. }
            | Self::UnknownModel { .. }
            | Self::UnknownSandbox { .. }
            | Self::BadSandboxPort { .. }
            | Self::NoRoute { .. } => ErrorSource::Downstream,
            Self::NoHealthyInstance { .. }
            | Self::WakeTimeout { .. }
            | Self::TooManyHeld { .. }
            | Self::WakeFailed { .. }
            | Self::Internal(_) => ErrorSource::Internal,
            Self::ConnectFailed { .. }
            | Self::ConnectTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamTimeout { .. } => ErrorSource::Upstream,
        }
    }

    /// How long the client should wait before trying again, for failures
    /// that waiting cures (the service has, or will soon have, instances):
    /// sent as `Retry-After`, in whole seconds.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NoHealthyInstance { .. }
            | Self::WakeTimeout { .. }
            | Self::TooManyHeld { .. }
            | Self::WakeFailed { .. } => Some(RETRY_AFTER_DELAY),
            _ => None,
        }
    }

    /// Nothing reached the instance, so another instance may be tried.
    fn default_retryable(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailed { .. } | Self::ConnectTimeout { .. }
        )
    }
}

/// A failed proxied request.
#[derive(Debug)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Which side caused it. (Not [`std::error::Error::source`], which
    /// returns the underlying cause.)
    pub source: ErrorSource,
    /// Whether the request may be sent to another instance: true only when
    /// no byte of it reached this one.
    pub retryable: bool,
}

impl ProxyError {
    /// The error for `kind`, with its usual source and retryability.
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            source: kind.default_source(),
            retryable: kind.default_retryable(),
            kind,
        }
    }

    /// The HTTP status a client gets.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

impl From<ErrorKind> for ProxyError {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// Turns `error` into the response the client gets: the status of its kind,
/// a one-line plain-text body naming the service and the reason, the
/// request's `X-Request-Id`, and `Retry-After` when waiting helps.
///
/// This is the only place proxy errors become responses or log lines.
pub(crate) fn error_response(
    error: &ProxyError,
    request_id: &HeaderValue,
    body_scope: crate::hooks::RequestScope,
) -> Response<ProxyBody> {
    let status = error.status();
    match error.source {
        ErrorSource::Downstream => tracing::debug!(%status, error = %error, "request refused"),
        ErrorSource::Internal if status == StatusCode::SERVICE_UNAVAILABLE => {
            tracing::debug!(%status, error = %error, "request refused");
        }
        ErrorSource::Upstream | ErrorSource::Internal => {
            tracing::warn!(%status, error = %error, cause = ?std::error::Error::source(error), "request failed");
        }
    }

    let mut response = Response::new(ProxyBody::message(format!("{error}\n"), body_scope));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_REQUEST_ID, request_id.clone());
    if let Some(delay) = error.kind.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(delay.as_secs().max(1)));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream {
            app: "hello".into(),
            service: "web".into(),
            instance_id: "i-1".into(),
            addr: "127.0.0.2:8000".parse().unwrap(),
        }
    }

    #[test]
    fn messages_name_the_service_and_the_reason() {
        let unknown = ErrorKind::UnknownHost {
            host: "x.y.localhost".into(),
        };
        assert_eq!(
            unknown.to_string(),
            "no service at host \"x.y.localhost\": deploy one with bora deploy, or check the host name"
        );
        let none = ErrorKind::NoHealthyInstance {
            app: "hello".into(),
            service: "web".into(),
        };
        assert_eq!(
            none.to_string(),
            "service web in app hello has no healthy instance yet"
        );
        let refused = ErrorKind::ConnectFailed {
            upstream: Box::new(upstream()),
            reason: "connection refused".into(),
            cause: "boom".into(),
        };
        assert_eq!(
            refused.to_string(),
            "service web in app hello: instance i-1 at 127.0.0.2:8000: could not connect: connection refused"
        );
        let slow = ErrorKind::UpstreamTimeout {
            upstream: Box::new(upstream()),
            timeout: Duration::from_millis(1500),
        };
        assert!(slow.to_string().ends_with("no response within 1.5s"));
    }

    #[test]
    fn kinds_map_to_status_source_and_retry() {
        let refused = ProxyError::new(ErrorKind::ConnectFailed {
            upstream: Box::new(upstream()),
            reason: "connection refused".into(),
            cause: "boom".into(),
        });
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(refused.source, ErrorSource::Upstream);
        assert!(refused.retryable);
        assert!(std::error::Error::source(&refused).is_some());

        let timeout = ProxyError::new(ErrorKind::UpstreamTimeout {
            upstream: Box::new(upstream()),
            timeout: Duration::from_secs(1),
        });
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!timeout.retryable);

        let unknown = ProxyError::new(ErrorKind::UnknownHost { host: "x".into() });
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(unknown.source, ErrorSource::Downstream);
        assert_eq!(
            ProxyError::new(ErrorKind::MissingHost).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(unknown.kind.retry_after(), None);
    }

    #[test]
    fn wake_errors_are_503_with_retry_after_and_name_the_service() {
        let kinds = [
            ErrorKind::WakeTimeout {
                app: "hello".into(),
                service: "web".into(),
                timeout: Duration::from_secs(30),
            },
            ErrorKind::TooManyHeld {
                app: "hello".into(),
                service: "web".into(),
                limit: 1000,
            },
            ErrorKind::WakeFailed {
                app: "hello".into(),
                service: "web".into(),
                reason: "instance abc failed while waking: exited with code 1".into(),
            },
        ];
        let messages = kinds.each_ref().map(ToString::to_string);
        assert_eq!(
            messages,
            [
                "service web in app hello did not wake within 30s",
                "too many requests waiting for service web in app hello to wake (1000 held)",
                "service web in app hello did not wake: instance abc failed while waking: exited with code 1",
            ]
        );
        for kind in kinds {
            assert_eq!(kind.retry_after(), Some(Duration::from_secs(1)));
            let error = ProxyError::new(kind);
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error.source, ErrorSource::Internal);
            assert!(!error.retryable);
        }
    }
}
