//! A root filesystem made from the host's own programs, for instances that
//! run a binary of the node rather than an image (a model served by the
//! built-in engine runs the node's `bora`).
//!
//! The root is a small directory of the instance's own: empty mount points
//! (`/proc`, `/dev`, `/sys`, `/etc`, `/tmp`) and the host's top-level
//! layout — `/usr` bound read-only; `/bin`, `/lib`, `/lib64`, `/sbin` the
//! same symlinks the host has (`bin -> usr/bin` on a merged-`/usr` system),
//! or bound read-only where they are real directories; `/etc/ld.so.cache`
//! bound read-only so the dynamic loader finds the host's libraries.
//! Nothing of the host is writable, and nothing but these is visible.

use std::path::{Path, PathBuf};

use crate::NodeError;

/// Top-level entries that hold programs and libraries besides `/usr`.
const PROGRAM_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What the host has at one of [`PROGRAM_DIRS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A symlink, recreated as is.
    Symlink(PathBuf),
    /// A real directory, bound read-only.
    Dir,
    /// Nothing (or something else): left out.
    Missing,
}

/// A host path bound read-only into the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub destination: String,
    pub source: PathBuf,
}

/// Looks at the host's top level under `host` (`/`, or a directory in tests).
pub fn survey(host: &Path) -> Vec<(&'static str, Entry)> {
    PROGRAM_DIRS
        .iter()
        .map(|name| {
            let path = host.join(name);
            let entry = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&path) {
                    Ok(target) => Entry::Symlink(target),
                    Err(_) => Entry::Missing,
                },
                Ok(m) if m.is_dir() => Entry::Dir,
                _ => Entry::Missing,
            };
            (*name, entry)
        })
        .collect()
}

/// Builds the skeleton at `rootfs` (idempotent) and returns what to bind
/// into it, read-only. `host` is the host's root (`/`).
pub fn build(rootfs: &Path, host: &Path) -> Result<Vec<HostBind>, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let mkdir = |path: &Path| std::fs::create_dir_all(path).map_err(|e| NodeError::io(path, e));
    mkdir(rootfs)?;
    for dir in ["proc", "dev", "sys", "etc", "usr", "tmp"] {
        mkdir(&rootfs.join(dir))?;
    }
    let tmp = rootfs.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| NodeError::io(&tmp, e))?;

    let mut binds = vec![HostBind {
        destination: "/usr".into(),
        source: host.join("usr"),
    }];
    for (name, entry) in survey(host) {
        let path = rootfs.join(name);
        match entry {
            Entry::Symlink(target) => {
                if std::fs::symlink_metadata(&path).is_err() {
                    std::os::unix::fs::symlink(&target, &path)
                        .map_err(|e| NodeError::io(&path, e))?;
                }
            }
            Entry::Dir => {
                mkdir(&path)?;
                binds.push(HostBind {
                    destination: format!("/{name}"),
                    source: host.join(name),
                });
            }
            Entry::Missing => {}
        }
    }
    let cache = host.join("etc/ld.so.cache");
    if cache.is_file() {
        binds.push(HostBind {
            destination: "/etc/ld.so.cache".into(),
            source: cache,
        });
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_the_hosts_layout() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        std::fs::create_dir_all(h.join("usr/bin")).unwrap();
        std::fs::create_dir_all(h.join("lib64")).unwrap();
        std::fs::create_dir_all(h.join("etc")).unwrap();
        std::fs::write(h.join("etc/ld.so.cache"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/bin", h.join("bin")).unwrap();
        std::os::unix::fs::symlink("usr/lib", h.join("lib")).unwrap();

        let root = tempfile::tempdir().unwrap();
        let rootfs = root.path().join("rootfs");
        let binds = build(&rootfs, h).unwrap();
        // Twice: a restart builds over what is there.
        assert_eq!(build(&rootfs, h).unwrap(), binds);

        assert_eq!(
            std::fs::read_link(rootfs.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            std::fs::read_link(rootfs.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert!(rootfs.join("lib64").is_dir());
        assert!(!rootfs.join("sbin").exists());
        let destinations: Vec<&str> = binds.iter().map(|b| b.destination.as_str()).collect();
        assert_eq!(destinations, ["/usr", "/lib64", "/etc/ld.so.cache"]);
        for dir in ["proc", "dev", "sys", "tmp", "usr", "etc"] {
            assert!(rootfs.join(dir).is_dir(), "{dir}");
        }
    }
}
