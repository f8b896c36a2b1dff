//! Importing a root filesystem as a single-layer image under a local name
//! ([`ImageStore::import_rootfs`]), and resolving local names ([`ImageStore::local_image`]).
//!
//! # Local names
//!
//! A local name is a repository path with an optional tag, spelled like the path part of a
//! registry reference: `templates/base`, `templates/base:2`, `tools/python`. It lives under
//! the reserved registry [`LOCAL_REGISTRY`] (`bora.local`), which is never contacted:
//!
//! | what                         | spelling                                   |
//! |------------------------------|--------------------------------------------|
//! | the name given to the import | `templates/base` (tag `latest` implied)    |
//! | its reference                | `bora.local/templates/base:latest`         |
//! | its pinned reference         | `bora.local/templates/base@sha256:<manifest hex>` ([`Image::pinned`]) |
//!
//! The store records which manifest each name points to in `<root>/local/<repository with
//! `/` as `+`>:<tag>` (one small file per name, replaced atomically), so the last import of
//! a name wins. [`ImageStore::pull`] resolves `bora.local/…` references from this record and
//! the cache, without network; [`ImageStore::load`] loads the pinned form like any other.
//!
//! # What an import writes
//!
//! - the layer blob: the tarball as given (plain tar, or gzip/zstd-compressed, recognised
//!   by its magic bytes), digest-addressed, then unpacked by the same code as pulled layers
//!   (verified against its diff_id, whiteouts converted, hostile paths refused) and
//!   removed, like a pulled layer blob;
//! - an OCI image config: `rootfs.diff_ids`, one `history` entry, `created`, the platform
//!   and the run settings of [`ImportConfig::config`];
//! - an OCI image manifest pointing at both.
//!
//! The JSON documents are serialised with sorted keys and no wall-clock time (`created`
//! defaults to the Unix epoch), so the same tarball and config always give the same
//! manifest digest: a re-import is a no-op that returns the same [`Image`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use super::{ImageConfig, ImageStore, Source, temp_builder};
use crate::blob::{sha256_digest, validate_digest, write_verified};
use crate::error::IoContext;
use crate::manifest::{
    Compression, Document, MAX_MANIFEST_BYTES, OCI_CONFIG, OCI_MANIFEST, check_manifest,
    parse_config, parse_manifest,
};
use crate::reference::{Reference, RegistryReference};
use crate::{Image, ImageError, Platform, PullProgress};

/// The registry name of images imported on this node; never contacted over the network.
///
/// The local name `templates/base` (tag `latest` implied) is the reference
/// `bora.local/templates/base:latest`, and an import of it is pinned as
/// `bora.local/templates/base@sha256:<manifest hex>`.
pub const LOCAL_REGISTRY: &str = "bora.local";

/// `history[0].created_by` when [`ImportConfig::created_by`] is not set.
const DEFAULT_CREATED_BY: &str = "bora-image import_rootfs";

/// How to describe an imported root filesystem in its image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportConfig {
    /// How to run it: env, cmd, entrypoint, working dir, user, labels... (the same fields
    /// [`Image::config`] gives back after a load).
    pub config: ImageConfig,
    /// The config's `created` time. `None` means the Unix epoch, which keeps the digest
    /// independent of when the import ran; pass `SOURCE_DATE_EPOCH` for a meaningful date.
    pub created: Option<SystemTime>,
    /// The `history` entry's `created_by` (default: `bora-image import_rootfs`).
    pub created_by: Option<String>,
    /// The platform the root filesystem is built for (default: this machine's).
    pub platform: Platform,
}

