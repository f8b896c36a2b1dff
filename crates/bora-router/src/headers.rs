//! Header rewriting between the client and the instance.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
//!   message, so they are dropped in both directions; `Connection: upgrade`
//!   and `Upgrade` survive only on an upgrade exchange.
//! - The instance learns who called through `X-Forwarded-For`,
//!   `X-Forwarded-Proto` and `X-Forwarded-Host`; the `Host` header is kept.
//! - Every request carries an `X-Request-Id`, kept from the client when it is
//!   a sane token, generated otherwise, and echoed on the response.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE};

/// `X-Request-Id`.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers that are dropped whatever `Connection` lists (and
/// so are all `Proxy-*` headers).
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "connection",
];

/// Names the sandbox a request is for (E2B's SDKs send it).
pub(crate) const E2B_SANDBOX_ID: &str = "e2b-sandbox-id";
/// Names the sandbox port a request is for.
pub(crate) const E2B_SANDBOX_PORT: &str = "e2b-sandbox-port";
/// The port of the agent in every sandbox, when a request names none.
pub(crate) const ENVD_PORT: u16 = 49983;

/// The longest client-supplied request ID the router keeps.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Does the request ask to switch protocols (`Connection: upgrade` plus an
/// `Upgrade` header)?
/// True when the request declares no body: no `Transfer-Encoding`, and no
/// `Content-Length` other than 0.
pub(crate) fn has_no_body(headers: &HeaderMap) -> bool {
    !headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers
            .get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has_token(headers, "upgrade")
}

/// Does any `Connection` header list `token` (case-insensitive)?
fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|listed| listed.eq_ignore_ascii_case(token))
}

/// The header names listed in every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Is `name` (any case) hop-by-hop whatever `Connection` lists: one of
/// the fixed list, or a `Proxy-*` header?
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|hop| hop.eq_ignore_ascii_case(name))
        || name
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("proxy-"))
}

/// Removes hop-by-hop headers. With `keep_upgrade`, the message keeps
/// `Upgrade` and gets `Connection: upgrade`, as an upgrade exchange needs.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    let upgrade: Vec<HeaderValue> = if keep_upgrade {
        headers.get_all(UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };

    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }

    if keep_upgrade && !upgrade.is_empty() {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        for value in upgrade {
            headers.append(UPGRADE, value);
        }
    }
}

/// Adds the `X-Forwarded-*` headers for a request from `client_ip` that
/// named `original_host`, and makes sure `Host` is set to it.
pub(crate) fn add_forwarding(headers: &mut HeaderMap, client_ip: IpAddr, original_host: &str) {
    let previous = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes);
    let mut chain = Vec::new();
    push_forwarded_for(&mut chain, previous, &client_ip.to_string());
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Ok(host) = HeaderValue::try_from(original_host) {
        headers.insert(X_FORWARDED_HOST, host.clone());
        // HTTP/1.0 clients may name the host only in the request line.
        headers.entry(HOST).or_insert(host);
    }
}

/// Appends the `X-Forwarded-For` value an instance gets to `out`: the
/// chain the client (or a proxy in front of us) sent, in the `previous`
/// header values, then `client_ip`. Values that are not visible ASCII are
/// skipped.
pub(crate) fn push_forwarded_for<'a>(
    out: &mut Vec<u8>,
    previous: impl Iterator<Item = &'a [u8]>,
    client_ip: &str,
) {
    for value in previous {
        let Some(value) = visible_ascii(value) else {
            continue;
        };
        let value = value.trim();
        if !value.is_empty() {
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client_ip.as_bytes());
}

/// `value` as text if it is what `HeaderValue::to_str` accepts: visible
/// ASCII, spaces and tabs.
pub(crate) fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The request's ID: the client's `X-Request-Id` if it is a sane token,
/// a fresh one otherwise (see `new_request_id`).
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    request_id_from(headers.get(X_REQUEST_ID).map(HeaderValue::as_bytes))
}

