//! The processes envd started: their table, their output fan-out, their
//! input, signals and PTY size.
//!
//! A process lives independently of the stream that started it: a client
//! may disconnect and re-attach (`Connect`) later, several clients may
//! follow one process, and output produced while nobody follows is dropped
//! (as E2B's envd does). Each process has one pump task that reads its
//! output and hands every chunk to every subscriber in order, waiting for
//! each — so a slow follower slows the process's output (like a terminal)
//! instead of growing envd's memory — and, after the exit, sends the end
//! event and removes the process from the table.

pub mod spawn;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::connect::{Code, RpcError};
use crate::proto::process::process_event::EndEvent;
use crate::proto::process::process_event::data_event::Output;
use crate::proto::process::process_selector::Selector;
use crate::proto::process::{ProcessConfig, ProcessEvent, ProcessInfo, ProcessSelector};
use crate::reaper::{ExitInfo, Reaper};
use spawn::{SpawnSpec, Stdio3};

/// Output read per chunk.
const CHUNK: usize = 32 * 1024;
/// How long output may keep flowing after the process exited, from
/// descendants that still hold its stdout (`cmd &`), before the stream ends.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Events buffered per subscriber before the pump waits for it.
const SUBSCRIBER_BUFFER: usize = 64;

pub type Events = mpsc::Receiver<ProcessEvent>;

/// The table of running processes. One per envd.
pub struct ProcessManager {
    reaper: Reaper,
    table: Mutex<HashMap<u32, Arc<Process>>>,
}

/// One running process.
pub struct Process {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    input: tokio::sync::Mutex<Input>,
    pty: Option<Arc<AsyncFd<File>>>,
    subscribers: Mutex<Subscribers>,
}

enum Input {
    Pipe(pipe::Sender),
    Pty(Arc<AsyncFd<File>>),
    /// Started without stdin.
    None,
    /// Closed by `CloseStdin`.
    Closed,
}

#[derive(Default)]
struct Subscribers {
    list: Vec<mpsc::Sender<ProcessEvent>>,
    /// The end event was sent; nobody may subscribe any more.
    ended: bool,
}

