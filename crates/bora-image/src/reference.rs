//! Image references: what a user writes to name an image.
//!
//! Two kinds are understood:
//!
//! - registry references, Docker style: `[host[:port]/]repo[/more][:tag][@sha256:<hex>]`.
//!   A first component without `.` or `:` that is not `localhost` is part of the
//!   repository and the registry is Docker Hub (`busybox` → `docker.io/library/busybox:latest`).
//! - local OCI image layouts: `oci:<path>[:tag]` or `oci:<path>@sha256:<hex>`; the tag is
//!   matched against the `org.opencontainers.image.ref.name` annotation in `index.json`.
//!
//! Parsing is pure and never panics (there is a property test for that).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::ImageError;

/// The registry name Docker Hub images are stored under.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// The prefix of local OCI layout references.
pub const LAYOUT_PREFIX: &str = "oci:";

/// Longest accepted repository name (as in the distribution spec).
const MAX_NAME_LEN: usize = 255;
/// Longest accepted tag.
const MAX_TAG_LEN: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An image in a registry speaking the distribution API v2.
    Registry(RegistryReference),
    /// An image in a local OCI image layout directory.
    Layout(LayoutReference),
}

/// An image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryReference {
    /// The registry as written, normalised: `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub registry: String,
    /// The repository path inside the registry: `library/busybox`, `team/app`.
    pub repository: String,
    /// The tag, if one was written (or `latest` when neither tag nor digest was).
    pub tag: Option<String>,
    /// The digest (`sha256:<hex>`), if one was written. It wins over the tag.
    pub digest: Option<String>,
}

/// An image in a local OCI image layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutReference {
    /// The layout directory (the one holding `oci-layout` and `index.json`).
    pub path: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`), if one was written. Without tag or
    /// digest, `latest` is looked for (or the only image of the layout).
    pub tag: Option<String>,
    /// The digest (`sha256:<hex>`) of a manifest or index in the layout.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse a reference. See the module documentation for the accepted forms.
    pub fn parse(input: &str) -> Result<Self, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(invalid("it is empty"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace or control characters"));
        }
        if let Some(rest) = input.strip_prefix(LAYOUT_PREFIX) {
            return parse_layout(rest).map(Reference::Layout).map_err(invalid);
        }
        parse_registry(input)
            .map(Reference::Registry)
            .map_err(invalid)
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        match self {
            Reference::Registry(r) => r.digest.as_deref(),
            Reference::Layout(l) => l.digest.as_deref(),
        }
    }

    /// The same image, pinned to `digest` (tag dropped): pulling it again gives the same image.
    pub fn pinned(&self, digest: &str) -> String {
        match self {
            Reference::Registry(r) => format!("{}/{}@{digest}", r.registry, r.repository),
            Reference::Layout(l) => format!("{LAYOUT_PREFIX}{}@{digest}", l.path.display()),
        }
    }
}

impl FromStr for Reference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry(r) => r.fmt(f),
            Reference::Layout(l) => l.fmt(f),
        }
    }
}

impl RegistryReference {
    /// The `host[:port]` to talk to: Docker Hub's API lives on another host than its name.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The tag or digest to ask the registry for (the digest wins).
    pub fn tag_or_digest(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// Whether plain HTTP may be used: loopback registries, and those listed as insecure.
    pub fn allows_plain_http(&self, insecure_registries: &[String]) -> bool {
        is_loopback_host(&self.registry)
            || insecure_registries
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&self.registry))
    }
}

impl fmt::Display for RegistryReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl LayoutReference {
    /// The tag to look for in `index.json` (only meaningful without a digest).
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for LayoutReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LAYOUT_PREFIX}{}", self.path.display())?;
        match (&self.digest, &self.tag) {
            (Some(digest), _) => write!(f, "@{digest}"),
            (None, Some(tag)) => write!(f, ":{tag}"),
            (None, None) => Ok(()),
        }
    }
}

/// Whether `host` (`name`, `name:port`, `ip:port` or `[ipv6]:port`) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let name = strip_port(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host:port` → `host`, `[::1]:5000` → `[::1]`, `::1` stays as is.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn parse_layout(rest: &str) -> Result<LayoutReference, &'static str> {
    let (path_and_tag, digest) = match rest.rsplit_once('@') {
        Some((path, digest)) => (path, Some(parse_digest(digest)?)),
        None => (rest, None),
    };
    // A tag is what follows the last ':' after the last '/', so that paths may hold ':'
    // in their directories (`oci:/tmp/a:b/layout`).
    let last_slash = path_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match path_and_tag[last_slash..].rfind(':') {
        Some(i) if digest.is_none() => {
            let split = last_slash + i;
            (&path_and_tag[..split], Some(&path_and_tag[split + 1..]))
        }
        _ => (path_and_tag, None),
    };
    if path.is_empty() {
        return Err("the layout path after `oci:` is empty");
    }
    let tag = match tag {
        Some("") => return Err("the tag after `:` is empty"),
        Some(tag) => Some(tag.to_string()),
        None => None,
    };
    Ok(LayoutReference {
        path: PathBuf::from(path),
        tag,
        digest,
    })
}

