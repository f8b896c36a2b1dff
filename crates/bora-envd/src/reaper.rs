//! The one owner of `waitpid`.
//!
//! A process's exit status can be collected exactly once, so two waiters in
//! one process steal from each other: `tokio::process::Child::wait` (which
//! waits for its own pid) loses its child to a `waitpid(-1)` loop, and the
//! loop is what PID 1 needs to reap orphans. envd therefore spawns with
//! `std::process::Command` and never calls `Child::wait`; every wait goes
//! through the [`Reaper`]:
//!
//! - [`Reaper::spawn`] forks with the table of watched pids locked and
//!   registers the child before unlocking, so the child cannot be reaped —
//!   and its status lost — between the fork and its registration;
//! - on every `SIGCHLD` the reaper, holding the same lock, collects statuses
//!   and hands each registered pid's status to its waiter.
//!
//! In `reap_orphans` mode (PID 1, or a subreaper) it collects with
//! `waitpid(-1, WNOHANG)` until nothing is left, discarding the statuses of
//! pids it did not start (orphans re-parented to it). Otherwise — envd
//! embedded in a bigger process such as a test binary, whose other children
//! are not envd's to reap — it only waits for the pids it registered.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitInfo {
    fn from_status(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(ExitInfo::Exited(code)),
            WaitStatus::Signaled(_, sig, _) => Some(ExitInfo::Signaled(sig as i32)),
            _ => None,
        }
    }
}

type Waiters = HashMap<i32, oneshot::Sender<ExitInfo>>;

/// See the module docs. Cheap to clone; the `SIGCHLD` task stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

struct Inner {
    waiters: Mutex<Waiters>,
    reap_orphans: bool,
}

impl Reaper {
    /// Starts the reaper. Must be called inside a tokio runtime, before
    /// anything is spawned (so no `SIGCHLD` goes unnoticed).
    pub fn start(reap_orphans: bool) -> io::Result<Reaper> {
        let mut sigchld = signal(SignalKind::child())?;
        let inner = Arc::new(Inner {
            waiters: Mutex::new(HashMap::new()),
            reap_orphans,
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                match weak.upgrade() {
                    Some(inner) => inner.reap(),
                    None => break,
                }
            }
        });
        // Orphans may have exited before envd started listening.
        inner.reap();
        Ok(Reaper { inner })
    }

    /// Spawns `cmd` and registers its pid; the receiver gets its exit
    /// status. Never call `wait` on the returned child.
    pub fn spawn(
        &self,
        cmd: &mut std::process::Command,
    ) -> io::Result<(std::process::Child, oneshot::Receiver<ExitInfo>)> {
        let mut waiters = self.inner.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// How many spawned processes have not been reaped yet.
    pub fn pending(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so poisoning is
        // ignored.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reap(&self) {
        let mut waiters = self.lock();
        if self.reap_orphans {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(status) => {
                        let Some(pid) = status.pid() else { continue };
                        let Some(info) = ExitInfo::from_status(status) else {
                            continue;
                        };
                        match waiters.remove(&pid.as_raw()) {
                            Some(tx) => {
                                let _ = tx.send(info);
                            }
                            None => tracing::debug!(pid = pid.as_raw(), ?info, "reaped orphan"),
                        }
                    }
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "waitpid failed");
                        break;
                    }
                }
            }
        } else {
            let pids: Vec<i32> = waiters.keys().copied().collect();
            for pid in pids {
                let info = match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(status) => match ExitInfo::from_status(status) {
                        Some(info) => info,
                        None => continue, // still alive
                    },
                    Err(e) => {
                        // Someone else reaped it: nobody will ever know how
                        // it ended, but its waiter must not hang.
                        tracing::warn!(pid, error = %e, "lost the exit status of a process");
                        ExitInfo::Exited(-1)
                    }
                };
                if let Some(tx) = waiters.remove(&pid) {
                    let _ = tx.send(info);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[tokio::test]
    async fn delivers_exit_codes_and_signals() {
        let reaper = Reaper::start(false).unwrap();
        let (_c, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "exit 3"]))
            .unwrap();
        assert_eq!(rx.await.unwrap(), ExitInfo::Exited(3));
        let (c, rx) = reaper.spawn(Command::new("sleep").arg("30")).unwrap();
        nix::sys::signal::kill(
            Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(rx.await.unwrap(), ExitInfo::Signaled(9));
        assert_eq!(reaper.pending(), 0);
    }

    #[tokio::test]
    async fn leaves_other_children_alone() {
        let _reaper = Reaper::start(false).unwrap();
        // A child this reaper did not start must still be waitable by its
        // owner even though its SIGCHLD reaches the reaper.
        let out = Command::new("sh").args(["-c", "exit 7"]).output().unwrap();
        assert_eq!(out.status.code(), Some(7));
    }
}
