//! The one error type of this crate.
//!
//! Every variant is a distinct kind the caller can match on (the node agent
//! turns them into instance-state reasons), and every message is lower-case,
//! names the reference, registry, digest or path involved, and says what to do.

use std::path::PathBuf;

/// Everything that can go wrong while pulling, verifying, unpacking or loading an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The image reference could not be parsed.
    #[error(
        "invalid image reference {reference:?}: {reason} \
         (expected e.g. `registry.example.com/team/app:1.0`, `busybox`, `repo@sha256:<64 hex>` or `oci:/path/to/layout:tag`)"
    )]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The registry or layout has no image with this name, tag or digest.
    #[error("image {reference} not found{where_}: check the name and tag")]
    NotFound {
        /// The reference that was looked up.
        reference: String,
        /// Where it was looked for, with a leading space (e.g. " in the registry").
        where_: String,
    },

    /// A blob listed in a manifest is missing from the registry or layout.
    #[error(
        "blob {digest} of image {reference} not found{where_}: the image is incomplete, push it again"
    )]
    BlobNotFound {
        /// The image reference.
        reference: String,
        /// The digest of the missing blob.
        digest: String,
        /// Where it was looked for, with a leading space.
        where_: String,
    },

    /// The registry refused access (HTTP 401 or 403).
    #[error(
        "registry {registry} refused access to {reference} (HTTP {status}): {}",
        if *.credentials_given { "the credentials may be wrong or lack pull permission" } else { "the image may be private: give credentials" }
    )]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The image reference.
        reference: String,
        /// The HTTP status (401 or 403).
        status: u16,
        /// Whether credentials were given for this pull.
        credentials_given: bool,
    },

    /// The registry could not be reached at all (connection refused, DNS, TLS, timeout).
    #[error(
        "registry {registry} is unreachable ({reason}): check that it is running and reachable from this node"
    )]
    Unreachable {
        /// The registry host.
        registry: String,
        /// The underlying cause, flattened into one line.
        reason: String,
    },

    /// A transfer started but broke off (connection reset, body read error).
    #[error("download of {what} from {registry} was interrupted ({reason}): retry the pull")]
    Interrupted {
        /// The registry host.
        registry: String,
        /// What was being downloaded (a manifest or blob digest).
        what: String,
        /// The underlying cause.
        reason: String,
    },

    /// The registry answered with an unexpected HTTP status.
    #[error("registry {registry} answered HTTP {status} for {what}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What was requested.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body, or a hint.
        message: String,
    },

    /// Content did not hash to the digest that names it; the content was discarded.
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the content was discarded \
         (the registry or layout is corrupt or was tampered with)"
    )]
    DigestMismatch {
        /// What was verified ("blob sha256:…", "manifest of …", "uncompressed layer sha256:…").
        what: String,
        /// The digest that was expected.
        expected: String,
        /// The digest (or size) actually found.
        actual: String,
    },

    /// A manifest, config or layer has a media type this crate cannot handle.
    #[error("unsupported media type {media_type} for {what}: {hint}")]
    UnsupportedMediaType {
        /// The media type found.
        media_type: String,
        /// Which object has it.
        what: String,
        /// What to do about it.
        hint: String,
    },

    /// An image index has no manifest for the requested platform.
    #[error(
        "image {reference} has no manifest for platform {wanted}; available: {}: pick one of these platforms or build the image for {wanted}",
        if .available.is_empty() { "none".to_string() } else { .available.join(", ") }
    )]
    NoMatchingPlatform {
        /// The image reference.
        reference: String,
        /// The platform that was asked for (`os/arch[/variant]`).
        wanted: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },

    /// A manifest, index or config is not valid JSON of the expected shape.
    #[error("invalid {what} in image {reference}: {reason}")]
    InvalidManifest {
        /// The image reference.
        reference: String,
        /// Which document ("manifest sha256:…", "config", "index.json").
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// A layer tarball is corrupt or hostile (escaping paths, bad compression, ...).
    #[error("invalid layer {digest}: {reason}; the layer was discarded")]
    InvalidLayer {
        /// The layer (blob) digest.
        digest: String,
        /// What is wrong.
        reason: String,
    },

    /// An `oci:` layout directory does not exist or is not an OCI layout.
    #[error("oci layout {path} not found or not an oci image layout ({reason}): check the path")]
    LayoutNotFound {
        /// The layout path.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// `ImageStore::load` was asked for an image that is not (fully) in the cache.
    #[error("image {pinned} is not in the local cache ({missing} is missing): pull it again")]
    NotCached {
        /// The pinned reference.
        pinned: String,
        /// What is missing.
        missing: String,
    },

    /// The HTTP client could not be set up (in practice: no usable CA certificates).
    #[error(
        "cannot set up the https client ({reason}): check the system ca certificates (/etc/ssl/certs)"
    )]
    HttpClient {
        /// The underlying cause.
        reason: String,
    },

    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "rename", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// Whether trying the same pull again later may succeed without anyone changing anything
    /// (network trouble, registry overload or 5xx). Cached blobs and layers make a retry cheap.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImageError::Unreachable { .. } | ImageError::Interrupted { .. } => true,
            ImageError::Registry { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            _ => false,
        }
    }

    /// Shorthand for an [`ImageError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Extension to attach an operation and path to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Turn an `io::Error` into [`ImageError::Io`] naming `op` and `path`.
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(op, path, e))
    }
}

/// Flatten an error and its sources into one line ("a: b: c"), skipping repeats.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_message_names_reference() {
        let e = ImageError::NotFound {
            reference: "127.0.0.1:5000/nope:1".into(),
            where_: " in the registry".into(),
        };
        assert_eq!(
            e.to_string(),
            "image 127.0.0.1:5000/nope:1 not found in the registry: check the name and tag"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_kinds() {
        let unreachable = ImageError::Unreachable {
            registry: "r".into(),
            reason: "connection refused".into(),
        };
        assert!(unreachable.is_retryable());
        let status = |status| ImageError::Registry {
            registry: "r".into(),
            what: "x".into(),
            status,
            message: String::new(),
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
    }

    #[test]
    fn unauthorized_message_depends_on_credentials() {
        let e = |credentials_given| ImageError::Unauthorized {
            registry: "r.example".into(),
            reference: "r.example/a:1".into(),
            status: 401,
            credentials_given,
        };
        assert!(e(true).to_string().contains("credentials may be wrong"));
        assert!(e(false).to_string().contains("give credentials"));
    }
}
