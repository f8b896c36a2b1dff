//! `process.Process`: Start, Connect, List, SendInput, StreamInput,
//! SendSignal, CloseStdin, Update.

use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use nix::sys::signal::Signal as NixSignal;
use serde::Serialize;

use super::{Ctx, client_stream, not_implemented, server_stream, unary};
use crate::connect::{Body, Code, RpcError, StreamReader, StreamSender};
use crate::paths;
use crate::process::Events;
use crate::process::spawn::SpawnSpec;
use crate::proto::process::process_event::Event;
use crate::proto::process::process_input::Input;
use crate::proto::process::stream_input_request::Event as InputEvent;
use crate::proto::process::*;

/// A PTY without a size gets the classic terminal size.
const DEFAULT_PTY_SIZE: (u16, u16) = (80, 24);

pub async fn route(ctx: Ctx, method: &str, body: Incoming) -> Response<Body> {
    match method {
        "Start" => server_stream(ctx, body, start).await,
        "Connect" => server_stream(ctx, body, connect).await,
        "List" => unary(ctx, body, list).await,
        "SendInput" => unary(ctx, body, send_input).await,
        "StreamInput" => client_stream(ctx, body, stream_input).await,
        "SendSignal" => unary(ctx, body, send_signal).await,
        "CloseStdin" => unary(ctx, body, close_stdin).await,
        "Update" => unary(ctx, body, update).await,
        _ => not_implemented(&format!("/process.Process/{method}")),
    }
}

fn spec(ctx: &Ctx, req: &StartRequest) -> Result<SpawnSpec, RpcError> {
    let config = req
        .process
        .as_ref()
        .ok_or_else(|| RpcError::invalid_argument("process config is missing"))?;
    if config.cmd.is_empty() {
        return Err(RpcError::invalid_argument("process cmd is empty"));
    }
    let user = ctx.user()?;
    let settings = ctx.shared.settings();
    let cwd = match config.cwd.as_deref() {
        Some(cwd) if !cwd.is_empty() => paths::resolve(cwd, &user.home)?,
        _ => match &settings.default_workdir {
            Some(dir) if dir.is_dir() => dir.clone(),
            _ => user.home_or_root().to_path_buf(),
        },
    };
    if !cwd.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "cwd {} does not exist or is not a directory",
            cwd.display()
        )));
    }
    let mut env = ctx.shared.process_env(&user, &config.envs);
    let pty = req.pty.as_ref().map(|p| match p.size {
        Some(s) if s.cols > 0 && s.rows > 0 => (
            s.cols.min(u16::MAX as u32) as u16,
            s.rows.min(u16::MAX as u32) as u16,
        ),
        _ => DEFAULT_PTY_SIZE,
    });
    if pty.is_some() {
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
    }
    Ok(SpawnSpec {
        cmd: config.cmd.clone(),
        args: config.args.clone(),
        env,
        cwd,
        user,
        // Older SDKs do not send the field and always had stdin.
        stdin: req.stdin.unwrap_or(true),
        pty,
    })
}

async fn start(ctx: Ctx, req: StartRequest, sender: StreamSender) {
    let started = spec(&ctx, &req).and_then(|spec| {
        let config = req.process.clone().unwrap_or_default();
        ctx.shared.processes.start(spec, config, req.tag.clone())
    });
    match started {
        Ok((process, events)) => {
            follow(&ctx, sender, process.pid, events, |event| StartResponse {
                event: Some(event),
            })
            .await
        }
        Err(e) => sender.finish(Some(e)).await,
    }
}

async fn connect(ctx: Ctx, req: ConnectRequest, sender: StreamSender) {
    let followed = ctx
        .shared
        .processes
        .find(req.process.as_ref())
        .and_then(|p| {
            p.subscribe()
                .map(|events| (p.pid, events))
                .ok_or_else(|| RpcError::not_found(format!("process {} has already ended", p.pid)))
        });
    match followed {
        Ok((pid, events)) => {
            follow(&ctx, sender, pid, events, |event| ConnectResponse {
                event: Some(event),
            })
            .await
        }
        Err(e) => sender.finish(Some(e)).await,
    }
}

