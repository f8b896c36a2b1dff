//! One proxied request, start to finish:
//!
//! 1. **route**: `Host` → service, path → port (404 if either is unknown);
//!    a sleeping service holds the request until it wakes (see `hold`);
//! 2. **pick**: least-loaded healthy instance (503 if there is none);
//! 3. **forward**: rewrite headers, stream the body to `instance_ip:port`,
//!    wait for response headers (504 past the timeout, 502 if it breaks);
//!    a failed *connect* is retried once on another instance;
//! 4. **respond**: stream the instance's response back, or splice the two
//!    connections after a `101 Switching Protocols`.
//!
//! Failures travel as [`ProxyError`] to [`error_response`]. Every request
//! routed to a service is counted in that service's statistics; the others
//! in those of app `""`, service `""`.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HOST;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::body::{BodySlot, ProxyBody};
use crate::error::{ErrorKind, ProxyError, Upstream, error_response};
use crate::headers::{self, X_REQUEST_ID};
use crate::hooks::{Phase, RequestScope};
use crate::server::ServeTasks;
use crate::stats::RequestStats;
use crate::table::{CompiledService, normalize_host};
use crate::{Router, upgrade};

impl Router {
    /// Answers one client request. Never fails: errors become responses.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        tasks: &ServeTasks,
    ) -> Response<ProxyBody> {
        let to_sandbox = request.headers().contains_key(headers::E2B_SANDBOX_ID);
        if !to_sandbox
            && self.is_gateway_request(original_host(&request).as_deref(), request.uri().path())
        {
            return self.gateway(request, client, tasks).await;
        }
        let request_id = headers::request_id(request.headers());
        let span = request_span(&request_id);
        let mut scope = RequestScope::new(request_id.clone(), self.hooks.clone());
        async {
            match self
                .forward(request, &request_id, client, tasks, &mut scope)
                .await
            {
                Ok(mut response) => {
                    response.headers_mut().insert(X_REQUEST_ID, request_id);
                    response
                }
                Err(error) => self.fail(&error, &request_id, &mut scope),
            }
        }
        .instrument(span)
        .await
    }

    /// The response for a request that failed with `error`: ends its
    /// stay at the instance, counts it (as unrouted if it matched no
    /// service) and moves its scope into the response body. Both paths
    /// answer failures through here.
    pub(crate) fn fail(
        &self,
        error: &ProxyError,
        request_id: &HeaderValue,
        scope: &mut RequestScope,
    ) -> Response<ProxyBody> {
        // The instance is done with this request.
        scope.leave_instance();
        if scope.stats().is_none() {
            // Matched no service: count it as unrouted.
            scope.set_stats(RequestStats::arrive(self.services.unrouted()));
        }
        scope.respond(error.status());
        scope.phase(Phase::Failed { error });
        error_response(error, request_id, scope.take())
    }

    /// Step 1, for both paths: the service serving `host` and its port for
    /// `path`, once the service has instances (a sleeping one holds the
    /// request until it wakes). Counts the request in the service's
    /// statistics and tells the hooks it is routed.
    pub(crate) async fn route_request(
        &self,
        host: Option<&str>,
        sandbox: Option<(&str, Option<&str>)>,
        path: &str,
        scope: &mut RequestScope,
    ) -> Result<(Arc<CompiledService>, u16), ProxyError> {
        let host = host.ok_or(ErrorKind::MissingHost)?;
        let sandbox = self.route_sandbox(sandbox, host)?;
        let mut service = match &sandbox {
            Some((sandbox, _port)) => sandbox.clone(),
            None => self.route(host)?,
        };
        let span = tracing::Span::current();
        span.record("app", &*service.app);
        span.record("service", &*service.service);
        scope.update(|info| {
            info.app = Some(service.app.clone());
            info.service = Some(service.service.clone());
        });
        scope.set_stats(RequestStats::arrive(service.state.clone()));
        let mut port = match sandbox {
            Some((_, port)) => port,
            None => route_port(&service, path)?,
        };
        if service.backends.is_empty() {
            if !service.wakeable {
                return Err(no_healthy_instance(&service));
            }
            let lookup = crate::hold::Lookup::Host(host);
            service = self
                .hold(service, lookup, self.config.hold_timeout, scope)
                .await?;
            // The table that woke the service may route the path elsewhere.
            port = route_port(&service, path)?;
        }
        scope.phase(Phase::Routed);
        Ok((service, port))
    }

    /// Routes and forwards `request`. On success the scope has moved into
    /// the response body (or the upgraded tunnel).
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        request_id: &HeaderValue,
        client: SocketAddr,
        tasks: &ServeTasks,
        scope: &mut RequestScope,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // 1. Route.
        if request.method() == Method::CONNECT || !request.uri().path().starts_with('/') {
            return Err(ErrorKind::BadRequest(
                "the router forwards only requests for a path (no CONNECT, no `*`)".into(),
            )
            .into());
        }
        let host = original_host(&request);
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
        };
        let sandbox = header(headers::E2B_SANDBOX_ID).map(|id| {
            (
                id.to_string(),
                header(headers::E2B_SANDBOX_PORT).map(str::to_string),
            )
        });
        let sandbox = sandbox
            .as_ref()
            .map(|(id, port)| (id.as_str(), port.as_deref()));
        let (service, port) = self
            .route_request(host.as_deref(), sandbox, request.uri().path(), scope)
            .await?;
        let host = host.unwrap_or_default();

        // 2. Prepare what the instance receives.
        let upgrading = headers::is_upgrade_request(request.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let bodiless = headers::has_no_body(&parts.headers);
        let mut request_headers = parts.headers;
        headers::strip_hop_by_hop(&mut request_headers, upgrading);
        headers::add_forwarding(&mut request_headers, client.ip().to_canonical(), &host);
        request_headers.insert(X_REQUEST_ID, request_id.clone());
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |path_and_query| path_and_query.as_str());
        let body = BodySlot::new(body);
        let replayable = !upgrading && is_replayable(&parts.method, bodiless);

        // 3. Pick an instance and send; retry once if the connect fails.
        let mut attempts = Attempts::new(replayable);
        let (mut response, upstream) = loop {
            let (index, addr) = attempts.start(&service, port, scope)?;
            let upstream = upstream_at(&service, index, addr);
            let attempt_headers = if attempts.may_retry(&service) {
                request_headers.clone()
            } else {
                std::mem::take(&mut request_headers)
            };
            let mut attempt = Request::new(body.body());
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = upstream_uri(&upstream, path_and_query)?;
            *attempt.version_mut() = Version::HTTP_11;
            *attempt.headers_mut() = attempt_headers;

            let timeout = self.config.upstream_header_timeout;
            match tokio::time::timeout(timeout, tasks.client.request(attempt)).await {
                Ok(Ok(response)) => break (response, upstream),
                Ok(Err(error)) if error.is_connect() => {
                    let error = connect_error(error, upstream, self.config.connect_timeout);
                    if attempts.retry_connect(index, &error, &service, body.is_untouched()) {
                        tracing::debug!(%error, "connect failed; trying another instance");
                        continue;
                    }
                    return Err(error);
                }
                Ok(Err(error))
                    if closed_without_answer(&error) && attempts.replay(index, &service) =>
                {
                    tracing::debug!(%error, "instance closed the connection unanswered; sending again");
                    continue;
                }
                Ok(Err(error)) => return Err(upstream_failed(error, upstream)),
                Err(_elapsed) => {
                    return Err(ErrorKind::UpstreamTimeout { upstream, timeout }.into());
                }
            }
        };
        scope.respond(response.status());
        scope.phase(Phase::ResponseHeaders);

        // 4. Respond.
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(switched_unasked(upstream));
            };
            let instance_upgrade = hyper::upgrade::on(&mut response);
            headers::strip_hop_by_hop(response.headers_mut(), true);
            tasks.tracker.spawn(
                upgrade::splice(
                    client_upgrade,
                    instance_upgrade,
                    scope.take(),
                    tasks.stop.clone(),
                )
                .in_current_span(),
            );
            let (parts, _empty) = response.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        headers::strip_hop_by_hop(response.headers_mut(), false);
        Ok(response.map(|body| ProxyBody::upstream(body, scope.take())))
    }

    /// The sandbox (and port) a request is for: named by the
    /// `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers (port 49983, the
    /// agent's, by default), or by a `<port>-<id>.<domain>` host that no
    /// service has. `None` for a request to a service.
    fn route_sandbox(
        &self,
        header: Option<(&str, Option<&str>)>,
        host: &str,
    ) -> Result<Option<(Arc<CompiledService>, u16)>, ProxyError> {
        let table = self.table.load();
        if let Some((id, port)) = header {
            let port = match port {
                None => headers::ENVD_PORT,
                Some(port) => port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    ErrorKind::BadSandboxPort {
                        port: port.to_string(),
                    }
                })?,
            };
            let sandbox = table
                .sandbox(id)
                .ok_or_else(|| ErrorKind::UnknownSandbox { id: id.to_string() })?;
            return Ok(Some((sandbox.clone(), port)));
        }
        let lookup = normalize_host(host);
        if table.service(&lookup).is_some() {
            return Ok(None);
        }
        match table.sandbox_host(&lookup) {
            None => Ok(None),
            Some((id, port)) => {
                let sandbox = table
                    .sandbox(id)
                    .ok_or_else(|| ErrorKind::UnknownSandbox { id: id.to_string() })?;
                Ok(Some((sandbox.clone(), port)))
            }
        }
    }

    /// The service serving `host`, from the current table.
    pub(crate) fn route(&self, host: &str) -> Result<Arc<CompiledService>, ProxyError> {
        let lookup = normalize_host(host);
        let table = self.table.load();
        table.service(&lookup).cloned().ok_or_else(|| {
            ErrorKind::UnknownHost {
                host: lookup.into_owned(),
            }
            .into()
        })
    }
}

