//! A client for one repository of a registry speaking the distribution API v2.
//!
//! It fetches manifests and streams blobs, and handles authentication the way registries
//! ask for it: a request goes out anonymously (or with a token obtained earlier); on `401`
//! the `WWW-Authenticate` challenge says either `Basic` (send the credentials) or
//! `Bearer realm=…,service=…,scope=…` (get a token from the realm, with the credentials if
//! any, then retry with it).
//!
//! Plain HTTP is used only for loopback registries and those the caller lists as insecure.

use std::collections::HashMap;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;
use tracing::debug;

use crate::blob::{BlobWriter, sha256_digest};
use crate::error::error_chain;
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::reference::{RegistryReference, is_loopback_host};
use crate::{Credentials, ImageError};

/// A manifest as fetched, with the digest of its exact bytes.
#[derive(Debug)]
pub(crate) struct FetchedManifest {
    /// The raw bytes (digests are computed over these).
    pub bytes: Vec<u8>,
    /// The media type announced by the source, if any.
    pub media_type: Option<String>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

/// A client for one repository of one registry, for the duration of one pull.
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    reference: RegistryReference,
    /// `https://host[:port]` or `http://host[:port]`.
    base_url: String,
    credentials: Option<Credentials>,
    insecure_registries: Vec<String>,
    /// The `Authorization` header value obtained by the last successful challenge.
    authorization: tokio::sync::Mutex<Option<String>>,
}

impl RegistryClient {
    /// A client for `reference`'s repository.
    pub(crate) fn new(
        http: reqwest::Client,
        reference: RegistryReference,
        credentials: Option<Credentials>,
        insecure_registries: &[String],
    ) -> Self {
        let scheme = if reference.allows_plain_http(insecure_registries) {
            "http"
        } else {
            "https"
        };
        let base_url = format!("{scheme}://{}", reference.api_host());
        RegistryClient {
            http,
            reference,
            base_url,
            credentials,
            insecure_registries: insecure_registries.to_vec(),
            authorization: tokio::sync::Mutex::new(None),
        }
    }

    /// The tag or digest the reference asked for.
    pub(crate) fn tag_or_digest(&self) -> &str {
        self.reference.tag_or_digest()
    }

    /// The registry name, for messages.
    fn registry(&self) -> &str {
        &self.reference.registry
    }

    /// `registry/repository` plus `:tag` or `@digest`, for messages.
    fn describe(&self, tag_or_digest: &str) -> String {
        let separator = if tag_or_digest.contains(':') {
            '@'
        } else {
            ':'
        };
        format!(
            "{}/{}{separator}{tag_or_digest}",
            self.reference.registry, self.reference.repository
        )
    }

