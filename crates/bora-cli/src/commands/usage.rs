//! `bora usage`: requests, errors and tokens per inference key and model.

use std::process::ExitCode;

use bora_api::UsageRow;
use chrono::{DateTime, Utc};

use crate::client::RequestQuery;
use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::Row;

/// `bora usage [--key K] [--model M] [--since 24h]`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct UsageArgs {
    /// Only this key (its name or ID).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only requests since then: a duration meaning that long ago (24h, 7d)
    /// or an RFC 3339 time.
    #[arg(long, default_value = "24h", value_name = "WHEN")]
    pub since: String,
}

/// Checks a `--since`/`--until` before asking the server: a duration (`24h`)
/// or an RFC 3339 time.
pub(crate) fn check_time(flag: &'static str, value: &str) -> Result<(), CliError> {
    let ok = value.parse::<bora_api::Duration>().is_ok()
        || DateTime::parse_from_rfc3339(value.trim()).is_ok();
    if ok {
        Ok(())
    } else {
        Err(CliError::InvalidTime {
            flag,
            value: value.to_string(),
        })
    }
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: UsageArgs) -> Result<ExitCode, CliError> {
    check_time("--since", &args.since)?;
    let query = RequestQuery {
        key: args.key,
        model: args.model,
        since: Some(args.since.clone()),
        until: None,
    };
    let usage = ctx.client()?.usage(&query).await?;
    ctx.print_list(
        &usage,
        &format!("no requests since {}", since_text(&args.since)),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `24h` → `24h ago`; a time stays as it is.
fn since_text(since: &str) -> String {
    if since.parse::<bora_api::Duration>().is_ok() {
        format!("{since} ago")
    } else {
        since.to_string()
    }
}

impl Row for UsageRow {
    const HEADER: &'static [&'static str] = &[
        "KEY",
        "MODEL",
        "REQUESTS",
        "ERRORS",
        "TOKENS IN",
        "TOKENS OUT",
    ];
    fn cells(&self, _now: DateTime<Utc>) -> Vec<String> {
        let key = self
            .key_name
            .clone()
            .or_else(|| self.key_id.clone())
            .unwrap_or_else(|| "(no key)".into());
        vec![
            key,
            self.model.clone(),
            self.requests.to_string(),
            self.errors.to_string(),
            self.prompt_tokens.to_string(),
            self.completion_tokens.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_or_rfc3339() {
        for ok in ["24h", "30m", "7d", "2026-01-02T15:04:05Z"] {
            check_time("--since", ok).unwrap();
        }
        let err = check_time("--since", "yesterday").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid --since \"yesterday\": give a duration"),
            "{err}"
        );
        assert_eq!(since_text("24h"), "24h ago");
    }

    #[test]
    fn requests_without_a_key_are_shown_as_such() {
        let row = UsageRow {
            key_id: None,
            key_name: None,
            model: "llama".into(),
            requests: 3,
            errors: 1,
            prompt_tokens: 30,
            completion_tokens: 12,
        };
        assert_eq!(
            row.cells(Utc::now()),
            vec!["(no key)", "llama", "3", "1", "30", "12"]
        );
    }
}
