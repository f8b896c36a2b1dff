//! Who may call envd, and as which sandbox user.
//!
//! - The access token (`X-Access-Token`) guards everything but `/health`
//!   once one is configured. E2B's proxy passes the header through; the
//!   control plane hands the token to the SDK at sandbox creation.
//! - The user an RPC acts as comes from `Authorization: Basic
//!   base64("<user>:")` — a user name with an empty password, as the SDKs
//!   send it. No header means the default user.
//! - `/files` URLs can instead be pre-signed (`?signature=v1_…`), so a
//!   browser can download without the token: the signature is
//!   `v1_` + unpadded base64 of SHA-256 over
//!   `<path>:<read|write>:<username>:<token>[:<expiration>]`.

use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::connect::RpcError;

pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Compares in time independent of where the strings differ.
pub fn token_matches(expected: &str, given: &[u8]) -> bool {
    let expected = expected.as_bytes();
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Whether the request carries the configured token (always true when none
/// is configured).
pub fn has_token(expected: Option<&str>, headers: &HeaderMap) -> bool {
    match expected {
        None => true,
        Some(expected) => headers
            .get(ACCESS_TOKEN_HEADER)
            .is_some_and(|v| token_matches(expected, v.as_bytes())),
    }
}

/// The user named by `Authorization: Basic`, if any.
pub fn basic_user(headers: &HeaderMap) -> Result<Option<String>, RpcError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        RpcError::unauthenticated(
            "invalid Authorization header: expected Basic base64(\"<user>:\")",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(bad());
    };
    let decoded = crate::proto::json::decode_base64(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let user = decoded.split(':').next().unwrap_or("");
    Ok((!user.is_empty()).then(|| user.to_string()))
}

/// File operation a signature grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

/// The `v1_` signature of a `/files` URL.
pub fn sign(
    path: &str,
    op: Operation,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{}:{username}:{token}:{exp}", op.as_str()),
        None => format!("{path}:{}:{username}:{token}", op.as_str()),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Checks a pre-signed `/files` URL; `now` is the Unix time in seconds.
pub fn verify_signature(
    token: &str,
    path: &str,
    op: Operation,
    username: &str,
    signature: &str,
    expiration: Option<i64>,
    now: i64,
) -> Result<(), String> {
    if let Some(exp) = expiration
        && exp < now
    {
        return Err(format!("signature expired at {exp}"));
    }
    let expected = sign(path, op, username, token, expiration);
    if token_matches(&expected, signature.as_bytes()) {
        Ok(())
    } else {
        Err("invalid signature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn token_comparison() {
        assert!(token_matches("secret", b"secret"));
        assert!(!token_matches("secret", b"secreT"));
        assert!(!token_matches("secret", b"secret2"));
        let mut h = HeaderMap::new();
        assert!(has_token(None, &h));
        assert!(!has_token(Some("t"), &h));
        h.insert(ACCESS_TOKEN_HEADER, HeaderValue::from_static("t"));
        assert!(has_token(Some("t"), &h));
    }

    #[test]
    fn basic_user_is_the_name_before_the_colon() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h).unwrap(), None);
        // base64("root:")
        h.insert("authorization", HeaderValue::from_static("Basic cm9vdDo="));
        assert_eq!(basic_user(&h).unwrap().as_deref(), Some("root"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert!(basic_user(&h).is_err());
        h.insert("authorization", HeaderValue::from_static("Basic Og==")); // ":"
        assert_eq!(basic_user(&h).unwrap(), None);
    }

    #[test]
    fn signatures_match_the_sdk_algorithm() {
        // Computed with the Python SDK's e2b.sandbox.signature.get_signature
        // algorithm: sha256("/home/user/a.txt:read:user:tok"), base64, no '='.
        let sig = sign("/home/user/a.txt", Operation::Read, "user", "tok", None);
        assert_eq!(sig, "v1_p0WqJQYCLtO6YX+e4h7VbpybRsdJbMbIw7clYpulIJk");
        assert_eq!(
            verify_signature(
                "tok",
                "/home/user/a.txt",
                Operation::Read,
                "user",
                &sig,
                None,
                0
            ),
            Ok(())
        );
        assert!(
            verify_signature(
                "tok",
                "/home/user/a.txt",
                Operation::Write,
                "user",
                &sig,
                None,
                0
            )
            .is_err()
        );
        let sig = sign("p", Operation::Write, "", "tok", Some(100));
        assert_eq!(
            verify_signature("tok", "p", Operation::Write, "", &sig, Some(100), 50),
            Ok(())
        );
        assert_eq!(
            verify_signature("tok", "p", Operation::Write, "", &sig, Some(100), 101),
            Err("signature expired at 100".into())
        );
    }
}
