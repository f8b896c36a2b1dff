//! Inference keys and the gateway's request records.
//!
//! A key's secret is `bora-sk-` and 43 base64url characters (256 random
//! bits). It is shown once, in the answer to its creation; the store keeps
//! only its SHA-256 (and the first [`HINT_LEN`] characters, to tell keys
//! apart). After every change, and at server start, the controller hands
//! the router every key it knows, revoked ones marked as such
//! ([`Controller::publish_keys`]), so the gateway authenticates without
//! touching the store.
//!
//! Usage and the audit trail are read from the request records the
//! gateway hands to the [`crate::records::RecordWriter`].

use std::time::{Duration, SystemTime};

use base64::Engine;
use bora_api::{CreateKeyRequest, CreatedKey, InferenceKey, KEY_PREFIX, RequestRecord, UsageRow};
use bora_router::GatewayKey;
use bora_router::gateway::hash_secret;
use bora_store::{NewKeyRecord, RequestFilter, StoreError, StoredKey, UsageFilter};
use chrono::Utc;
use rand::Rng;

use crate::ControlError;
use crate::controller::Controller;

/// How many leading characters of a secret are kept and shown as its hint
/// (`bora-sk-` and four more).
pub const HINT_LEN: usize = 12;

/// The most request records one audit page holds.
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// A fresh secret: [`KEY_PREFIX`] and 32 random bytes in base64url (43
/// characters, no padding).
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// `key_` and 16 hex digits.
fn new_key_id() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    format!("key_{}", hex::encode(bytes))
}

/// What the gateway needs to know of a stored key.
pub fn gateway_key(stored: &StoredKey) -> GatewayKey {
    let key = &stored.key;
    GatewayKey {
        id: key.id.clone(),
        name: key.name.clone(),
        hash: stored.hash,
        models: key.models.clone(),
        rpm: key.rpm,
        tpm: key.tpm,
        expires_at: key.expires_at.map(|at| {
            let ms = at.timestamp_millis();
            if ms >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        }),
        revoked: key.revoked_at.is_some(),
    }
}

/// Checks a key request; the errors say which field, what is wrong, and
/// what to do. Returns the models, duplicates removed.
fn validate(req: &CreateKeyRequest) -> Result<Vec<String>, ControlError> {
    bora_api::names::validate_name(&req.name)
        .map_err(|e| ControlError::Invalid(format!("key {e}")))?;
    let mut models: Vec<String> = Vec::new();
    for (i, model) in req.models.iter().enumerate() {
        bora_api::names::validate_name(model).map_err(|e| {
            ControlError::Invalid(format!(
                "models[{i}]: model {e} (a model is named by its model service)"
            ))
        })?;
        if !models.contains(model) {
            models.push(model.clone());
        }
    }
    if req.rpm == Some(0) {
        return Err(ControlError::Invalid(
            "rpm is 0: a key's requests per minute must be at least 1; leave rpm out for no limit"
                .into(),
        ));
    }
    if req.tpm == Some(0) {
        return Err(ControlError::Invalid(
            "tpm is 0: a key's tokens per minute must be at least 1; leave tpm out for no limit"
                .into(),
        ));
    }
    if let Some(expires) = req.expires
        && expires.get().is_zero()
    {
        return Err(ControlError::Invalid(format!(
            "expires is {expires}: a key must live for some time, e.g. 30d; leave expires out for a key that does not expire"
        )));
    }
    Ok(models)
}

impl Controller {
    /// Creates an inference key and returns it with its secret, which is
    /// not kept and cannot be shown again.
    pub fn create_key(&self, req: CreateKeyRequest) -> Result<CreatedKey, ControlError> {
        let models = validate(&req)?;
        let expires_at = match req.expires {
            None => None,
            Some(expires) => {
                let ttl = chrono::TimeDelta::from_std(expires.get()).ok();
                Some(ttl.and_then(|ttl| Utc::now().checked_add_signed(ttl)).ok_or_else(
                    || {
                        ControlError::Invalid(format!(
                            "expires is {expires}: that is too far in the future; leave expires out for a key that does not expire"
                        ))
                    },
                )?)
            }
        };
        let secret = new_secret();
        let new = NewKeyRecord {
            id: new_key_id(),
            name: req.name.clone(),
            hint: secret[..HINT_LEN].to_string(),
            hash: hash_secret(&secret),
            models,
            rpm: req.rpm,
            tpm: req.tpm,
            expires_at,
        };
        let key = self.store.create_key(&new).map_err(|e| match e {
            StoreError::AlreadyExists { name, .. } => ControlError::Conflict(format!(
                "an inference key named {name:?} already exists: revoke it first (`bora keys revoke {name}`) or pick another name"
            )),
            other => other.into(),
        })?;
        tracing::info!(key = %key.id, name = %key.name, "inference key created");
        self.publish_keys()?;
        Ok(CreatedKey { key, secret })
    }

