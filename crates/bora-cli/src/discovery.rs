//! Finding the server to talk to and the token to use.
//!
//! `--url`/`BORA_URL` wins, and then `--token`/`BORA_TOKEN` must be set too.
//! Otherwise the local server announces itself in its data dir:
//! `<data-dir>/api.addr` holds the address it listens on (`127.0.0.1:7070`)
//! and `<data-dir>/admin.token` its admin token; a `--token`/`BORA_TOKEN` still
//! replaces the file's token (useful when only root may read it).

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use reqwest::Url;

use crate::error::{CliError, TokenSource};

/// The file the server writes its listening address to.
pub const ADDR_FILE: &str = "api.addr";
/// The file the server writes its admin token to.
pub const TOKEN_FILE: &str = "admin.token";

/// A server to talk to, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The API's base URL; `/v1/...` paths are appended to it.
    pub base_url: Url,
    /// The bearer token sent with every request.
    pub token: String,
    pub token_source: TokenSource,
    /// The `api.addr` file the URL was read from, when discovered locally.
    pub addr_file: Option<PathBuf>,
}

/// Decides which server to use; reads files only when `url` is `None`.
pub fn find_target(
    url: Option<&str>,
    token: Option<&str>,
    data_dir: &Path,
) -> Result<Target, CliError> {
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    if let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) {
        let base_url = parse_base_url(url)?;
        let token = token.ok_or_else(|| CliError::MissingToken {
            url: url.to_string(),
        })?;
        return Ok(Target {
            base_url,
            token: token.to_string(),
            token_source: TokenSource::Flag,
            addr_file: None,
        });
    }

    let addr_path = data_dir.join(ADDR_FILE);
    let addr_text = match std::fs::read_to_string(&addr_path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(CliError::NoServer { path: addr_path });
        }
        Err(e) => return Err(read_error(addr_path, e, "BORA_URL and BORA_TOKEN")),
    };
    let addr = parse_addr(&addr_path, &addr_text)?;
    let base_url =
        Url::parse(&format!("http://{addr}/")).map_err(|e| CliError::InvalidAddrFile {
            path: addr_path.clone(),
            content: format!("{addr_text} ({e})"),
        })?;

    let (token, token_source) = match token {
        Some(token) => (token.to_string(), TokenSource::Flag),
        None => {
            let token_path = data_dir.join(TOKEN_FILE);
            let text = std::fs::read_to_string(&token_path)
                .map_err(|e| read_error(token_path.clone(), e, "BORA_TOKEN"))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(CliError::EmptyTokenFile { path: token_path });
            }
            (token.to_string(), TokenSource::File(token_path))
        }
    };
    Ok(Target {
        base_url,
        token,
        token_source,
        addr_file: Some(addr_path),
    })
}

fn read_error(path: PathBuf, e: std::io::Error, hint: &'static str) -> CliError {
    if e.kind() == ErrorKind::PermissionDenied {
        CliError::DiscoveryPermission { path, hint }
    } else {
        CliError::DiscoveryRead { path, source: e }
    }
}

/// Reads `api.addr`: one socket address. A wildcard address (the server
/// listens on all interfaces) is reached through loopback.
fn parse_addr(path: &Path, text: &str) -> Result<SocketAddr, CliError> {
    let line = text.trim();
    let mut addr: SocketAddr = line.parse().map_err(|_| CliError::InvalidAddrFile {
        path: path.to_path_buf(),
        content: line.to_string(),
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// Parses `BORA_URL`; a bare `host:port` means `http://host:port`.
pub fn parse_base_url(input: &str) -> Result<Url, CliError> {
    let invalid = |reason: String| CliError::InvalidUrl {
        url: input.to_string(),
        reason,
    };
    let with_scheme = if input.contains("://") {
        input.to_string()
    } else {
        format!("http://{input}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(invalid("no host".to_string()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URL has no query or fragment".to_string()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_token_flags_win_without_touching_files() {
        let t = find_target(
            Some("https://bora.example.com"),
            Some("tok\n"),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(t.base_url.as_str(), "https://bora.example.com/");
        assert_eq!(t.token, "tok");
        assert_eq!(t.token_source, TokenSource::Flag);
        assert_eq!(t.addr_file, None);
    }

    #[test]
    fn url_without_token_is_an_error() {
        let err = find_target(Some("http://h:1"), None, Path::new("/x")).unwrap_err();
        assert!(matches!(err, CliError::MissingToken { .. }), "{err}");
        let err = find_target(Some("http://h:1"), Some("  "), Path::new("/x")).unwrap_err();
        assert!(matches!(err, CliError::MissingToken { .. }), "{err}");
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("127.0.0.1:7070").unwrap().as_str(),
            "http://127.0.0.1:7070/"
        );
        assert_eq!(
            parse_base_url("http://h/prefix").unwrap().as_str(),
            "http://h/prefix"
        );
        for bad in ["ftp://h", "http://", "http://h/?x=1", "http://h:notaport"] {
            let err = parse_base_url(bad).unwrap_err();
            assert!(matches!(err, CliError::InvalidUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn discovery_reads_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_target(None, None, dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no Bora server found: {}/api.addr does not exist; start one with `bora server`, or set BORA_URL and BORA_TOKEN",
                dir.path().display()
            )
        );

        std::fs::write(dir.path().join("api.addr"), "0.0.0.0:7070\n").unwrap();
        let err = find_target(None, None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("admin.token"), "{err}");

        std::fs::write(dir.path().join("admin.token"), "\n").unwrap();
        let err = find_target(None, None, dir.path()).unwrap_err();
        assert!(matches!(err, CliError::EmptyTokenFile { .. }), "{err}");

        std::fs::write(dir.path().join("admin.token"), "s3cret\n").unwrap();
        let t = find_target(None, None, dir.path()).unwrap();
        assert_eq!(t.base_url.as_str(), "http://127.0.0.1:7070/");
        assert_eq!(t.token, "s3cret");
        assert_eq!(
            t.token_source,
            TokenSource::File(dir.path().join("admin.token"))
        );

        // A token flag replaces the file's token, the address still comes from the dir.
        let t = find_target(None, Some("other"), dir.path()).unwrap();
        assert_eq!(
            (t.token.as_str(), t.token_source),
            ("other", TokenSource::Flag)
        );
        assert_eq!(t.addr_file, Some(dir.path().join("api.addr")));
    }

    #[test]
    fn bad_addr_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.addr"), "not an address").unwrap();
        let err = find_target(None, Some("t"), dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds \"not an address\", not an address like 127.0.0.1:7070"),
            "{err}"
        );
        std::fs::write(dir.path().join("api.addr"), "[::]:7070").unwrap();
        let t = find_target(None, Some("t"), dir.path()).unwrap();
        assert_eq!(t.base_url.as_str(), "http://[::1]:7070/");
    }
}
