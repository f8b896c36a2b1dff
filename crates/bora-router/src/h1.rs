//! HTTP/1.1 message heads on the fast path (see `passthrough`): which
//! requests it takes, the heads it sends on, and how bodies are framed.
//!
//! Everything here is pure: bytes in, decisions and bytes out. Heads are
//! parsed in place with `httparse`, and rewritten with the semantics of
//! `headers` (hop-by-hop stripping, `X-Forwarded-*`, `X-Request-Id`) so
//! both paths forward the same thing.
//!
//! - A request takes the fast path when it is HTTP/1.0 or 1.1, not
//!   CONNECT, for an origin-form path, with no `Upgrade`, no `Expect`, no
//!   `Transfer-Encoding` and at most one `Host`: its body is then absent or
//!   `Content-Length` bytes. Anything else, including heads `httparse`
//!   rejects, goes to hyper, which answers odd requests properly.
//! - A response's body is framed per RFC 9112 §6.3: none after HEAD and for
//!   1xx, 204 and 304; chunked if the last transfer coding is chunked;
//!   `Content-Length` bytes; else everything up to the connection's close.

use std::ops::Range;

use http::header::HeaderValue;
use http::{Method, Response, StatusCode};

use crate::headers::{self, is_hop_by_hop, visible_ascii};

/// The most header fields in a head (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 100;

/// The longest head the fast path reads; a longer one goes to hyper, which
/// refuses it.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// What a client's buffered bytes start with.
#[derive(Debug)]
pub(crate) enum RequestParse {
    /// Not a whole head yet.
    Partial,
    /// A request the fast path forwards.
    Fast(RequestHead),
    /// A request for hyper: an upgrade, a chunked body, an odd or
    /// malformed head.
    Hyper,
}

/// A request head the fast path forwards, with the head the instance gets.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Length of the head in the client's bytes; the body follows.
    pub(crate) len: usize,
    pub(crate) method: Method,
    /// The client sent HTTP/1.0.
    pub(crate) http10: bool,
    /// The client wants the connection kept open after the response.
    pub(crate) keep_alive: bool,
    /// Body length: `Content-Length`, 0 without one.
    pub(crate) content_length: u64,
    pub(crate) request_id: HeaderValue,
    /// The head sent to the instance.
    pub(crate) upstream: Vec<u8>,
    /// The request path (no query) within `upstream`.
    path: Range<usize>,
    /// The host the client named (trimmed) within `upstream`, if any.
    host: Option<Range<usize>>,
}

impl RequestHead {
    /// The path, without the query: what routes.
    pub(crate) fn path(&self) -> &str {
        self.text(self.path.clone())
    }

    /// The `Host` the client sent, trimmed, if it is usable text.
    pub(crate) fn host(&self) -> Option<&str> {
        self.host.clone().map(|range| self.text(range))
    }

    /// True when a bodiless GET, HEAD or OPTIONS: sending it again changes
    /// nothing.
    pub(crate) fn is_replayable(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
            && self.content_length == 0
    }

    fn text(&self, range: Range<usize>) -> &str {
        // Both ranges were copied from checked ASCII.
        std::str::from_utf8(&self.upstream[range]).unwrap_or_default()
    }
}