    /// Fetch the manifest or index named by a tag or digest. When fetched by digest, the
    /// bytes are verified against it; when the registry announces `Docker-Content-Digest`,
    /// the bytes are verified against that too.
    pub(crate) async fn manifest(
        &self,
        tag_or_digest: &str,
    ) -> Result<FetchedManifest, ImageError> {
        let url = format!(
            "{}/v2/{}/manifests/{tag_or_digest}",
            self.base_url, self.reference.repository
        );
        let what = self.describe(tag_or_digest);
        let response = self.get(&url, Some(MANIFEST_ACCEPT), &what).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ImageError::NotFound {
                reference: what,
                where_: " in the registry".into(),
            });
        }
        if !status.is_success() {
            return Err(self.status_error(response, &what).await);
        }
        let media_type = header_str(response.headers(), CONTENT_TYPE.as_str());
        let announced = header_str(response.headers(), "docker-content-digest");
        let bytes = self
            .read_limited(response, MAX_MANIFEST_BYTES, &what)
            .await?;
        let digest = sha256_digest(&bytes);
        let expected = if tag_or_digest.starts_with("sha256:") {
            Some(tag_or_digest.to_string())
        } else {
            announced.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {what}"),
                expected,
                actual: digest,
            });
        }
        debug!(manifest = %what, %digest, ?media_type, "fetched manifest");
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Stream the blob `writer.expected_digest()` into `writer` (which verifies it on commit).
    pub(crate) async fn blob(&self, writer: &mut BlobWriter<'_>) -> Result<(), ImageError> {
        let digest = writer.expected_digest().to_string();
        let url = format!(
            "{}/v2/{}/blobs/{digest}",
            self.base_url, self.reference.repository
        );
        let what = self.describe(&digest);
        let mut response = self.get(&url, None, &what).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ImageError::BlobNotFound {
                reference: self.reference.to_string(),
                digest,
                where_: " in the registry".into(),
            });
        }
        if !status.is_success() {
            return Err(self.status_error(response, &what).await);
        }
        debug!(blob = %digest, "downloading blob");
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => writer.write(&chunk).await?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(ImageError::Interrupted {
                        registry: self.registry().to_string(),
                        what: format!("blob {digest}"),
                        reason: error_chain(&e),
                    });
                }
            }
        }
    }

    /// GET `url`, answering an authentication challenge once if the registry sends one.
    /// Returns the response whatever its status, except 401/403 which become
    /// [`ImageError::Unauthorized`].
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, ImageError> {
        let mut answered_challenge = false;
        loop {
            let authorization = self.authorization.lock().await.clone();
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(authorization) = &authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            let response = request.send().await.map_err(|e| self.unreachable(&e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !answered_challenge {
                let challenge = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(Challenge::parse)
                    .min_by_key(|c| if c.scheme == "bearer" { 0 } else { 1 });
                let Some(challenge) = challenge else {
                    return Err(self.unauthorized(what, status));
                };
                let header = self.answer(&challenge, what).await?;
                *self.authorization.lock().await = Some(header);
                answered_challenge = true;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.unauthorized(what, status));
            }
            return Ok(response);
        }
    }

    /// Turn a challenge into an `Authorization` header value.
    async fn answer(&self, challenge: &Challenge, what: &str) -> Result<String, ImageError> {
        match challenge.scheme.as_str() {
            "basic" => match &self.credentials {
                Some(c) => Ok(basic_header(c)),
                None => Err(self.unauthorized(what, StatusCode::UNAUTHORIZED)),
            },
            "bearer" => self.bearer_token(challenge, what).await,
            _ => Err(self.unauthorized(what, StatusCode::UNAUTHORIZED)),
        }
    }

    /// The token flow: GET `realm?service=…&scope=…`, with Basic credentials if given.
    async fn bearer_token(&self, challenge: &Challenge, what: &str) -> Result<String, ImageError> {
        let Some(realm) = challenge.params.get("realm") else {
            return Err(ImageError::Registry {
                registry: self.registry().to_string(),
                what: what.to_string(),
                status: 401,
                message: "the bearer challenge has no realm".into(),
            });
        };
        let default_scope = format!("repository:{}:pull", self.reference.repository);
        let scope = challenge.params.get("scope").unwrap_or(&default_scope);
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = challenge.params.get("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(credentials) = &self.credentials {
            // Credentials only travel encrypted, unless the token server is one that may
            // be spoken to in plain HTTP anyway.
            let realm_host = realm
                .strip_prefix("http://")
                .map(|rest| rest.split('/').next().unwrap_or(""));
            let safe = match realm_host {
                None => realm.starts_with("https://"),
                Some(host) => {
                    is_loopback_host(host)
                        || self
                            .insecure_registries
                            .iter()
                            .any(|r| r.eq_ignore_ascii_case(host))
                }
            };
            if safe {
                request = request.header(AUTHORIZATION, basic_header(credentials));
            } else {
                debug!(%realm, "not sending credentials to a plain-HTTP token server");
            }
        }
        debug!(%realm, %scope, "requesting a bearer token");
        let response = request.send().await.map_err(|e| ImageError::Unreachable {
            registry: format!("{} (token server {realm})", self.registry()),
            reason: network_reason(&e),
        })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.unauthorized(what, status));
        }
        if !status.is_success() {
            return Err(self
                .status_error(response, &format!("a token for {what}"))
                .await);
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = self.read_limited(response, 1 << 20, "token").await?;
        let token: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| ImageError::Registry {
                registry: self.registry().to_string(),
                what: format!("a token for {what}"),
                status: status.as_u16(),
                message: format!("the token server answered invalid JSON: {e}"),
            })?;
        match token.token.or(token.access_token).filter(|t| !t.is_empty()) {
            Some(token) => Ok(format!("Bearer {token}")),
            None => Err(ImageError::Registry {
                registry: self.registry().to_string(),
                what: format!("a token for {what}"),
                status: status.as_u16(),
                message: "the token server answered without a token".into(),
            }),
        }
    }

    /// Read a whole (small) body, refusing more than `limit` bytes.
    async fn read_limited(
        &self,
        mut response: reqwest::Response,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, ImageError> {
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Err(ImageError::InvalidManifest {
                            reference: what.to_string(),
                            what: "response".into(),
                            reason: format!("it is larger than {limit} bytes"),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(ImageError::Interrupted {
                        registry: self.registry().to_string(),
                        what: what.to_string(),
                        reason: error_chain(&e),
                    });
                }
            }
        }
    }

    /// An error for an unexpected status, with the registry's own error message if it sent one.
    async fn status_error(&self, response: reqwest::Response, what: &str) -> ImageError {
        let status = response.status().as_u16();
        let body = self
            .read_limited(response, 64 << 10, what)
            .await
            .unwrap_or_default();
        ImageError::Registry {
            registry: self.registry().to_string(),
            what: what.to_string(),
            status,
            message: registry_error_message(&body),
        }
    }

    fn unauthorized(&self, what: &str, status: StatusCode) -> ImageError {
        ImageError::Unauthorized {
            registry: self.registry().to_string(),
            reference: what.to_string(),
            status: status.as_u16(),
            credentials_given: self.credentials.is_some(),
        }
    }

    fn unreachable(&self, error: &reqwest::Error) -> ImageError {
        ImageError::Unreachable {
            registry: self.registry().to_string(),
            reason: network_reason(error),
        }
    }
}

