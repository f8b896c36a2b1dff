//! The Connect services: routing `POST /<package.Service>/<Method>` to its
//! handler, decoding the request and encoding the answer in the codec the
//! client chose. Handlers return `Result<_, RpcError>`; errors become
//! responses only here.

mod filesystem;
mod process;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connect::{self, Body, CallInfo, RpcError, StreamReader, StreamSender};
use crate::state::Shared;

/// How often an idle stream sends a keepalive message when the client did
/// not ask (`Keepalive-Ping-Interval`, seconds) for another interval.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);

/// Whether `path` names an RPC (as opposed to envd's plain HTTP API).
pub fn is_rpc_path(path: &str) -> bool {
    path.starts_with("/process.Process/") || path.starts_with("/filesystem.Filesystem/")
}

/// What a handler needs from the request besides its message.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub headers: HeaderMap,
    pub call: CallInfo,
}

impl Ctx {
    /// The keepalive interval the client asked for.
    pub fn keepalive(&self) -> Duration {
        self.headers
            .get("keepalive-ping-interval")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map_or(DEFAULT_KEEPALIVE, Duration::from_secs)
    }

    /// The sandbox user the request acts as (`Authorization: Basic`).
    pub fn user(&self) -> Result<crate::users::User, RpcError> {
        let name = crate::auth::basic_user(&self.headers)?;
        self.shared.user(name.as_deref())
    }
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        let mut resp = RpcError::unimplemented(format!(
            "{} {}: Connect RPCs are called with POST",
            parts.method,
            parts.uri.path()
        ))
        .into_response();
        *resp.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return resp;
    }
    let call = match CallInfo::from_headers(&parts.headers) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let ctx = Ctx {
        shared,
        headers: parts.headers,
        call,
    };
    let path = parts.uri.path();
    let (service, method) = path[1..].split_once('/').unwrap_or(("", ""));
    match service {
        "process.Process" => process::route(ctx, method, body).await,
        "filesystem.Filesystem" => filesystem::route(ctx, method, body).await,
        _ => not_implemented(path),
    }
}

fn not_implemented(path: &str) -> Response<Body> {
    let mut resp = RpcError::unimplemented(format!("no RPC at {path}")).into_response();
    *resp.status_mut() = http::StatusCode::NOT_FOUND;
    resp
}

/// Runs a unary handler.
async fn unary<Req, Resp, F, Fut>(ctx: Ctx, body: Incoming, f: F) -> Response<Body>
where
    Req: prost::Message + DeserializeOwned + Default,
    Resp: prost::Message + Serialize,
    F: FnOnce(Ctx, Req) -> Fut,
    Fut: Future<Output = Result<Resp, RpcError>>,
{
    let codec = ctx.call.codec;
    if ctx.call.streaming {
        return RpcError::invalid_argument(
            "unary method called with a streaming content type (application/connect+*)",
        )
        .into_response();
    }
    let result = async {
        let bytes = connect::read_unary(body, &ctx.call).await?;
        let req: Req = codec.decode(&bytes)?;
        f(ctx, req).await
    }
    .await;
    match result {
        Ok(resp) => connect::unary_response(codec, &resp),
        Err(e) => e.into_response(),
    }
}

/// Runs a server-streaming handler: reads the one request message, then
/// `f` writes the stream from a task of its own.
///
/// The request is read to its end before the response starts: answering
/// while a client is still sending makes some HTTP/1.1 stacks lose the
/// rest of the request body.
async fn server_stream<Req, F, Fut>(ctx: Ctx, body: Incoming, f: F) -> Response<Body>
where
    Req: prost::Message + DeserializeOwned + Default + Send + 'static,
    F: FnOnce(Ctx, Req, StreamSender) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let codec = ctx.call.codec;
    if !ctx.call.streaming {
        return RpcError::invalid_argument(
            "streaming method called with a unary content type: use application/connect+json \
             or application/connect+proto",
        )
        .into_response();
    }
    let mut reader = StreamReader::new(body, &ctx.call);
    let req = match reader.next::<Req>(codec).await {
        Ok(Some(req)) => reader.expect_end().await.map(|()| req),
        Ok(None) => Err(RpcError::invalid_argument("the request message is missing")),
        Err(e) => Err(e),
    };
    let (sender, resp) = connect::stream_response(codec);
    tokio::spawn(async move {
        match req {
            Ok(req) => f(ctx, req, sender).await,
            Err(e) => sender.finish(Some(e)).await,
        }
    });
    resp
}

/// Runs a client-streaming handler: `f` reads the request messages and
/// returns the one response, which is sent once the request has ended.
async fn client_stream<Resp, F, Fut>(ctx: Ctx, body: Incoming, f: F) -> Response<Body>
where
    Resp: prost::Message + Serialize + Send + 'static,
    F: FnOnce(Ctx, StreamReader) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    let codec = ctx.call.codec;
    if !ctx.call.streaming {
        return RpcError::invalid_argument(
            "client-streaming method called with a unary content type",
        )
        .into_response();
    }
    let reader = StreamReader::new(body, &ctx.call);
    let result = f(ctx, reader).await;
    let (sender, resp) = connect::stream_response(codec);
    tokio::spawn(async move {
        match result {
            Ok(msg) => {
                if sender.send(&msg).await.is_ok() {
                    sender.finish(None).await;
                }
            }
            Err(e) => sender.finish(Some(e)).await,
        }
    });
    resp
}

/// Blocking filesystem work off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, RpcError>
where
    F: FnOnce() -> Result<T, RpcError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RpcError::internal(format!("filesystem task failed: {e}")))?
}