/// Parses the request at the start of `buf` from `client_ip` (as text,
/// IPv4-mapped addresses shown as IPv4). The head
/// for the instance is written into `spare` (a buffer to reuse), which a
/// returned [`RequestParse::Fast`] head then owns.
pub(crate) fn parse_request(buf: &[u8], client_ip: &str, spare: &mut Vec<u8>) -> RequestParse {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return RequestParse::Partial,
        Err(_) => return RequestParse::Hyper,
    };
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return RequestParse::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return RequestParse::Hyper;
    };
    if method == Method::CONNECT
        || !target.starts_with('/')
        || !target.bytes().all(|b| (b'!'..=b'~').contains(&b))
    {
        return RequestParse::Hyper;
    }
    let Some(scan) = RequestScan::of(request.headers) else {
        return RequestParse::Hyper;
    };

    let http10 = minor == 0;
    let keep_alive = if http10 {
        scan.keep_alive && !scan.close
    } else {
        !scan.close
    };

    // The head the instance gets: same request line in HTTP/1.1, the
    // end-to-end fields, then the forwarding ones.
    let mut out = std::mem::take(spare);
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let path_start = out.len();
    out.extend_from_slice(target.as_bytes());
    let path = path_start..path_start + target.find('?').unwrap_or(target.len());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    for field in request.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            if !scan.listed(name) {
                forwarded_for.push(field.value);
            }
            continue;
        }
        // (`Host` stays even if `Connection` lists it, as on hyper's path.)
        let dropped = name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-host")
            || name.eq_ignore_ascii_case("x-request-id")
            || name.eq_ignore_ascii_case("content-length")
            || is_hop_by_hop(name)
            || (scan.listed(name) && !name.eq_ignore_ascii_case("host"));
        if !dropped {
            push_field(&mut out, name.as_bytes(), field.value);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    headers::push_forwarded_for(&mut out, forwarded_for.into_iter(), client_ip);
    out.extend_from_slice(b"\r\n");
    push_field(&mut out, b"x-forwarded-proto", b"http");
    let host = scan.host.map(|host| {
        out.extend_from_slice(b"x-forwarded-host: ");
        let start = out.len();
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
        start..start + host.len()
    });
    let request_id = headers::request_id_from(scan.request_id);
    push_field(&mut out, b"x-request-id", request_id.as_bytes());
    if let Some(length) = scan.content_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");

    RequestParse::Fast(RequestHead {
        len,
        method,
        http10,
        keep_alive,
        content_length: scan.content_length.unwrap_or(0),
        request_id,
        upstream: out,
        path,
        host,
    })
}

/// What the fast path needs from a request's header fields.
struct RequestScan<'a> {
    /// `Host`, trimmed, if present, non-empty and text.
    host: Option<&'a str>,
    content_length: Option<u64>,
    request_id: Option<&'a [u8]>,
    close: bool,
    keep_alive: bool,
    /// Other header names `Connection` lists (they are hop-by-hop).
    listed: Vec<&'a str>,
}

impl<'a> RequestScan<'a> {
    /// Scans `fields`; `None` if the request is not for the fast path.
    fn of(fields: &[httparse::Header<'a>]) -> Option<Self> {
        let mut scan = RequestScan {
            host: None,
            content_length: None,
            request_id: None,
            close: false,
            keep_alive: false,
            listed: Vec::new(),
        };
        let mut hosts = 0;
        for field in fields {
            let name = field.name;
            if name.eq_ignore_ascii_case("host") {
                hosts += 1;
                scan.host = visible_ascii(field.value)
                    .map(str::trim)
                    .filter(|host| !host.is_empty());
            } else if name.eq_ignore_ascii_case("content-length") {
                let length = content_length(field.value)?;
                if scan.content_length.is_some_and(|seen| seen != length) {
                    return None;
                }
                scan.content_length = Some(length);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in tokens(field.value) {
                    if token.eq_ignore_ascii_case("close") {
                        scan.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        scan.keep_alive = true;
                    } else if !is_hop_by_hop(token) {
                        scan.listed.push(token);
                    }
                }
            } else if name.eq_ignore_ascii_case("x-request-id") {
                scan.request_id.get_or_insert(field.value);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
                // Requests for a sandbox by header (E2B's SDKs) are routed
                // on hyper's path, which reads those headers.
                || name.eq_ignore_ascii_case(crate::headers::E2B_SANDBOX_ID)
            {
                return None;
            }
        }
        (hosts <= 1).then_some(scan)
    }

    /// Does `Connection` list `name`?
    fn listed(&self, name: &str) -> bool {
        self.listed
            .iter()
            .any(|token| token.eq_ignore_ascii_case(name))
    }
}

/// A `Content-Length` value: 1 to 19 digits, nothing else.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The comma-separated tokens of a `Connection` (or similar) value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    visible_ascii(value)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Appends `name: value` and CRLF.
fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, up to the last chunk and the trailers.
    Chunked,
    /// Up to the end of the connection.
    Close,
}

/// What the fast path knows of the request when reading its response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exchange<'a> {
    /// The request was HEAD: no response body whatever the head says.
    pub(crate) head_request: bool,
    /// The client speaks HTTP/1.0: no chunks, keep-alive only on request.
    pub(crate) http10: bool,
    /// The client connection may stay open after this response.
    pub(crate) keep_alive: bool,
    pub(crate) request_id: &'a HeaderValue,
}

/// What an instance's buffered bytes start with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ResponseParse {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) response of this many bytes, to skip: the client
    /// asked for none (`Expect` goes through hyper).
    Interim(usize),
    /// `101 Switching Protocols` although the request asked for no upgrade.
    Switched,
    /// The final response head.
    Final(ResponseHead),
}

