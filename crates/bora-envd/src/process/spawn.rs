//! Starting one process as a sandbox user: its own session (so a signal
//! reaches its whole process group), the user's uid, gid and supplementary
//! groups, and either pipes or a PTY as its stdio.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Uid};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::reaper::{ExitInfo, Reaper};
use crate::users::User;

/// Everything needed to start a process, fully resolved.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub cmd: String,
    pub args: Vec<String>,
    /// The complete environment (nothing is inherited).
    pub env: HashMap<String, String>,
    pub cwd: PathBuf,
    pub user: User,
    /// Give the process a stdin pipe (otherwise stdin is `/dev/null`).
    pub stdin: bool,
    /// Run it on a PTY of this size (cols, rows) instead of pipes.
    pub pty: Option<(u16, u16)>,
}

/// The parent's ends of the process's stdio.
pub enum Stdio3 {
    Pipes {
        stdin: Option<pipe::Sender>,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    Pty {
        master: AsyncFd<File>,
    },
}

pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<ExitInfo>,
    pub stdio: Stdio3,
}

/// Credentials the child switches to between fork and exec; `None` when
/// envd already runs as that user (e.g. an unprivileged test run).
struct Credentials {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

pub fn spawn(reaper: &Reaper, spec: &SpawnSpec) -> io::Result<Spawned> {
    let mut cmd = Command::new(&spec.cmd);
    cmd.args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd);

    let creds = if Uid::effective().as_raw() == spec.user.uid
        && Gid::effective().as_raw() == spec.user.gid
    {
        None
    } else {
        Some(Credentials {
            uid: Uid::from_raw(spec.user.uid),
            gid: Gid::from_raw(spec.user.gid),
            groups: spec.user.groups.iter().map(|g| Gid::from_raw(*g)).collect(),
        })
    };

    let mut master = None;
    if let Some((cols, rows)) = spec.pty {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).map_err(io::Error::from)?;
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        master = Some(pty.master);
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    set_child_setup(&mut cmd, creds, master.is_some());

    let (mut child, exit) = reaper.spawn(&mut cmd)?;
    // The Command still holds the parent's copies of the PTY slave; the
    // master only sees EOF once every copy is closed.
    drop(cmd);
    let pid = child.id();
    let stdio = match master {
        Some(master) => Stdio3::Pty {
            master: async_master(master)?,
        },
        None => Stdio3::Pipes {
            stdin: child
                .stdin
                .take()
                .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose()?,
            stdout: pipe::Receiver::from_owned_fd(OwnedFd::from(
                child
                    .stdout
                    .take()
                    .ok_or_else(|| io::Error::other("no stdout pipe"))?,
            ))?,
            stderr: pipe::Receiver::from_owned_fd(OwnedFd::from(
                child
                    .stderr
                    .take()
                    .ok_or_else(|| io::Error::other("no stderr pipe"))?,
            ))?,
        },
    };
    Ok(Spawned { pid, exit, stdio })
}

/// Registers the PTY master with the runtime, non-blocking.
#[allow(unsafe_code)]
fn async_master(master: OwnedFd) -> io::Result<AsyncFd<File>> {
    let flags = rustix::fs::fcntl_getfl(&master)?;
    rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK)?;
    // SAFETY: `register` requires that the fd stay open and unreplaced
    // while registered; the `File` owns it (moved in from the `OwnedFd`),
    // and the `AsyncFd` owns the `File` and deregisters before closing it.
    unsafe { AsyncFd::register(File::from(master)) }.map_err(io::Error::from)
}

/// Arranges what the child does between fork and exec: a new session (and
/// with it a process group whose id is its pid), the PTY as controlling
/// terminal, then the user's groups, gid and uid — in that order, because
/// after `setuid` the others are no longer permitted.
#[allow(unsafe_code)]
fn set_child_setup(cmd: &mut Command, creds: Option<Credentials>, pty: bool) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It calls nothing but thin
    // syscall wrappers (setsid, ioctl, setgroups, setgid, setuid) on values
    // prepared before the fork; it neither allocates nor takes locks. std
    // itself makes the same calls at the same point for `CommandExt::uid`.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if pty {
                rustix::process::ioctl_tiocsctty(std::io::stdin())?;
            }
            if let Some(c) = &creds {
                nix::unistd::setgroups(&c.groups)?;
                nix::unistd::setgid(c.gid)?;
                nix::unistd::setuid(c.uid)?;
            }
            Ok(())
        });
    }
}
