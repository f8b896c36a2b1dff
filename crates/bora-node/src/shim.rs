//! The shim: a small supervisor process (`bora shim`) between the server and
//! the OCI runtime, one per instance, like containerd's shims or conmon.
//!
//! It detaches into its own session, runs the runtime in the foreground,
//! copies the container's stdout and stderr into size-bounded JSON Lines log
//! files, and when the container ends writes `exit.json`. Because it does not
//! depend on the server, instances keep running — and logging — while the
//! server restarts.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bora_api::LogStream;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::logs::{self, LogRecord};

/// Longest line kept whole; longer ones are split.
const MAX_LINE: usize = 16 * 1024;

/// How the container ended, as the shim records it in `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when the runtime exited normally.
    pub code: Option<i32>,
    /// The signal that ended the runtime, if one did.
    pub signal: Option<i32>,
    pub at: chrono::DateTime<Utc>,
}

/// Appends log lines, rotating `current.log` to `previous.log` so the two
/// together stay within `max_bytes`.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl LogWriter {
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs::current(dir))?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            size,
            max_bytes,
        })
    }

    pub fn write(&mut self, stream: LogStream, line: &[u8]) {
        let record = LogRecord {
            at: Utc::now(),
            stream,
            line: String::from_utf8_lossy(line).into_owned(),
        };
        let mut bytes = serde_json::to_vec(&record).unwrap_or_default();
        bytes.push(b'\n');
        if self.size + bytes.len() as u64 > self.max_bytes / 2 && self.size > 0 {
            let _ = fs::rename(logs::current(&self.dir), logs::previous(&self.dir));
            if let Ok(f) = OpenOptions::new()
                .create(true)
                .append(true)
                .open(logs::current(&self.dir))
            {
                self.file = f;
                self.size = 0;
            }
        }
        if self.file.write_all(&bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }
}

/// Copies one pipe into the log, a line at a time.
fn pump(pipe: impl Read, stream: LogStream, writer: Arc<Mutex<LogWriter>>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Ok(mut w) = writer.lock() {
                    w.write(stream, line);
                }
            }
        }
    }
}

/// Waits for the created container's first process (its pid in
/// `pid_file`), which this shim, a subreaper, inherited when the runtime
/// exited. Other orphans that land here are reaped and ignored.
fn wait_created(pid_file: &Path) -> std::io::Result<(Option<i32>, Option<i32>)> {
    use nix::sys::wait::{WaitStatus, waitpid};
    let pid = fs::read_to_string(pid_file)?
        .trim()
        .parse::<i32>()
        .map_err(|e| std::io::Error::other(format!("bad pid in {}: {e}", pid_file.display())))?;
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return Ok((Some(code), None)),
            Ok(WaitStatus::Signaled(p, signal, _)) if p.as_raw() == pid => {
                return Ok((None, Some(signal as i32)));
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(std::io::Error::other(format!("waiting for pid {pid}: {e}"))),
        }
    }
}

pub fn exit_path(dir: &Path) -> PathBuf {
    dir.join("exit.json")
}

pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("shim.pid")
}

/// Reads `exit.json`, if the container has ended.
pub fn read_exit(dir: &Path) -> Option<ExitStatus> {
    serde_json::from_slice(&fs::read(exit_path(dir)).ok()?).ok()
}

/// The shim's main: runs `argv` in `dir`, logs into `dir/logs`, records the
/// exit. Returns the shim's own exit code.
///
/// With `created` (a pid file), `argv` is a runtime's `create`: it sets the
/// container up and exits, leaving the container's first process waiting
/// for `start` and writing its pid into that file. The shim makes itself a
/// child subreaper first, so that process becomes its child once the
/// runtime exits, and records *its* exit instead of the runtime's: the
/// container then logs and ends exactly as if it had been `run`.
pub fn run(dir: &Path, argv: &[String], max_log_bytes: u64, created: Option<&Path>) -> i32 {
    // Our own session: no terminal signals, no dying with the server.
    let _ = nix::unistd::setsid();
    let _ = fs::write(pid_path(dir), std::process::id().to_string());
    let writer = match LogWriter::open(&dir.join("logs"), max_log_bytes) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            eprintln!("bora shim: cannot open logs in {}: {e}", dir.display());
            return 1;
        }
    };
    let Some((program, args)) = argv.split_first() else {
        eprintln!("bora shim: no command to run");
        return 2;
    };
    if created.is_some()
        && let Err(e) = nix::sys::prctl::set_child_subreaper(true)
    {
        eprintln!("bora shim: cannot become a child subreaper: {e}");
        return 1;
    }
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let out = child.stdout.take().expect("piped stdout");
            let err = child.stderr.take().expect("piped stderr");
            let (w1, w2) = (writer.clone(), writer.clone());
            let t1 = std::thread::spawn(move || pump(out, LogStream::Stdout, w1));
            let t2 = std::thread::spawn(move || pump(err, LogStream::Stderr, w2));
            let status = child.wait().map(|s| {
                use std::os::unix::process::ExitStatusExt;
                (s.code(), s.signal())
            });
            let status = match (status, created) {
                (Ok((Some(0), _)), Some(pid_file)) => wait_created(pid_file),
                (status, _) => status,
            };
            // The pumps end when the last writer of the pipes is gone.
            let _ = t1.join();
            let _ = t2.join();
            status
        });
    let exit = match status {
        Ok((code, signal)) => ExitStatus {
            code,
            signal,
            at: Utc::now(),
        },
        Err(e) => {
            if let Ok(mut w) = writer.lock() {
                w.write(
                    LogStream::Stderr,
                    format!("bora shim: cannot start {program}: {e}").as_bytes(),
                );
            }
            ExitStatus {
                code: Some(127),
                signal: None,
                at: Utc::now(),
            }
        }
    };
    let tmp = dir.join("exit.json.tmp");
    let written = fs::write(&tmp, serde_json::to_vec(&exit).unwrap_or_default())
        .and_then(|_| fs::rename(&tmp, exit_path(dir)));
    if let Err(e) = written {
        eprintln!(
            "bora shim: cannot record the exit status in {}: {e}",
            dir.display()
        );
        return 1;
    }
    0
}