/// The full reference (`bora.local/<name>`, tag `latest` if none) of a local name, checked.
pub fn local_reference(name: &str) -> Result<RegistryReference, ImageError> {
    let invalid = |reason: &str| ImageError::InvalidReference {
        reference: name.to_string(),
        reason: format!(
            "{reason}; a local image name is a lower-case repository path with an optional tag, e.g. `templates/base` or `templates/base:1`"
        ),
    };
    if name.contains('@') {
        return Err(invalid("a local name cannot hold a digest"));
    }
    let full = format!("{LOCAL_REGISTRY}/{name}");
    match Reference::parse(&full) {
        Ok(Reference::Registry(r)) if r.registry == LOCAL_REGISTRY => Ok(r),
        Ok(_) => Err(invalid("it is not a repository path")),
        Err(ImageError::InvalidReference { reason, .. }) => Err(invalid(&reason)),
        Err(e) => Err(e),
    }
}

/// What the pre-pass over the tarball found.
struct LayerBlob {
    /// `sha256:…` of the file as is.
    digest: String,
    /// Its size in bytes.
    size: u64,
    /// `sha256:…` of the uncompressed tar stream.
    diff_id: String,
    compression: Compression,
}

impl ImageStore {
    /// Import the root filesystem tarball `rootfs_tar` (plain, gzip or zstd) as a
    /// single-layer image named `name` (a local name, see [`LOCAL_REGISTRY`]), and return it
    /// as [`ImageStore::load`] would.
    ///
    /// The layer is stored and unpacked exactly like a pulled one. Idempotent: the same
    /// tarball and config give the same manifest digest, and what is already in the store
    /// is reused. `progress` receives the layer's [`PullProgress::Layer`] events and
    /// [`PullProgress::Done`].
    pub async fn import_rootfs(
        &self,
        name: &str,
        rootfs_tar: &Path,
        config: &ImportConfig,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let reference = local_reference(name)?;
        let image_name = reference.to_string();
        info!(reference = %image_name, tarball = %rootfs_tar.display(), "importing root filesystem");
        let rootfs_tar = std::path::absolute(rootfs_tar).at("resolve", rootfs_tar)?;
        let path = rootfs_tar.clone();
        let layer = tokio::task::spawn_blocking(move || describe_layer(&path))
            .await
            .map_err(|e| ImageError::InvalidLayer {
                digest: rootfs_tar.display().to_string(),
                reason: format!("the hashing task failed: {e}"),
            })??;

        let config_bytes = config_document(config, &layer.diff_id);
        let config_digest = sha256_digest(&config_bytes);
        let manifest_bytes = manifest_document(&config_digest, config_bytes.len(), &layer);
        let manifest_digest = sha256_digest(&manifest_bytes);

        // Check the documents with the parsers pulls use, before anything is stored.
        let Document::Manifest(manifest) =
            parse_manifest(&manifest_bytes, Some(OCI_MANIFEST), &image_name, "manifest")?
        else {
            unreachable!("an image manifest was built");
        };
        check_manifest(&manifest, &image_name)?;
        parse_config(&config_bytes, 1, Some(&config.platform), &image_name)?;

        for (digest, bytes) in [
            (&config_digest, &config_bytes),
            (&manifest_digest, &manifest_bytes),
        ] {
            let _guard = self.locks.lock(format!("blob:{digest}")).await;
            let destination = self.blob_path(digest);
            if !destination.is_file() {
                write_verified(&self.tmp_dir(), digest, bytes, &destination).await?;
            }
        }

        let source = Source::File {
            path: rootfs_tar,
            reference: image_name.clone(),
        };
        self.ensure_layer(
            &source,
            &manifest.layers()[0],
            &layer.diff_id,
            &image_name,
            progress,
        )
        .await?;

        self.record_local_name(&reference, &manifest_digest)?;
        let image = self.load(&reference_pinned(&reference, &manifest_digest))?;
        info!(reference = %image_name, pinned = %image.pinned, "root filesystem imported");
        progress(PullProgress::Done {
            pinned: image.pinned.clone(),
        });
        Ok(image)
    }

