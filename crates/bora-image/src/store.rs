//! The image store: the content-addressed cache on disk and the pull pipeline.
//!
//! ```text
//! <root>/                      (mode 0700: layers hold setuid binaries)
//!   blobs/sha256/<hex>         verified manifests, indexes and configs (layer blobs only
//!                              while they are being unpacked)
//!   layers/sha256/<hex>/       unpacked layers, named by their diff_id (uncompressed digest)
//!   local/<repo>:<tag>         manifest digest of each `bora.local/…` name (see [`import`])
//!   tmp/<pid>-<random>         downloads and unpacks in progress
//! ```
//!
//! Everything lands in `blobs/` or `layers/` by an atomic rename, after verification, so
//! whatever has a final name is complete. A crash leaves at most entries in `tmp/`, which
//! the next [`ImageStore::open`] removes when the process that made them is gone.
//!
//! Layers are keyed by diff_id, so the same layer compressed differently (gzip, zstd) is
//! stored once, and a layer already unpacked is never downloaded again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::blob::{BlobWriter, digest_hex, sha256_digest, validate_digest, write_verified};
use crate::error::IoContext;
use crate::layout::OciLayout;
use crate::manifest::{
    Document, MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, check_manifest,
    layer_compression, parse_config, parse_manifest, select_platform,
};
use crate::reference::Reference;
use crate::registry::{FetchedManifest, RegistryClient};
use crate::unpack::unpack_layer;
use crate::{ImageError, Platform};

pub(crate) mod import;

/// How many layers of one image are downloaded and unpacked at the same time.
const PARALLEL_LAYERS: usize = 3;

/// Credentials for a registry (Basic auth, or to obtain a Bearer token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Options of one pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`) that may be spoken to in plain HTTP. Loopback registries
    /// always may.
    pub insecure_registries: Vec<String>,
    /// Credentials for the image's registry, if it needs them.
    pub credentials: Option<Credentials>,
    /// The platform to select from multi-platform images (default: linux on this CPU).
    pub platform: Platform,
}

/// Where a layer is in the pull pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerState {
    /// Already unpacked in the cache: nothing to download.
    Cached,
    /// Being downloaded.
    Downloading,
    /// Downloaded and verified; about to be unpacked.
    Downloaded,
    /// Unpacked and verified against its diff_id.
    Unpacked,
}

/// Progress events of a pull, in order, for the CLI and instance events.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullProgress {
    /// Looking up the reference (the normalised reference).
    Resolving {
        /// E.g. `docker.io/library/busybox:latest`.
        reference: String,
    },
    /// The platform-specific manifest was found.
    Resolved {
        /// Its digest.
        digest: String,
    },
    /// A layer changed state.
    Layer {
        /// The layer blob's digest (as in the manifest).
        digest: String,
        /// The layer blob's (compressed) size.
        size: u64,
        /// The new state.
        state: LayerState,
    },
    /// Bytes of a layer downloaded so far (reported about every MiB, and at the end).
    Download {
        /// The layer blob's digest.
        digest: String,
        /// Bytes received so far.
        downloaded: u64,
        /// The blob's size.
        size: u64,
    },
    /// The image is complete in the cache.
    Done {
        /// The pinned reference ([`Image::pinned`]).
        pinned: String,
    },
}