impl ProcessManager {
    pub fn new(reaper: Reaper) -> Arc<Self> {
        Arc::new(Self {
            reaper,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Process>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a process and subscribes to it before any of its output can
    /// be read, so the starter sees all of it.
    pub fn start(
        self: &Arc<Self>,
        spec: SpawnSpec,
        config: ProcessConfig,
        tag: Option<String>,
    ) -> Result<(Arc<Process>, Events), RpcError> {
        if let Some(tag) = &tag
            && self.table().values().any(|p| p.tag.as_ref() == Some(tag))
        {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("a process tagged {tag:?} is already running"),
            ));
        }
        let spawned = spawn::spawn(&self.reaper, &spec).map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    Code::InvalidArgument
                }
                _ => Code::Internal,
            };
            RpcError::new(
                code,
                format!(
                    "starting {:?} as user {:?} in {}: {e}",
                    spec.cmd,
                    spec.user.name,
                    spec.cwd.display()
                ),
            )
        })?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let (input, pty, readers) = match spawned.stdio {
            Stdio3::Pipes {
                stdin,
                stdout,
                stderr,
            } => (
                stdin.map_or(Input::None, Input::Pipe),
                None,
                Readers::Pipes(stdout, stderr),
            ),
            Stdio3::Pty { master } => {
                let master = Arc::new(master);
                (
                    Input::Pty(master.clone()),
                    Some(master.clone()),
                    Readers::Pty(master),
                )
            }
        };
        let process = Arc::new(Process {
            pid: spawned.pid,
            tag,
            config,
            input: tokio::sync::Mutex::new(input),
            pty,
            subscribers: Mutex::new(Subscribers {
                list: vec![tx],
                ended: false,
            }),
        });
        self.table().insert(process.pid, process.clone());
        tracing::info!(pid = process.pid, cmd = %spec.cmd, user = %spec.user.name, "process started");
        let manager = self.clone();
        let p = process.clone();
        tokio::spawn(async move {
            let end = pump(&p, readers, spawned.exit).await;
            manager.table().remove(&p.pid);
            p.finish(end).await;
        });
        Ok((process, rx))
    }

    /// The process a selector names.
    pub fn find(&self, selector: Option<&ProcessSelector>) -> Result<Arc<Process>, RpcError> {
        let table = self.table();
        match selector.and_then(|s| s.selector.as_ref()) {
            Some(Selector::Pid(pid)) => table
                .get(pid)
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("process with pid {pid} not found"))),
            Some(Selector::Tag(tag)) => table
                .values()
                .find(|p| p.tag.as_ref() == Some(tag))
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("process with tag {tag:?} not found"))),
            None => Err(RpcError::invalid_argument(
                "process selector is missing: set pid or tag",
            )),
        }
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut list: Vec<ProcessInfo> = self
            .table()
            .values()
            .map(|p| ProcessInfo {
                config: Some(p.config.clone()),
                pid: p.pid,
                tag: p.tag.clone(),
            })
            .collect();
        list.sort_by_key(|p| p.pid);
        list
    }

    /// Sends `signal` to every process, then waits up to `grace` for them
    /// to end; whatever is left gets SIGKILL.
    pub async fn shutdown(&self, grace: Duration) {
        let all: Vec<Arc<Process>> = self.table().values().cloned().collect();
        if all.is_empty() {
            return;
        }
        tracing::info!(processes = all.len(), "forwarding SIGTERM to processes");
        for p in &all {
            let _ = p.signal(Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.table().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for p in self.table().values() {
            let _ = p.signal(Signal::SIGKILL);
        }
    }
}

enum Readers {
    Pipes(pipe::Receiver, pipe::Receiver),
    Pty(Arc<AsyncFd<File>>),
}

/// Reads the process's output and fans it out until the process has exited
/// and its output is drained; returns the end event.
async fn pump(
    process: &Process,
    readers: Readers,
    exit: tokio::sync::oneshot::Receiver<ExitInfo>,
) -> EndEvent {
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(8);
    let tasks = match readers {
        Readers::Pipes(stdout, stderr) => vec![
            tokio::spawn(read_pipe(stdout, out_tx.clone(), Output::Stdout)),
            tokio::spawn(read_pipe(stderr, out_tx.clone(), Output::Stderr)),
        ],
        Readers::Pty(master) => vec![tokio::spawn(read_pty(master, out_tx.clone()))],
    };
    drop(out_tx);

    let mut exit = exit;
    let info = loop {
        tokio::select! {
            chunk = out_rx.recv() => match chunk {
                Some(chunk) => process.broadcast(ProcessEvent::data(chunk)).await,
                // Output closed; now just wait for the exit.
                None => break exit.await.unwrap_or(ExitInfo::Exited(-1)),
            },
            info = &mut exit => {
                let info = info.unwrap_or(ExitInfo::Exited(-1));
                let drain = tokio::time::sleep(DRAIN_AFTER_EXIT);
                tokio::pin!(drain);
                loop {
                    tokio::select! {
                        chunk = out_rx.recv() => match chunk {
                            Some(chunk) => process.broadcast(ProcessEvent::data(chunk)).await,
                            None => break,
                        },
                        _ = &mut drain => break,
                    }
                }
                break info;
            }
        }
    };
    for t in tasks {
        t.abort();
    }
    end_event(info)
}

async fn read_pipe(
    mut pipe: pipe::Receiver,
    tx: mpsc::Sender<Output>,
    wrap: fn(Vec<u8>) -> Output,
) {
    read_into(&mut pipe, tx, wrap).await
}

async fn read_into<R: AsyncRead + Unpin>(
    r: &mut R,
    tx: mpsc::Sender<Output>,
    wrap: fn(Vec<u8>) -> Output,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn read_pty(master: Arc<AsyncFd<File>>, tx: mpsc::Sender<Output>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let Ok(mut guard) = master.readable().await else {
            return;
        };
        match guard.try_io(|fd| fd.get_ref().read(&mut buf)) {
            // EIO: every slave fd is closed — the PTY's end of file.
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if tx.send(Output::Pty(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(_would_block) => continue,
        }
    }
}

/// The end event as E2B's envd reports it (Go's `ProcessState` wording):
/// a normal exit carries its code; a signal is exit code -1, not exited.
pub fn end_event(info: ExitInfo) -> EndEvent {
    match info {
        ExitInfo::Exited(code) => EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        },
        ExitInfo::Signaled(sig) => EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(sig)),
            error: None,
        },
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        1 => "hangup".into(),
        2 => "interrupt".into(),
        3 => "quit".into(),
        6 => "aborted".into(),
        9 => "killed".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        15 => "terminated".into(),
        n => format!("signal {n}"),
    }
}

