//! Local OCI image layouts (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>):
//! a directory with `oci-layout`, `index.json` and `blobs/<alg>/<hex>`.
//!
//! Blobs read from a layout are verified exactly like downloaded ones: a layout is input,
//! not trusted storage.

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};
use tokio::io::AsyncReadExt;
use tracing::debug;

use crate::ImageError;
use crate::blob::{BlobWriter, digest_hex, sha256_digest, validate_digest};
use crate::error::IoContext;
use crate::manifest::{MAX_MANIFEST_BYTES, REF_NAME_ANNOTATION};
use crate::reference::LayoutReference;
use crate::registry::FetchedManifest;

/// An opened OCI image layout.
pub(crate) struct OciLayout {
    path: PathBuf,
    /// The reference as the user wrote it, for messages.
    reference: String,
}

impl OciLayout {
    /// Open the layout of `reference`, checking that it looks like one.
    pub(crate) fn open(reference: &LayoutReference) -> Result<Self, ImageError> {
        let path = reference.path.clone();
        let missing = |reason: &str| ImageError::LayoutNotFound {
            path: path.clone(),
            reason: reason.to_string(),
        };
        if !path.is_dir() {
            return Err(missing("no such directory"));
        }
        if !path.join("index.json").is_file() {
            return Err(missing("it has no index.json"));
        }
        if !path.join("oci-layout").is_file() {
            return Err(missing("it has no oci-layout file"));
        }
        Ok(OciLayout {
            path,
            reference: reference.to_string(),
        })
    }

    /// The layout's `index.json`.
    async fn index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.path.join("index.json");
        let bytes = read_limited(&path, MAX_MANIFEST_BYTES).await?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidManifest {
            reference: self.reference.clone(),
            what: "index.json".into(),
            reason: e.to_string(),
        })
    }

    /// The entries of `index.json` tagged `tag`. Several entries may carry the same tag
    /// (one per platform): the caller selects among them like in an image index.
    ///
    /// When no tag was written and nothing is tagged `latest`, an index with a single
    /// entry resolves to that entry.
    pub(crate) async fn resolve_tag(
        &self,
        tag: Option<&str>,
    ) -> Result<Vec<Descriptor>, ImageError> {
        let index = self.index().await?;
        let wanted = tag.unwrap_or(crate::reference::DEFAULT_TAG);
        let ref_name = |d: &Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME_ANNOTATION))
                .cloned()
        };
        let tagged: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d).as_deref() == Some(wanted))
            .cloned()
            .collect();
        if !tagged.is_empty() {
            return Ok(tagged);
        }
        if tag.is_none() && index.manifests().len() == 1 {
            return Ok(index.manifests().clone());
        }
        let mut tags: Vec<String> = index.manifests().iter().filter_map(ref_name).collect();
        tags.sort();
        tags.dedup();
        Err(ImageError::NotFound {
            reference: format!(
                "{}{}:{wanted}",
                crate::reference::LAYOUT_PREFIX,
                self.path.display()
            ),
            where_: if tags.is_empty() {
                " in the layout (it has no tagged images)".to_string()
            } else {
                format!(" in the layout (tags: {})", tags.join(", "))
            },
        })
    }

    /// Read and verify the manifest or index `digest`. `media_type` is the one of the
    /// descriptor that pointed here, if any.
    pub(crate) async fn manifest(
        &self,
        digest: &str,
        media_type: Option<String>,
    ) -> Result<FetchedManifest, ImageError> {
        validate_digest(digest, "manifest digest", &self.reference)?;
        let path = self.blob_path(digest);
        if !path.is_file() {
            return Err(ImageError::NotFound {
                reference: format!(
                    "{}{}@{digest}",
                    crate::reference::LAYOUT_PREFIX,
                    self.path.display()
                ),
                where_: " in the layout".into(),
            });
        }
        let bytes = read_limited(&path, MAX_MANIFEST_BYTES).await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest {} in layout {}", digest, self.path.display()),
                expected: digest.to_string(),
                actual,
            });
        }
        debug!(layout = %self.path.display(), %digest, "read manifest");
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest: actual,
        })
    }

    /// Copy the blob `writer.expected_digest()` into `writer` (which verifies it on commit).
    pub(crate) async fn blob(&self, writer: &mut BlobWriter<'_>) -> Result<(), ImageError> {
        let digest = writer.expected_digest().to_string();
        let path = self.blob_path(&digest);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::BlobNotFound {
                    reference: self.reference.clone(),
                    digest,
                    where_: format!(" in the layout ({} is missing)", path.display()),
                });
            }
            Err(e) => return Err(ImageError::io("open", path, e)),
        };
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let n = file.read(&mut buffer).await.at("read", &path)?;
            if n == 0 {
                return Ok(());
            }
            writer.write(&buffer[..n]).await?;
        }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.path.join("blobs/sha256").join(digest_hex(digest))
    }
}

/// Read a whole small file, refusing files larger than `limit`.
async fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ImageError> {
    let file = tokio::fs::File::open(path).await.at("open", path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .await
        .at("read", path)?;
    if bytes.len() as u64 > limit {
        return Err(ImageError::InvalidManifest {
            reference: path.display().to_string(),
            what: "file".into(),
            reason: format!("it is larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}
