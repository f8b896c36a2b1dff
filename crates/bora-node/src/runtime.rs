//! OCI runtime drivers. Every runtime speaks the same command line
//! (`run`, `state`, `kill`, `delete`), so one driver serves runc, runsc and
//! any other OCI runtime binary configured for an isolation level.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bora_api::Isolation;
use tokio::process::Command;

use crate::NodeError;

/// Which binary runs each isolation level.
#[derive(Debug, Clone)]
pub struct RuntimeBinaries {
    /// `isolation: container`; runc by default (crun or youki plug in here).
    pub container: PathBuf,
    /// `isolation: gvisor`; gVisor's runsc.
    pub gvisor: PathBuf,
}

impl Default for RuntimeBinaries {
    fn default() -> Self {
        Self {
            container: "runc".into(),
            gvisor: "runsc".into(),
        }
    }
}

/// One runtime with its state directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub isolation: Isolation,
    pub binary: PathBuf,
    /// The runtime's `--root`: its own record of containers, per data dir.
    pub root: PathBuf,
    /// Where container `id`'s network namespace is: gVisor is driven from
    /// inside it.
    pub netns: fn(&str) -> PathBuf,
    /// More global flags for `run` under gVisor (e.g. `--overlay2=none`).
    pub gvisor_run_flags: Vec<String>,
}

impl Runtime {
    pub fn new(isolation: Isolation, binaries: &RuntimeBinaries, runtime_dir: &Path) -> Self {
        let (binary, sub) = match isolation {
            Isolation::Container => (binaries.container.clone(), "container"),
            Isolation::Gvisor => (binaries.gvisor.clone(), "gvisor"),
        };
        Self {
            isolation,
            binary,
            root: runtime_dir.join(sub),
            netns: crate::network::netns_path,
            gvisor_run_flags: Vec::new(),
        }
    }

    fn base(&self) -> Vec<String> {
        vec![
            self.binary.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
        ]
    }

    /// The command line the shim runs: the runtime in the foreground, so the
    /// shim sees the container's output and exit status.
    ///
    /// gVisor's own network stack refuses to start in the host's namespace
    /// here, so runsc starts inside the instance's namespace with
    /// `--network=host`, where "host" is that namespace alone.
    pub fn run_argv(&self, id: &str, bundle: &Path, netns: &Path) -> Vec<String> {
        let mut argv = Vec::new();
        if self.isolation == Isolation::Gvisor {
            argv.extend(["nsenter".to_string(), format!("--net={}", netns.display())]);
        }
        argv.extend(self.base());
        if self.isolation == Isolation::Gvisor {
            argv.push("--network=host".into());
            argv.extend(self.gvisor_run_flags.iter().cloned());
        }
        argv.extend([
            "run".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            id.to_string(),
        ]);
        argv
    }

    /// The command line that creates container `id` without starting it:
    /// the runtime sets everything up, leaves the container's first process
    /// waiting for [`Runtime::start`], writes its pid to `pid_file` and
    /// exits. Only for `isolation: container` (runc): gVisor instances are
    /// always `run`.
    pub fn create_argv(&self, id: &str, bundle: &Path, pid_file: &Path) -> Vec<String> {
        let mut argv = self.base();
        argv.extend([
            "create".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            "--pid-file".into(),
            pid_file.display().to_string(),
            id.to_string(),
        ]);
        argv
    }

