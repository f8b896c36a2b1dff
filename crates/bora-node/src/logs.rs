//! Instance logs: JSON Lines files written by the shim, bounded in size by
//! rotating `current.log` into `previous.log`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bora_api::LogStream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One line as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub at: DateTime<Utc>,
    pub stream: LogStream,
    pub line: String,
}

pub fn current(dir: &Path) -> PathBuf {
    dir.join("current.log")
}

pub fn previous(dir: &Path) -> PathBuf {
    dir.join("previous.log")
}

fn read_all(path: &Path) -> Vec<LogRecord> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// The last `n` lines, oldest first.
pub fn tail(dir: &Path, n: usize) -> Vec<LogRecord> {
    let mut all = read_all(&previous(dir));
    all.extend(read_all(&current(dir)));
    let skip = all.len().saturating_sub(n);
    all.split_off(skip)
}

/// Follows `current.log` across rotations: each [`Follower::poll`] returns
/// the lines written since the last one.
pub struct Follower {
    path: PathBuf,
    reader: Option<(BufReader<File>, u64)>,
    partial: String,
}

impl Follower {
    /// Starts at the current end of the log.
    pub fn from_end(dir: &Path) -> Self {
        let path = current(dir);
        let reader = File::open(&path).ok().and_then(|mut f| {
            f.seek(SeekFrom::End(0)).ok()?;
            let ino = f.metadata().ok()?.ino();
            Some((BufReader::new(f), ino))
        });
        Self {
            path,
            reader,
            partial: String::new(),
        }
    }

    pub fn poll(&mut self) -> Vec<LogRecord> {
        let mut out = Vec::new();
        loop {
            if let Some((reader, ino)) = &mut self.reader {
                loop {
                    let mut buf = String::new();
                    match reader.read_line(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            self.partial.push_str(&buf);
                            if self.partial.ends_with('\n') {
                                if let Ok(r) = serde_json::from_str(self.partial.trim_end()) {
                                    out.push(r);
                                }
                                self.partial.clear();
                            }
                        }
                    }
                }
                // At the end of our file: if the path now names a new file
                // (rotation), continue there.
                let rotated = std::fs::metadata(&self.path)
                    .map(|m| m.ino() != *ino)
                    .unwrap_or(false);
                if !rotated {
                    return out;
                }
            }
            match File::open(&self.path) {
                Ok(f) => {
                    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    self.reader = Some((BufReader::new(f), ino));
                    self.partial.clear();
                }
                Err(_) => return out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::LogWriter;

    #[test]
    fn logs_rotate_within_bounds_and_followers_miss_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 4096).unwrap();
        let mut follower = Follower::from_end(dir.path());
        let mut seen = Vec::new();
        for i in 0..300 {
            w.write(LogStream::Stdout, format!("line {i}").as_bytes());
            if i % 7 == 0 {
                seen.extend(follower.poll());
            }
        }
        seen.extend(follower.poll());
        let numbers: Vec<usize> = seen
            .iter()
            .map(|r| r.line.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert_eq!(numbers, (0..300).collect::<Vec<_>>());
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(current(dir.path())) + size(previous(dir.path())) <= 4096 + 200);
        let last = tail(dir.path(), 3);
        assert_eq!(
            last.iter().map(|r| r.line.as_str()).collect::<Vec<_>>(),
            ["line 297", "line 298", "line 299"]
        );
    }
}
