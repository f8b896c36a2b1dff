//! `bora keys create|list|revoke`: the inference keys clients of the
//! gateway present. A key's secret is printed once, by `create`, and
//! never again: the server keeps only its hash.

use std::process::ExitCode;

use bora_api::{CreateKeyRequest, CreatedKey, InferenceKey};
use chrono::{DateTime, Utc};

use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::{self, OutputFormat, Row};

/// `bora keys …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown this once).
    Create(CreateKeyArgs),
    /// List keys (never their secrets).
    #[command(visible_alias = "ls")]
    List {
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key: the gateway refuses it from now on.
    #[command(visible_alias = "rm")]
    Revoke {
        /// The key's name or ID.
        key: String,
    },
}

/// `bora keys create`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateKeyArgs {
    /// The key's name: lower-case letters, digits and '-' (unique among
    /// keys not revoked).
    #[arg(long)]
    pub name: String,
    /// The models the key may use, comma-separated; every model when
    /// absent.
    #[arg(long, value_delimiter = ',', value_name = "MODEL,…")]
    pub models: Vec<String>,
    /// Requests per minute; unlimited when absent.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute; unlimited when absent.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// How long the key lives, e.g. 30d; forever when absent.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<bora_api::Duration>,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: KeysCommand) -> Result<ExitCode, CliError> {
    match cmd {
        KeysCommand::Create(args) => {
            let req = CreateKeyRequest {
                name: args.name,
                models: args.models,
                rpm: args.rpm,
                tpm: args.tpm,
                expires: args.expires,
            };
            let created = ctx.client()?.create_key(&req).await?;
            print_created(ctx, &created)?;
        }
        KeysCommand::List { all } => {
            let keys = ctx.client()?.list_keys(all).await?;
            ctx.print_list(
                &keys,
                "no inference keys yet: create one with `bora keys create --name NAME`",
            )?;
        }
        KeysCommand::Revoke { key } => {
            let revoked = ctx.client()?.revoke_key(&key).await?;
            match ctx.format() {
                OutputFormat::Table => ctx.print(&format!(
                    "inference key {} ({}) revoked\n",
                    revoked.name, revoked.id
                ))?,
                format => {
                    let text = output::render_data(format, &revoked)?;
                    ctx.print(&text)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The secret alone on stdout (so `KEY=$(bora keys create --name x)`
/// works), the rest on stderr; `-o json|yaml` prints the whole answer.
fn print_created(ctx: &mut Ctx<'_>, created: &CreatedKey) -> Result<(), CliError> {
    if ctx.format() != OutputFormat::Table {
        let text = output::render_data(ctx.format(), created)?;
        return ctx.print(&text);
    }
    ctx.print(&format!("{}\n", created.secret))?;
    ctx.note(&format!(
        "inference key {} ({}) created; its secret is above and will not be shown again: store it now",
        created.key.name, created.key.id
    ))
}

/// `active`, `expired` or `revoked`.
fn state(key: &InferenceKey, now: DateTime<Utc>) -> &'static str {
    if key.revoked_at.is_some() {
        "revoked"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn limit<T: ToString>(n: Option<T>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

impl Row for InferenceKey {
    const HEADER: &'static [&'static str] = &[
        "NAME", "ID", "HINT", "MODELS", "RPM", "TPM", "EXPIRES", "AGE", "STATE",
    ];
    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        vec![
            self.name.clone(),
            self.id.clone(),
            format!("{}…", self.hint),
            if self.models.is_empty() {
                "all".to_string()
            } else {
                self.models.join(",")
            },
            limit(self.rpm),
            limit(self.tpm),
            self.expires_at
                .map(output::time)
                .unwrap_or_else(|| "never".into()),
            output::age(self.created_at, now),
            state(self, now).to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_limits_models_and_state() {
        let now: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
        let mut key = InferenceKey {
            id: "key_0123456789abcdef".into(),
            name: "ci".into(),
            hint: "bora-sk-AbCd".into(),
            models: vec![],
            rpm: Some(60),
            tpm: None,
            expires_at: None,
            created_at: "2026-03-01T11:00:00Z".parse().unwrap(),
            revoked_at: None,
        };
        assert_eq!(
            key.cells(now),
            vec![
                "ci",
                "key_0123456789abcdef",
                "bora-sk-AbCd…",
                "all",
                "60",
                "-",
                "never",
                "1h",
                "active"
            ]
        );
        key.models = vec!["llama".into(), "bert".into()];
        key.expires_at = Some("2026-03-01T11:30:00Z".parse().unwrap());
        let cells = key.cells(now);
        assert_eq!(cells[3], "llama,bert");
        assert_eq!(cells[6], "2026-03-01T11:30:00Z");
        assert_eq!(cells[8], "expired");
        key.revoked_at = Some(now);
        assert_eq!(key.cells(now)[8], "revoked");
    }
}
