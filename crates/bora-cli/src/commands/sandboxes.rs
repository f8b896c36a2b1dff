//! `bora sandboxes create|list|get|kill|timeout|pause|resume|exec|cp`:
//! sandboxes for AI agents, from the command line.
//!
//! - `create` prints just the new sandbox's ID on stdout (a note goes to
//!   stderr), so `ID=$(bora sandboxes create)` works.
//! - `exec ID -- CMD [ARGS…]` runs a command through the sandbox's shell,
//!   writes its stdout and stderr to ours as they arrive, and exits with
//!   its exit status.
//! - `cp SRC DST` copies one file in or out; one side is `ID:/path`, the
//!   other a local path or `-` (standard input or output).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bora_api::{ExecEvent, ExecRequest, Isolation, NewSandbox, Sandbox};
use futures_util::StreamExt;

use crate::client::ApiClient;
use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::refs::match_short_id;

/// `bora sandboxes …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum SandboxesCommand {
    /// Create a sandbox and print its ID.
    Create(CreateArgs),
    /// List live sandboxes.
    #[command(visible_alias = "ls")]
    List {
        /// Include sandboxes that ended in the last hour (killed, timed
        /// out, failed).
        #[arg(long)]
        all: bool,
    },
    /// Show one sandbox.
    Get {
        /// The sandbox's ID (or a unique part of it).
        id: String,
    },
    /// Kill a sandbox: its processes, files and network go.
    #[command(visible_alias = "rm")]
    Kill {
        /// The sandbox's ID (or a unique part of it).
        id: String,
    },
    /// Give a sandbox more time: it is killed TIMEOUT from now.
    Timeout {
        /// The sandbox's ID (or a unique part of it).
        id: String,
        /// How long it lives from now, e.g. 30m (at most 24h).
        timeout: bora_api::Duration,
    },
    /// Freeze a sandbox, keeping its processes and files.
    Pause {
        /// The sandbox's ID (or a unique part of it).
        id: String,
    },
    /// Thaw a paused sandbox.
    Resume {
        /// The sandbox's ID (or a unique part of it).
        id: String,
    },
    /// Run a command in a sandbox, with its output and exit status.
    Exec(ExecArgs),
    /// Copy a file into or out of a sandbox.
    Cp(CpArgs),
}

/// The isolation of a new sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// A user-space kernel (gVisor's runsc), the default.
    Gvisor,
    /// Namespaces, cgroups and seccomp (runc).
    Container,
}

/// `bora sandboxes create …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateArgs {
    /// A template name or an image reference (default: base).
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// How long it lives before it is killed, e.g. 10m (default 5m, at
    /// most 24h); `bora sandboxes timeout` extends it.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<bora_api::Duration>,
    /// An environment variable of every process in it (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// A label, shown by list and get (repeatable).
    #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Let it connect to a CIDR or host name (repeatable); without any, it
    /// has no outbound network.
    #[arg(long = "allow-out", value_name = "CIDR|HOST")]
    pub allow_out: Vec<String>,
    /// How it is isolated.
    #[arg(long, value_enum, value_name = "ISOLATION")]
    pub isolation: Option<IsolationArg>,
}

/// `bora sandboxes exec …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ExecArgs {
    /// The sandbox's ID (or a unique part of it).
    pub id: String,
    /// The sandbox user to run as (default: the sandbox's default user).
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// The working directory (default: the user's home).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub cwd: Option<String>,
    /// An environment variable for this command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// The command, after `--`. One argument is a shell command line, run
    /// as it is (`-- 'make && ./run'`); several are quoted one by one, so
    /// each reaches the program as one argument (`-- python3 -c 'print(1)'`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `bora sandboxes cp …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CpArgs {
    /// What to copy: ID:/path in a sandbox, a local file, or - (standard
    /// input).
    pub src: String,
    /// Where to: ID:/path in a sandbox (ending in / puts the file in that
    /// directory), a local file or directory, or - (standard output).
    pub dst: String,
    /// The sandbox user to read or write as (default: the sandbox's
    /// default user); files written are owned by this user.
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
}

/// `KEY=VALUE`, for `--env` and `--metadata`.
fn parse_key_value(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        Some(_) => Err(format!("{input:?} has an empty key: expected KEY=VALUE")),
        None => Err(format!("{input:?} has no '=': expected KEY=VALUE")),
    }
}

