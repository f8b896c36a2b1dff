//! `filesystem.Filesystem` over the wire.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use bora_envd::proto::filesystem::{
    EntryResponse, FileType, ListDirRequest, ListDirResponse, PathRequest,
};
use serde_json::json;

use crate::harness::{Envd, bounded, test_user};
use crate::require_root;

#[tokio::test]
async fn make_dir_stat_list_move_remove_json() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let (uid, _, home) = test_user();
        let base = format!("fs-ops-{}", std::process::id());

        let (status, made) = envd
            .unary(
                "/filesystem.Filesystem/MakeDir",
                json!({"path": format!("{base}/a/b")}),
                None,
            )
            .await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["entry"]["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(made["entry"]["path"], format!("{home}/{base}/a/b"));
        assert_eq!(made["entry"]["owner"], crate::harness::TEST_USER);
        assert_eq!(
            std::fs::metadata(format!("{home}/{base}/a")).unwrap().uid(),
            uid
        );

        let (status, again) = envd
            .unary(
                "/filesystem.Filesystem/MakeDir",
                json!({"path": format!("{base}/a/b")}),
                None,
            )
            .await;
        assert_eq!((status, again["code"].as_str()), (409, Some("already_exists")));

        std::fs::write(format!("{home}/{base}/a/f.txt"), "12345").unwrap();
        let (status, stat) = envd
            .unary(
                "/filesystem.Filesystem/Stat",
                json!({"path": format!("{base}/a/f.txt")}),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let e = &stat["entry"];
        assert_eq!(e["name"], "f.txt");
        assert_eq!(e["type"], "FILE_TYPE_FILE");
        assert_eq!(e["size"], "5");
        assert!(e["permissions"].as_str().unwrap().starts_with("-rw"));
        assert!(e["modifiedTime"].as_str().unwrap().ends_with('Z'));

        let (status, list) = envd
            .unary(
                "/filesystem.Filesystem/ListDir",
                json!({"path": base, "depth": 2}),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let names: Vec<&str> = list["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "f.txt"]);

        let (status, moved) = envd
            .unary(
                "/filesystem.Filesystem/Move",
                json!({"source": format!("{base}/a/f.txt"), "destination": format!("{base}/c/g.txt")}),
                None,
            )
            .await;
        assert_eq!(status, 200, "{moved}");
        assert_eq!(moved["entry"]["path"], format!("{home}/{base}/c/g.txt"));
        assert!(!std::path::Path::new(&format!("{home}/{base}/a/f.txt")).exists());

        let (status, _) = envd
            .unary("/filesystem.Filesystem/Remove", json!({"path": base}), None)
            .await;
        assert_eq!(status, 200);
        assert!(!std::path::Path::new(&format!("{home}/{base}")).exists());

        let (status, gone) = envd
            .unary("/filesystem.Filesystem/Stat", json!({"path": base}), None)
            .await;
        assert_eq!((status, gone["code"].as_str()), (404, Some("not_found")));
        assert!(gone["message"].as_str().unwrap().contains(&base));
        let (status, gone) = envd
            .unary("/filesystem.Filesystem/Remove", json!({"path": base}), None)
            .await;
        assert_eq!((status, gone["code"].as_str()), (404, Some("not_found")));
    })
    .await
}

#[tokio::test]
async fn stat_and_list_over_protobuf_as_root() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        let d = dir.path().display().to_string();
        let stat: EntryResponse = envd
            .unary_proto(
                "/filesystem.Filesystem/Stat",
                &PathRequest { path: d.clone() },
                Some("root"),
            )
            .await
            .unwrap();
        let e = stat.entry.unwrap();
        assert_eq!(e.r#type, FileType::Directory as i32);
        assert_eq!(e.owner, "root");
        let list: ListDirResponse = envd
            .unary_proto(
                "/filesystem.Filesystem/ListDir",
                &ListDirRequest {
                    path: d.clone(),
                    depth: 1,
                },
                Some("root"),
            )
            .await
            .unwrap();
        assert_eq!(list.entries.len(), 1);
        assert_eq!(list.entries[0].path, format!("{d}/x"));
        let err = envd
            .unary_proto::<_, EntryResponse>(
                "/filesystem.Filesystem/Stat",
                &PathRequest {
                    path: format!("{d}/missing"),
                },
                Some("root"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.0, 404);
        assert_eq!(err.1["code"], "not_found");
    })
    .await
}

#[tokio::test]
async fn watch_dir_streams_created_files() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut stream = envd
            .stream(
                "/filesystem.Filesystem/WatchDir",
                json!({"path": dir.path(), "recursive": true}),
                Some("root"),
            )
            .await;
        assert_eq!(stream.next_json().await.unwrap(), json!({"start": {}}));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(dir.path().join("sub/new.txt"), "x").unwrap();
        let mut seen = Vec::new();
        loop {
            let msg = stream.next_json().await.expect("watch events");
            let ev = &msg["filesystem"];
            seen.push((ev["name"].as_str().unwrap().to_string(), ev["type"].clone()));
            if ev["name"] == "sub/new.txt" && ev["type"] == "EVENT_TYPE_CREATE" {
                break;
            }
        }
        assert_eq!(seen[0], ("sub".to_string(), json!("EVENT_TYPE_CREATE")));

        // The polled watcher sees the same kind of events.
        let (status, created) = envd
            .unary(
                "/filesystem.Filesystem/CreateWatcher",
                json!({"path": dir.path(), "recursive": false}),
                Some("root"),
            )
            .await;
        assert_eq!(status, 200);
        let id = created["watcherId"].as_str().unwrap().to_string();
        std::fs::write(dir.path().join("polled.txt"), "").unwrap();
        let mut names = Vec::new();
        for _ in 0..50 {
            let (_, events) = envd
                .unary(
                    "/filesystem.Filesystem/GetWatcherEvents",
                    json!({"watcherId": id}),
                    Some("root"),
                )
                .await;
            names.extend(
                events["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["name"].as_str().unwrap().to_string()),
            );
            if names.contains(&"polled.txt".to_string()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(names.contains(&"polled.txt".to_string()), "{names:?}");
        let (status, _) = envd
            .unary(
                "/filesystem.Filesystem/RemoveWatcher",
                json!({"watcherId": id}),
                Some("root"),
            )
            .await;
        assert_eq!(status, 200);
        let (status, body) = envd
            .unary(
                "/filesystem.Filesystem/GetWatcherEvents",
                json!({"watcherId": id}),
                Some("root"),
            )
            .await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    })
    .await
}