    /// The image a local name (`templates/base`, or `bora.local/templates/base[:tag]`)
    /// points to, from the cache. Fails with [`ImageError::NotFound`] if nothing was
    /// imported under that name on this node.
    pub fn local_image(&self, name: &str) -> Result<Image, ImageError> {
        let name = name
            .strip_prefix(LOCAL_REGISTRY)
            .and_then(|n| n.strip_prefix('/'))
            .unwrap_or(name);
        let reference = local_reference(name)?;
        let digest = self.local_name_digest(&reference)?;
        self.load_local(&reference_pinned(&reference, &digest))
    }

    /// [`ImageStore::pull`] of a `bora.local/…` reference: resolved from the name records and
    /// the cache, never from the network.
    pub(super) fn pull_local(
        &self,
        reference: &RegistryReference,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        progress(PullProgress::Resolving {
            reference: reference.to_string(),
        });
        let digest = match &reference.digest {
            Some(digest) => digest.clone(),
            None => self.local_name_digest(reference)?,
        };
        progress(PullProgress::Resolved {
            digest: digest.clone(),
        });
        let image = self.load_local(&reference_pinned(reference, &digest))?;
        progress(PullProgress::Done {
            pinned: image.pinned.clone(),
        });
        Ok(image)
    }

    /// [`ImageStore::load`], with a hint fit for local images (they cannot be pulled again).
    fn load_local(&self, pinned: &str) -> Result<Image, ImageError> {
        self.load(pinned).map_err(|e| match e {
            ImageError::NotCached { pinned, missing } => ImageError::NotFound {
                reference: pinned,
                where_: format!(
                    " on this node ({missing} is missing; {LOCAL_REGISTRY} images are imported, never pulled: import it again)"
                ),
            },
            other => other,
        })
    }

    /// The manifest digest a local name points to.
    fn local_name_digest(&self, reference: &RegistryReference) -> Result<String, ImageError> {
        let path = self.local_name_path(reference);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound {
                    reference: reference.to_string(),
                    where_: format!(
                        " among the images imported on this node ({LOCAL_REGISTRY} images are imported, never pulled)"
                    ),
                });
            }
            Err(e) => return Err(ImageError::io("read", path, e)),
        };
        let digest = text.trim().to_string();
        validate_digest(&digest, "local name record", &reference.to_string())?;
        Ok(digest)
    }

    /// Point a local name at a manifest (atomically: readers see the old or the new digest).
    fn record_local_name(
        &self,
        reference: &RegistryReference,
        digest: &str,
    ) -> Result<(), ImageError> {
        use std::io::Write;
        let path = self.local_name_path(reference);
        let dir = self.root.join("local");
        std::fs::create_dir_all(&dir).at("create", &dir)?;
        let mut temp = temp_builder()
            .tempfile_in(self.tmp_dir())
            .at("create a temporary file in", self.tmp_dir())?;
        writeln!(temp, "{digest}").at("write", temp.path().to_path_buf())?;
        temp.as_file()
            .sync_all()
            .at("sync", temp.path().to_path_buf())?;
        temp.persist(&path)
            .map_err(|e| ImageError::io("rename a name record to", &path, e.error))?;
        debug!(reference = %reference, %digest, "local name recorded");
        Ok(())
    }

    /// `<root>/local/<repository with / as +>:<tag>`.
    fn local_name_path(&self, reference: &RegistryReference) -> PathBuf {
        let tag = reference.tag.as_deref().unwrap_or("latest");
        let file = format!("{}:{tag}", reference.repository.replace('/', "+"));
        self.root.join("local").join(file)
    }
}

/// `bora.local/<repository>@<digest>`.
fn reference_pinned(reference: &RegistryReference, digest: &str) -> String {
    format!("{}/{}@{digest}", reference.registry, reference.repository)
}

