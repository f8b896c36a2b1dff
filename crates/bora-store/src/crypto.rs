//! Secrets are encrypted at rest with ChaCha20-Poly1305 under a 256-bit key
//! kept in a file of its own (mode 0600) in the data directory, so a copy of
//! the database alone reveals nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::StoreError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Encrypts and decrypts secret values.
pub struct SecretCipher {
    cipher: ChaCha20Poly1305,
}

impl SecretCipher {
    /// Loads the key at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        let err = |detail: String| StoreError::Key {
            path: path.display().to_string(),
            detail,
        };
        let key = match fs::read(path) {
            Ok(bytes) => {
                if bytes.len() != KEY_LEN {
                    return Err(err(format!(
                        "holds {} bytes, expected {KEY_LEN}; restore it from a backup (without it, stored secrets cannot be read)",
                        bytes.len()
                    )));
                }
                let mode = fs::metadata(path)
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                        .map_err(|e| err(format!("cannot restrict its mode to 0600: {e}")))?;
                }
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; KEY_LEN];
                rand::rng().fill_bytes(&mut bytes);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| err(format!("cannot create: {e}")))?;
                f.write_all(&bytes)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                bytes
            }
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &[u8]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Returns nonce ‖ ciphertext.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and a fresh nonce cannot fail.
        out.extend(
            self.cipher
                .encrypt(Nonce::from_slice(&nonce), plaintext)
                .expect("chacha20poly1305 encryption"),
        );
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher.decrypt(Nonce::from_slice(nonce), ct).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let c = SecretCipher::from_key(&[7u8; 32]);
        let sealed = c.seal(b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(c.open(&sealed).unwrap(), b"hunter2");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(c.open(&bad).is_none());
        assert!(SecretCipher::from_key(&[8u8; 32]).open(&sealed).is_none());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = SecretCipher::load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = SecretCipher::load_or_create(&path).unwrap();
        assert_eq!(b.open(&a.seal(b"x")).unwrap(), b"x");
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SecretCipher::load_or_create(&path),
            Err(StoreError::Key { .. })
        ));
    }
}