/// A final response head, rewritten for the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    /// Length of the head in the instance's bytes; the body follows.
    pub(crate) len: usize,
    pub(crate) status: StatusCode,
    /// How the instance delimits the body.
    pub(crate) framing: Framing,
    /// The connection to the instance can carry another request after the
    /// body.
    pub(crate) reusable: bool,
    /// The client connection stays open after the body.
    pub(crate) keep_alive: bool,
    /// Chunked from the instance, but the client reads HTTP/1.0: send it
    /// the chunks' data only, and close.
    pub(crate) dechunk: bool,
}

/// The response was not HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed response")]
pub(crate) struct Malformed;

/// Parses the response at the start of `buf`, for `exchange`. The head for
/// the client is written into `out` (cleared first) when it is final.
pub(crate) fn parse_response(
    buf: &[u8],
    exchange: Exchange<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseParse, Malformed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(ResponseParse::Partial),
        Ok(httparse::Status::Partial) | Err(_) => return Err(Malformed),
    };
    let (Some(minor), Some(code)) = (response.version, response.code) else {
        return Err(Malformed);
    };
    let status = StatusCode::from_u16(code).map_err(|_| Malformed)?;
    match code {
        101 => return Ok(ResponseParse::Switched),
        100..=199 => return Ok(ResponseParse::Interim(len)),
        _ => {}
    }

    let mut close = false;
    let mut keep_alive_token = false;
    let mut listed: Vec<&str> = Vec::new();
    let mut transfer_encoding: Option<bool> = None;
    let mut length: Option<u64> = None;
    for field in response.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive_token = true;
                } else if !is_hop_by_hop(token) {
                    listed.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding matters: is it chunked?
            let last = tokens(field.value).last();
            transfer_encoding =
                Some(last.is_some_and(|coding| coding.eq_ignore_ascii_case("chunked")));
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = content_length(field.value).ok_or(Malformed)?;
            if length.is_some_and(|seen| seen != value) {
                return Err(Malformed);
            }
            length = Some(value);
        }
    }

    let bodiless = exchange.head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, transfer_encoding, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) => Framing::Close,
        (false, None, Some(length)) => Framing::Length(length),
        (false, None, None) => Framing::Close,
    };
    let persistent = if minor == 0 {
        keep_alive_token && !close
    } else {
        !close
    };
    // Both framings at once smell of smuggling: use this connection no more.
    let ambiguous = transfer_encoding.is_some() && length.is_some();
    let reusable = persistent && framing != Framing::Close && !ambiguous;
    let dechunk = framing == Framing::Chunked && exchange.http10;
    let keep_alive = exchange.keep_alive && framing != Framing::Close && !dechunk;

    // The head for the client.
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match response.reason.filter(|reason| !reason.is_empty()) {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    for field in response.headers.iter() {
        let name = field.name;
        let dropped = is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-request-id")
            || listed.iter().any(|token| token.eq_ignore_ascii_case(name))
            || (framing == Framing::Chunked && name.eq_ignore_ascii_case("content-length"));
        if !dropped {
            push_field(out, name.as_bytes(), field.value);
        }
    }
    if framing == Framing::Chunked && !dechunk {
        push_field(out, b"transfer-encoding", b"chunked");
    }
    push_field(out, b"x-request-id", exchange.request_id.as_bytes());
    finish_head(out, exchange.http10, keep_alive);

    Ok(ResponseParse::Final(ResponseHead {
        len,
        status,
        framing,
        reusable,
        keep_alive,
        dechunk,
    }))
}