/// Hash the tarball as is (digest, size) and uncompressed (diff_id), recognising gzip and
/// zstd by their magic bytes.
fn describe_layer(path: &Path) -> Result<LayerBlob, ImageError> {
    let mut file = std::fs::File::open(path).at("open", path)?;
    let mut hasher = Sha256::new();
    let mut magic = Vec::with_capacity(4);
    let mut size = 0u64;
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buffer).at("read", path)?;
        if n == 0 {
            break;
        }
        if magic.len() < 4 {
            let take = (4 - magic.len()).min(n);
            magic.extend_from_slice(&buffer[..take]);
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    if size == 0 {
        return Err(ImageError::InvalidLayer {
            digest: path.display().to_string(),
            reason: "the root filesystem tarball is empty".into(),
        });
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let compression = match magic.as_slice() {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    };
    let diff_id = if compression == Compression::None {
        digest.clone()
    } else {
        let file = std::fs::File::open(path).at("open", path)?;
        let mut reader = crate::unpack::decompressing_reader(file, compression);
        let mut hasher = Sha256::new();
        std::io::copy(&mut reader, &mut hasher).map_err(|e| ImageError::InvalidLayer {
            digest: path.display().to_string(),
            reason: format!("cannot decompress the root filesystem tarball: {e}"),
        })?;
        format!("sha256:{}", hex::encode(hasher.finalize()))
    };
    debug!(tarball = %path.display(), %digest, %diff_id, size, ?compression, "described layer");
    Ok(LayerBlob {
        digest,
        size,
        diff_id,
        compression,
    })
}

/// RFC 3339 UTC, to the second, as image configs spell times.
fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The image config (`application/vnd.oci.image.config.v1+json`), keys sorted.
fn config_document(import: &ImportConfig, diff_id: &str) -> Vec<u8> {
    let c = &import.config;
    let mut run = Map::new();
    let mut put_list = |key: &str, list: &[String]| {
        if !list.is_empty() {
            run.insert(key.into(), json!(list));
        }
    };
    put_list("Entrypoint", &c.entrypoint);
    put_list("Cmd", &c.cmd);
    put_list("Env", &c.env);
    let set = |items: &[String]| -> Value {
        Value::Object(items.iter().map(|i| (i.clone(), json!({}))).collect())
    };
    if !c.exposed_ports.is_empty() {
        run.insert("ExposedPorts".into(), set(&c.exposed_ports));
    }
    if !c.volumes.is_empty() {
        run.insert("Volumes".into(), set(&c.volumes));
    }
    for (key, value) in [
        ("WorkingDir", &c.working_dir),
        ("User", &c.user),
        ("StopSignal", &c.stop_signal),
    ] {
        if let Some(value) = value {
            run.insert(key.into(), json!(value));
        }
    }
    if !c.labels.is_empty() {
        run.insert("Labels".into(), json!(c.labels));
    }
    let created = rfc3339(import.created.unwrap_or(SystemTime::UNIX_EPOCH));
    let mut document = json!({
        "created": created,
        "architecture": import.platform.architecture,
        "os": import.platform.os,
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": created,
            "created_by": import.created_by.as_deref().unwrap_or(DEFAULT_CREATED_BY),
        }],
    });
    if let Some(variant) = &import.platform.variant {
        document["variant"] = json!(variant);
    }
    serde_json::to_vec(&document).expect("a JSON value serialises")
}

