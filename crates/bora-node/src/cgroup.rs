//! An instance's cgroup, read and written directly: CPU and memory use for
//! the autoscaler, and the freezer for the fast half of light sleep.
//!
//! Instances live at cgroup path `/bora/<id>`, sandboxes at
//! `/bora-sandboxes/<id>`. On a cgroup v1 (or hybrid)
//! host every controller has its own hierarchy under `/sys/fs/cgroup/<ctl>`;
//! on a v2 host there is one, under `/sys/fs/cgroup`.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup path given to the runtime for an instance.
pub fn path(id: &str) -> String {
    format!("/bora/{id}")
}

/// The cgroup path given to the runtime for a sandbox.
pub fn sandbox_path(id: &str) -> String {
    format!("/bora-sandboxes/{id}")
}

/// CPU and memory an instance has used, from its cgroup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time consumed since the instance started, in seconds (all cores).
    pub cpu_seconds: f64,
    /// Memory in use now, in bytes (page cache included, as the limit counts it).
    pub memory_bytes: u64,
}

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The directory of cgroup `cgroup` (a path from [`path`] or
/// [`sandbox_path`]) in `controller`'s hierarchy.
fn dir(controller: &str, cgroup: &str) -> PathBuf {
    let rel = cgroup.trim_start_matches('/');
    if unified() {
        Path::new(ROOT).join(rel)
    } else {
        Path::new(ROOT).join(controller).join(rel)
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The instance's usage, or `None` if its cgroup is not there (gone, or a
/// runtime that keeps its cgroups elsewhere).
pub fn usage(id: &str) -> Option<Usage> {
    let cgroup = path(id);
    let id = cgroup.as_str();
    if unified() {
        let dir = dir("", id);
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let usec: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))?
            .trim()
            .parse()
            .ok()?;
        Some(Usage {
            cpu_seconds: usec as f64 / 1e6,
            memory_bytes: read_u64(&dir.join("memory.current"))?,
        })
    } else {
        let nanos = read_u64(&dir("cpuacct", id).join("cpuacct.usage"))?;
        let memory = read_u64(&dir("memory", id).join("memory.usage_in_bytes"))?;
        Some(Usage {
            cpu_seconds: nanos as f64 / 1e9,
            memory_bytes: memory,
        })
    }
}

/// Thaws a frozen instance by writing its freezer directly: microseconds,
/// where forking `runc resume` costs milliseconds. runc derives "paused"
/// from the same file, so its view stays right. Returns false if the
/// freezer file is not there (the caller falls back to the runtime).
/// `cgroup` is the path from [`path`] or [`sandbox_path`].
pub fn thaw(cgroup: &str) -> bool {
    let (file, value) = if unified() {
        (dir("", cgroup).join("cgroup.freeze"), "0")
    } else {
        (dir("freezer", cgroup).join("freezer.state"), "THAWED")
    };
    file.exists() && std::fs::write(&file, value).is_ok()
}

/// Whether the freezer of `cgroup` ([`path`], [`sandbox_path`]) says it
/// is frozen.
pub fn frozen(cgroup: &str) -> Option<bool> {
    if unified() {
        let v = read_u64(&dir("", cgroup).join("cgroup.freeze"))?;
        Some(v == 1)
    } else {
        let s = std::fs::read_to_string(dir("freezer", cgroup).join("freezer.state")).ok()?;
        Some(s.trim() != "THAWED")
    }
}