/// The span of one request; routing fills in app, service and instance.
pub(crate) fn request_span(request_id: &HeaderValue) -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or("-"),
        app = tracing::field::Empty,
        service = tracing::field::Empty,
        instance = tracing::field::Empty,
    )
}

/// A bodiless GET, HEAD or OPTIONS may be sent again if the instance
/// dropped the connection without answering: it changed nothing.
pub(crate) fn is_replayable(method: &Method, bodiless: bool) -> bool {
    bodiless && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Steps 2 and 3, for both paths: which instance each attempt at sending a
/// request goes to, and which failures may be tried again.
///
/// - A failed *connect* (nothing was sent) is retried once, on another
///   instance, if the request body is still untouched.
/// - A replayable request whose connection the instance closed without
///   answering is sent once more, to another instance if there is one.
#[derive(Debug)]
pub(crate) struct Attempts {
    /// The instance whose connect failed (or that dropped a replayable
    /// request), not to be tried again.
    failed: Option<usize>,
    replayable: bool,
    replayed: bool,
}

impl Attempts {
    pub(crate) fn new(replayable: bool) -> Self {
        Self {
            failed: None,
            replayable,
            replayed: false,
        }
    }

    /// Starts an attempt: picks the least-loaded instance not excluded,
    /// counts the request there and tells the hooks. Returns the instance's
    /// index and address.
    pub(crate) fn start(
        &self,
        service: &CompiledService,
        port: u16,
        scope: &mut RequestScope,
    ) -> Result<(usize, SocketAddr), ProxyError> {
        let (index, lease) = service
            .pick(self.failed.as_slice())
            .ok_or_else(|| no_healthy_instance(service))?;
        let backend = &service.backends[index];
        tracing::Span::current().record("instance", &*backend.instance_id);
        scope.enter_instance(lease);
        scope.update(|info| info.instance_id = Some(backend.instance_id.clone()));
        scope.phase(Phase::Forwarding);
        Ok((index, SocketAddr::new(backend.ip, port)))
    }

    /// Could a failure of this attempt be retried? (Then the request must
    /// be kept.)
    pub(crate) fn may_retry(&self, service: &CompiledService) -> bool {
        (self.failed.is_none() && service.backends.len() > 1) || (self.replayable && !self.replayed)
    }

    /// The connect to instance `index` failed with `error`: true if the
    /// request goes to another instance.
    pub(crate) fn retry_connect(
        &mut self,
        index: usize,
        error: &ProxyError,
        service: &CompiledService,
        body_untouched: bool,
    ) -> bool {
        let retry = error.retryable
            && self.failed.is_none()
            && service.backends.len() > 1
            && body_untouched;
        if retry {
            self.failed = Some(index);
        }
        retry
    }

    /// Instance `index` closed the connection without answering: true if
    /// the request is sent again.
    pub(crate) fn replay(&mut self, index: usize, service: &CompiledService) -> bool {
        if !self.replayable || self.replayed {
            return false;
        }
        self.replayed = true;
        if service.backends.len() > 1 {
            self.failed = Some(index);
        }
        true
    }
}

/// Instance `index` of `service`, at `addr`, for error messages.
pub(crate) fn upstream_at(
    service: &CompiledService,
    index: usize,
    addr: SocketAddr,
) -> Box<Upstream> {
    Box::new(Upstream {
        app: service.app.clone(),
        service: service.service.clone(),
        instance_id: service.backends[index].instance_id.clone(),
        addr,
    })
}

/// The instance switched protocols unasked.
pub(crate) fn switched_unasked(upstream: Box<Upstream>) -> ProxyError {
    ErrorKind::UpstreamFailed {
        upstream,
        reason: "switched protocols although the request asked for no upgrade".into(),
        cause: None,
    }
    .into()
}

/// The host the client asked for: the `Host` header, or the authority of an
/// absolute-form request line.
fn original_host<B>(request: &Request<B>) -> Option<String> {
    let from_header = request
        .headers()
        .get(HOST)
        .and_then(|value| value.to_str().ok());
    from_header
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str())
        })
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(str::to_owned)
}

