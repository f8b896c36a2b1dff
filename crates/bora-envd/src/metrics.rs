//! `GET /metrics`: the sandbox's resource usage, in E2B's envd `Metrics`
//! shape. Inside a container the cgroup (v2) limits are what the sandbox
//! can use, so memory comes from the cgroup when there is one and from
//! `/proc/meminfo` otherwise; CPU usage is the share of the CPUs busy since
//! the previous call (or over a short sample on the first).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Serialize, PartialEq)]
pub struct Metrics {
    pub ts: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f32,
    pub mem_total: u64,
    pub mem_used: u64,
    pub mem_cache: u64,
    pub mem_total_mib: u64,
    pub mem_used_mib: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// CPU time counters from `/proc/stat`'s first line: (busy, total) jiffies.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// `(total, used, cache)` bytes from `/proc/meminfo`.
fn meminfo(s: &str) -> (u64, u64, u64) {
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let total = field("MemTotal:");
    let available = field("MemAvailable:");
    let cache = field("Cached:");
    (total, total.saturating_sub(available), cache)
}

/// `(limit, used, cache)` from a cgroup v2 directory, if it limits memory.
fn cgroup_memory(dir: &std::path::Path) -> Option<(u64, u64, u64)> {
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let limit: u64 = max.trim().parse().ok()?; // "max" means unlimited
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let file = stat
        .lines()
        .find_map(|l| l.strip_prefix("file "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some((limit, current, file))
}

#[derive(Default)]
pub struct Sampler {
    last: Mutex<Option<(u64, u64)>>,
}

impl Sampler {
    pub async fn sample(&self) -> Metrics {
        let read_cpu = || {
            std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| cpu_times(&s))
        };
        let previous = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let previous = match previous {
            Some(p) => Some(p),
            None => {
                let first = read_cpu();
                tokio::time::sleep(Duration::from_millis(100)).await;
                first
            }
        };
        let now = read_cpu();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = now;
        let cpu_used_pct = match (previous, now) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                ((b1.saturating_sub(b0)) as f32 / (t1 - t0) as f32 * 100.0 * 100.0).round() / 100.0
            }
            _ => 0.0,
        };
        let (mem_total, mem_used, mem_cache) =
            cgroup_memory(std::path::Path::new("/sys/fs/cgroup")).unwrap_or_else(|| {
                meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default())
            });
        let (disk_total, disk_used) = match nix::sys::statvfs::statvfs("/") {
            Ok(s) => {
                let frag = s.fragment_size();
                let total = s.blocks() * frag;
                let free = s.blocks_free() * frag;
                (total, total.saturating_sub(free))
            }
            Err(_) => (0, 0),
        };
        Metrics {
            ts: chrono::Utc::now().timestamp(),
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            cpu_used_pct,
            mem_total,
            mem_used,
            mem_cache,
            mem_total_mib: mem_total / (1024 * 1024),
            mem_used_mib: mem_used / (1024 * 1024),
            disk_used,
            disk_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_meminfo() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(cpu_times(stat), Some((150, 1000)));
        assert_eq!(cpu_times("intr 1 2"), None);
        let mem = "MemTotal:       2048 kB\nMemFree:         100 kB\nMemAvailable:    1024 kB\nCached:           512 kB\n";
        assert_eq!(meminfo(mem), (2048 * 1024, 1024 * 1024, 512 * 1024));
    }

    #[test]
    fn cgroup_memory_needs_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "100\n").unwrap();
        assert_eq!(cgroup_memory(dir.path()), None);
        std::fs::write(dir.path().join("memory.max"), "1000\n").unwrap();
        std::fs::write(dir.path().join("memory.stat"), "anon 10\nfile 40\n").unwrap();
        assert_eq!(cgroup_memory(dir.path()), Some((1000, 100, 40)));
    }
}
