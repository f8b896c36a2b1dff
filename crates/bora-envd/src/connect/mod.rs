//! The Connect RPC protocol (<https://connectrpc.com/docs/protocol>), server
//! side, as far as envd needs it:
//!
//! - unary: `POST /<package.Service>/<Method>` with
//!   `Content-Type: application/json` or `application/proto`, the bare
//!   message as body; errors are JSON `{"code", "message"}` with the HTTP
//!   status of the code;
//! - server and client streaming: `Content-Type: application/connect+json`
//!   or `application/connect+proto`, every message in an [`envelope`]; the
//!   response is always HTTP 200 and ends with an end-of-stream envelope
//!   carrying the error, if any.
//!
//! Request compression (`gzip`) is understood; responses are never
//! compressed (the SDKs disable compression, and output chunks are small).

pub mod envelope;

use std::convert::Infallible;
use std::fmt;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as _, Frame, Incoming};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

pub use envelope::{EnvelopeDecoder, EnvelopeError, MAX_MESSAGE};

/// The response body every handler returns. Its error type is I/O so a
/// streamed download can abort the response when reading the file fails.
pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Connect error codes, with the HTTP status each maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error response with this code.
    pub fn http_status(self) -> StatusCode {
        let code = match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RPC failure as the client sees it: a code and a message that names
/// the path, pid or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// Maps an I/O error on `what` (a path, usually) to the closest code.
    pub fn from_io(err: &std::io::Error, what: &str) -> Self {
        use std::io::ErrorKind as K;
        let code = match err.kind() {
            K::NotFound => Code::NotFound,
            K::AlreadyExists => Code::AlreadyExists,
            K::PermissionDenied | K::ReadOnlyFilesystem => Code::PermissionDenied,
            K::InvalidInput | K::InvalidFilename | K::NotADirectory | K::IsADirectory => {
                Code::InvalidArgument
            }
            K::DirectoryNotEmpty => Code::FailedPrecondition,
            K::StorageFull | K::QuotaExceeded => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        Self::new(code, format!("{what}: {err}"))
    }

    /// The body of a unary error response (also the `error` of an
    /// end-of-stream message).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A unary error response.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(full(self.to_json()));
        *resp.status_mut() = self.code.http_status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The message encoding of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

impl Codec {
    /// The codec of a unary request's `Content-Type`.
    pub fn from_unary_content_type(ct: &str) -> Option<Self> {
        match media_type(ct) {
            "application/proto" | "application/protobuf" => Some(Codec::Proto),
            "application/json" => Some(Codec::Json),
            _ => None,
        }
    }

    /// The codec of a streaming request's `Content-Type`.
    pub fn from_stream_content_type(ct: &str) -> Option<Self> {
        match media_type(ct) {
            "application/connect+proto" | "application/connect+protobuf" => Some(Codec::Proto),
            "application/connect+json" => Some(Codec::Json),
            _ => None,
        }
    }

    pub fn unary_content_type(self) -> &'static str {
        match self {
            Codec::Proto => "application/proto",
            Codec::Json => "application/json",
        }
    }

    pub fn stream_content_type(self) -> &'static str {
        match self {
            Codec::Proto => "application/connect+proto",
            Codec::Json => "application/connect+json",
        }
    }

    pub fn decode<M>(self, bytes: &[u8]) -> Result<M, RpcError>
    where
        M: prost::Message + DeserializeOwned + Default,
    {
        match self {
            Codec::Proto => M::decode(bytes)
                .map_err(|e| RpcError::invalid_argument(format!("invalid protobuf message: {e}"))),
            Codec::Json => {
                // An empty body is the empty message, like `{}`.
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(M::default());
                }
                serde_json::from_slice(bytes)
                    .map_err(|e| RpcError::invalid_argument(format!("invalid JSON message: {e}")))
            }
        }
    }

    pub fn encode<M>(self, msg: &M) -> Bytes
    where
        M: prost::Message + Serialize,
    {
        match self {
            Codec::Proto => msg.encode_to_vec().into(),
            Codec::Json => serde_json::to_vec(msg).unwrap_or_default().into(),
        }
    }
}

fn media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// What a request to an RPC path looks like, read from its headers.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo {
    pub codec: Codec,
    pub streaming: bool,
    /// `Content-Encoding` (unary) or `Connect-Content-Encoding` (streaming)
    /// is gzip.
    pub gzip: bool,
    /// `Connect-Timeout-Ms`.
    pub timeout: Option<std::time::Duration>,
}

