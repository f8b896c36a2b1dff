//! OCI images for Bora's node agent: pull from registries and local OCI layouts, verify,
//! cache content-addressed, and unpack layers ready to be stacked with overlayfs.
//!
//! ```no_run
//! # async fn example() -> Result<(), bora_image::ImageError> {
//! use bora_image::{ImageStore, PullOptions};
//!
//! let store = ImageStore::open("/var/lib/bora/images")?;
//! let image = store
//!     .pull("127.0.0.1:5000/hello:1", &PullOptions::default(), &|event| println!("{event:?}"))
//!     .await?;
//! // Later, after a restart, without network:
//! let same = store.load(&image.pinned)?;
//! assert_eq!(same.layers, image.layers);
//! # Ok(()) }
//! ```
//!
//! The pipeline, one module per step:
//!
//! - [`mod@reference`]: parse what the user wrote (`busybox`, `host:5000/a/b:tag`,
//!   `repo@sha256:…`, `oci:/path:tag`).
//! - `registry` (distribution API v2 client with Basic and Bearer auth) and `layout`
//!   (local OCI layouts): where manifests and blobs come from.
//! - `manifest`: media types, manifest/index/config parsing, platform selection.
//! - `blob`: sha256 verification before anything gets a name in the cache.
//! - [`unpack`]: layer tarballs to directories, whiteouts converted for overlayfs,
//!   hostile paths refused.
//! - `store`: the on-disk cache and [`ImageStore::pull`] / [`ImageStore::load`].
//! - `store::import`: [`ImageStore::import_rootfs`], a root filesystem tarball as a
//!   single-layer image under a local name (`bora.local/templates/base@sha256:…`).
//! - [`error`]: [`ImageError`], one variant per kind of failure.
//!
//! HTTPS uses rustls with the `ring` provider, chosen explicitly by reqwest: callers do not
//! need to install a process-wide crypto provider. The store must run as root (layers keep
//! their owners, whiteouts are device nodes, opaque directories use `trusted.*` xattrs).

#![forbid(unsafe_code)]

mod blob;
pub mod error;
mod layout;
/// Manifest, index and config parsing. Public for the fuzz targets.
#[doc(hidden)]
pub mod manifest;
mod platform;
pub mod reference;
mod registry;
mod store;
pub mod unpack;

pub use error::ImageError;
pub use manifest::Compression;
pub use platform::{InvalidPlatform, Platform};
pub use reference::Reference;
pub use store::import::{ImportConfig, LOCAL_REGISTRY, local_reference};
pub use store::{
    Credentials, Image, ImageConfig, ImageStore, LayerState, PullOptions, PullProgress,
};

/// Media type strings, for callers that build or inspect images.
pub mod media_types {
    pub use crate::manifest::{
        DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, OCI_CONFIG,
        OCI_INDEX, OCI_MANIFEST,
    };
}
