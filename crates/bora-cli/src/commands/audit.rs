//! `bora audit export`: the gateway's request records as JSON Lines, one
//! record per line, oldest first, paged through the API until done.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::client::RequestQuery;
use crate::commands::Ctx;
use crate::commands::usage::check_time;
use crate::error::CliError;

/// Records asked for per request.
const PAGE: usize = 1000;

/// `bora audit …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AuditCommand {
    /// Write request records as JSON Lines (one RequestRecord per line).
    Export(ExportArgs),
}

/// `bora audit export`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ExportArgs {
    /// Requests that arrived since then: a duration meaning that long ago
    /// (24h, 7d) or an RFC 3339 time; all when absent.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Requests that arrived before then (a duration ago or an RFC 3339
    /// time).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only this key (its name or ID).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Write to this file instead of standard output. (Not `--output`:
    /// that is every command's output format.)
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: AuditCommand) -> Result<ExitCode, CliError> {
    let AuditCommand::Export(args) = cmd;
    for (flag, value) in [("--since", &args.since), ("--until", &args.until)] {
        if let Some(value) = value {
            check_time(flag, value)?;
        }
    }
    let client = ctx.client()?;
    let query = RequestQuery {
        key: args.key,
        model: args.model,
        since: args.since,
        until: args.until,
    };
    let write_error = |path: &PathBuf, source| CliError::WriteFile {
        path: path.clone(),
        source,
    };
    let mut file = match args.file {
        None => None,
        Some(path) => {
            let f = std::fs::File::create(&path).map_err(|e| write_error(&path, e))?;
            Some((path, std::io::BufWriter::new(f)))
        }
    };
    let mut written = 0usize;
    let mut after: Option<String> = None;
    loop {
        let page = client.audit_page(&query, after.as_deref(), PAGE).await?;
        let mut lines = Vec::new();
        for record in &page.items {
            serde_json::to_writer(&mut lines, record).map_err(|e| CliError::Render {
                format: "json",
                detail: e.to_string(),
            })?;
            lines.push(b'\n');
        }
        match &mut file {
            Some((path, f)) => f.write_all(&lines).map_err(|e| write_error(path, e))?,
            None => ctx.term.out.write_all(&lines)?,
        }
        written += page.items.len();
        match page.next {
            Some(next) if !page.items.is_empty() => after = Some(next),
            _ => break,
        }
    }
    if let Some((path, mut f)) = file {
        f.flush().map_err(|e| write_error(&path, e))?;
        ctx.note(&format!(
            "wrote {written} request record{} to {}",
            if written == 1 { "" } else { "s" },
            path.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
