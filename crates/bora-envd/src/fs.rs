//! Filesystem operations behind `filesystem.Filesystem` and `/files`.
//!
//! envd runs as root and performs them as root; what it creates on behalf
//! of a user (directories, uploaded files, parents made along the way) is
//! then owned by that user, so the user's processes can use it. This is not
//! a privilege boundary: whoever holds the access token may run commands as
//! root anyway.
//!
//! User metadata on files lives in `user.e2b.<key>` extended attributes, as
//! in E2B's envd, so it survives moves and shows in `EntryInfo.metadata`.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::connect::{Code, RpcError};
use crate::proto::Timestamp;
use crate::proto::filesystem::{EntryInfo, FileType};
use crate::users::{Names, User};

/// The xattr namespace of user metadata.
pub const METADATA_PREFIX: &str = "user.e2b.";

fn io_err(e: &io::Error, path: &Path) -> RpcError {
    match e.kind() {
        io::ErrorKind::NotFound => {
            RpcError::not_found(format!("path {} does not exist", path.display()))
        }
        _ => RpcError::from_io(e, &path.display().to_string()),
    }
}

/// The `EntryInfo` of `path` (not following a final symlink, but reporting
/// its target's type).
pub fn entry_info(path: &Path, names: &Names) -> Result<EntryInfo, RpcError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err(&e, path))?;
    Ok(entry_from_metadata(path, &meta, names))
}

pub fn entry_from_metadata(path: &Path, meta: &Metadata, names: &Names) -> EntryInfo {
    let is_symlink = meta.file_type().is_symlink();
    let (kind, symlink_target) = if is_symlink {
        let target = std::fs::canonicalize(path)
            .or_else(|_| std::fs::read_link(path))
            .ok()
            .map(|t| t.display().to_string());
        let kind = match std::fs::metadata(path) {
            Ok(m) => file_type(&m),
            Err(_) => FileType::Symlink,
        };
        (kind, target)
    } else {
        (file_type(meta), None)
    };
    let modified = meta.modified().ok().map(Timestamp::from_system_time);
    EntryInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        r#type: kind as i32,
        path: path.display().to_string(),
        size: meta.len() as i64,
        mode: meta.permissions().mode() & 0o7777,
        permissions: permissions_string(meta),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_time: modified,
        symlink_target,
        metadata: if is_symlink {
            HashMap::new()
        } else {
            read_metadata(path)
        },
        is_symlink,
    }
}

fn file_type(meta: &Metadata) -> FileType {
    let ft = meta.file_type();
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::File
    }
}

/// `ls -l` style: `drwxr-xr-x`, `-rw-r--r--`, `lrwxrwxrwx`, with setuid,
/// setgid and sticky bits as `s`/`S`, `t`/`T`.
pub fn permissions_string(meta: &Metadata) -> String {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else {
        '-'
    };
    format!("{kind}{}", mode_string(meta.permissions().mode()))
}

fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    let special = [(0o4000, 's'), (0o2000, 's'), (0o1000, 't')];
    for (i, (bit, ch)) in special.iter().enumerate() {
        let shift = 6 - 3 * i;
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        s.push(match (mode & bit != 0, exec) {
            (true, true) => *ch,
            (true, false) => ch.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// Lists `dir` down to `depth` levels (0 counts as 1), not following
/// symlinked directories; sorted by path.
pub fn list_dir(dir: &Path, depth: u32, names: &Names) -> Result<Vec<EntryInfo>, RpcError> {
    let meta = std::fs::metadata(dir).map_err(|e| io_err(&e, dir))?;
    if !meta.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "path {} is not a directory",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    walk(dir, depth.max(1), names, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &Path, depth: u32, names: &Names, out: &mut Vec<EntryInfo>) -> Result<(), RpcError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(&e, dir))?;
    for ent in rd {
        let ent = ent.map_err(|e| io_err(&e, dir))?;
        let path = ent.path();
        // Entries may vanish while we list; skip those.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        out.push(entry_from_metadata(&path, &meta, names));
        if depth > 1 && meta.is_dir() {
            // Unreadable subdirectories are listed but not entered.
            let _ = walk(&path, depth - 1, names, out);
        }
    }
    Ok(())
}

/// Creates `dir` and missing parents, owned by `user`. An existing
/// directory is `already_exists`; an existing file in the way is
/// `invalid_argument`.
pub fn make_dir(dir: &Path, user: &User) -> Result<(), RpcError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("directory {} already exists", dir.display()),
            ));
        }
        Ok(_) => {
            return Err(RpcError::invalid_argument(format!(
                "path {} already exists and is not a directory",
                dir.display()
            )));
        }
        Err(_) => {}
    }
    create_dirs_owned(dir, user).map_err(|e| io_err(&e, dir))
}