/// Quotes `arg` for a POSIX shell, unless it needs none.
pub fn shell_quote(arg: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b);
    if !arg.is_empty() && arg.bytes().all(plain) {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// The shell command line `exec`'s arguments stand for: one argument as it
/// is, several quoted one by one and joined with spaces.
pub fn shell_command(args: &[String]) -> String {
    match args {
        [one] => one.clone(),
        _ => args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpPath {
    /// `-`: standard input or output.
    Stdio,
    /// A local path.
    Local(PathBuf),
    /// `ID:path`: a path in a sandbox (absolute, or relative to the user's
    /// home).
    Remote { sandbox: String, path: String },
}

impl CpPath {
    /// Reads a `cp` argument like `docker cp` does: `-`, `ID:path`, or a
    /// local path (one that starts with `/` or `.`, or has no `:` after a
    /// plain ID, is local).
    pub fn parse(side: &'static str, input: &str) -> Result<CpPath, CliError> {
        let invalid = |reason: &str| CliError::CpInvalidPath {
            side,
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(invalid("it is empty"));
        }
        if input == "-" {
            return Ok(CpPath::Stdio);
        }
        if input.starts_with(['/', '.']) {
            return Ok(CpPath::Local(PathBuf::from(input)));
        }
        match input.split_once(':') {
            Some((sandbox, path))
                if !sandbox.is_empty()
                    && sandbox
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                if path.is_empty() {
                    return Err(invalid(
                        "there is no path after ':': name the file, e.g. ID:/home/user/data.csv",
                    ));
                }
                Ok(CpPath::Remote {
                    sandbox: sandbox.to_string(),
                    path: path.to_string(),
                })
            }
            _ => Ok(CpPath::Local(PathBuf::from(input))),
        }
    }
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: SandboxesCommand) -> Result<ExitCode, CliError> {
    match cmd {
        SandboxesCommand::Create(args) => create(ctx, args).await?,
        SandboxesCommand::List { all } => {
            let sandboxes = ctx.client()?.list_sandboxes(all).await?;
            let empty = if all {
                "no sandboxes: create one with `bora sandboxes create`"
            } else {
                "no sandboxes running: create one with `bora sandboxes create` (--all lists ended ones)"
            };
            ctx.print_list(&sandboxes, empty)?;
        }
        SandboxesCommand::Get { id } => {
            let sandbox = find_sandbox(&ctx.client()?, &id).await?;
            ctx.print_one(&sandbox)?;
        }
        SandboxesCommand::Kill { id } => {
            let client = ctx.client()?;
            let id = find_sandbox(&client, &id).await?.id;
            client.kill_sandbox(&id).await?;
            ctx.print(&format!("sandbox {id} killed\n"))?;
        }
        SandboxesCommand::Timeout { id, timeout } => {
            let client = ctx.client()?;
            let id = find_sandbox(&client, &id).await?.id;
            let sandbox = client.set_sandbox_timeout(&id, timeout).await?;
            changed(
                ctx,
                &sandbox,
                &format!("now ends at {}", output::time(sandbox.end_at)),
            )?;
        }
        SandboxesCommand::Pause { id } => {
            let client = ctx.client()?;
            let id = find_sandbox(&client, &id).await?.id;
            let sandbox = client.pause_sandbox(&id).await?;
            changed(ctx, &sandbox, "paused")?;
        }
        SandboxesCommand::Resume { id } => {
            let client = ctx.client()?;
            let id = find_sandbox(&client, &id).await?.id;
            let sandbox = client.resume_sandbox(&id).await?;
            changed(ctx, &sandbox, "running")?;
        }
        SandboxesCommand::Exec(args) => return exec(ctx, args).await,
        SandboxesCommand::Cp(args) => cp(ctx, args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `sandbox ID <what>` in a table, the sandbox itself in JSON or YAML.
fn changed(ctx: &mut Ctx<'_>, sandbox: &Sandbox, what: &str) -> Result<(), CliError> {
    match ctx.format() {
        OutputFormat::Table => ctx.print(&format!("sandbox {} {what}\n", sandbox.id)),
        format => {
            let text = output::render_data(format, sandbox)?;
            ctx.print(&text)
        }
    }
}

/// Gets a sandbox by ID, or by a unique part of its ID.
async fn find_sandbox(client: &ApiClient, input: &str) -> Result<Sandbox, CliError> {
    match client.get_sandbox(input).await {
        Err(not_found) if not_found.is_not_found() => {
            let all = client.list_sandboxes(true).await?;
            match match_short_id("sandbox", input, all.items.iter().map(|s| s.id.as_str()))? {
                Some(id) => client.get_sandbox(id).await,
                None => Err(match not_found {
                    CliError::Api {
                        status,
                        code,
                        message,
                    } => CliError::Api {
                        status,
                        code,
                        message: format!(
                            "{message}; `bora sandboxes list --all` shows the sandboxes there are"
                        ),
                    },
                    other => other,
                }),
            }
        }
        other => other,
    }
}

async fn create(ctx: &mut Ctx<'_>, args: CreateArgs) -> Result<(), CliError> {
    let new = NewSandbox {
        template: args.template,
        timeout: args.timeout,
        metadata: args.metadata.into_iter().collect(),
        env: args.env.into_iter().collect(),
        isolation: args.isolation.map(|i| match i {
            IsolationArg::Gvisor => Isolation::Gvisor,
            IsolationArg::Container => Isolation::Container,
        }),
        resources: None,
        allow_out: args.allow_out,
    };
    let sandbox = ctx.client()?.create_sandbox(&new).await?;
    match ctx.format() {
        OutputFormat::Table => {
            ctx.print(&format!("{}\n", sandbox.id))?;
            ctx.note(&format!(
                "sandbox {id} is running ({template}, {isolation}, killed at {end}); run commands with `bora sandboxes exec {id} -- CMD`",
                id = sandbox.id,
                template = sandbox.template,
                isolation = sandbox.isolation,
                end = output::time(sandbox.end_at),
            ))?;
        }
        _ => ctx.print_one(&sandbox)?,
    }
    Ok(())
}

async fn exec(ctx: &mut Ctx<'_>, args: ExecArgs) -> Result<ExitCode, CliError> {
    let req = ExecRequest {
        cmd: shell_command(&args.command),
        user: args.user,
        cwd: args.cwd,
        env: args.env.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let client = ctx.client()?;
    let id = find_sandbox(&client, &args.id).await?.id;
    let (url, response) = client.exec(&id, &req).await?;
    let mut body = response.bytes_stream();
    let mut printer = ExecPrinter::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CliError::Transport {
            url: url.to_string(),
            source: e,
        })?;
        printer.feed(ctx, &url, &chunk)?;
        if printer.exit.is_some() {
            break;
        }
    }
    printer.finish(ctx, &url)
}

/// Turns exec's NDJSON stream into output and an exit status.
#[derive(Default)]
struct ExecPrinter {
    /// Bytes of a line not yet complete.
    pending: Vec<u8>,
    /// The exit event, once seen.
    exit: Option<ExecEvent>,
}

impl ExecPrinter {
    fn feed(
        &mut self,
        ctx: &mut Ctx<'_>,
        url: &reqwest::Url,
        chunk: &[u8],
    ) -> Result<(), CliError> {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(ctx, url, &line)?;
        }
        ctx.term.out.flush()?;
        ctx.term.err.flush()?;
        Ok(())
    }

    fn line(&mut self, ctx: &mut Ctx<'_>, url: &reqwest::Url, raw: &[u8]) -> Result<(), CliError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let event: ExecEvent =
            serde_json::from_slice(raw).map_err(|e| CliError::InvalidResponse {
                url: url.to_string(),
                detail: format!(
                    "a line of the exec stream is not an exec event ({e}): {}",
                    String::from_utf8_lossy(raw).trim()
                ),
            })?;
        match ctx.format() {
            OutputFormat::Table => match &event {
                ExecEvent::Stdout { data } => ctx.term.out.write_all(data)?,
                ExecEvent::Stderr { data } => ctx.term.err.write_all(data)?,
                ExecEvent::Start { .. } | ExecEvent::Exit { .. } => {}
            },
            OutputFormat::Json => {
                let json = serde_json::to_string(&event).map_err(|e| CliError::Render {
                    format: "json",
                    detail: e.to_string(),
                })?;
                writeln!(ctx.term.out, "{json}")?;
            }
            OutputFormat::Yaml => {
                let yaml = output::render_data(OutputFormat::Yaml, &event)?;
                write!(ctx.term.out, "---\n{yaml}")?;
            }
        }
        if matches!(event, ExecEvent::Exit { .. }) {
            self.exit = Some(event);
        }
        Ok(())
    }

    /// The command's exit status as ours; an error when its end is unknown.
    fn finish(mut self, ctx: &mut Ctx<'_>, url: &reqwest::Url) -> Result<ExitCode, CliError> {
        let rest = std::mem::take(&mut self.pending);
        self.line(ctx, url, &rest)?;
        ctx.term.out.flush()?;
        let Some(exit) = self.exit else {
            return Err(CliError::InvalidResponse {
                url: url.to_string(),
                detail: "the exec stream ended without the command's exit status".to_string(),
            });
        };
        let status = exit.exit_status().unwrap_or(1);
        if let ExecEvent::Exit {
            exit_code, error, ..
        } = exit
            && let Some(message) = error
        {
            if exit_code < 0 {
                return Err(CliError::ExecLost { message });
            }
            ctx.note(&format!("bora: {message}"))?;
        }
        Ok(ExitCode::from(status))
    }
}

async fn cp(ctx: &mut Ctx<'_>, args: CpArgs) -> Result<(), CliError> {
    let src = CpPath::parse("source", &args.src)?;
    let dst = CpPath::parse("destination", &args.dst)?;
    let user = args.user.as_deref();
    match (src, dst) {
        (CpPath::Remote { .. }, CpPath::Remote { .. }) => Err(CliError::CpTwoSandboxes {
            src: args.src,
            dst: args.dst,
        }),
        (CpPath::Remote { sandbox, path }, local) => {
            let client = ctx.client()?;
            let id = find_sandbox(&client, &sandbox).await?.id;
            download(ctx, &client, &id, &path, user, local).await
        }
        (local, CpPath::Remote { sandbox, path }) => {
            let (body, name) = match &local {
                CpPath::Local(file) => (open_upload(file).await?, file.file_name()),
                _ => (
                    reqwest::Body::from(ctx.term.read_input().map_err(CliError::ReadInput)?),
                    None,
                ),
            };
            let path = if path.ends_with('/') {
                let Some(name) = name else {
                    return Err(CliError::CpInvalidPath {
                        side: "destination",
                        input: args.dst,
                        reason:
                            "it ends with '/' but standard input has no file name: name the file"
                                .into(),
                    });
                };
                format!("{path}{}", name.to_string_lossy())
            } else {
                path
            };
            let client = ctx.client()?;
            let id = find_sandbox(&client, &sandbox).await?.id;
            client.upload_file(&id, &path, user, body).await?;
            if let CpPath::Local(file) = &local {
                ctx.note(&format!("copied {} to {id}:{path}", file.display()))?;
            }
            Ok(())
        }
        _ => Err(CliError::CpNoSandbox {
            src: args.src,
            dst: args.dst,
        }),
    }
}

/// A local file as an upload body, streamed from disk.
async fn open_upload(file: &Path) -> Result<reqwest::Body, CliError> {
    let read_error = |source| CliError::ReadFile {
        path: file.to_path_buf(),
        source,
    };
    let meta = tokio::fs::metadata(file).await.map_err(read_error)?;
    if meta.is_dir() {
        return Err(CliError::CpInvalidPath {
            side: "source",
            input: file.display().to_string(),
            reason: "it is a directory; `bora sandboxes cp` copies one file (archive the directory first: tar czf dir.tgz DIR)".into(),
        });
    }
    let opened = tokio::fs::File::open(file).await.map_err(read_error)?;
    Ok(reqwest::Body::from(opened))
}

/// Copies `path` of sandbox `id` to a local file or standard output.
async fn download(
    ctx: &mut Ctx<'_>,
    client: &ApiClient,
    id: &str,
    path: &str,
    user: Option<&str>,
    dst: CpPath,
) -> Result<(), CliError> {
    // Asked first, so a missing file leaves nothing behind locally.
    let (url, response) = client.download_file(id, path, user).await?;
    let mut body = response.bytes_stream();
    let transport = |e| CliError::Transport {
        url: url.to_string(),
        source: e,
    };
    let CpPath::Local(mut target) = dst else {
        while let Some(chunk) = body.next().await {
            ctx.term.out.write_all(&chunk.map_err(transport)?)?;
        }
        ctx.term.out.flush()?;
        return Ok(());
    };
    if target.is_dir() || target.as_os_str().to_string_lossy().ends_with('/') {
        let name = Path::new(path)
            .file_name()
            .ok_or_else(|| CliError::CpInvalidPath {
                side: "source",
                input: format!("{id}:{path}"),
                reason: "it names no file".into(),
            })?;
        target.push(name);
    }
    let write_error = |source| CliError::WriteFile {
        path: target.clone(),
        source,
    };
    let mut file = tokio::fs::File::create(&target)
        .await
        .map_err(write_error)?;
    let copied = async {
        use tokio::io::AsyncWriteExt;
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk.map_err(transport)?)
                .await
                .map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)
    }
    .await;
    if let Err(e) = copied {
        // No half-copied file is left looking like a whole one.
        let _ = tokio::fs::remove_file(&target).await;
        return Err(e);
    }
    ctx.note(&format!("copied {id}:{path} to {}", target.display()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{ClientArgs, ClientCommand, GlobalOpts, Terminal};

    fn parse(args: &[&str]) -> SandboxesCommand {
        let cli = ClientArgs::try_parse_from(std::iter::once("bora").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            ClientCommand::Sandboxes(cmd) => cmd,
            other => panic!("not a sandboxes command: {other:?}"),
        }
    }

    #[test]
    fn create_takes_repeated_key_values_and_a_duration() {
        let SandboxesCommand::Create(args) = parse(&[
            "sandboxes",
            "create",
            "--template",
            "python",
            "--timeout",
            "10m",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--metadata",
            "team=ml",
            "--allow-out",
            "203.0.113.0/24",
            "--allow-out",
            "pypi.org",
            "--isolation",
            "container",
        ]) else {
            panic!()
        };
        assert_eq!(args.template.as_deref(), Some("python"));
        assert_eq!(args.timeout, Some(bora_api::Duration::from_secs(600)));
        assert_eq!(
            args.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(args.metadata, [("team".into(), "ml".into())]);
        assert_eq!(args.allow_out, ["203.0.113.0/24", "pypi.org"]);
        assert_eq!(args.isolation, Some(IsolationArg::Container));

        for (bad, want) in [
            (["--env", "NOEQUALS"], "has no '='"),
            (["--env", "=v"], "has an empty key"),
            (["--timeout", "10"], "expected a number and a unit"),
            (["--isolation", "vm"], "possible values: gvisor, container"),
        ] {
            let mut argv = vec!["bora", "sandboxes", "create"];
            argv.extend(bad);
            let err = ClientArgs::try_parse_from(argv).unwrap_err().to_string();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_aliases_reach_the_same_commands() {
        for name in ["sandboxes", "sandbox", "sbx"] {
            assert_eq!(
                parse(&[name, "ls", "--all"]),
                SandboxesCommand::List { all: true }
            );
        }
        assert_eq!(
            parse(&["sbx", "timeout", "abc", "1h"]),
            SandboxesCommand::Timeout {
                id: "abc".into(),
                timeout: bora_api::Duration::from_secs(3600)
            }
        );
    }

    #[test]
    fn exec_takes_everything_after_the_id_as_the_command() {
        let SandboxesCommand::Exec(args) = parse(&[
            "sandboxes",
            "exec",
            "abc",
            "--user",
            "root",
            "-w",
            "/tmp",
            "--env",
            "K=V",
            "--",
            "python3",
            "-c",
            "print(6*7)",
            "-o",
            "json",
        ]) else {
            panic!()
        };
        assert_eq!(args.id, "abc");
        assert_eq!(args.user.as_deref(), Some("root"));
        assert_eq!(args.cwd.as_deref(), Some("/tmp"));
        assert_eq!(args.env, [("K".into(), "V".into())]);
        assert_eq!(args.command, ["python3", "-c", "print(6*7)", "-o", "json"]);
        // Without `--` too.
        let SandboxesCommand::Exec(args) = parse(&["sbx", "exec", "abc", "ls", "-la"]) else {
            panic!()
        };
        assert_eq!(args.command, ["ls", "-la"]);
        let err =
            ClientArgs::try_parse_from(["bora", "sandboxes", "exec", "abc", "--"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn commands_are_quoted_for_the_shell() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_command(&args(&["python3", "-c", "print(6*7)"])),
            "python3 -c 'print(6*7)'"
        );
        assert_eq!(
            shell_command(&args(&["echo", "it's", "", "a b", "$HOME", "~/x"])),
            r"echo 'it'\''s' '' 'a b' '$HOME' '~/x'"
        );
        assert_eq!(
            shell_command(&args(&["ls", "-la", "/tmp/a_b-c.d", "k=v,w:z@1%"])),
            "ls -la /tmp/a_b-c.d k=v,w:z@1%"
        );
        // One argument is a command line of its own.
        assert_eq!(
            shell_command(&args(&["echo hi && exit 3"])),
            "echo hi && exit 3"
        );
        // What the shell makes of a quoted argument is the argument.
        let tricky = "a'b\"c $d `e` \\f\n";
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf %s {}", shell_quote(tricky))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }

    #[test]
    fn cp_paths_are_local_remote_or_stdio() {
        let remote = |sandbox: &str, path: &str| CpPath::Remote {
            sandbox: sandbox.into(),
            path: path.into(),
        };
        let local = |p: &str| CpPath::Local(PathBuf::from(p));
        for (input, want) in [
            ("-", CpPath::Stdio),
            (
                "k3v9q2m8:/home/user/a.txt",
                remote("k3v9q2m8", "/home/user/a.txt"),
            ),
            ("abc:notes/a.txt", remote("abc", "notes/a.txt")),
            ("abc:/dir/", remote("abc", "/dir/")),
            ("./abc:def", local("./abc:def")),
            ("/tmp/abc:def", local("/tmp/abc:def")),
            ("data.csv", local("data.csv")),
            ("my file:x", local("my file:x")),
            (":x", local(":x")),
        ] {
            assert_eq!(CpPath::parse("source", input).unwrap(), want, "{input}");
        }
        let err = CpPath::parse("destination", "abc:").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid copy destination \"abc:\": there is no path after ':': name the file, e.g. ID:/home/user/data.csv"
        );
        assert!(CpPath::parse("source", "").is_err());
    }

    fn ctx(term: &mut Terminal, output: OutputFormat) -> Ctx<'_> {
        Ctx {
            global: GlobalOpts {
                output,
                url: None,
                token: None,
                data_dir: PathBuf::from("/nonexistent"),
            },
            term,
        }
    }

    fn url() -> reqwest::Url {
        "http://h:1/v1/sandboxes/abc/exec".parse().unwrap()
    }

    /// Feeds `stream` to a printer in chunks of `size` bytes.
    fn print_stream(
        stream: &str,
        size: usize,
        format: OutputFormat,
    ) -> (Result<ExitCode, CliError>, crate::Captured) {
        let (mut term, captured) = Terminal::captured("");
        let mut ctx = ctx(&mut term, format);
        let mut printer = ExecPrinter::default();
        for chunk in stream.as_bytes().chunks(size) {
            if let Err(e) = printer.feed(&mut ctx, &url(), chunk) {
                return (Err(e), captured);
            }
        }
        (printer.finish(&mut ctx, &url()), captured)
    }

    #[test]
    fn exec_output_goes_to_our_streams_and_the_status_is_ours() {
        let stream = concat!(
            r#"{"type":"start","pid":12}"#,
            "\n",
            r#"{"type":"stdout","data":"aGVsbG8K"}"#,
            "\n\n",
            r#"{"type":"stderr","data":"b29wcwo="}"#,
            "\n",
            r#"{"type":"stdout","data":"NDIK"}"#,
            "\n",
            r#"{"type":"exit","exit_code":3,"signal":null,"error":null}"#,
        );
        for size in [1, 7, stream.len()] {
            let (result, out) = print_stream(stream, size, OutputFormat::Table);
            assert_eq!(result.unwrap(), ExitCode::from(3));
            assert_eq!(out.stdout(), "hello\n42\n");
            assert_eq!(out.stderr(), "oops\n");
        }
        let (result, out) = print_stream(stream, 5, OutputFormat::Json);
        assert_eq!(result.unwrap(), ExitCode::from(3));
        assert_eq!(out.stdout().lines().count(), 5);
        assert!(out.stdout().starts_with(r#"{"type":"start","pid":12}"#));
    }

    #[test]
    fn an_exec_stream_without_a_known_end_is_an_error() {
        let lost = concat!(
            r#"{"type":"start","pid":12}"#,
            "\n",
            r#"{"type":"exit","exit_code":-1,"signal":null,"error":"sandbox abc: cannot reach the sandbox's agent"}"#,
            "\n"
        );
        let (result, _) = print_stream(lost, 64, OutputFormat::Table);
        assert_eq!(
            result.unwrap_err().to_string(),
            "sandbox abc: cannot reach the sandbox's agent (the command's exit status is unknown)"
        );
        let (result, _) = print_stream("{\"type\":\"start\",\"pid\":1}\n", 64, OutputFormat::Table);
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("ended without the command's exit status")
        );
        let (result, _) = print_stream("<html>\n", 64, OutputFormat::Table);
        assert!(
            matches!(result, Err(CliError::InvalidResponse { .. })),
            "{result:?}"
        );
        let killed = r#"{"type":"exit","exit_code":137,"signal":9,"error":null}"#;
        let (result, _) = print_stream(killed, 64, OutputFormat::Table);
        assert_eq!(result.unwrap(), ExitCode::from(137));
    }
}
