//! Resolving the paths clients send: relative paths and `~` are relative to
//! the user's home, and the result is cleaned lexically (`.`/`..`/`//`), so
//! what envd reports back is the path it actually used.
//!
//! This is not a sandbox boundary — the caller may act as root anyway — it
//! only gives every path one canonical spelling.

use std::path::{Component, Path, PathBuf};

use crate::connect::RpcError;

/// Resolves `path` for a user whose home is `home`. An empty path is the
/// home itself.
pub fn resolve(path: &str, home: &Path) -> Result<PathBuf, RpcError> {
    if path.contains('\0') {
        return Err(RpcError::invalid_argument(format!(
            "path {path:?} contains a NUL byte"
        )));
    }
    let joined = if path.is_empty() || path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        home.join(path) // an absolute `path` replaces `home`
    };
    Ok(clean(&joined))
}

/// Lexical cleaning of an absolute path: drops `.` and empty components,
/// applies `..` (never above `/`).
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str) -> String {
        resolve(p, Path::new("/home/user"))
            .unwrap()
            .display()
            .to_string()
    }

    #[test]
    fn relative_paths_are_under_home() {
        assert_eq!(r("file.txt"), "/home/user/file.txt");
        assert_eq!(r("a/b/../c"), "/home/user/a/c");
        assert_eq!(r(""), "/home/user");
        assert_eq!(r("."), "/home/user");
        assert_eq!(r("~"), "/home/user");
        assert_eq!(r("~/x"), "/home/user/x");
    }

    #[test]
    fn absolute_paths_are_cleaned() {
        assert_eq!(r("/tmp//x/./y/"), "/tmp/x/y");
        assert_eq!(r("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(r("../../../.."), "/");
        assert_eq!(r("/"), "/");
    }

    #[test]
    fn nul_bytes_are_refused() {
        let e = resolve("a\0b", Path::new("/root")).unwrap_err();
        assert_eq!(e.code, crate::connect::Code::InvalidArgument);
    }
}
