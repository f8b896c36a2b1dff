//! The inference gateway's records: keys that clients present, and what the
//! gateway writes for every request (usage and the audit trail).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Duration;

/// Where every inference key's secret starts; what the gateway recognises.
pub const KEY_PREFIX: &str = "bora-sk-";

/// An inference key as the API shows it: never its secret, which is
/// printed once at creation and stored only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InferenceKey {
    /// `key_` and 16 hex digits.
    pub id: String,
    /// A name unique among keys that are not revoked (a DNS label).
    pub name: String,
    /// The secret's first characters (`bora-sk-ab12`), to tell keys apart.
    pub hint: String,
    /// Models the key may use; empty means every model.
    pub models: Vec<String>,
    /// Requests per minute, unlimited when unset.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute, unlimited when unset.
    pub tpm: Option<u64>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u64>,
    /// How long the key lives (`30d`); forever when unset.
    #[serde(default)]
    pub expires: Option<Duration>,
}

/// The answer to `POST /v1/keys`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    pub key: InferenceKey,
    /// `bora-sk-` and 43 base64url characters (256 random bits).
    pub secret: String,
}

/// What the gateway records for every request it answers: the usage and
/// audit trail. Never the prompt or the completion unless the server runs
/// with content retention on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestRecord {
    /// The request id (`X-Request-Id`).
    pub id: String,
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// The key presented; unset when none was valid.
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    /// The model asked for, as the client named it (may be unknown).
    pub model: String,
    /// The model service that served it (unset if none did).
    pub app: Option<String>,
    pub service: Option<String>,
    /// The instance (replica) that served it.
    pub instance: Option<String>,
    /// `sha256:…` of the model file the replica serves.
    pub model_digest: Option<String>,
    /// The engine and its version: `bora-engine/0.1.0`, or
    /// `openai-compatible` with the image digest.
    pub engine: Option<String>,
    /// `chat.completions`, `completions`, `embeddings`, `models`.
    pub endpoint: String,
    pub stream: bool,
    /// The HTTP status the client got.
    pub status: u16,
    /// Why the request failed, for statuses ≥ 400 and broken streams.
    pub error: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Arrival to the response's end.
    pub duration_ms: u64,
    /// Arrival to the first token (streams) or the response (otherwise).
    pub ttft_ms: Option<u64>,
    /// The request body, only with content retention on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The response body, only with content retention on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
}

/// Requests and tokens of one key and model (`GET /v1/usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub model: String,
    pub requests: u64,
    /// Requests answered with a status ≥ 400 or broken off.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}