impl CallInfo {
    /// Reads the call's shape from its headers; an unknown content type or
    /// compression is refused the way the protocol asks (415 / unimplemented),
    /// with the response to send.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, Box<Response<Body>>> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (codec, streaming) = if let Some(c) = Codec::from_stream_content_type(ct) {
            (c, true)
        } else if let Some(c) = Codec::from_unary_content_type(ct) {
            (c, false)
        } else {
            let mut resp = Response::new(full(format!(
                "unsupported content type {ct:?}: use application/json, application/proto, \
                 application/connect+json or application/connect+proto"
            )));
            *resp.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            resp.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("application/json, application/proto"),
            );
            return Err(Box::new(resp));
        };
        let encoding_header = if streaming {
            "connect-content-encoding"
        } else {
            "content-encoding"
        };
        let gzip = match headers.get(encoding_header).and_then(|v| v.to_str().ok()) {
            None | Some("identity") | Some("") => false,
            Some("gzip") => true,
            Some(other) => {
                return Err(Box::new(
                    RpcError::unimplemented(format!(
                        "unsupported compression {other:?}: envd accepts gzip and identity"
                    ))
                    .into_response(),
                ));
            }
        };
        let timeout = headers
            .get("connect-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        Ok(Self {
            codec,
            streaming,
            gzip,
            timeout,
        })
    }
}

/// Inflates a gzip payload, refusing to grow past [`MAX_MESSAGE`].
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_MESSAGE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RpcError::invalid_argument(format!("invalid gzip payload: {e}")))?;
    if out.len() > MAX_MESSAGE {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("decompressed message exceeds the limit of {MAX_MESSAGE} bytes"),
        ));
    }
    Ok(out)
}

/// Reads a whole unary request body, refusing more than [`MAX_MESSAGE`].
pub async fn read_unary(body: Incoming, call: &CallInfo) -> Result<Bytes, RpcError> {
    if body.size_hint().lower() > MAX_MESSAGE as u64 {
        return Err(too_large(body.size_hint().lower() as usize));
    }
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(MAX_MESSAGE + 1)
            } else {
                RpcError::new(Code::Canceled, format!("reading the request failed: {e}"))
            }
        })?
        .to_bytes();
    if call.gzip {
        Ok(gunzip(&bytes)?.into())
    } else {
        Ok(bytes)
    }
}

fn too_large(len: usize) -> RpcError {
    RpcError::new(
        Code::ResourceExhausted,
        format!("message of {len} bytes exceeds the limit of {MAX_MESSAGE} bytes"),
    )
}

/// Reads the enveloped messages of a streaming request, one at a time.
pub struct StreamReader {
    body: Incoming,
    decoder: EnvelopeDecoder,
    gzip: bool,
    done: bool,
}

impl StreamReader {
    pub fn new(body: Incoming, call: &CallInfo) -> Self {
        Self {
            body,
            decoder: EnvelopeDecoder::default(),
            gzip: call.gzip,
            done: false,
        }
    }

    /// The next message's payload, `None` at the end of the request.
    pub async fn next_payload(&mut self) -> Result<Option<Bytes>, RpcError> {
        loop {
            match self.decoder.next_envelope() {
                Ok(Some(env)) if env.is_end_stream() => {
                    // Clients never send one; treat it as the end.
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(env)) if env.is_compressed() => {
                    if !self.gzip {
                        return Err(RpcError::invalid_argument(
                            "compressed message without Connect-Content-Encoding",
                        ));
                    }
                    return gunzip(&env.payload).map(|v| Some(v.into()));
                }
                Ok(Some(env)) => return Ok(Some(env.payload)),
                Ok(None) => {}
                Err(e @ EnvelopeError::TooLarge { .. }) => {
                    return Err(RpcError::new(Code::ResourceExhausted, e.to_string()));
                }
                Err(e) => return Err(RpcError::invalid_argument(e.to_string())),
            }
            if self.done {
                return match self.decoder.finish() {
                    Ok(()) => Ok(None),
                    Err(e) => Err(RpcError::invalid_argument(e.to_string())),
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(RpcError::new(
                        Code::Canceled,
                        format!("reading the request stream failed: {e}"),
                    ));
                }
                None => self.done = true,
            }
        }
    }

    /// Reads to the end of the request, which must hold no more messages
    /// (a server-streaming call has exactly one).
    pub async fn expect_end(&mut self) -> Result<(), RpcError> {
        match self.next_payload().await? {
            None => Ok(()),
            Some(_) => Err(RpcError::invalid_argument(
                "more than one request message for a server-streaming method",
            )),
        }
    }