/// The image manifest (`application/vnd.oci.image.manifest.v1+json`), keys sorted.
fn manifest_document(config_digest: &str, config_size: usize, layer: &LayerBlob) -> Vec<u8> {
    let layer_type = match layer.compression {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let document = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": layer_type, "digest": layer.digest, "size": layer.size }],
    });
    let bytes = serde_json::to_vec(&document).expect("a JSON value serialises");
    debug_assert!(bytes.len() as u64 <= MAX_MANIFEST_BYTES);
    bytes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    use super::*;
    use crate::LayerState;

    /// A small root filesystem: a directory, an executable owned by 1000, a symlink.
    fn rootfs_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, uid: u64, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(uid);
            header.set_gid(uid);
            header.set_mtime(1_700_000_000);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, data).unwrap();
        };
        add("bin/", tar::EntryType::Directory, 0o755, 0, b"");
        add(
            "bin/hello",
            tar::EntryType::Regular,
            0o755,
            0,
            b"#!/bin/sh\necho hi\n",
        );
        add("home/user/", tar::EntryType::Directory, 0o750, 1000, b"");
        add(
            "home/user/.profile",
            tar::EntryType::Regular,
            0o644,
            1000,
            b"# hi\n",
        );
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        builder
            .append_link(&mut header, "usr/bin/hello", "../../bin/hello")
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn import_config() -> ImportConfig {
        ImportConfig {
            config: ImageConfig {
                cmd: vec!["/bin/bash".into()],
                env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/home/user".into()],
                working_dir: Some("/home/user".into()),
                user: Some("user".into()),
                labels: BTreeMap::from([("org.example.template".into(), "base".into())]),
                ..ImageConfig::default()
            },
            created: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
            created_by: Some("test".into()),
            ..ImportConfig::default()
        }
    }

    fn write_tar(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<PullProgress>>);

    impl Events {
        fn layer_states(&self) -> Vec<LayerState> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|e| match e {
                    PullProgress::Layer { state, .. } => Some(*state),
                    _ => None,
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn import_loads_like_a_pulled_image_and_is_idempotent() {
        let work = tempfile::tempdir().unwrap();
        let store = ImageStore::open(work.path().join("images")).unwrap();
        let tar = write_tar(work.path(), "rootfs.tar", &rootfs_tar());
        let config = import_config();

        let events = Events::default();
        let image = store
            .import_rootfs("templates/base", &tar, &config, &|e| {
                events.0.lock().unwrap().push(e)
            })
            .await
            .unwrap();
        assert_eq!(
            image.pinned,
            format!("bora.local/templates/base@{}", image.manifest_digest)
        );
        assert_eq!(image.config, config.config);
        assert_eq!(image.platform, Platform::host());
        assert_eq!(
            events.layer_states(),
            [
                LayerState::Downloading,
                LayerState::Downloaded,
                LayerState::Unpacked
            ]
        );

        // The layer is unpacked like a pulled one, under its diff_id (= the tar's digest).
        let tar_digest = sha256_digest(&std::fs::read(&tar).unwrap());
        assert_eq!(image.layers.len(), 1);
        let layer = &image.layers[0];
        assert_eq!(
            layer,
            &store
                .root()
                .join("layers/sha256")
                .join(tar_digest.strip_prefix("sha256:").unwrap())
        );
        assert_eq!(
            std::fs::read_to_string(layer.join("bin/hello")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        let home = std::fs::metadata(layer.join("home/user")).unwrap();
        assert_eq!(
            (home.uid(), home.gid(), home.mode() & 0o777),
            (1000, 1000, 0o750)
        );
        assert_eq!(
            std::fs::read_link(layer.join("usr/bin/hello")).unwrap(),
            Path::new("../../bin/hello")
        );
        // Like pulled layers, the blob is gone once unpacked; manifest and config stay.
        assert!(!store.blob_path(&tar_digest).exists());
        assert!(store.blob_path(&image.manifest_digest).is_file());

        // The config document: diff_ids, history, created.
        let config_json: Value =
            serde_json::from_slice(&std::fs::read(store.blob_path(&image.config_digest)).unwrap())
                .unwrap();
        assert_eq!(config_json["rootfs"]["diff_ids"], json!([tar_digest]));
        assert_eq!(config_json["created"], "2023-11-14T22:13:20Z");
        assert_eq!(config_json["history"][0]["created_by"], "test");
        assert_eq!(config_json["config"]["User"], "user");

        // Loading by the pinned reference, resolving the name, pulling the local reference.
        assert_eq!(store.load(&image.pinned).unwrap(), image);
        assert_eq!(store.local_image("templates/base").unwrap(), image);
        assert_eq!(
            store
                .local_image("bora.local/templates/base:latest")
                .unwrap(),
            image
        );
        let pulled = store
            .pull(
                "bora.local/templates/base",
                &crate::PullOptions::default(),
                &|_| {},
            )
            .await
            .unwrap();
        assert_eq!(pulled, image);
        let pulled = store
            .pull(&image.pinned, &crate::PullOptions::default(), &|_| {})
            .await
            .unwrap();
        assert_eq!(pulled, image);

        // Re-importing the same bytes (another file) gives the same digests, from the cache.
        let copy = write_tar(work.path(), "copy.tar", &rootfs_tar());
        let again_events = Events::default();
        let again = store
            .import_rootfs("templates/base", &copy, &config, &|e| {
                again_events.0.lock().unwrap().push(e)
            })
            .await
            .unwrap();
        assert_eq!(again, image);
        assert_eq!(again_events.layer_states(), [LayerState::Cached]);

        // Another config is another image; the name follows the last import.
        let mut other = config.clone();
        other.config.cmd = vec!["/bin/sh".into()];
        let changed = store
            .import_rootfs("templates/base", &copy, &other, &|_| {})
            .await
            .unwrap();
        assert_ne!(changed.manifest_digest, image.manifest_digest);
        assert_eq!(changed.layers, image.layers);
        assert_eq!(store.local_image("templates/base").unwrap(), changed);
        // The first image is still loadable by its pinned reference.
        assert_eq!(store.load(&image.pinned).unwrap(), image);
    }

    #[tokio::test]
    async fn gzip_tarball_is_a_gzip_layer_with_the_plain_diff_id() {
        let work = tempfile::tempdir().unwrap();
        let store = ImageStore::open(work.path().join("images")).unwrap();
        let plain = rootfs_tar();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&plain).unwrap();
        let tar = write_tar(work.path(), "rootfs.tar.gz", &encoder.finish().unwrap());

        let image = store
            .import_rootfs("tools/x:1", &tar, &ImportConfig::default(), &|_| {})
            .await
            .unwrap();
        assert_eq!(
            image.pinned,
            format!("bora.local/tools/x@{}", image.manifest_digest)
        );
        assert!(image.layers[0].ends_with(sha256_digest(&plain).strip_prefix("sha256:").unwrap()));
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(store.blob_path(&image.manifest_digest)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let config: Value =
            serde_json::from_slice(&std::fs::read(store.blob_path(&image.config_digest)).unwrap())
                .unwrap();
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert!(store.local_image("tools/x").is_err(), "only tag 1 exists");
        assert_eq!(store.local_image("tools/x:1").unwrap(), image);
    }

    #[tokio::test]
    async fn bad_names_and_inputs_are_refused_with_clear_errors() {
        let work = tempfile::tempdir().unwrap();
        let store = ImageStore::open(work.path().join("images")).unwrap();
        let tar = write_tar(work.path(), "rootfs.tar", &rootfs_tar());
        let config = ImportConfig::default();

        for bad in ["", "Base", "base@sha256:abc", "a//b", "-x"] {
            let err = store
                .import_rootfs(bad, &tar, &config, &|_| {})
                .await
                .unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("local image name"), "{err}");
        }

        let empty = write_tar(work.path(), "empty.tar", b"");
        let err = store
            .import_rootfs("t/empty", &empty, &config, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");

        let garbage = write_tar(work.path(), "garbage.tar", &[7u8; 1000]);
        let err = store
            .import_rootfs("t/garbage", &garbage, &config, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
        assert!(store.local_image("t/garbage").is_err());

        let missing = work.path().join("nope.tar");
        let err = store
            .import_rootfs("t/missing", &missing, &config, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope.tar"), "{err}");

        let err = store.local_image("never/imported").unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("never pulled"), "{err}");
        let err = store
            .pull(
                "bora.local/never/imported:1",
                &crate::PullOptions::default(),
                &|_| {},
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    }
}
