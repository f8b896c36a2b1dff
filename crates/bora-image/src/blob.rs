//! Content addressing: sha256 digests, and the writer that lands a downloaded blob in the
//! cache only once its size and digest have been verified.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{ImageError, IoContext};

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<hex>` digest (digests are validated before they get here).
pub(crate) fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Check that `digest` is `sha256:<64 lower-case hex>`, so that it is safe to use as a file name.
pub(crate) fn validate_digest(digest: &str, what: &str, reference: &str) -> Result<(), ImageError> {
    crate::reference::parse_digest(digest)
        .map(|_| ())
        .map_err(|reason| ImageError::InvalidManifest {
            reference: reference.to_string(),
            what: what.to_string(),
            reason: format!("digest {digest:?}: {reason}"),
        })
}

/// Receives a blob's bytes into a temporary file next to the cache while hashing them, and
/// moves the file to its content-addressed place only when size and digest match.
///
/// Dropping the writer without [`BlobWriter::commit`] deletes the temporary file.
pub(crate) struct BlobWriter<'a> {
    file: tokio::fs::File,
    temp_path: tempfile::TempPath,
    hasher: Sha256,
    written: u64,
    expected_digest: String,
    expected_size: u64,
    on_progress: &'a (dyn Fn(u64) + Send + Sync),
    last_reported: u64,
}

/// Report download progress at most once per this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

impl<'a> BlobWriter<'a> {
    /// A writer for the blob `expected_digest` of `expected_size` bytes, with its temporary
    /// file in `tmp_dir`. `on_progress` receives the byte count now and then.
    pub(crate) fn create(
        tmp_dir: &Path,
        expected_digest: &str,
        expected_size: u64,
        on_progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> Result<Self, ImageError> {
        let temp = crate::store::temp_builder()
            .tempfile_in(tmp_dir)
            .at("create a temporary file in", tmp_dir)?;
        let (file, temp_path) = temp.into_parts();
        Ok(BlobWriter {
            file: tokio::fs::File::from_std(file),
            temp_path,
            hasher: Sha256::new(),
            written: 0,
            expected_digest: expected_digest.to_string(),
            expected_size,
            on_progress,
            last_reported: 0,
        })
    }

    /// The digest this writer expects.
    pub(crate) fn expected_digest(&self) -> &str {
        &self.expected_digest
    }

    /// Append a chunk. Fails as soon as more bytes arrive than the descriptor announced, so a
    /// hostile source cannot fill the disk.
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.written += chunk.len() as u64;
        if self.written > self.expected_size {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {}", self.expected_digest),
                expected: format!("{} bytes", self.expected_size),
                actual: format!("more than {} bytes", self.expected_size),
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .at("write", self.temp_path.to_path_buf())?;
        if self.written - self.last_reported >= PROGRESS_STEP {
            self.last_reported = self.written;
            (self.on_progress)(self.written);
        }
        Ok(())
    }

    /// Verify size and digest, flush to disk and rename the file to `destination`.
    /// On a mismatch the temporary file is deleted and nothing lands in the cache.
    pub(crate) async fn commit(mut self, destination: &Path) -> Result<(), ImageError> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize_reset()));
        if self.written != self.expected_size {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {}", self.expected_digest),
                expected: format!("{} bytes", self.expected_size),
                actual: format!("{} bytes", self.written),
            });
        }
        if actual != self.expected_digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {}", self.expected_digest),
                expected: self.expected_digest.clone(),
                actual,
            });
        }
        (self.on_progress)(self.written);
        let temp = self.temp_path.to_path_buf();
        self.file.flush().await.at("flush", &temp)?;
        self.file.sync_all().await.at("sync", &temp)?;
        drop(self.file);
        self.temp_path
            .persist(destination)
            .map_err(|e| ImageError::io("rename a verified blob to", destination, e.error))?;
        Ok(())
    }
}

/// Write `bytes` (already verified against `digest`) atomically at `destination`.
pub(crate) async fn write_verified(
    tmp_dir: &Path,
    digest: &str,
    bytes: &[u8],
    destination: &Path,
) -> Result<(), ImageError> {
    let no_progress = |_| {};
    let mut writer = BlobWriter::create(tmp_dir, digest, bytes.len() as u64, &no_progress)?;
    writer.write(bytes).await?;
    writer.commit(destination).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_verifies_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let good = sha256_digest(b"hello");
        let dest = dir.path().join("blob");
        let no_progress = |_| {};

        let mut w = BlobWriter::create(dir.path(), &good, 5, &no_progress).unwrap();
        w.write(b"hellO").await.unwrap();
        let err = w.commit(&dest).await.unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(!dest.exists());

        let mut w = BlobWriter::create(dir.path(), &good, 5, &no_progress).unwrap();
        let err = w.write(b"hello!").await.unwrap_err();
        assert!(err.to_string().contains("more than 5 bytes"), "{err}");
        drop(w);

        let mut w = BlobWriter::create(dir.path(), &good, 5, &no_progress).unwrap();
        w.write(b"hel").await.unwrap();
        w.write(b"lo").await.unwrap();
        w.commit(&dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        // Only the committed blob is left: temporary files were removed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn digest_helpers() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(digest_hex("sha256:abc"), "abc");
        assert!(validate_digest("sha256:../../etc", "x", "r").is_err());
    }
}