/// The request's ID from the value of its first `X-Request-Id`, if any.
pub(crate) fn request_id_from(client_id: Option<&[u8]>) -> HeaderValue {
    client_id
        .filter(|id| is_sane_request_id(id))
        .and_then(|id| HeaderValue::from_bytes(id).ok())
        .unwrap_or_else(new_request_id)
}

/// A fresh request ID: 32 hex digits, a random prefix drawn once per
/// process and a counter, so IDs never repeat within a process and almost
/// surely not across processes — without a system call per request (a
/// random UUID costs a `getrandom` each).
fn new_request_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    hex(prefix, &mut id[..16]);
    hex(count, &mut id[16..]);
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// `value` as 16 lower-case hex digits into `out`.
fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (index, digit) in out.iter_mut().enumerate() {
        let shift = 4 * (15 - index);
        *digit = DIGITS[((value >> shift) & 0xf) as usize];
    }
}

/// 1 to 128 characters from `A-Z a-z 0-9 - _ . : + / =` (UUIDs, ULIDs,
/// hex, base64 and trace IDs all fit).
fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-kept"]);
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-secret"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade_request(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[CONNECTION], "upgrade");
        assert_eq!(headers[UPGRADE], "websocket");
        assert_eq!(headers["sec-websocket-key"], "abc");
        assert!(!headers.contains_key("x-secret"));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive"),
            ("connection", "UPGRADE"),
            ("upgrade", "h2c"),
        ])));
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("host", "web.hello.localhost:8080"),
        ]);
        add_forwarding(
            &mut headers,
            "127.0.0.1".parse().unwrap(),
            "web.hello.localhost:8080",
        );
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "web.hello.localhost:8080");
        assert_eq!(headers[HOST], "web.hello.localhost:8080");

        let mut bare = HeaderMap::new();
        add_forwarding(&mut bare, "::1".parse().unwrap(), "web.hello.localhost");
        assert_eq!(bare[X_FORWARDED_FOR], "::1");
        assert_eq!(bare[HOST], "web.hello.localhost");
    }

    #[test]
    fn hop_by_hop_names_any_case() {
        for name in [
            "Connection",
            "keep-alive",
            "TE",
            "Trailer",
            "Transfer-Encoding",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(is_hop_by_hop("Upgrade"));
        assert!(is_hop_by_hop("Proxy-Authorization"));
        assert!(is_hop_by_hop("proxy-connection"));
        for name in ["content-type", "host", "proxy", "x-proxy-id", "tee"] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn forwarded_for_chains_visible_values() {
        let chain = |previous: &[&[u8]]| {
            let mut out = Vec::new();
            push_forwarded_for(&mut out, previous.iter().copied(), "10.0.0.1");
            String::from_utf8(out).unwrap()
        };
        assert_eq!(chain(&[]), "10.0.0.1");
        assert_eq!(
            chain(&[b" 203.0.113.7 ", b"", b"bad\xff", b"198.51.100.2"]),
            "203.0.113.7, 198.51.100.2, 10.0.0.1"
        );
    }

    #[test]
    fn fresh_request_ids_are_hex() {
        let mut out = [0u8; 16];
        hex(0x0123_4567_89ab_cdef, &mut out);
        assert_eq!(&out, b"0123456789abcdef");
        let id = request_id_from(None);
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(request_id_from(Some(b"given-1")), "given-1");
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let kept = request_id(&map(&[("x-request-id", "abc-123_x.y")]));
        assert_eq!(kept, "abc-123_x.y");

        for insane in ["", "has space", "quote\"", &"x".repeat(129)] {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(insane) {
                headers.insert(X_REQUEST_ID, value);
            }
            let id = request_id(&headers);
            assert_ne!(id, insane);
            assert_eq!(id.len(), 32, "{id:?}");
            assert_ne!(id, request_id(&headers), "fresh ids repeat");
        }
    }
}