/// Streams a process's events: the start event, output, keepalives while
/// idle, and the end; or a deadline error when `Connect-Timeout-Ms` runs
/// out first. The process keeps running either way.
async fn follow<M>(
    ctx: &Ctx,
    sender: StreamSender,
    pid: u32,
    mut events: Events,
    wrap: impl Fn(ProcessEvent) -> M,
) where
    M: prost::Message + Serialize,
{
    if sender.send(&wrap(ProcessEvent::start(pid))).await.is_err() {
        return;
    }
    let keepalive = ctx.keepalive();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let deadline = tokio::time::sleep(ctx.call.timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    let end = matches!(event.event, Some(Event::End(_)));
                    if sender.send(&wrap(event)).await.is_err() {
                        return;
                    }
                    if end {
                        return sender.finish(None).await;
                    }
                }
                None => {
                    return sender
                        .finish(Some(RpcError::internal(format!(
                            "the event stream of process {pid} ended without an end event"
                        ))))
                        .await;
                }
            },
            _ = ticks.tick() => {
                if sender.send(&wrap(ProcessEvent::keepalive())).await.is_err() {
                    return;
                }
            }
            _ = &mut deadline, if ctx.call.timeout.is_some() => {
                return sender
                    .finish(Some(RpcError::new(
                        Code::DeadlineExceeded,
                        format!("stream of process {pid} reached its Connect-Timeout-Ms; the process keeps running"),
                    )))
                    .await;
            }
            _ = sender.closed() => return,
        }
    }
}

async fn list(ctx: Ctx, _req: ListRequest) -> Result<ListResponse, RpcError> {
    Ok(ListResponse {
        processes: ctx.shared.processes.list(),
    })
}

async fn send_input(ctx: Ctx, req: SendInputRequest) -> Result<SendInputResponse, RpcError> {
    let process = ctx.shared.processes.find(req.process.as_ref())?;
    write(&process, req.input).await?;
    Ok(SendInputResponse {})
}

async fn write(
    process: &crate::process::Process,
    input: Option<ProcessInput>,
) -> Result<(), RpcError> {
    match input.and_then(|i| i.input) {
        Some(Input::Stdin(data)) => process.write_input(&data, false).await,
        Some(Input::Pty(data)) => process.write_input(&data, true).await,
        None => Err(RpcError::invalid_argument(
            "input is missing: set stdin or pty",
        )),
    }
}

/// The client-streaming input: a start naming the process, then data in
/// order, keepalives ignored.
async fn stream_input(ctx: Ctx, mut reader: StreamReader) -> Result<StreamInputResponse, RpcError> {
    let codec = ctx.call.codec;
    let first: StreamInputRequest = reader.next(codec).await?.ok_or_else(|| {
        RpcError::invalid_argument("input stream is empty: expected a start event")
    })?;
    let selector = match first.event {
        Some(InputEvent::Start(start)) => start.process,
        _ => {
            return Err(RpcError::invalid_argument(
                "the first message of an input stream must be a start event",
            ));
        }
    };
    let process = ctx.shared.processes.find(selector.as_ref())?;
    while let Some(msg) = reader.next::<StreamInputRequest>(codec).await? {
        match msg.event {
            Some(InputEvent::Data(data)) => write(&process, data.input).await?,
            Some(InputEvent::Keepalive(_)) | None => {}
            Some(InputEvent::Start(_)) => {
                return Err(RpcError::invalid_argument(
                    "an input stream has exactly one start event",
                ));
            }
        }
    }
    Ok(StreamInputResponse {})
}

async fn send_signal(ctx: Ctx, req: SendSignalRequest) -> Result<SendSignalResponse, RpcError> {
    let process = ctx.shared.processes.find(req.process.as_ref())?;
    let sig = match Signal::try_from(req.signal) {
        Ok(Signal::Sigterm) => NixSignal::SIGTERM,
        Ok(Signal::Sigkill) => NixSignal::SIGKILL,
        _ => {
            return Err(RpcError::invalid_argument(format!(
                "unsupported signal {}: use SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                req.signal
            )));
        }
    };
    process.signal(sig)?;
    Ok(SendSignalResponse {})
}

async fn close_stdin(ctx: Ctx, req: CloseStdinRequest) -> Result<CloseStdinResponse, RpcError> {
    let process = ctx.shared.processes.find(req.process.as_ref())?;
    process.close_stdin().await?;
    Ok(CloseStdinResponse {})
}

async fn update(ctx: Ctx, req: UpdateRequest) -> Result<UpdateResponse, RpcError> {
    let process = ctx.shared.processes.find(req.process.as_ref())?;
    if let Some(size) = req.pty.and_then(|p| p.size) {
        process.resize(
            size.cols.min(u16::MAX as u32) as u16,
            size.rows.min(u16::MAX as u32) as u16,
        )?;
    }
    Ok(UpdateResponse {})
}
