//! `bora logs SERVICE [--follow] [--tail N]`: what a service's instances
//! wrote, as `<time> <instance> <line>`; lines an instance wrote to stderr go
//! to stderr.

use std::io::Write;
use std::process::ExitCode;

use bora_api::{LogLine, LogStream};
use futures_util::StreamExt;

use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::refs::ServiceRef;

/// `bora logs …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogsArgs {
    /// APP/SERVICE, or SERVICE when only one app has a service by that name.
    pub service: ServiceRef,
    /// Keep printing new lines until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many recent lines to print first.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub tail: u32,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: LogsArgs) -> Result<ExitCode, CliError> {
    let client = ctx.client()?;
    let name = args.service.resolve(&client).await?;
    let (url, response) = client
        .logs(&name.app, &name.service, args.tail, args.follow)
        .await?;
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CliError::Transport {
            url: url.to_string(),
            source: e,
        })?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            print_line(ctx, &url, &line)?;
        }
        ctx.term.out.flush()?;
        ctx.term.err.flush()?;
    }
    // A last line without a newline.
    print_line(ctx, &url, &pending)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints one NDJSON line of the stream (blank lines are keep-alives).
fn print_line(ctx: &mut Ctx<'_>, url: &reqwest::Url, raw: &[u8]) -> Result<(), CliError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let line: LogLine = serde_json::from_slice(raw).map_err(|e| CliError::InvalidResponse {
        url: url.to_string(),
        detail: format!(
            "a log line is not JSON of a log line ({e}): {}",
            String::from_utf8_lossy(raw).trim()
        ),
    })?;
    match ctx.format() {
        OutputFormat::Table => {
            let text = output::log_line(&line);
            match line.stream {
                LogStream::Stdout => writeln!(ctx.term.out, "{text}")?,
                LogStream::Stderr => writeln!(ctx.term.err, "{text}")?,
            }
        }
        OutputFormat::Json => {
            let json = serde_json::to_string(&line).map_err(|e| CliError::Render {
                format: "json",
                detail: e.to_string(),
            })?;
            writeln!(ctx.term.out, "{json}")?;
        }
        OutputFormat::Yaml => {
            let yaml = output::render_data(OutputFormat::Yaml, &line)?;
            write!(ctx.term.out, "---\n{yaml}")?;
        }
    }
    Ok(())
}
