//! The inference gateway's side of the API: keys, usage, the audit trail.

use bora_api::{CreateKeyRequest, CreatedKey, InferenceKey, List, RequestRecord, UsageRow};
use reqwest::Method;

use super::{ApiClient, REQUEST_TIMEOUT, read_json};
use crate::error::CliError;

/// Filters for `GET /v1/usage` and `GET /v1/audit`. Times go as given: a
/// duration meaning that long ago (`24h`) or an RFC 3339 time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestQuery {
    /// A key's id or name.
    pub key: Option<String>,
    pub model: Option<String>,
    pub since: Option<String>,
    /// The audit trail only.
    pub until: Option<String>,
}

impl RequestQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("key", &self.key),
            ("model", &self.model),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }
}

/// A page of `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AuditPage {
    pub items: Vec<RequestRecord>,
    /// The cursor of the next page; absent on the last.
    #[serde(default)]
    pub next: Option<String>,
}

impl ApiClient {
    /// Creates an inference key; the answer holds its secret, shown once.
    pub async fn create_key(&self, req: &CreateKeyRequest) -> Result<CreatedKey, CliError> {
        self.send_json(Method::POST, &["v1", "keys"], req).await
    }

    /// Keys, oldest first; with `all`, revoked ones too.
    pub async fn list_keys(&self, all: bool) -> Result<List<InferenceKey>, CliError> {
        let query: Vec<_> = all
            .then(|| ("all", "true".to_string()))
            .into_iter()
            .collect();
        self.get(&["v1", "keys"], &query).await
    }

    /// Revokes a key named by its id or name; returns it.
    pub async fn revoke_key(&self, key: &str) -> Result<InferenceKey, CliError> {
        let url = self.url(&["v1", "keys", key]);
        let request = self.http.delete(url.clone()).timeout(REQUEST_TIMEOUT);
        let response = self.send(request, &url).await?;
        read_json(response, &url).await
    }

    /// Requests, errors and tokens per key and model.
    pub async fn usage(&self, query: &RequestQuery) -> Result<List<UsageRow>, CliError> {
        self.get(&["v1", "usage"], &query.pairs()).await
    }

    /// One page of the audit trail, after the cursor `after`.
    pub async fn audit_page(
        &self,
        query: &RequestQuery,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AuditPage, CliError> {
        let mut pairs = query.pairs();
        pairs.push(("limit", limit.to_string()));
        if let Some(after) = after {
            pairs.push(("after", after.to_string()));
        }
        self.get(&["v1", "audit"], &pairs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_filters_are_sent() {
        let q = RequestQuery {
            key: Some("ci".into()),
            since: Some("24h".into()),
            ..Default::default()
        };
        assert_eq!(
            q.pairs(),
            vec![("key", "ci".to_string()), ("since", "24h".to_string())]
        );
        assert!(RequestQuery::default().pairs().is_empty());
    }
}