    /// Inference keys, oldest first; with `include_revoked`, revoked ones
    /// too.
    pub fn keys(&self, include_revoked: bool) -> Result<Vec<InferenceKey>, ControlError> {
        Ok(self
            .store
            .list_keys(include_revoked)?
            .into_iter()
            .map(|k| k.key)
            .collect())
    }

    /// Revokes a key, named by its id or (for a key not yet revoked) its
    /// name. The gateway refuses it from now on.
    pub fn revoke_key(&self, id_or_name: &str) -> Result<InferenceKey, ControlError> {
        let key = self.store.revoke_key(id_or_name).map_err(|e| {
            if e.is_not_found() {
                ControlError::NotFound(format!(
                    "no inference key has the id or name {id_or_name:?}: `bora keys list` shows them"
                ))
            } else {
                e.into()
            }
        })?;
        tracing::info!(key = %key.id, name = %key.name, "inference key revoked");
        self.publish_keys()?;
        Ok(key)
    }

    /// Hands every key in the store to the router's gateway (revoked ones
    /// marked `revoked`). Called after each change and at server start.
    pub fn publish_keys(&self) -> Result<(), ControlError> {
        // Reading and handing over under one lock: an older list never
        // replaces a newer one.
        let _publishing = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let keys = self.store.list_keys(true)?;
        self.router
            .set_keys(keys.iter().map(gateway_key).collect::<Vec<_>>());
        Ok(())
    }

    /// Requests, errors and tokens per key and model.
    pub fn usage(&self, filter: &UsageFilter<'_>) -> Result<Vec<UsageRow>, ControlError> {
        Ok(self.store.usage(filter)?)
    }

    /// One page of request records, oldest first, and the cursor of the
    /// next page (to pass as `after`) when there may be more.
    pub fn audit(
        &self,
        filter: &RequestFilter<'_>,
    ) -> Result<(Vec<RequestRecord>, Option<String>), ControlError> {
        let limit = filter.limit.clamp(1, MAX_AUDIT_PAGE);
        let page = self.store.list_requests(&RequestFilter {
            limit,
            ..filter.clone()
        })?;
        let next = (page.len() == limit)
            .then(|| page.last().map(|r| r.seq.to_string()))
            .flatten();
        Ok((page.into_iter().map(|r| r.record).collect(), next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> CreateKeyRequest {
        CreateKeyRequest {
            name: name.into(),
            models: vec![],
            rpm: None,
            tpm: None,
            expires: None,
        }
    }

    #[test]
    fn secrets_and_ids_are_fresh_and_well_formed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("bora-sk-"), "{a}");
        assert_eq!(a.len(), 8 + 43);
        assert!(
            a[8..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
        let id = new_key_id();
        assert_eq!(id.len(), 4 + 16);
        assert!(id.starts_with("key_"));
        assert!(
            id[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let models = validate(&CreateKeyRequest {
            models: vec!["llama".into(), "bert".into(), "llama".into()],
            rpm: Some(1),
            tpm: Some(1),
            expires: Some(bora_api::Duration::from_secs(1)),
            ..request("ci")
        })
        .unwrap();
        assert_eq!(models, vec!["llama", "bert"]);

        let cases = [
            (request("Bad_Name"), "key name \"Bad_Name\" is not allowed"),
            (request(""), "key name is empty"),
            (
                CreateKeyRequest {
                    models: vec!["ok".into(), "No!".into()],
                    ..request("ci")
                },
                "models[1]: model name \"No!\" is not allowed",
            ),
            (
                CreateKeyRequest {
                    rpm: Some(0),
                    ..request("ci")
                },
                "rpm is 0: a key's requests per minute must be at least 1",
            ),
            (
                CreateKeyRequest {
                    tpm: Some(0),
                    ..request("ci")
                },
                "tpm is 0",
            ),
            (
                CreateKeyRequest {
                    expires: Some(bora_api::Duration::from_secs(0)),
                    ..request("ci")
                },
                "expires is 0s: a key must live for some time",
            ),
        ];
        for (req, want) in cases {
            let err = validate(&req).unwrap_err();
            assert!(matches!(err, ControlError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want:?}");
        }
    }

    #[test]
    fn gateway_keys_carry_the_hash_limits_expiry_and_revocation() {
        let stored = StoredKey {
            key: InferenceKey {
                id: "key_0123456789abcdef".into(),
                name: "ci".into(),
                hint: "bora-sk-abcd".into(),
                models: vec!["llama".into()],
                rpm: Some(60),
                tpm: None,
                expires_at: Some("2030-01-01T00:00:00.250Z".parse().unwrap()),
                created_at: Utc::now(),
                revoked_at: Some(Utc::now()),
            },
            hash: [3; 32],
        };
        let g = gateway_key(&stored);
        assert_eq!(g.id, "key_0123456789abcdef");
        assert_eq!(g.hash, [3; 32]);
        assert_eq!(g.models, vec!["llama"]);
        assert_eq!((g.rpm, g.tpm), (Some(60), None));
        assert_eq!(
            g.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_893_456_000_250))
        );
        assert!(g.revoked);
    }
}