/// The port of `service` serving `path` (404 if none does).
pub(crate) fn route_port(service: &CompiledService, path: &str) -> Result<u16, ProxyError> {
    service.port_for(path).ok_or_else(|| {
        ErrorKind::NoRoute {
            app: service.app.clone(),
            service: service.service.clone(),
            path: path.to_owned(),
        }
        .into()
    })
}

pub(crate) fn no_healthy_instance(service: &CompiledService) -> ProxyError {
    ErrorKind::NoHealthyInstance {
        app: service.app.clone(),
        service: service.service.clone(),
    }
    .into()
}

/// `http://<instance addr><path and query>`.
fn upstream_uri(upstream: &Upstream, path_and_query: &str) -> Result<Uri, ProxyError> {
    let uri = format!("http://{}{path_and_query}", upstream.addr);
    Uri::try_from(uri).map_err(|error| {
        ErrorKind::Internal(format!("cannot build the upstream URI: {error}")).into()
    })
}

/// Classifies a failed connect: timed out (504) or refused/unreachable (502).
pub(crate) fn connect_error<E: StdError + Send + Sync + 'static>(
    error: E,
    upstream: Box<Upstream>,
    timeout: std::time::Duration,
) -> ProxyError {
    let io_kind = find_cause::<io::Error>(&error).map(io::Error::kind);
    if io_kind == Some(io::ErrorKind::TimedOut) {
        return ErrorKind::ConnectTimeout { upstream, timeout }.into();
    }
    ErrorKind::ConnectFailed {
        upstream,
        reason: describe(&error),
        cause: Box::new(error),
    }
    .into()
}