/// `mkdir -p`, chowning every directory it creates to `user`.
pub fn create_dirs_owned(dir: &Path, user: &User) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.iter().rev() {
        match std::fs::create_dir(p) {
            Ok(()) => std::os::unix::fs::lchown(p, Some(user.uid), Some(user.gid))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Renames `from` to `to`, creating `to`'s parents for `user`.
pub fn rename(from: &Path, to: &Path, user: &User) -> Result<(), RpcError> {
    std::fs::symlink_metadata(from).map_err(|e| io_err(&e, from))?;
    if let Some(parent) = to.parent() {
        create_dirs_owned(parent, user).map_err(|e| io_err(&e, parent))?;
    }
    std::fs::rename(from, to).map_err(|e| {
        RpcError::from_io(
            &e,
            &format!("moving {} to {}", from.display(), to.display()),
        )
    })
}

/// Removes a file, a symlink, or a directory with everything in it.
pub fn remove(path: &Path) -> Result<(), RpcError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err(&e, path))?;
    let result = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.map_err(|e| io_err(&e, path))
}

/// The `user.e2b.*` attributes of `path`, prefix stripped.
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(len) = rustix::fs::listxattr_query(path) else {
        return out;
    };
    if len == 0 {
        return out;
    }
    let mut names = vec![0u8; len];
    let Ok(n) = rustix::fs::listxattr(path, &mut names[..]) else {
        return out;
    };
    for name in names[..n].split(|b| *b == 0) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let Some(key) = name.strip_prefix(METADATA_PREFIX) else {
            continue;
        };
        if let Ok(vlen) = rustix::fs::getxattr_query(path, name) {
            let mut value = vec![0u8; vlen];
            if let Ok(vn) = rustix::fs::getxattr(path, name, &mut value[..]) {
                value.truncate(vn);
                out.insert(
                    key.to_string(),
                    String::from_utf8_lossy(&value).into_owned(),
                );
            }
        }
    }
    out
}

/// Replaces all `user.e2b.*` attributes of `path` with `metadata`.
pub fn replace_metadata(path: &Path, metadata: &HashMap<String, String>) -> io::Result<()> {
    for key in read_metadata(path).keys() {
        if !metadata.contains_key(key) {
            rustix::fs::removexattr(path, format!("{METADATA_PREFIX}{key}").as_str())?;
        }
    }
    for (k, v) in metadata {
        rustix::fs::setxattr(
            path,
            format!("{METADATA_PREFIX}{k}").as_str(),
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

/// A regular-file check with the spec's wording for `/files` downloads.
pub fn check_readable_file(path: &Path) -> Result<Metadata, RpcError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(&e, path))?;
    if meta.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "path {} is a directory",
            path.display()
        )));
    }
    Ok(meta)
}