/// Ends a head for the client: `Connection` as the client needs it, then
/// the blank line.
fn finish_head(out: &mut Vec<u8>, http10: bool, keep_alive: bool) {
    if !keep_alive {
        push_field(out, b"connection", b"close");
    } else if http10 {
        push_field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Serialises a router-generated `response` (an error) whose body is
/// `body`: status line, its header fields, `Content-Length`, `Date`, and
/// the body unless the request was HEAD.
pub(crate) fn write_response<B>(
    response: &Response<B>,
    body: &[u8],
    exchange: Exchange<'_>,
    out: &mut Vec<u8>,
) {
    let status = response.status();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    push_field(
        out,
        b"content-length",
        itoa::Buffer::new().format(body.len()).as_bytes(),
    );
    push_field(
        out,
        b"date",
        httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
    );
    finish_head(out, exchange.http10, exchange.keep_alive);
    if !exchange.head_request {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "192.0.2.1";

    fn fast(request: &str) -> RequestHead {
        match parse_request(request.as_bytes(), CLIENT, &mut Vec::new()) {
            RequestParse::Fast(head) => head,
            other => panic!("{request:?}: {other:?}"),
        }
    }

    fn is_hyper(request: &str) -> bool {
        matches!(
            parse_request(request.as_bytes(), CLIENT, &mut Vec::new()),
            RequestParse::Hyper
        )
    }

    fn upstream(head: &RequestHead) -> &str {
        std::str::from_utf8(&head.upstream).unwrap()
    }

    #[test]
    fn plain_requests_take_the_fast_path() {
        let head = fast("GET /a/b?x=1 HTTP/1.1\r\nHost: Web.Hello.localhost:8080 \r\n\r\nNEXT");
        assert_eq!(
            head.len,
            "GET /a/b?x=1 HTTP/1.1\r\nHost: Web.Hello.localhost:8080 \r\n\r\n".len()
        );
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.path(), "/a/b");
        assert_eq!(head.host(), Some("Web.Hello.localhost:8080"));
        assert!(head.keep_alive && !head.http10);
        assert_eq!(head.content_length, 0);
        assert!(head.is_replayable());

        let post = fast(
            "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\ncontent-length: 12\r\n\r\n",
        );
        assert_eq!(post.content_length, 12);
        assert!(!post.is_replayable());
        assert!(upstream(&post).ends_with("content-length: 12\r\n\r\n"));
        assert_eq!(upstream(&post).matches("content-length").count(), 1);
    }

    #[test]
    fn odd_requests_go_to_hyper() {
        for request in [
            "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /chat HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(is_hyper(request), "{request:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(is_hyper(&format!("GET / HTTP/1.1\r\n{many}\r\n")));
    }

    #[test]
    fn partial_heads_ask_for_more() {
        for partial in ["", "GET", "GET / HTTP/1.1\r\nHost: h\r\n"] {
            assert!(matches!(
                parse_request(partial.as_bytes(), CLIENT, &mut Vec::new()),
                RequestParse::Partial
            ));
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!fast("GET / HTTP/1.0\r\nHost: h\r\n\r\n").keep_alive);
        let kept = fast("GET / HTTP/1.0\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(kept.keep_alive && kept.http10);
        assert!(!fast("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!fast("GET / HTTP/1.1\r\nHost: h\r\nConnection: x, Close\r\n\r\n").keep_alive);
        // HTTP/1.0 without Host is forwarded, and answered 400 by routing.
        assert_eq!(fast("GET / HTTP/1.0\r\n\r\n").host(), None);
        assert_eq!(fast("GET / HTTP/1.1\r\nHost: \t\r\n\r\n").host(), None);
    }

    #[test]
    fn request_heads_are_rewritten_like_hypers_path() {
        let head = fast(
            "GET /headers HTTP/1.0\r\n\
             Host: web.hello.localhost:8080\r\n\
             X-Forwarded-For: 203.0.113.9\r\n\
             X-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: evil\r\n\
             X-Request-Id: client-id-42\r\n\
             Connection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\n\
             Keep-Alive: timeout=9\r\n\
             Proxy-Authorization: basic abc\r\n\
             TE: trailers\r\n\
             X-Custom: kept\r\n\
             X-Custom: twice\r\n\r\n",
        );
        assert_eq!(
            upstream(&head),
            "GET /headers HTTP/1.1\r\n\
             Host: web.hello.localhost:8080\r\n\
             X-Custom: kept\r\n\
             X-Custom: twice\r\n\
             x-forwarded-for: 203.0.113.9, 192.0.2.1\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: web.hello.localhost:8080\r\n\
             x-request-id: client-id-42\r\n\r\n"
        );
        assert_eq!(head.request_id, "client-id-42");
        assert_eq!(head.host(), Some("web.hello.localhost:8080"));
    }

    #[test]
    fn insane_request_ids_are_replaced_and_listed_forwarding_dropped() {
        let head = fast(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: has space\r\n\
             Connection: X-Forwarded-For, host\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        );
        assert_ne!(head.request_id, "has space");
        assert_eq!(head.request_id.len(), 32);
        let text = upstream(&head);
        assert!(
            text.contains("\r\nx-forwarded-for: 192.0.2.1\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nHost: h\r\n"), "{text}");
        assert!(text.contains(&format!(
            "x-request-id: {}\r\n",
            head.request_id.to_str().unwrap()
        )));
    }

    fn exchange(id: &HeaderValue) -> Exchange<'_> {
        Exchange {
            head_request: false,
            http10: false,
            keep_alive: true,
            request_id: id,
        }
    }

    fn response(raw: &str, exchange: Exchange<'_>) -> (ResponseHead, String) {
        let mut out = Vec::new();
        match parse_response(raw.as_bytes(), exchange, &mut out) {
            Ok(ResponseParse::Final(head)) => (head, String::from_utf8(out).unwrap()),
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let id = HeaderValue::from_static("id-1");
        let plain = exchange(&id);
        let head = Exchange {
            head_request: true,
            ..plain
        };
        for (raw, exchange, framing, reusable) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                plain,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                head,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                plain,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                plain,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                plain,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                plain,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                plain,
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                plain,
                Framing::Close,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", plain, Framing::Close, false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                plain,
                Framing::Length(0),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                plain,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                plain,
                Framing::Length(1),
                true,
            ),
        ] {
            let (parsed, _) = response(raw, exchange);
            assert_eq!(
                (parsed.framing, parsed.reusable),
                (framing, reusable),
                "{raw:?}"
            );
            assert_eq!(parsed.len, raw.len());
        }
    }

    #[test]
    fn interim_switched_partial_and_malformed_responses() {
        let id = HeaderValue::from_static("id-1");
        let mut out = Vec::new();
        let raw = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(
            parse_response(raw.as_bytes(), exchange(&id), &mut out),
            Ok(ResponseParse::Interim(
                raw.len() - "HTTP/1.1 200 OK\r\n".len()
            ))
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                exchange(&id),
                &mut out
            ),
            Ok(ResponseParse::Switched)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-", exchange(&id), &mut out),
            Ok(ResponseParse::Partial)
        );
        for bad in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(parse_response(bad, exchange(&id), &mut out), Err(Malformed));
        }
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "y".repeat(MAX_HEAD));
        assert_eq!(
            parse_response(endless.as_bytes(), exchange(&id), &mut out),
            Err(Malformed)
        );
    }

    #[test]
    fn response_heads_are_rewritten_for_the_client() {
        let id = HeaderValue::from_static("id-1");
        let (_, text) = response(
            "HTTP/1.1 200 Fine\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Authenticate: basic\r\nX-Request-Id: upstream-made\r\nX-Upstream: yes\r\n\
             Content-Length: 2\r\n\r\nok",
            exchange(&id),
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 Fine\r\nX-Upstream: yes\r\nContent-Length: 2\r\nx-request-id: id-1\r\n\r\n"
        );

        let (_, chunked) = response(
            "HTTP/1.1 200 \r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nTrailer: x\r\n\r\n",
            exchange(&id),
        );
        assert_eq!(
            chunked,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-request-id: id-1\r\n\r\n"
        );

        let (head, close) = response("HTTP/1.1 200 OK\r\n\r\n", exchange(&id));
        assert!(!head.keep_alive);
        assert!(close.ends_with("connection: close\r\n\r\n"), "{close}");
    }

    #[test]
    fn http10_clients_get_no_chunks() {
        let id = HeaderValue::from_static("id-1");
        let old = Exchange {
            http10: true,
            ..exchange(&id)
        };
        let (head, text) = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", old);
        assert!(head.dechunk && !head.keep_alive);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nx-request-id: id-1\r\nconnection: close\r\n\r\n"
        );
        let (head, text) = response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", old);
        assert!(!head.dechunk && head.keep_alive);
        assert!(text.ends_with("connection: keep-alive\r\n\r\n"), "{text}");
    }

    #[test]
    fn router_responses_are_serialised_whole() {
        let id = HeaderValue::from_static("id-1");
        let response = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "text/plain; charset=utf-8")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        write_response(&response, b"no service\n", exchange(&id), &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 11\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\nno service\n"), "{text}");

        let head_only = Exchange {
            head_request: true,
            keep_alive: false,
            ..exchange(&id)
        };
        write_response(&response, b"no service\n", head_only, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
        assert!(text.contains("content-length: 11\r\n"), "{text}");
    }
}