/// The instance closed (or reset) the connection before any byte of a
/// response: the one failure after sending that a replayable request may
/// be retried on.
fn closed_without_answer(error: &hyper_util::client::legacy::Error) -> bool {
    if let Some(hyper_error) = find_cause::<hyper::Error>(error)
        && hyper_error.is_incomplete_message()
    {
        return true;
    }
    find_cause::<io::Error>(error).is_some_and(|e| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    })
}

/// A failure after the request started: retried only for replayable
/// requests whose connection closed unanswered (see above).
pub(crate) fn upstream_failed<E: StdError + Send + Sync + 'static>(
    error: E,
    upstream: Box<Upstream>,
) -> ProxyError {
    ErrorKind::UpstreamFailed {
        upstream,
        reason: describe(&error),
        cause: Some(Box::new(error)),
    }
    .into()
}

/// A short, lower-case reason for an upstream failure.
pub(crate) fn describe(error: &(dyn StdError + 'static)) -> String {
    if let Some(hyper_error) = find_cause::<hyper::Error>(error) {
        if hyper_error.is_parse() || hyper_error.is_parse_status() {
            return "sent a malformed response".into();
        }
        if hyper_error.is_incomplete_message() {
            return "closed the connection before a complete response".into();
        }
    }
    if let Some(io_error) = find_cause::<io::Error>(error) {
        let reason = match io_error.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused",
            io::ErrorKind::ConnectionReset => "connection reset",
            io::ErrorKind::ConnectionAborted => "connection aborted",
            io::ErrorKind::BrokenPipe => "connection closed while sending",
            io::ErrorKind::UnexpectedEof => "connection closed",
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                "address unreachable"
            }
            io::ErrorKind::AddrNotAvailable => "address not available",
            _ => return io_error.to_string(),
        };
        return reason.into();
    }
    innermost(error).to_string()
}

/// The first error of type `E` in `error`'s source chain (itself included).
fn find_cause<'a, E: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// The last error of `error`'s source chain.
fn innermost<'a>(error: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_comes_from_header_or_request_line() {
        let request = Request::builder()
            .uri("/x")
            .header(HOST, "web.hello.localhost:8080")
            .body(())
            .unwrap();
        assert_eq!(
            original_host(&request).as_deref(),
            Some("web.hello.localhost:8080")
        );
        let absolute = Request::builder()
            .uri("http://web.hello.localhost/x")
            .body(())
            .unwrap();
        assert_eq!(
            original_host(&absolute).as_deref(),
            Some("web.hello.localhost")
        );
        let none = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(original_host(&none), None);
    }

    #[test]
    fn io_causes_are_described_briefly() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(describe(&refused), "connection refused");
        let odd = Wrapper(io::Error::other("odd"));
        assert_eq!(describe(&odd), "odd");
    }

    #[test]
    fn upstream_uris_bracket_ipv6() {
        let mut upstream = Upstream {
            app: "a".into(),
            service: "s".into(),
            instance_id: "i".into(),
            addr: "[::1]:8000".parse().unwrap(),
        };
        assert_eq!(
            upstream_uri(&upstream, "/x?y=1").unwrap().to_string(),
            "http://[::1]:8000/x?y=1"
        );
        upstream.addr = "127.0.0.2:80".parse().unwrap();
        assert_eq!(
            upstream_uri(&upstream, "/").unwrap().to_string(),
            "http://127.0.0.2:80/"
        );
    }
}