/// `path`'s parent, or `/`.
pub fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_like_ls() {
        assert_eq!(mode_string(0o755), "rwxr-xr-x");
        assert_eq!(mode_string(0o644), "rw-r--r--");
        assert_eq!(mode_string(0o4755), "rwsr-xr-x");
        assert_eq!(mode_string(0o1777), "rwxrwxrwt");
        assert_eq!(mode_string(0o2640), "rw-r-S---");
    }

    fn me() -> User {
        User {
            name: "me".into(),
            uid: nix::unistd::Uid::effective().as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
            home: "/".into(),
            shell: String::new(),
            groups: vec![],
        }
    }

    #[test]
    fn entry_info_describes_files_dirs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.txt");
        std::fs::write(&f, "hello").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(&f, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("dangling")).unwrap();
        let names = Names::default();

        let e = entry_info(&f, &names).unwrap();
        assert_eq!(e.name, "f.txt");
        assert_eq!(e.r#type, FileType::File as i32);
        assert_eq!(e.size, 5);
        assert!(e.permissions.starts_with('-'));
        assert!(!e.is_symlink);
        assert!(e.modified_time.is_some());

        let d = entry_info(&dir.path().join("d"), &names).unwrap();
        assert_eq!(d.r#type, FileType::Directory as i32);
        assert!(d.permissions.starts_with('d'));

        let l = entry_info(&dir.path().join("link"), &names).unwrap();
        assert!(l.is_symlink);
        assert_eq!(l.r#type, FileType::File as i32);
        assert_eq!(
            l.symlink_target.as_deref(),
            Some(std::fs::canonicalize(&f).unwrap().to_str().unwrap())
        );
        let dl = entry_info(&dir.path().join("dangling"), &names).unwrap();
        assert_eq!(dl.r#type, FileType::Symlink as i32);
        assert_eq!(dl.symlink_target.as_deref(), Some("/nonexistent"));

        let missing = entry_info(&dir.path().join("nope"), &names).unwrap_err();
        assert_eq!(missing.code, Code::NotFound);
        assert!(missing.message.contains("nope"), "{}", missing.message);
    }

    #[test]
    fn list_dir_respects_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::write(dir.path().join("a/b/c/deep.txt"), "").unwrap();
        std::fs::write(dir.path().join("top.txt"), "").unwrap();
        let names = Names::default();
        let rel = |v: Vec<EntryInfo>| -> Vec<String> {
            v.into_iter()
                .map(|e| e.path[dir.path().to_str().unwrap().len() + 1..].to_string())
                .collect()
        };
        assert_eq!(
            rel(list_dir(dir.path(), 0, &names).unwrap()),
            ["a", "top.txt"]
        );
        assert_eq!(
            rel(list_dir(dir.path(), 2, &names).unwrap()),
            ["a", "a/b", "top.txt"]
        );
        assert_eq!(
            rel(list_dir(dir.path(), 10, &names).unwrap()),
            ["a", "a/b", "a/b/c", "a/b/c/deep.txt", "top.txt"]
        );
        let e = list_dir(&dir.path().join("top.txt"), 1, &names).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }

    #[test]
    fn make_dir_move_remove() {
        let dir = tempfile::tempdir().unwrap();
        let user = me();
        let nested = dir.path().join("x/y/z");
        make_dir(&nested, &user).unwrap();
        assert!(nested.is_dir());
        assert_eq!(
            make_dir(&nested, &user).unwrap_err().code,
            Code::AlreadyExists
        );

        let to = dir.path().join("moved/deeper/z");
        rename(&nested, &to, &user).unwrap();
        assert!(to.is_dir() && !nested.exists());
        assert_eq!(
            rename(&nested, &to, &user).unwrap_err().code,
            Code::NotFound
        );

        remove(&dir.path().join("moved")).unwrap();
        assert!(!dir.path().join("moved").exists());
        assert_eq!(
            remove(&dir.path().join("moved")).unwrap_err().code,
            Code::NotFound
        );
    }

    #[test]
    fn metadata_lives_in_user_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.txt");
        std::fs::write(&f, "").unwrap();
        let first = HashMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
        if replace_metadata(&f, &first).is_err() {
            eprintln!(
                "skipping: the filesystem under {} has no user xattrs",
                dir.path().display()
            );
            return;
        }
        assert_eq!(read_metadata(&f), first);
        let second = HashMap::from([("b".to_string(), "3".to_string())]);
        replace_metadata(&f, &second).unwrap();
        assert_eq!(read_metadata(&f), second);
        assert_eq!(entry_info(&f, &Names::default()).unwrap().metadata, second);
    }
}