/// The parts of an image config a runtime needs, as simple owned types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `ENTRYPOINT` (empty if unset).
    pub entrypoint: Vec<String>,
    /// `CMD` (empty if unset).
    pub cmd: Vec<String>,
    /// `ENV`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WORKDIR`, if set.
    pub working_dir: Option<String>,
    /// `USER` (`name`, `uid`, `uid:gid`...), if set.
    pub user: Option<String>,
    /// `EXPOSE`d ports, as `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// `VOLUME`s, sorted.
    pub volumes: Vec<String>,
    /// `LABEL`s.
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`, if set.
    pub stop_signal: Option<String>,
}

impl From<&ImageConfiguration> for ImageConfig {
    fn from(image: &ImageConfiguration) -> Self {
        let Some(c) = image.config() else {
            return ImageConfig::default();
        };
        let sorted = |v: &Option<Vec<String>>| {
            let mut v = v.clone().unwrap_or_default();
            v.sort();
            v
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
            exposed_ports: sorted(c.exposed_ports()),
            volumes: sorted(c.volumes()),
            labels: c
                .labels()
                .as_ref()
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            stop_signal: non_empty(c.stop_signal()),
        }
    }
}

/// An image complete in the cache, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference pinned to the manifest digest, e.g. `127.0.0.1:5000/hello@sha256:…`
    /// or `oci:/path/to/layout@sha256:…`: pulling or loading it again gives the same image.
    pub pinned: String,
    /// `sha256:…` of the platform-specific manifest.
    pub manifest_digest: String,
    /// `sha256:…` of the image config.
    pub config_digest: String,
    /// The platform the image config declares.
    pub platform: Platform,
    /// How to run it.
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first (overlayfs wants them reversed).
    pub layers: Vec<PathBuf>,
}

/// The content-addressed image cache and the pull pipeline. Cheap to share (`Arc`) and safe
/// to use from many tasks at once.
pub struct ImageStore {
    root: PathBuf,
    http: reqwest::Client,
    locks: KeyedLocks,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

/// Where an image's blobs come from during one pull.
enum Source {
    /// A registry repository (the client knows the tag or digest asked for).
    Registry(Box<RegistryClient>),
    /// A local OCI layout, and the tag asked for.
    Layout {
        layout: OciLayout,
        tag: Option<String>,
    },
    /// A single blob in a local file (a root filesystem being imported), and the
    /// reference it is imported as.
    File { path: PathBuf, reference: String },
}

impl Source {
    /// The manifest or index the reference's tag names.
    async fn tagged_manifest(
        &self,
        platform: &Platform,
        image_name: &str,
    ) -> Result<FetchedManifest, ImageError> {
        match self {
            Source::Registry(client) => client.manifest(client.tag_or_digest()).await,
            Source::Layout { layout, tag } => {
                let entries = layout.resolve_tag(tag.as_deref()).await?;
                // Several entries may carry the tag, one per platform.
                let chosen = match entries.as_slice() {
                    [only] => only,
                    several => select_platform(several, platform, image_name)?,
                };
                let digest = chosen.digest().to_string();
                validate_digest(&digest, "index.json entry", image_name)?;
                let media_type = Some(chosen.media_type().to_string());
                layout.manifest(&digest, media_type).await
            }
            Source::File { reference, .. } => Err(no_manifest_in_file(reference)),
        }
    }

    async fn blob(&self, writer: &mut BlobWriter<'_>) -> Result<(), ImageError> {
        match self {
            Source::Registry(client) => client.blob(writer).await,
            Source::Layout { layout, .. } => layout.blob(writer).await,
            Source::File { path, .. } => copy_file_blob(path, writer).await,
        }
    }

    async fn manifest_by_digest(
        &self,
        digest: &str,
        media_type: Option<String>,
    ) -> Result<FetchedManifest, ImageError> {
        match self {
            Source::Registry(client) => {
                let mut fetched = client.manifest(digest).await?;
                fetched.media_type = fetched.media_type.or(media_type);
                Ok(fetched)
            }
            Source::Layout { layout, .. } => layout.manifest(digest, media_type).await,
            Source::File { reference, .. } => Err(no_manifest_in_file(reference)),
        }
    }
}

/// Imports write their manifests themselves: a file source never serves one.
fn no_manifest_in_file(reference: &str) -> ImageError {
    ImageError::NotFound {
        reference: reference.to_string(),
        where_: " (an imported file holds a layer, not a manifest)".into(),
    }
}

/// Copy a local file into `writer` (which verifies it on commit).
async fn copy_file_blob(path: &Path, writer: &mut BlobWriter<'_>) -> Result<(), ImageError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await.at("open", path)?;
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buffer).await.at("read", path)?;
        if n == 0 {
            return Ok(());
        }
        writer.write(&buffer[..n]).await?;
    }
}

/// The prefix of this process's temporary files: `<pid>-`.
fn temp_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("{}-", std::process::id()))
}

/// A `tempfile` builder whose names start with this process's id, so that [`ImageStore::open`]
/// can tell leftovers of dead processes from work in progress.
pub(crate) fn temp_builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(temp_prefix());
    builder
}

impl ImageStore {
    /// Open (creating if needed) the store at `root`, normally `<data-dir>/images`, and
    /// remove what crashed processes left in its `tmp/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        // Layer paths end up in overlay mount options: keep them absolute.
        let root = std::path::absolute(&root).at("resolve", &root)?;
        std::fs::create_dir_all(&root).at("create", &root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .at("chmod", &root)?;
        for dir in ["blobs/sha256", "layers/sha256", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).at("create", &path)?;
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("bora-image/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ImageError::HttpClient {
                reason: crate::error::error_chain(&e),
            })?;
        let store = ImageStore {
            root,
            http,
            locks: KeyedLocks::default(),
        };
        store.remove_stale_temporaries();
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolve `reference` (tag or digest) to the manifest for `opts.platform`, download and
    /// verify every missing blob, unpack every missing layer, and return the image.
    /// `bora.local/…` references name imported images ([`ImageStore::import_rootfs`]): they
    /// are resolved on this node, never over the network.
    ///
    /// Idempotent: what is cached is reused, and a pull by digest whose content is all
    /// cached does not touch the network. Concurrent pulls (of the same image or not) are
    /// safe. On error nothing unverified is left in the cache; [`ImageError::is_retryable`]
    /// says whether trying again may help.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let mut parsed = Reference::parse(reference)?;
        if let Reference::Layout(layout) = &mut parsed {
            layout.path = std::path::absolute(&layout.path).at("resolve", &layout.path)?;
        }
        if let Reference::Registry(r) = &parsed
            && r.registry == import::LOCAL_REGISTRY
        {
            return self.pull_local(r, progress);
        }
        let image_name = parsed.to_string();
        info!(reference = %image_name, platform = %opts.platform, "pulling image");
        progress(PullProgress::Resolving {
            reference: image_name.clone(),
        });
        let source = match &parsed {
            Reference::Registry(r) => Source::Registry(Box::new(RegistryClient::new(
                self.http.clone(),
                r.clone(),
                opts.credentials.clone(),
                &opts.insecure_registries,
            ))),
            Reference::Layout(l) => Source::Layout {
                layout: OciLayout::open(l)?,
                tag: l.tag.clone(),
            },
        };

        let (manifest_digest, manifest) = self
            .resolve(&source, parsed.digest(), &opts.platform, &image_name)
            .await?;
        progress(PullProgress::Resolved {
            digest: manifest_digest.clone(),
        });
        check_manifest(&manifest, &image_name)?;

        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self
            .config_blob(&source, manifest.config(), &image_name)
            .await?;
        let config = parse_config(
            &config_bytes,
            manifest.layers().len(),
            Some(&opts.platform),
            &image_name,
        )?;

        // The futures are collected first: a `map` closure inside the stream would make the
        // pull future lose `Send` (a known limitation of higher-ranked closure lifetimes).
        let layer_futures: Vec<_> = manifest
            .layers()
            .iter()
            .zip(config.rootfs().diff_ids())
            .map(|(layer, diff_id)| {
                self.ensure_layer(&source, layer, diff_id, &image_name, progress)
            })
            .collect();
        let layers: Vec<PathBuf> = futures_util::stream::iter(layer_futures)
            .buffered(PARALLEL_LAYERS)
            .try_collect()
            .await?;

        let pinned = parsed.pinned(&manifest_digest);
        info!(reference = %image_name, %pinned, "image ready");
        progress(PullProgress::Done {
            pinned: pinned.clone(),
        });
        Ok(Image {
            pinned,
            manifest_digest,
            config_digest,
            platform: Platform {
                os: config.os().to_string(),
                architecture: config.architecture().to_string(),
                variant: config.variant().clone(),
            },
            config: ImageConfig::from(&config),
            layers,
        })
    }

    /// Load an already pulled image by its pinned reference ([`Image::pinned`]), without
    /// network: used when the server restarts. Fails with [`ImageError::NotCached`] if
    /// anything is missing from the cache. A pinned index resolves to this machine's platform.
    pub fn load(&self, pinned: &str) -> Result<Image, ImageError> {
        let parsed = Reference::parse(pinned)?;
        let Some(digest) = parsed.digest() else {
            return Err(ImageError::InvalidReference {
                reference: pinned.to_string(),
                reason: "loading from the cache needs a pinned reference (`…@sha256:<hex>`)".into(),
            });
        };
        let not_cached = |missing: String| ImageError::NotCached {
            pinned: pinned.to_string(),
            missing,
        };
        let mut digest = digest.to_string();
        let mut manifest = None;
        for _ in 0..MAX_INDEX_DEPTH {
            let bytes = self
                .read_cached(&digest, MAX_MANIFEST_BYTES)?
                .ok_or_else(|| not_cached(format!("manifest {digest}")))?;
            match parse_manifest(&bytes, None, pinned, "manifest")? {
                Document::Manifest(m) => {
                    manifest = Some(*m);
                    break;
                }
                Document::Index(index) => {
                    let chosen = select_platform(index.manifests(), &Platform::host(), pinned)?;
                    digest = chosen.digest().to_string();
                    validate_digest(&digest, "index entry", pinned)?;
                }
            }
        }
        let manifest = manifest.ok_or_else(|| nested_too_deep(pinned))?;
        check_manifest(&manifest, pinned)?;
        let config_digest = manifest.config().digest().to_string();
        validate_digest(&config_digest, "config digest", pinned)?;
        let config_bytes = self
            .read_cached(&config_digest, MAX_CONFIG_BYTES)?
            .ok_or_else(|| not_cached(format!("config {config_digest}")))?;
        let config = parse_config(&config_bytes, manifest.layers().len(), None, pinned)?;
        let mut layers = Vec::new();
        for diff_id in config.rootfs().diff_ids() {
            let path = self.layer_path(diff_id);
            if !path.is_dir() {
                return Err(not_cached(format!("layer {diff_id}")));
            }
            layers.push(path);
        }
        debug!(%pinned, "loaded image from the cache");
        Ok(Image {
            pinned: parsed.pinned(&digest),
            manifest_digest: digest,
            config_digest,
            platform: Platform {
                os: config.os().to_string(),
                architecture: config.architecture().to_string(),
                variant: config.variant().clone(),
            },
            config: ImageConfig::from(&config),
            layers,
        })
    }

    /// Follow the reference (its `digest` if pinned, else its tag) and any indexes down to
    /// the platform-specific manifest. Every manifest and index seen is verified and cached;
    /// a digest already cached is not fetched.
    async fn resolve(
        &self,
        source: &Source,
        digest: Option<&str>,
        platform: &Platform,
        image_name: &str,
    ) -> Result<(String, ImageManifest), ImageError> {
        let mut fetched = match digest {
            Some(digest) => self.manifest_by_digest(source, digest, None).await?,
            None => source.tagged_manifest(platform, image_name).await?,
        };
        for _ in 0..MAX_INDEX_DEPTH {
            let destination = self.blob_path(&fetched.digest);
            if !destination.is_file() {
                write_verified(
                    &self.tmp_dir(),
                    &fetched.digest,
                    &fetched.bytes,
                    &destination,
                )
                .await?;
            }
            let what = format!("manifest {}", fetched.digest);
            match parse_manifest(
                &fetched.bytes,
                fetched.media_type.as_deref(),
                image_name,
                &what,
            )? {
                Document::Manifest(manifest) => return Ok((fetched.digest, *manifest)),
                Document::Index(index) => {
                    let chosen = select_platform(index.manifests(), platform, image_name)?;
                    let digest = chosen.digest().to_string();
                    validate_digest(&digest, "index entry", image_name)?;
                    debug!(reference = %image_name, %platform, %digest, "selected manifest from index");
                    let media_type = Some(chosen.media_type().to_string());
                    fetched = self.manifest_by_digest(source, &digest, media_type).await?;
                }
            }
        }
        Err(nested_too_deep(image_name))
    }

    /// A manifest by digest: from the cache if there, else from the source.
    async fn manifest_by_digest(
        &self,
        source: &Source,
        digest: &str,
        media_type: Option<String>,
    ) -> Result<FetchedManifest, ImageError> {
        if let Some(bytes) = self.read_cached(digest, MAX_MANIFEST_BYTES)? {
            debug!(%digest, "manifest found in the cache");
            return Ok(FetchedManifest {
                bytes,
                media_type,
                digest: digest.to_string(),
            });
        }
        source.manifest_by_digest(digest, media_type).await
    }

    /// The image config's bytes, downloaded and verified if not cached.
    async fn config_blob(
        &self,
        source: &Source,
        descriptor: &Descriptor,
        image_name: &str,
    ) -> Result<Vec<u8>, ImageError> {
        let digest = descriptor.digest().to_string();
        validate_digest(&digest, "config digest", image_name)?;
        if descriptor.size() > MAX_CONFIG_BYTES {
            return Err(ImageError::InvalidManifest {
                reference: image_name.to_string(),
                what: "image config".into(),
                reason: format!(
                    "it is {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
                    descriptor.size()
                ),
            });
        }
        let _guard = self.locks.lock(format!("blob:{digest}")).await;
        if let Some(bytes) = self.read_cached(&digest, MAX_CONFIG_BYTES)? {
            return Ok(bytes);
        }
        let no_progress = |_| {};
        let mut writer =
            BlobWriter::create(&self.tmp_dir(), &digest, descriptor.size(), &no_progress)?;
        source.blob(&mut writer).await?;
        let destination = self.blob_path(&digest);
        writer.commit(&destination).await?;
        self.read_cached(&digest, MAX_CONFIG_BYTES)?
            .ok_or_else(|| ImageError::io("read", destination, std::io::ErrorKind::NotFound.into()))
    }

    /// Make sure the layer `diff_id` is unpacked, downloading its blob if needed.
    async fn ensure_layer(
        &self,
        source: &Source,
        descriptor: &Descriptor,
        diff_id: &str,
        image_name: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<PathBuf, ImageError> {
        let digest = descriptor.digest().to_string();
        validate_digest(&digest, "layer digest", image_name)?;
        let size = descriptor.size();
        let media_type = descriptor.media_type().to_string();
        let compression =
            layer_compression(&media_type).ok_or_else(|| ImageError::UnsupportedMediaType {
                media_type: media_type.clone(),
                what: format!("layer {digest} of {image_name}"),
                hint: "layers must be tar, tar+gzip or tar+zstd".into(),
            })?;
        let report = |state| {
            progress(PullProgress::Layer {
                digest: digest.clone(),
                size,
                state,
            })
        };

        let layer_dir = self.layer_path(diff_id);
        let _layer_guard = self.locks.lock(format!("layer:{diff_id}")).await;
        if layer_dir.is_dir() {
            debug!(layer = %digest, %diff_id, "layer already unpacked");
            report(LayerState::Cached);
            return Ok(layer_dir);
        }

        let _blob_guard = self.locks.lock(format!("blob:{digest}")).await;
        let blob_path = self.blob_path(&digest);
        if !blob_path.is_file() {
            report(LayerState::Downloading);
            let on_bytes = |downloaded| {
                progress(PullProgress::Download {
                    digest: digest.clone(),
                    downloaded,
                    size,
                })
            };
            let mut writer = BlobWriter::create(&self.tmp_dir(), &digest, size, &on_bytes)?;
            source.blob(&mut writer).await?;
            writer.commit(&blob_path).await?;
            report(LayerState::Downloaded);
        }

        let unpack_dir = temp_builder()
            .tempdir_in(self.tmp_dir())
            .at("create a temporary directory in", self.tmp_dir())?;
        let blob = blob_path.clone();
        let layer_digest = digest.clone();
        let (unpack_dir, unpacked) = tokio::task::spawn_blocking(move || {
            let result = std::fs::File::open(&blob)
                .at("open", &blob)
                .and_then(|file| unpack_layer(file, compression, unpack_dir.path(), &layer_digest))
                .and_then(|unpacked| {
                    sync_filesystem(unpack_dir.path())?;
                    Ok(unpacked)
                });
            (unpack_dir, result)
        })
        .await
        .map_err(|e| ImageError::InvalidLayer {
            digest: digest.clone(),
            reason: format!("the unpacking task failed: {e}"),
        })?;
        let unpacked = unpacked?;
        if unpacked.diff_id != diff_id {
            // The blob matched its digest but is not the layer the config describes.
            remove_file_logged(&blob_path);
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {digest} (diff_id in the image config)"),
                expected: diff_id.to_string(),
                actual: unpacked.diff_id,
            });
        }
        let unpacked_path = unpack_dir.keep();
        if let Err(e) = std::fs::rename(&unpacked_path, &layer_dir) {
            // Another process may have unpacked the same layer meanwhile: theirs is as good.
            let _ = std::fs::remove_dir_all(&unpacked_path);
            if !layer_dir.is_dir() {
                return Err(ImageError::io("rename an unpacked layer to", &layer_dir, e));
            }
        }
        // The compressed blob is no longer needed: layers are found by diff_id.
        remove_file_logged(&blob_path);
        debug!(layer = %digest, %diff_id, entries = unpacked.entries, "layer unpacked");
        report(LayerState::Unpacked);
        Ok(layer_dir)
    }

    /// A cached blob's bytes (re-verified), or `None` if it is not cached.
    fn read_cached(&self, digest: &str, limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
        use std::io::Read;
        validate_digest(digest, "digest", digest)?;
        let path = self.blob_path(digest);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("open", path, e)),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .at("read", &path)?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            // Disk corruption or tampering: forget it so that it is fetched again.
            warn!(path = %path.display(), "cached blob does not match its digest; removing it");
            remove_file_logged(&path);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest_hex(digest))
    }

    fn layer_path(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers/sha256").join(digest_hex(diff_id))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Remove `tmp/` entries of processes that no longer run (crashed pulls).
    fn remove_stale_temporaries(&self) {
        let tmp = self.tmp_dir();
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner_alive = name
                .split_once('-')
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
                });
            if owner_alive {
                continue;
            }
            let path = entry.path();
            debug!(path = %path.display(), "removing leftover of an interrupted pull");
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = result {
                warn!(path = %path.display(), error = %e, "could not remove leftover of an interrupted pull");
            }
        }
    }
}

