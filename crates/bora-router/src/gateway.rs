//! The inference gateway: one OpenAI-compatible endpoint for every model
//! service, in the router's data path.
//!
//! A request whose `Host` is not a service's and whose path starts with
//! `/v1/` comes here. It is authenticated by its inference key, limited by
//! the key's requests and tokens per minute, authorised for the model its
//! body names, and forwarded to a ready replica of that model; the answer
//! streams back untouched. Every request ends in a
//! [`bora_api::RequestRecord`] handed to the [`Recorder`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use sha2::{Digest, Sha256};

/// An inference key as the gateway knows it: the SHA-256 of its secret,
/// never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKey {
    pub id: String,
    pub name: String,
    /// SHA-256 of the whole secret (`bora-sk-…`, UTF-8).
    pub hash: [u8; 32],
    /// Models the key may use; empty: all.
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub expires_at: Option<SystemTime>,
    pub revoked: bool,
}

/// Receives a record of every request the gateway answered.
pub trait Recorder: Send + Sync {
    fn record(&self, record: bora_api::RequestRecord);
}

/// SHA-256 of a presented secret, as [`GatewayKey::hash`] holds it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The gateway's state that is not in the route table.
#[derive(Default)]
pub(crate) struct Gateway {
    keys: ArcSwap<HashMap<[u8; 32], Arc<GatewayKey>>>,
    recorder: ArcSwapOption<Arc<dyn Recorder>>,
}

impl Gateway {
    pub(crate) fn set_keys(&self, keys: Vec<GatewayKey>) {
        let keys = keys.into_iter().map(|k| (k.hash, Arc::new(k))).collect();
        self.keys.store(Arc::new(keys));
    }

    pub(crate) fn set_recorder(&self, recorder: Arc<dyn Recorder>) {
        self.recorder.store(Some(Arc::new(recorder)));
    }
}