/// The useful part of a connection error: its causes ("tcp connect error: Connection
/// refused", "dns error: …", "invalid peer certificate: …") without reqwest's and hyper's
/// generic wrappers, which repeat the URL.
fn network_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let causes: Vec<String> = match std::error::Error::source(error) {
        Some(source) => error_chain(source)
            .split(": ")
            .filter(|part| !part.starts_with("client error ("))
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    if causes.is_empty() {
        error_chain(error)
    } else {
        causes.join(": ")
    }
}

/// `Basic base64(user:password)`.
fn basic_header(credentials: &Credentials) -> String {
    let raw = format!("{}:{}", credentials.username, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The distribution API's error body `{"errors":[{"code":…,"message":…}]}` as one line, or
/// the start of whatever else was sent.
fn registry_error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(body)
        && !errors.errors.is_empty()
    {
        return errors
            .errors
            .iter()
            .map(|e| {
                let code = e.code.as_deref().unwrap_or("ERROR");
                match &e.message {
                    Some(m) => format!("{code}: {m}"),
                    None => code.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(200).collect();
    if text.trim().is_empty() {
        "no details given".to_string()
    } else {
        text.trim().to_string()
    }
}

/// One `WWW-Authenticate` challenge: a scheme and its `key=value` parameters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// The scheme, lower-cased: `bearer` or `basic`.
    pub scheme: String,
    /// Parameters with lower-cased keys and unquoted values.
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// Parse `Scheme key="value", key2=value2`. Values may be quoted and contain commas.
    pub(crate) fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(char::is_whitespace) {
            Some((scheme, rest)) => (scheme, rest),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_ascii_lowercase();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek() {
                    if *c == ',' {
                        break;
                    }
                    value.push(*c);
                    chars.next();
                }
                value = value.trim().to_string();
            }
            params.insert(key, value);
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull,push");
    }

    #[test]
    fn parses_basic_and_unquoted_challenges() {
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");

        let c = Challenge::parse("bearer realm=http://127.0.0.1:1/token, service=reg").unwrap();
        assert_eq!(c.params["realm"], "http://127.0.0.1:1/token");
        assert_eq!(c.params["service"], "reg");

        let c = Challenge::parse(r#"Bearer realm="a\"b""#).unwrap();
        assert_eq!(c.params["realm"], "a\"b");

        assert_eq!(Challenge::parse("").map(|c| c.scheme), None);
        assert_eq!(Challenge::parse("Basic").unwrap().params.len(), 0);
    }

    #[test]
    fn registry_error_messages() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(
            registry_error_message(body),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_error_message(b""), "no details given");
        assert_eq!(registry_error_message(b"oops"), "oops");
    }

    #[test]
    fn scheme_follows_loopback_and_insecure_list() {
        let http = reqwest::Client::new();
        let reference = |s: &str| match crate::Reference::parse(s).unwrap() {
            crate::Reference::Registry(r) => r,
            crate::Reference::Layout(_) => unreachable!(),
        };
        let c = RegistryClient::new(http.clone(), reference("127.0.0.1:5000/a"), None, &[]);
        assert_eq!(c.base_url, "http://127.0.0.1:5000");
        let c = RegistryClient::new(http.clone(), reference("busybox"), None, &[]);
        assert_eq!(c.base_url, "https://registry-1.docker.io");
        let c = RegistryClient::new(
            http,
            reference("reg.lan:5000/a"),
            None,
            &["reg.lan:5000".to_string()],
        );
        assert_eq!(c.base_url, "http://reg.lan:5000");
    }
}