impl Process {
    fn subscribers(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the process from now on; `None` if it has already ended.
    pub fn subscribe(&self) -> Option<Events> {
        let mut subs = self.subscribers();
        if subs.ended {
            return None;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        subs.list.push(tx);
        Some(rx)
    }

    async fn broadcast(&self, event: ProcessEvent) {
        let list = self.subscribers().list.clone();
        let mut gone = false;
        for tx in &list {
            gone |= tx.send(event.clone()).await.is_err();
        }
        if gone {
            self.subscribers().list.retain(|tx| !tx.is_closed());
        }
    }

    async fn finish(&self, end: EndEvent) {
        let list = {
            let mut subs = self.subscribers();
            subs.ended = true;
            std::mem::take(&mut subs.list)
        };
        tracing::info!(pid = self.pid, status = %end.status, "process ended");
        let event = ProcessEvent::end(end);
        for tx in list {
            let _ = tx.send(event.clone()).await;
        }
    }

    /// Signals the process's whole process group (it leads its own
    /// session), so `bash -c 'a && b'` stops with its children.
    pub fn signal(&self, sig: Signal) -> Result<(), RpcError> {
        let pid = Pid::from_raw(self.pid as i32);
        killpg(pid, sig)
            .or_else(|_| kill(pid, sig))
            .map_err(|e| RpcError::internal(format!("sending {sig} to pid {}: {e}", self.pid)))
    }

    /// Writes to stdin (or the PTY).
    pub async fn write_input(&self, data: &[u8], pty: bool) -> Result<(), RpcError> {
        let mut input = self.input.lock().await;
        let result = match (&mut *input, pty) {
            (Input::Pipe(p), false) => p.write_all(data).await,
            (Input::Pty(master), _) => write_pty(master, data).await,
            (Input::Pipe(_), true) => {
                return Err(RpcError::new(
                    Code::FailedPrecondition,
                    format!("process {} has no PTY; send stdin instead", self.pid),
                ));
            }
            (Input::None, _) => {
                return Err(RpcError::new(
                    Code::FailedPrecondition,
                    format!(
                        "process {} was started without stdin (start it with stdin: true)",
                        self.pid
                    ),
                ));
            }
            (Input::Closed, _) => {
                return Err(RpcError::new(
                    Code::FailedPrecondition,
                    format!("stdin of process {} is closed", self.pid),
                ));
            }
        };
        result.map_err(|e| {
            RpcError::new(
                Code::FailedPrecondition,
                format!("writing to process {}: {e}", self.pid),
            )
        })
    }

    /// Closes stdin, so the process reads end of file.
    pub async fn close_stdin(&self) -> Result<(), RpcError> {
        let mut input = self.input.lock().await;
        match &*input {
            Input::Pty(_) => Err(RpcError::new(
                Code::FailedPrecondition,
                format!(
                    "process {} runs on a PTY, which has no stdin to close: send Ctrl-D (0x04) instead",
                    self.pid
                ),
            )),
            _ => {
                *input = Input::Closed;
                Ok(())
            }
        }
    }

    /// Resizes the PTY.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), RpcError> {
        let Some(master) = &self.pty else {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                format!("process {} has no PTY to resize", self.pid),
            ));
        };
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(master.get_ref(), size).map_err(|e| {
            RpcError::internal(format!("resizing the PTY of process {}: {e}", self.pid))
        })
    }
}

async fn write_pty(master: &AsyncFd<File>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| fd.get_ref().write(data)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_read_like_go_process_states() {
        let e = end_event(ExitInfo::Exited(3));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (3, true, "exit status 3")
        );
        let e = end_event(ExitInfo::Signaled(9));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
        assert_eq!(
            end_event(ExitInfo::Signaled(15)).status,
            "signal: terminated"
        );
        assert_eq!(
            end_event(ExitInfo::Signaled(31)).status,
            "signal: signal 31"
        );
    }
}
