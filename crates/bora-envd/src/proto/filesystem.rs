//! Package `filesystem`: the messages of E2B's
//! `spec/envd/filesystem/filesystem.proto` (service `filesystem.Filesystem`),
//! field numbers as upstream, including `EntryInfo.is_symlink = 12` that the
//! current SDKs read.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::json;
use super::{Timestamp, proto_enum};

proto_enum! {
    /// `filesystem.FileType`.
    FileType = "filesystem.FileType" {
        Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
        File = 1 => "FILE_TYPE_FILE",
        Directory = 2 => "FILE_TYPE_DIRECTORY",
        Symlink = 3 => "FILE_TYPE_SYMLINK",
    }
}

proto_enum! {
    /// `filesystem.EventType`.
    EventType = "filesystem.EventType" {
        Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
        Create = 1 => "EVENT_TYPE_CREATE",
        Write = 2 => "EVENT_TYPE_WRITE",
        Remove = 3 => "EVENT_TYPE_REMOVE",
        Rename = 4 => "EVENT_TYPE_RENAME",
        Chmod = 5 => "EVENT_TYPE_CHMOD",
    }
}

/// A request naming one path (`StatRequest`, `MakeDirRequest`,
/// `RemoveRequest` all have exactly `string path = 1`).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PathRequest {
    #[prost(string, tag = "1")]
    pub path: String,
}

pub type StatRequest = PathRequest;
pub type MakeDirRequest = PathRequest;
pub type RemoveRequest = PathRequest;

/// A response carrying one entry (`StatResponse`, `MakeDirResponse`,
/// `MoveResponse` all have exactly `EntryInfo entry = 1`).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EntryResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

pub type StatResponse = EntryResponse;
pub type MakeDirResponse = EntryResponse;
pub type MoveResponse = EntryResponse;

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MoveRequest {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub destination: String,
}

/// Every empty response of the service (`RemoveResponse`,
/// `RemoveWatcherResponse`).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EntryInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    /// For a symlink: the type of what it points to (`is_symlink` marks the
    /// link), or `FILE_TYPE_SYMLINK` when the target cannot be stat-ed.
    #[prost(enumeration = "FileType", tag = "2")]
    #[serde(
        serialize_with = "json::enumeration::serialize::<_, FileType>",
        deserialize_with = "json::enumeration::deserialize::<_, FileType>"
    )]
    pub r#type: i32,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub size: i64,
    #[prost(uint32, tag = "5")]
    #[serde(with = "json::int32")]
    pub mode: u32,
    #[prost(string, tag = "6")]
    pub permissions: String,
    #[prost(string, tag = "7")]
    pub owner: String,
    #[prost(string, tag = "8")]
    pub group: String,
    #[prost(message, optional, tag = "9")]
    #[serde(
        with = "json::timestamp",
        alias = "modified_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_time: Option<Timestamp>,
    #[prost(string, optional, tag = "10")]
    #[serde(alias = "symlink_target", skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// User metadata: the file's `user.e2b.*` extended attributes, prefix
    /// stripped.
    #[prost(map = "string, string", tag = "11")]
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub metadata: HashMap<String, String>,
    #[prost(bool, tag = "12")]
    #[serde(alias = "is_symlink")]
    pub is_symlink: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint32, tag = "2")]
    #[serde(with = "json::int32")]
    pub depth: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListDirResponse {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<EntryInfo>,
}

/// `WatchDirRequest` and `CreateWatcherRequest` (identical fields).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatchDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub recursive: bool,
    #[prost(bool, tag = "3")]
    #[serde(alias = "include_entry")]
    pub include_entry: bool,
    /// Accepted and ignored: Bora's sandboxes watch whatever inotify can.
    #[prost(bool, tag = "4")]
    #[serde(alias = "allow_network_mounts")]
    pub allow_network_mounts: bool,
}

pub type CreateWatcherRequest = WatchDirRequest;

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FilesystemEvent {
    /// The path of the entry relative to the watched directory.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "EventType", tag = "2")]
    #[serde(
        serialize_with = "json::enumeration::serialize::<_, EventType>",
        deserialize_with = "json::enumeration::deserialize::<_, EventType>"
    )]
    pub r#type: i32,
    #[prost(message, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `WatchDirResponse`: a start, then filesystem events, with keepalives.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(try_from = "WatchDirResponseJson", into = "WatchDirResponseJson")]
pub struct WatchDirResponse {
    #[prost(oneof = "watch_dir_response::Event", tags = "1, 2, 3")]
    pub event: Option<watch_dir_response::Event>,
}

pub mod watch_dir_response {
    use super::*;