    /// Starts a created container's process.
    pub async fn start(&self, id: &str) -> Result<(), NodeError> {
        let out = self.exec(id, &["start", id]).await?;
        if out.status.success() {
            return Ok(());
        }
        Err(NodeError::Command {
            command: format!("{} start {id}", self.binary.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Runs a runtime subcommand about container `id`.
    ///
    /// gVisor's sandbox answers on an abstract unix socket, which lives in
    /// a network namespace: runsc must be asked from inside the instance's
    /// namespace, where the sandbox was started.
    async fn exec(&self, id: &str, args: &[&str]) -> Result<std::process::Output, NodeError> {
        let mut argv = Vec::new();
        let netns = (self.netns)(id);
        if self.isolation == Isolation::Gvisor && netns.exists() {
            argv.extend(["nsenter".to_string(), format!("--net={}", netns.display())]);
        }
        argv.extend(self.base());
        let what = format!("{} {}", self.binary.display(), args.join(" "));
        Command::new(&argv[0])
            .args(&argv[1..])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => NodeError::MissingProgram {
                    program: self.binary.display().to_string(),
                    path: self.binary.display().to_string(),
                    package: match self.isolation {
                        Isolation::Container => "runc",
                        Isolation::Gvisor => "runsc",
                    },
                },
                _ => NodeError::Command {
                    command: what,
                    detail: e.to_string(),
                },
            })
    }

    /// The container's status (`created`, `running`, `stopped`, …), or `None`
    /// when the runtime does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<String>, NodeError> {
        let out = self.exec(id, &["state", id]).await?;
        if !out.status.success() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Ok(v["status"].as_str().map(str::to_string))
    }

    /// Sends `signal` (`TERM`, `KILL`) to the container's processes.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), NodeError> {
        let out = self.exec(id, &["kill", "--all", id, signal]).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // A container that is already gone is what we wanted.
            if !stderr.contains("not exist")
                && !stderr.contains("not running")
                && !stderr.contains("stopped")
            {
                return Err(NodeError::Command {
                    command: format!("{} kill {id} {signal}", self.binary.display()),
                    detail: stderr.trim().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Freezes the container's processes (`pause`).
    pub async fn pause(&self, id: &str) -> Result<(), NodeError> {
        self.freeze_step(id, "pause", "paused").await
    }

    /// Thaws a paused container (`resume`).
    pub async fn resume(&self, id: &str) -> Result<(), NodeError> {
        self.freeze_step(id, "resume", "running").await
    }

    /// Runs `pause` or `resume`; already being in `want` is success.
    async fn freeze_step(&self, id: &str, verb: &str, want: &str) -> Result<(), NodeError> {
        let out = self.exec(id, &[verb, id]).await?;
        if out.status.success() || self.state(id).await?.as_deref() == Some(want) {
            return Ok(());
        }
        Err(NodeError::Command {
            command: format!("{} {verb} {id}", self.binary.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Removes the runtime's record of the container, killing it if needed.
    pub async fn delete(&self, id: &str) -> Result<(), NodeError> {
        let out = self.exec(id, &["delete", "--force", id]).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("not exist") && !stderr.contains("not found") {
                return Err(NodeError::Command {
                    command: format!("{} delete --force {id}", self.binary.display()),
                    detail: stderr.trim().to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvisor_runs_inside_the_instance_namespace() {
        let rt = Runtime::new(
            Isolation::Gvisor,
            &RuntimeBinaries::default(),
            Path::new("/d/rt"),
        );
        let argv = rt.run_argv(
            "i1",
            Path::new("/d/i1/bundle"),
            Path::new("/run/netns/bora-i1"),
        );
        assert_eq!(
            argv,
            [
                "nsenter",
                "--net=/run/netns/bora-i1",
                "runsc",
                "--root",
                "/d/rt/gvisor",
                "--network=host",
                "run",
                "--bundle",
                "/d/i1/bundle",
                "i1"
            ]
        );
        let rt = Runtime::new(
            Isolation::Container,
            &RuntimeBinaries::default(),
            Path::new("/d/rt"),
        );
        assert_eq!(
            rt.create_argv("i1", Path::new("/b"), Path::new("/d/i1/container.pid")),
            [
                "runc",
                "--root",
                "/d/rt/container",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/d/i1/container.pid",
                "i1"
            ]
        );
        let argv = rt.run_argv("i1", Path::new("/b"), Path::new("/n"));
        assert_eq!(
            argv,
            [
                "runc",
                "--root",
                "/d/rt/container",
                "run",
                "--bundle",
                "/b",
                "i1"
            ]
        );
    }
}