fn nested_too_deep(reference: &str) -> ImageError {
    ImageError::InvalidManifest {
        reference: reference.to_string(),
        what: "image index".into(),
        reason: format!("indexes are nested more than {MAX_INDEX_DEPTH} deep"),
    }
}

fn remove_file_logged(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not remove file");
    }
}

/// Flush the file system holding `path`, so that a layer is on disk before it gets its
/// final name (one `syncfs` instead of an `fsync` per file).
fn sync_filesystem(path: &Path) -> Result<(), ImageError> {
    let dir = std::fs::File::open(path).at("open", path)?;
    nix::unistd::syncfs(&dir).map_err(|e| ImageError::io("sync the file system of", path, e.into()))
}

/// Async mutexes by key (a digest), created on demand and dropped when unused.
#[derive(Default)]
struct KeyedLocks {
    map: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key's lock; releases it (and forgets the key if nobody waits) on drop.
struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    async fn lock(&self, key: String) -> KeyedGuard<'_> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = mutex.clone().lock_owned().await;
        KeyedGuard {
            locks: self,
            key,
            mutex,
            guard: Some(guard),
        }
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map and this guard hold the mutex: nobody waits, forget the key.
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_serialise_and_forget() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock("a".into()).await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a".into()).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let _other = locks.lock("b".into()).await; // different key: no wait
        drop(first);
        waiter.await.unwrap();
        drop(_other);
        assert!(locks.map.lock().unwrap().is_empty());
    }

    #[test]
    fn open_creates_layout_and_removes_dead_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        ImageStore::open(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // pid 0 is never a user process; 4194305 is above the kernel's pid limit.
        std::fs::create_dir(root.join("tmp/4194305-abc")).unwrap();
        std::fs::write(root.join("tmp/junk"), b"").unwrap();
        let mine = root.join(format!("tmp/{}x", temp_prefix()));
        std::fs::write(&mine, b"").unwrap();
        ImageStore::open(&root).unwrap();
        assert!(!root.join("tmp/4194305-abc").exists());
        assert!(!root.join("tmp/junk").exists());
        assert!(mine.exists(), "work of a live process is kept");
    }

    #[test]
    fn pull_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let options = PullOptions::default();
        let future = store.pull("busybox", &options, &|_| {});
        assert_send(&future);
    }

    #[test]
    fn load_needs_a_digest_and_reports_missing_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let err = store.load("busybox:latest").unwrap_err();
        assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
        let pinned = format!("127.0.0.1:5000/x@sha256:{}", "a".repeat(64));
        let err = store.load(&pinned).unwrap_err();
        assert!(matches!(err, ImageError::NotCached { .. }), "{err}");
        assert!(err.to_string().contains("pull it again"), "{err}");
    }
}