    // The variants mirror the wire format; events are short-lived, so the
    // size difference does not matter.
    #[allow(clippy::large_enum_variant)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Event {
        #[prost(message, tag = "1")]
        Start(Empty),
        #[prost(message, tag = "2")]
        Filesystem(FilesystemEvent),
        #[prost(message, tag = "3")]
        Keepalive(Empty),
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct WatchDirResponseJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filesystem: Option<FilesystemEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<Empty>,
}

impl TryFrom<WatchDirResponseJson> for WatchDirResponse {
    type Error = String;
    fn try_from(j: WatchDirResponseJson) -> Result<Self, String> {
        use watch_dir_response::Event;
        let set = [
            j.start.is_some(),
            j.filesystem.is_some(),
            j.keepalive.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err("more than one of start, filesystem, keepalive is set".into());
        }
        let event = (j.start.map(Event::Start))
            .or(j.filesystem.map(Event::Filesystem))
            .or(j.keepalive.map(Event::Keepalive));
        Ok(WatchDirResponse { event })
    }
}

impl From<WatchDirResponse> for WatchDirResponseJson {
    fn from(r: WatchDirResponse) -> Self {
        use watch_dir_response::Event;
        let mut j = Self::default();
        match r.event {
            Some(Event::Start(v)) => j.start = Some(v),
            Some(Event::Filesystem(v)) => j.filesystem = Some(v),
            Some(Event::Keepalive(v)) => j.keepalive = Some(v),
            None => {}
        }
        j
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CreateWatcherResponse {
    #[prost(string, tag = "1")]
    #[serde(alias = "watcher_id")]
    pub watcher_id: String,
}

/// `GetWatcherEventsRequest` and `RemoveWatcherRequest` (identical fields).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatcherRequest {
    #[prost(string, tag = "1")]
    #[serde(alias = "watcher_id")]
    pub watcher_id: String,
}

pub type GetWatcherEventsRequest = WatcherRequest;
pub type RemoveWatcherRequest = WatcherRequest;

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GetWatcherEventsResponse {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<FilesystemEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    fn entry() -> EntryInfo {
        EntryInfo {
            name: "a.txt".into(),
            r#type: FileType::File as i32,
            path: "/home/user/a.txt".into(),
            size: 5_000_000_000,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            symlink_target: None,
            metadata: HashMap::from([("k".to_string(), "v".to_string())]),
            is_symlink: false,
        }
    }

    #[test]
    fn entry_info_json_is_proto3_canonical() {
        let v = serde_json::to_value(entry()).unwrap();
        assert_eq!(
            v,
            json!({
                "name": "a.txt",
                "type": "FILE_TYPE_FILE",
                "path": "/home/user/a.txt",
                "size": "5000000000",
                "mode": 420,
                "permissions": "-rw-r--r--",
                "owner": "user",
                "group": "user",
                "modifiedTime": "2023-11-14T22:13:20Z",
                "metadata": {"k": "v"},
                "isSymlink": false
            })
        );
        let back: EntryInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, entry());
    }

    #[test]
    fn entry_info_parses_numbers_and_snake_case() {
        let e: EntryInfo = serde_json::from_value(json!({
            "name": "l", "type": 2, "size": 12, "symlink_target": "/x", "is_symlink": true
        }))
        .unwrap();
        assert_eq!(e.r#type, FileType::Directory as i32);
        assert_eq!(e.size, 12);
        assert_eq!(e.symlink_target.as_deref(), Some("/x"));
        assert!(e.is_symlink);
    }

    #[test]
    fn entry_info_binary_round_trip() {
        let e = entry();
        let bytes = e.encode_to_vec();
        assert_eq!(EntryInfo::decode(bytes.as_slice()).unwrap(), e);
        // field 12 (is_symlink) is tag 0x60 when set
        let link = EntryInfo {
            is_symlink: true,
            ..Default::default()
        };
        assert_eq!(link.encode_to_vec(), [0x60, 0x01]);
    }

    #[test]
    fn watch_events_json() {
        let r = WatchDirResponse {
            event: Some(watch_dir_response::Event::Filesystem(FilesystemEvent {
                name: "sub/new.txt".into(),
                r#type: EventType::Create as i32,
                entry: None,
            })),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({"filesystem": {"name": "sub/new.txt", "type": "EVENT_TYPE_CREATE"}})
        );
        assert_eq!(serde_json::from_value::<WatchDirResponse>(v).unwrap(), r);
        let req: WatchDirRequest = serde_json::from_value(
            json!({"path": "/tmp", "recursive": true, "includeEntry": true}),
        )
        .unwrap();
        assert!(req.recursive && req.include_entry);
    }
}
