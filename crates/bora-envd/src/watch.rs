//! Directory watching (inotify, through the `notify` crate), for the
//! streaming `WatchDir` and the polled `CreateWatcher`/`GetWatcherEvents`.
//!
//! Events are reported like E2B's envd (Go's fsnotify) reports them: the
//! entry's path relative to the watched directory, and one of create,
//! write, remove, rename (the old name of a moved entry; its new name is a
//! create) and chmod.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::connect::RpcError;
use crate::proto::filesystem::{EventType, FilesystemEvent};
use crate::users::Names;

/// Events buffered per watcher; beyond that new events are dropped (and
/// logged) until the client catches up.
const BUFFER: usize = 4096;

/// A live inotify watch; dropping it stops the watch.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    pub events: mpsc::Receiver<FilesystemEvent>,
}

/// Starts watching `dir`.
pub fn watch(
    dir: &Path,
    recursive: bool,
    include_entry: bool,
    names: Names,
) -> Result<DirWatch, RpcError> {
    let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            RpcError::not_found(format!("path {} does not exist", dir.display()))
        }
        _ => RpcError::from_io(&e, &dir.display().to_string()),
    })?;
    if !meta.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "path {} is not a directory",
            dir.display()
        )));
    }
    let (tx, rx) = mpsc::channel(BUFFER);
    let root = dir.to_path_buf();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        for ev in convert(&root, &event, include_entry, &names) {
            if tx.try_send(ev).is_err() && !tx.is_closed() {
                tracing::warn!(dir = %root.display(), "watch buffer full, dropping event");
            }
        }
    };
    let mut watcher = notify::recommended_watcher(handler)
        .map_err(|e| RpcError::internal(format!("starting a watch on {}: {e}", dir.display())))?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher
        .watch(dir, mode)
        .map_err(|e| RpcError::internal(format!("watching {}: {e}", dir.display())))?;
    Ok(DirWatch {
        _watcher: watcher,
        events: rx,
    })
}

fn event_type(kind: &EventKind) -> Option<EventType> {
    Some(match kind {
        EventKind::Create(_) => EventType::Create,
        EventKind::Remove(_) => EventType::Remove,
        EventKind::Modify(ModifyKind::Metadata(_)) => EventType::Chmod,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => EventType::Create,
        // notify also reports a paired rename as one event with both
        // paths, after the From and To halves; those already said it all.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => return None,
        EventKind::Modify(ModifyKind::Name(_)) => EventType::Rename,
        EventKind::Modify(_) => EventType::Write,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return None,
    })
}

fn convert(
    root: &Path,
    event: &notify::Event,
    include_entry: bool,
    names: &Names,
) -> Vec<FilesystemEvent> {
    let Some(kind) = event_type(&event.kind) else {
        return Vec::new();
    };
    event
        .paths
        .iter()
        .map(|p| FilesystemEvent {
            name: relative_name(root, p),
            r#type: kind as i32,
            entry: if include_entry && kind != EventType::Remove && kind != EventType::Rename {
                crate::fs::entry_info(p, names).ok()
            } else {
                None
            },
        })
        .collect()
}

fn relative_name(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// The polled watchers, by id.
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<DirWatch>>>>,
}

impl Watchers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<DirWatch>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, watch: DirWatch) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.map()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(watch)));
        id
    }

    /// Everything that happened since the last call.
    pub async fn drain(&self, id: &str) -> Result<Vec<FilesystemEvent>, RpcError> {
        let watch = self
            .map()
            .get(id)
            .cloned()
            .ok_or_else(|| RpcError::not_found(format!("watcher {id:?} not found")))?;
        let mut watch = watch.lock().await;
        let mut out = Vec::new();
        while let Ok(ev) = watch.events.try_recv() {
            out.push(ev);
        }
        Ok(out)
    }

    pub fn remove(&self, id: &str) -> Result<(), RpcError> {
        self.map()
            .remove(id)
            .map(drop)
            .ok_or_else(|| RpcError::not_found(format!("watcher {id:?} not found")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(w: &mut DirWatch) -> FilesystemEvent {
        tokio::time::timeout(Duration::from_secs(5), w.events.recv())
            .await
            .expect("no event within 5s")
            .unwrap()
    }

    #[tokio::test]
    async fn reports_creates_writes_renames_removes_relative_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = watch(dir.path(), false, true, Names::default()).unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        let ev = next(&mut w).await;
        assert_eq!(
            (ev.name.as_str(), ev.r#type),
            ("a.txt", EventType::Create as i32)
        );
        assert_eq!(ev.entry.unwrap().name, "a.txt");
        // the write (and, from close, nothing else)
        let ev = next(&mut w).await;
        assert_eq!(
            (ev.name.as_str(), ev.r#type),
            ("a.txt", EventType::Write as i32)
        );

        std::fs::rename(dir.path().join("a.txt"), dir.path().join("b.txt")).unwrap();
        let ev = next(&mut w).await;
        assert_eq!(
            (ev.name.as_str(), ev.r#type),
            ("a.txt", EventType::Rename as i32)
        );
        let ev = next(&mut w).await;
        assert_eq!(
            (ev.name.as_str(), ev.r#type),
            ("b.txt", EventType::Create as i32)
        );

        std::fs::remove_file(dir.path().join("b.txt")).unwrap();
        let ev = next(&mut w).await;
        assert_eq!(
            (ev.name.as_str(), ev.r#type),
            ("b.txt", EventType::Remove as i32)
        );
    }

    #[tokio::test]
    async fn recursive_watch_sees_new_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = watch(dir.path(), true, false, Names::default()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(next(&mut w).await.name, "sub");
        // give notify a moment to add the new directory's watch
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(dir.path().join("sub/deep.txt"), "").unwrap();
        loop {
            let ev = next(&mut w).await;
            if ev.name == "sub/deep.txt" {
                assert_eq!(ev.r#type, EventType::Create as i32);
                break;
            }
        }
    }

    #[test]
    fn watching_a_file_or_nothing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "").unwrap();
        let e = watch(&f, false, false, Names::default()).err().unwrap();
        assert_eq!(e.code, crate::connect::Code::InvalidArgument);
        let e = watch(&dir.path().join("nope"), false, false, Names::default())
            .err()
            .unwrap();
        assert_eq!(e.code, crate::connect::Code::NotFound);
    }
}