    /// The next message, decoded.
    pub async fn next<M>(&mut self, codec: Codec) -> Result<Option<M>, RpcError>
    where
        M: prost::Message + DeserializeOwned + Default,
    {
        match self.next_payload().await? {
            Some(p) => codec.decode(&p).map(Some),
            None => Ok(None),
        }
    }
}

/// A unary success response.
pub fn unary_response<M>(codec: Codec, msg: &M) -> Response<Body>
where
    M: prost::Message + Serialize,
{
    let mut resp = Response::new(full(codec.encode(msg)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.unary_content_type()),
    );
    resp
}

/// The writing half of a streaming response. Dropping it without
/// [`StreamSender::finish`] ends the stream without an end-of-stream
/// message, which clients report as an error — handlers always finish.
pub struct StreamSender {
    codec: Codec,
    tx: mpsc::Sender<Bytes>,
}

/// The client went away; stop producing.
#[derive(Debug)]
pub struct Disconnected;

impl StreamSender {
    /// Sends one message.
    pub async fn send<M>(&self, msg: &M) -> Result<(), Disconnected>
    where
        M: prost::Message + Serialize,
    {
        let payload = self.codec.encode(msg);
        self.tx
            .send(envelope::encode(0, &payload))
            .await
            .map_err(|_| Disconnected)
    }

    /// Ends the stream, with `error` if the call failed.
    pub async fn finish(self, error: Option<RpcError>) {
        let end = match error {
            Some(e) => serde_json::json!({ "error": e }),
            None => serde_json::json!({}),
        };
        let payload = serde_json::to_vec(&end).unwrap_or_default();
        let _ = self
            .tx
            .send(envelope::encode(envelope::FLAG_END_STREAM, &payload))
            .await;
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Starts a streaming response: the caller writes messages through the
/// returned sender, from a task of its own.
pub fn stream_response(codec: Codec) -> (StreamSender, Response<Body>) {
    // A few messages of slack; after that the producer waits for the
    // client, so a slow client slows the process's output rather than
    // growing memory.
    let (tx, rx) = mpsc::channel(16);
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.stream_content_type()),
    );
    (StreamSender { codec, tx }, resp)
}

/// A response body fed by a channel; dropped by hyper when the client
/// disconnects, which closes the channel and tells the producer.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_pick_codec_and_shape() {
        assert_eq!(
            Codec::from_unary_content_type("application/json; charset=utf-8"),
            Some(Codec::Json)
        );
        assert_eq!(
            Codec::from_unary_content_type("application/proto"),
            Some(Codec::Proto)
        );
        assert_eq!(Codec::from_unary_content_type("text/plain"), None);
        assert_eq!(
            Codec::from_stream_content_type("application/connect+json"),
            Some(Codec::Json)
        );
        assert_eq!(Codec::from_stream_content_type("application/json"), None);
    }

    #[test]
    fn error_codes_map_to_http_statuses() {
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::Unauthenticated.http_status(), 401);
        assert_eq!(Code::AlreadyExists.http_status(), 409);
        assert_eq!(Code::Canceled.http_status().as_u16(), 499);
        let e = RpcError::not_found("path /x does not exist");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&e.to_json()).unwrap(),
            serde_json::json!({"code": "not_found", "message": "path /x does not exist"})
        );
    }

    #[test]
    fn io_errors_map_to_codes_naming_the_path() {
        let e = RpcError::from_io(
            &std::io::Error::from(std::io::ErrorKind::NotFound),
            "/home/user/x",
        );
        assert_eq!(e.code, Code::NotFound);
        assert!(e.message.starts_with("/home/user/x: "), "{}", e.message);
        let e = RpcError::from_io(
            &std::io::Error::from_raw_os_error(nix::libc::EACCES),
            "/root",
        );
        assert_eq!(e.code, Code::PermissionDenied);
    }

    #[test]
    fn gzip_is_inflated_with_a_cap() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"path\":\"/tmp\"}").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip(&gz).unwrap(), b"{\"path\":\"/tmp\"}");
        assert_eq!(gunzip(b"not gzip").unwrap_err().code, Code::InvalidArgument);

        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![0u8; MAX_MESSAGE + 10]).unwrap();
        let bomb = enc.finish().unwrap();
        assert_eq!(gunzip(&bomb).unwrap_err().code, Code::ResourceExhausted);
    }

    #[test]
    fn decode_empty_json_is_default_and_bad_json_is_invalid_argument() {
        use crate::proto::filesystem::PathRequest;
        let m: PathRequest = Codec::Json.decode(b"").unwrap();
        assert_eq!(m.path, "");
        let e = Codec::Json.decode::<PathRequest>(b"{").unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        let e = Codec::Proto
            .decode::<PathRequest>(&[0x0a, 0x05])
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }
}
