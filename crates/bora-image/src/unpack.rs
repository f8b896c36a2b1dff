//! Unpacking one layer tarball into a directory that overlayfs can use as a lower layer.
//!
//! - The blob is decompressed (gzip, zstd or none) and the uncompressed stream is hashed
//!   as it is read, so the caller can check it against the config's `diff_id`.
//! - Modes, ownership (numeric uid/gid), mtimes, symlinks, hard links, devices, FIFOs and
//!   `SCHILY.xattr.*` extended attributes are preserved.
//! - OCI whiteouts become overlayfs whiteouts: `.wh.NAME` becomes a character device 0:0
//!   named `NAME`, and `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
//! - Nothing is ever written outside the target directory: entries with `..` or absolute
//!   paths are rejected, and so are entries (and hard-link targets) whose path goes through
//!   a symlink, since that is how a tarball escapes. Symlinks themselves are stored, never
//!   followed.
//!
//! This module is synchronous; the store runs it on a blocking thread.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{Mode, SFlag, lutimes, makedev, mknod};
use nix::sys::time::TimeVal;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest as _, Sha256};
use tar::EntryType;
use tracing::{debug, warn};

use crate::ImageError;
use crate::manifest::Compression;

/// Prefix of OCI whiteout files.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking produced.
#[derive(Debug)]
pub struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar stream (the layer's diff_id).
    pub diff_id: String,
    /// Number of tar entries processed.
    pub entries: u64,
}

/// Unpack the layer read from `blob` (compressed with `compression`) into the existing,
/// empty directory `target`. `digest` names the layer in errors.
///
/// On error `target` is left half-written: the caller unpacks into a temporary directory
/// and discards it.
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    target: &Path,
    digest: &str,
) -> Result<Unpacked, ImageError> {
    let invalid = |reason: String| ImageError::InvalidLayer {
        digest: digest.to_string(),
        reason,
    };
    let decompressed = decompressing_reader(blob, compression);
    let hashing = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    let mut archive = tar::Archive::new(hashing);
    let mut unpacker = Unpacker {
        root: target.to_path_buf(),
        digest: digest.to_string(),
        directories: Vec::new(),
        entries: 0,
    };
    // The layer's root directory: 0755 root:root unless the tarball has a `./` entry.
    fs::set_permissions(target, fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io("chmod", target, e))?;

    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("unreadable tar stream: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| invalid(format!("corrupt tar or compressed data: {e}")))?;
        unpacker.entry(entry)?;
    }
    unpacker.finish_directories()?;

    // Hash whatever follows the end-of-archive marker too: the diff_id covers the whole stream.
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| {
        invalid(format!(
            "corrupt data after the end of the tar archive: {e}"
        ))
    })?;
    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    debug!(layer = %digest, %diff_id, entries = unpacker.entries, "unpacked layer");
    Ok(Unpacked {
        diff_id,
        entries: unpacker.entries,
    })
}

/// `blob`, buffered and decompressed: the uncompressed tar stream.
pub(crate) fn decompressing_reader<'a>(
    blob: impl Read + 'a,
    compression: Compression,
) -> Box<dyn Read + 'a> {
    let input = BufReader::with_capacity(256 << 10, blob);
    match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(ZstdReader::new(input)),
    }
}

/// Metadata of one tar entry, PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Unpacking state for one layer.
struct Unpacker {
    root: PathBuf,
    digest: String,
    /// Directories whose metadata is applied at the end (creating children changes mtimes,
    /// and a read-only mode would get in the way).
    directories: Vec<(PathBuf, Meta)>,
    entries: u64,
}