fn parse_registry(input: &str) -> Result<RegistryReference, &'static str> {
    let (name_and_tag, digest) = match input.split_once('@') {
        Some((name, digest)) => (name, Some(parse_digest(digest)?)),
        None => (input, None),
    };
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => {
            let split = last_slash + i;
            (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
        }
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag)?;
    }
    if name.is_empty() {
        return Err("the repository name is empty");
    }

    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if looks_like_registry(first) => {
            validate_registry(first)?;
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" || registry == DOCKER_HUB_API_HOST {
        DOCKER_HUB.to_string()
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    validate_repository(&repository)?;
    if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
        return Err("the name is longer than 255 characters");
    }

    let tag = match (tag, &digest) {
        (Some(tag), _) => Some(tag.to_string()),
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (None, Some(_)) => None,
    };
    Ok(RegistryReference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Docker's rule: the first component names a registry if it has a `.` or `:`, is
/// `localhost`, or has upper-case letters (which repositories cannot).
fn looks_like_registry(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

fn validate_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("unclosed `[` in registry host")?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address in registry host");
        }
        match after {
            "" => ("", None),
            _ => (
                "",
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("unexpected text after `]` in registry host")?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err("invalid port in registry host");
    }
    if !registry.starts_with('[') {
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !host.split('.').all(valid_label) {
            return Err("invalid registry host name");
        }
    }
    Ok(())
}

/// Repository components: lower-case alphanumerics separated by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repository: &str) -> Result<(), &'static str> {
    for component in repository.split('/') {
        if component.is_empty() {
            return Err("the repository has an empty path component");
        }
        let bytes = component.as_bytes();
        let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
            return Err(
                "repository components must start and end with a lower-case letter or digit",
            );
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if is_alnum(b) {
                i += 1;
                continue;
            }
            // A separator: `.`, `_`, `__`, or one or more `-`.
            let start = i;
            while i < bytes.len() && !is_alnum(bytes[i]) {
                i += 1;
            }
            let separator = &component[start..i];
            let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
            if !ok {
                return Err(
                    "repository names may only hold lower-case letters, digits and the separators `.`, `_`, `__`, `-`",
                );
            }
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    if tag.is_empty() {
        return Err("the tag after `:` is empty");
    }
    if tag.len() > MAX_TAG_LEN {
        return Err("the tag is longer than 128 characters");
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    if !chars.next().is_some_and(word) || !chars.all(|c| word(c) || c == '.' || c == '-') {
        return Err(
            "tags may only hold letters, digits, `_`, `.` and `-`, and may not start with `.` or `-`",
        );
    }
    Ok(())
}

/// Validate `sha256:<64 lower-case hex>`; other algorithms are not supported.
pub(crate) fn parse_digest(digest: &str) -> Result<String, &'static str> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("the digest must look like `sha256:<64 hex digits>`");
    };
    if algorithm != "sha256" {
        return Err("only sha256 digests are supported");
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("a sha256 digest must be 64 lower-case hex digits");
    }
    Ok(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn registry(input: &str) -> RegistryReference {
        match Reference::parse(input) {
            Ok(Reference::Registry(r)) => r,
            other => panic!("{input}: expected a registry reference, got {other:?}"),
        }
    }

    fn layout(input: &str) -> LayoutReference {
        match Reference::parse(input) {
            Ok(Reference::Layout(l)) => l,
            other => panic!("{input}: expected a layout reference, got {other:?}"),
        }
    }

    #[test]
    fn docker_hub_shorthand() {
        let r = registry("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");

        let r = registry("someone/app:1.2");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "someone/app")
        );
        assert_eq!(r.tag.as_deref(), Some("1.2"));

        let r = registry("index.docker.io/library/alpine:3");
        assert_eq!(r.registry, "docker.io");
    }

    #[test]
    fn registries_with_ports_and_paths() {
        let r = registry("127.0.0.1:5000/hello/world:v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "hello/world");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.allows_plain_http(&[]));

        let r = registry("localhost:5000/x");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert!(r.allows_plain_http(&[]));

        let r = registry("localhost/x");
        assert_eq!(r.registry, "localhost");

        let r = registry("ghcr.io/org/team/app:main");
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "org/team/app");
        assert!(!r.allows_plain_http(&[]));
        assert!(r.allows_plain_http(&["ghcr.io".to_string()]));

        let r = registry("[::1]:5000/x:1");
        assert_eq!(r.registry, "[::1]:5000");
        assert!(r.allows_plain_http(&[]));
    }

    #[test]
    fn digests() {
        let input = format!("127.0.0.1:5000/hello@sha256:{HEX}");
        let r = registry(&input);
        assert_eq!(r.digest.as_deref(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(r.tag, None);
        assert_eq!(r.tag_or_digest(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), input);

        let r = registry(&format!("hello:1@sha256:{HEX}"));
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.tag_or_digest(), format!("sha256:{HEX}"));
        let pinned = Reference::Registry(r).pinned(&format!("sha256:{HEX}"));
        assert_eq!(pinned, format!("docker.io/library/hello@sha256:{HEX}"));
    }

    #[test]
    fn layouts() {
        let l = layout("oci:/tmp/layout");
        assert_eq!(l.path, PathBuf::from("/tmp/layout"));
        assert_eq!(l.tag, None);
        assert_eq!(l.tag_or_default(), "latest");

        let l = layout("oci:/tmp/layout:v2");
        assert_eq!(l.path, PathBuf::from("/tmp/layout"));
        assert_eq!(l.tag.as_deref(), Some("v2"));

        let l = layout("oci:/tmp/a:b/layout");
        assert_eq!(l.path, PathBuf::from("/tmp/a:b/layout"));
        assert_eq!(l.tag, None);

        let l = layout(&format!("oci:/tmp/layout@sha256:{HEX}"));
        assert_eq!(l.digest.as_deref(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(l.tag, None);
        assert_eq!(l.to_string(), format!("oci:/tmp/layout@sha256:{HEX}"));

        let l = layout("oci:relative:tag");
        assert_eq!(l.path, PathBuf::from("relative"));
        assert_eq!(l.tag.as_deref(), Some("tag"));
    }

    #[test]
    fn malformed_references_are_rejected_clearly() {
        let cases = [
            ("", "empty"),
            ("UPPER", "lower-case"),
            ("busybox:", "tag after"),
            ("busybox:-x", "tags may only"),
            ("busybox@sha256:abc", "64 lower-case hex"),
            ("busybox@md5:abc", "only sha256"),
            ("busybox@", "digest must look like"),
            ("a//b", "empty path component"),
            ("a/b_-c", "separators"),
            ("host:99999/x", "invalid port"),
            ("has space", "whitespace"),
            ("oci:", "path after `oci:` is empty"),
            ("oci:/x:", "tag after"),
            ("exa mple.com/x", "whitespace"),
            ("example.com/", "empty path component"),
        ];
        for (input, expected) in cases {
            let error = Reference::parse(input).expect_err(input).to_string();
            assert!(
                error.contains(expected),
                "{input:?}: {error:?} should contain {expected:?}"
            );
            assert!(error.starts_with("invalid image reference"), "{error}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(input in "\\PC{0,80}") {
            let _ = Reference::parse(&input);
        }

        #[test]
        fn parsing_reference_like_strings_never_panics(
            input in "(oci:)?[a-zA-Z0-9./:@_\\-\\[\\]]{0,60}"
        ) {
            let _ = Reference::parse(&input);
        }

        #[test]
        fn display_round_trips(
            host in "(127\\.0\\.0\\.1:[1-9][0-9]{0,3}|[a-z]{1,8}\\.(io|com))",
            repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            tag in "[a-zA-Z0-9_][a-zA-Z0-9_.\\-]{0,20}",
        ) {
            let input = format!("{host}/{repo}:{tag}");
            let parsed = Reference::parse(&input).unwrap();
            prop_assert_eq!(parsed.to_string(), input.clone());
            prop_assert_eq!(Reference::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }
}