impl Unpacker {
    fn invalid(&self, reason: String) -> ImageError {
        ImageError::InvalidLayer {
            digest: self.digest.clone(),
            reason,
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        self.entries += 1;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw_path = entry
            .path()
            .map_err(|e| self.invalid(format!("entry with an unreadable path: {e}")))?
            .into_owned();
        let relative = self.sanitize(&raw_path)?;
        let meta = self.meta(&mut entry, &raw_path)?;

        // The root directory itself (`./`).
        if relative.as_os_str().is_empty() {
            if kind != EntryType::Directory {
                return Err(self.invalid(format!(
                    "entry {} replaces the layer root with a non-directory",
                    raw_path.display()
                )));
            }
            self.directories.push((self.root.clone(), meta));
            return Ok(());
        }

        let name = relative
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string);
        if let Some(name) = name.as_deref()
            && name.starts_with(WHITEOUT_PREFIX)
        {
            return self.whiteout(&relative, name);
        }

        self.create_parents(&relative)?;
        let path = self.root.join(&relative);
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&path)?;
                        create_dir(&path)?;
                    }
                    Err(_) => create_dir(&path)?,
                }
                self.directories.push((path, meta));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_any(&path)?;
                self.write_file(&mut entry, &path, &meta)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.invalid(format!("unreadable symlink target: {e}")))?
                    .ok_or_else(|| {
                        self.invalid(format!("symlink {} has no target", raw_path.display()))
                    })?
                    .into_owned();
                remove_any(&path)?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(|e| ImageError::io("create symlink", &path, e))?;
                std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))
                    .map_err(|e| ImageError::io("chown", &path, e))?;
                self.set_xattrs(&path, &meta);
                set_mtime(&path, meta.mtime)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.invalid(format!("unreadable hard link target: {e}")))?
                    .ok_or_else(|| {
                        self.invalid(format!("hard link {} has no target", raw_path.display()))
                    })?
                    .into_owned();
                let target_relative = self.sanitize(&target)?;
                self.check_no_symlink_parents(&target_relative, &target)?;
                let target_path = self.root.join(&target_relative);
                match fs::symlink_metadata(&target_path) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(self.invalid(format!(
                            "hard link {} points to {}, which is not an earlier file of the layer",
                            raw_path.display(),
                            target.display()
                        )));
                    }
                }
                if target_path != path {
                    remove_any(&path)?;
                    fs::hard_link(&target_path, &path)
                        .map_err(|e| ImageError::io("create hard link", &path, e))?;
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (kind_flag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let header = entry.header();
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let flag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (flag, makedev(u64::from(major), u64::from(minor)))
                    }
                };
                remove_any(&path)?;
                mknod(&path, kind_flag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| ImageError::io("mknod", &path, e.into()))?;
                self.apply_meta(&path, &meta)?;
            }
            other => {
                return Err(self.invalid(format!(
                    "entry {} has unsupported tar entry type {other:?}",
                    raw_path.display()
                )));
            }
        }
        Ok(())
    }

    /// Turn an OCI whiteout into its overlayfs form.
    fn whiteout(&mut self, relative: &Path, name: &str) -> Result<(), ImageError> {
        self.create_parents(relative)?;
        let parent = self.root.join(relative.parent().unwrap_or(Path::new("")));
        if name == OPAQUE_MARKER {
            xattr::set(&parent, OVERLAY_OPAQUE_XATTR, b"y")
                .map_err(|e| ImageError::io("set trusted.overlay.opaque on", &parent, e))?;
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(self.invalid(format!("invalid whiteout {}", relative.display())));
        }
        let path = parent.join(hidden);
        remove_any(&path)?;
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o000),
            makedev(0, 0),
        )
        .map_err(|e| ImageError::io("create whiteout device", &path, e.into()))?;
        Ok(())
    }

    /// Write a regular file's contents and metadata.
    fn write_file<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        meta: &Meta,
    ) -> Result<(), ImageError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| ImageError::io("create", path, e))?;
        let mut buffer = vec![0u8; 128 << 10];
        loop {
            let n = entry
                .read(&mut buffer)
                .map_err(|e| self.invalid(format!("corrupt data in {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])
                .map_err(|e| ImageError::io("write", path, e))?;
        }
        std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
            .map_err(|e| ImageError::io("chown", path, e))?;
        // chmod after chown: chown clears setuid/setgid bits.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| ImageError::io("chmod", path, e))?;
        self.set_xattrs(path, meta);
        file.set_times(fs::FileTimes::new().set_modified(to_system_time(meta.mtime)))
            .map_err(|e| ImageError::io("set mtime of", path, e))?;
        Ok(())
    }

    /// Ownership, mode, xattrs and mtime, for anything that is not a symlink.
    fn apply_meta(&self, path: &Path, meta: &Meta) -> Result<(), ImageError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .map_err(|e| ImageError::io("chown", path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| ImageError::io("chmod", path, e))?;
        self.set_xattrs(path, meta);
        set_mtime(path, meta.mtime)
    }

    /// Apply directory metadata, deepest directories first.
    fn finish_directories(&mut self) -> Result<(), ImageError> {
        let mut directories = std::mem::take(&mut self.directories);
        directories.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, meta) in &directories {
            // A later entry may have replaced the directory (by a symlink, say): chmod
            // follows symlinks, so only real directories get their metadata.
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                self.apply_meta(path, meta)?;
            }
        }
        Ok(())
    }

    /// Extended attributes from the tarball. Best effort: a file system may refuse some
    /// namespaces. Overlay's own attributes are never taken from a layer.
    fn set_xattrs(&self, path: &Path, meta: &Meta) {
        for (name, value) in &meta.xattrs {
            if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
                warn!(layer = %self.digest, path = %path.display(), xattr = %name, "ignoring overlay xattr from layer");
                continue;
            }
            if let Err(e) = xattr::set(path, name, value) {
                warn!(layer = %self.digest, path = %path.display(), xattr = %name, error = %e, "could not set xattr");
            }
        }
    }

    /// A tar path as a clean relative path, or an error if it could escape the layer.
    fn sanitize(&self, raw: &Path) -> Result<PathBuf, ImageError> {
        let mut clean = PathBuf::new();
        for component in raw.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.invalid(format!(
                        "entry {} has a `..` component and would escape the layer",
                        raw.display()
                    )));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.invalid(format!(
                        "entry {} has an absolute path and would escape the layer",
                        raw.display()
                    )));
                }
            }
        }
        Ok(clean)
    }

    /// Create the missing parent directories of `relative` (0755, root-owned, like other
    /// runtimes do), refusing to go through symlinks or non-directories.
    fn create_parents(&self, relative: &Path) -> Result<(), ImageError> {
        let mut current = self.root.clone();
        let Some(parent) = relative.parent() else {
            return Ok(());
        };
        for component in parent.components() {
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.invalid(format!(
                        "entry {} goes through the symlink {} and could escape the layer",
                        relative.display(),
                        current
                            .strip_prefix(&self.root)
                            .unwrap_or(&current)
                            .display()
                    )));
                }
                Ok(_) => {
                    return Err(self.invalid(format!(
                        "entry {} is below {}, which is not a directory",
                        relative.display(),
                        current
                            .strip_prefix(&self.root)
                            .unwrap_or(&current)
                            .display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&current)?,
                Err(e) => return Err(ImageError::io("stat", &current, e)),
            }
        }
        Ok(())
    }

    /// Refuse a hard-link target whose parents include a symlink.
    fn check_no_symlink_parents(&self, relative: &Path, raw: &Path) -> Result<(), ImageError> {
        let mut current = self.root.clone();
        if let Some(parent) = relative.parent() {
            for component in parent.components() {
                current.push(component);
                if fs::symlink_metadata(&current).is_ok_and(|m| !m.is_dir()) {
                    return Err(self.invalid(format!(
                        "hard link target {} goes through a symlink or file and could escape the layer",
                        raw.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Read an entry's metadata, PAX records overriding the ustar header fields.
    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &Path,
    ) -> Result<Meta, ImageError> {
        let bad = |field: &str, e: io::Error| {
            self.invalid(format!(
                "entry {} has an invalid {field}: {e}",
                raw_path.display()
            ))
        };
        let header = entry.header();
        let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let mut uid = header.uid().map_err(|e| bad("uid", e))?;
        let mut gid = header.gid().map_err(|e| bad("gid", e))?;
        let mut mtime = header.mtime().unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(|e| bad("pax header", e))? {
            for extension in extensions {
                let extension = extension.map_err(|e| bad("pax header", e))?;
                let Ok(key) = extension.key() else { continue };
                let value = extension.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse::<u64>().ok())
                };
                match key {
                    "uid" => uid = number().unwrap_or(uid),
                    "gid" => gid = number().unwrap_or(gid),
                    "mtime" => mtime = number().unwrap_or(mtime),
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let id = |value: u64, field: &str| {
            u32::try_from(value).map_err(|_| {
                self.invalid(format!(
                    "entry {} has {field} {value}, out of range",
                    raw_path.display()
                ))
            })
        };
        Ok(Meta {
            mode,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mtime,
            xattrs,
        })
    }
}

fn create_dir(path: &Path) -> Result<(), ImageError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|e| ImageError::io("create directory", path, e))
}

/// Remove whatever is at `path` (file, symlink — not followed —, or directory tree).
fn remove_any(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(|e| ImageError::io("remove", path, e))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| ImageError::io("remove", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("stat", path, e)),
    }
}

fn to_system_time(mtime: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(mtime)
}

/// Set atime and mtime without following symlinks.
fn set_mtime(path: &Path, mtime: u64) -> Result<(), ImageError> {
    let seconds = i64::try_from(mtime).unwrap_or(i64::MAX);
    let time = TimeVal::new(seconds, 0);
    lutimes(path, &time, &time).map_err(|e| ImageError::io("set mtime of", path, e.into()))
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A Zstandard decoder for streams of one or more frames (skippable frames are skipped),
/// on top of `ruzstd`'s frame decoder.
struct ZstdReader<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(source: R) -> Self {
        ZstdReader {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.source).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated zstd skippable frame",
                            ));
                        }
                        continue;
                    }
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let needed = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(needed))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                self.in_frame = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A tar entry for tests: path, kind and contents or link target.
    enum Item<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    /// Build a tar archive. Paths and link targets are written raw into the header, so
    /// hostile archives (with `..` or absolute paths) can be built too.
    fn build_tar(items: &[Item<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            let (path, kind, data, link, mode): (&str, EntryType, &[u8], Option<&str>, u32) =
                match item {
                    Item::Dir(p, mode) => (p, EntryType::Directory, b"", None, *mode),
                    Item::File(p, data, mode) => (p, EntryType::Regular, data, None, *mode),
                    Item::Symlink(p, target) => (p, EntryType::Symlink, b"", Some(*target), 0o777),
                    Item::Hardlink(p, target) => (p, EntryType::Link, b"", Some(*target), 0o644),
                };
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                let linkname = &mut header.as_old_mut().linkname;
                linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_uid(1000);
            header.set_gid(1001);
            header.set_mtime(1_600_000_000);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn unpack(
        tar: &[u8],
        compression: Compression,
    ) -> (tempfile::TempDir, Result<Unpacked, ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("layer");
        fs::create_dir(&target).unwrap();
        let result = unpack_layer(tar, compression, &target, "sha256:test");
        (dir, result)
    }

    #[test]
    fn unpacks_files_links_and_metadata() {
        let tar = build_tar(&[
            Item::Dir("./", 0o755),
            Item::Dir("./etc/", 0o700),
            Item::File("./etc/hello", b"hi\n", 0o4755),
            Item::Symlink("./etc/link", "/etc/hello"),
            Item::Hardlink("./etc/hard", "./etc/hello"),
            Item::File("deep/implicit/file", b"x", 0o644),
        ]);
        let (dir, result) = unpack(&tar, Compression::None);
        let unpacked = result.unwrap();
        assert_eq!(
            unpacked.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        let root = dir.path().join("layer");

        let hello = fs::symlink_metadata(root.join("etc/hello")).unwrap();
        assert_eq!(fs::read(root.join("etc/hello")).unwrap(), b"hi\n");
        assert_eq!(hello.mode() & 0o7777, 0o4755, "setuid kept after chown");
        assert_eq!((hello.uid(), hello.gid()), (1000, 1001));
        assert_eq!(hello.mtime(), 1_600_000_000);
        assert_eq!(hello.nlink(), 2);

        let etc = fs::symlink_metadata(root.join("etc")).unwrap();
        assert_eq!(etc.mode() & 0o7777, 0o700);
        assert_eq!(
            etc.mtime(),
            1_600_000_000,
            "directory mtimes are applied last"
        );

        let link = fs::symlink_metadata(root.join("etc/link")).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!(
            fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("/etc/hello")
        );
        assert_eq!((link.uid(), link.gid()), (1000, 1001));

        let hard = fs::symlink_metadata(root.join("etc/hard")).unwrap();
        assert_eq!(hard.ino(), hello.ino());

        let implicit = fs::symlink_metadata(root.join("deep/implicit")).unwrap();
        assert_eq!(implicit.mode() & 0o7777, 0o755);
    }

    #[test]
    fn converts_whiteouts_to_overlay_format() {
        let tar = build_tar(&[
            Item::File("etc/.wh.removed", b"", 0o644),
            Item::Dir("opaque", 0o755),
            Item::File("opaque/.wh..wh..opq", b"", 0o644),
            Item::File("opaque/new", b"new", 0o644),
        ]);
        let (dir, result) = unpack(&tar, Compression::None);
        result.unwrap();
        let root = dir.path().join("layer");
        let whiteout = fs::symlink_metadata(root.join("etc/removed")).unwrap();
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert!(!root.join("etc/.wh.removed").exists());
        assert_eq!(
            xattr::get(root.join("opaque"), OVERLAY_OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert!(!root.join("opaque/.wh..wh..opq").exists());
        assert_eq!(fs::read(root.join("opaque/new")).unwrap(), b"new");
    }

    #[test]
    fn hostile_entries_are_rejected_and_nothing_escapes() {
        let outside = tempfile::tempdir().unwrap();
        let outside_path = outside.path().to_str().unwrap().to_string();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"original").unwrap();
        let victim_path = victim.to_str().unwrap().to_string();

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (build_tar(&[Item::File("../escape", b"x", 0o644)]), "`..`"),
            (
                build_tar(&[Item::File("a/../../escape", b"x", 0o644)]),
                "`..`",
            ),
            (
                build_tar(&[Item::File(&victim_path, b"pwned", 0o644)]),
                "absolute path",
            ),
            (
                build_tar(&[
                    Item::Symlink("link", &outside_path),
                    Item::File("link/victim", b"pwned", 0o644),
                ]),
                "goes through the symlink",
            ),
            (
                build_tar(&[
                    Item::Symlink("up", "../../../../../../.."),
                    Item::File(&format!("up{outside_path}/victim"), b"pwned", 0o644),
                ]),
                "goes through the symlink",
            ),
            (
                build_tar(&[Item::Hardlink("hl", &victim_path)]),
                "absolute path",
            ),
            (build_tar(&[Item::Hardlink("hl", "../victim")]), "`..`"),
            (
                build_tar(&[
                    Item::Symlink("link", &outside_path),
                    Item::Hardlink("hl", "link/victim"),
                ]),
                "goes through a symlink",
            ),
            (
                build_tar(&[Item::Hardlink("hl", "does-not-exist")]),
                "not an earlier file",
            ),
            (
                build_tar(&[Item::File("dir/.wh...", b"", 0o644)]),
                "invalid whiteout",
            ),
            (
                build_tar(&[Item::File("../.wh.victim", b"", 0o644)]),
                "`..`",
            ),
        ];
        for (tar, expected) in cases {
            let (_dir, result) = unpack(&tar, Compression::None);
            let error = result.expect_err(expected);
            assert!(matches!(error, ImageError::InvalidLayer { .. }), "{error}");
            assert!(
                error.to_string().contains(expected),
                "{error} should mention {expected}"
            );
        }
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);

        // A directory replaced by a symlink to the outside: its mode is not applied there.
        std::fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let tar = build_tar(&[Item::Dir("d", 0o700), Item::Symlink("d", &outside_path)]);
        let (_dir, result) = unpack(&tar, Compression::None);
        result.unwrap();
        let mode = fs::metadata(outside.path()).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);

        // A later entry replacing a symlink replaces the link, it does not write through it.
        let tar = build_tar(&[
            Item::Symlink("victim", &victim_path),
            Item::File("victim", b"inside", 0o644),
        ]);
        let (dir, result) = unpack(&tar, Compression::None);
        result.unwrap();
        assert_eq!(
            fs::read(dir.path().join("layer/victim")).unwrap(),
            b"inside"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"original");
    }

    #[test]
    fn gzip_and_zstd_streams() {
        let tar = build_tar(&[Item::File("a", &[7u8; 300_000], 0o644)]);
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let (_dir, result) = unpack(&gz, Compression::Gzip);
        assert_eq!(result.unwrap().diff_id, expected);

        // Two frames with a skippable frame in between, as some encoders write.
        let half = tar.len() / 2;
        let mut zst = ruzstd::encoding::compress_to_vec(
            &tar[..half],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        zst.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        zst.extend_from_slice(&3u32.to_le_bytes());
        zst.extend_from_slice(b"abc");
        zst.extend(ruzstd::encoding::compress_to_vec(
            &tar[half..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        let (dir, result) = unpack(&zst, Compression::Zstd);
        assert_eq!(result.unwrap().diff_id, expected);
        assert_eq!(fs::read(dir.path().join("layer/a")).unwrap().len(), 300_000);

        let (_dir, result) = unpack(&gz[..gz.len() / 2], Compression::Gzip);
        assert!(matches!(result, Err(ImageError::InvalidLayer { .. })));
        let (_dir, result) = unpack(b"definitely not zstd", Compression::Zstd);
        assert!(matches!(result, Err(ImageError::InvalidLayer { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]

        /// Corrupted archives fail cleanly: no panic, nothing written next to the target.
        #[test]
        fn corrupted_archives_never_panic_or_escape(
            flips in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..8),
            compression in proptest::sample::select(vec![Compression::None, Compression::Gzip, Compression::Zstd]),
        ) {
            let tar = build_tar(&[
                Item::Dir("d/", 0o755),
                Item::File("d/f", b"contents", 0o644),
                Item::Symlink("d/s", "f"),
                Item::Hardlink("d/h", "d/f"),
                Item::File(".wh.x", b"", 0o644),
            ]);
            let mut blob = match compression {
                Compression::None => tar,
                Compression::Gzip => {
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(&tar).unwrap();
                    gz.finish().unwrap()
                }
                Compression::Zstd => ruzstd::encoding::compress_to_vec(
                    &tar[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
            };
            for (position, value) in flips {
                let len = blob.len();
                blob[position % len] = value;
            }
            let (dir, _result) = unpack(&blob, compression);
            let siblings: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
            proptest::prop_assert_eq!(siblings.len(), 1);
        }

        /// Arbitrary bytes are rejected, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
                let _ = unpack(&bytes, compression);
            }
        }
    }
}
