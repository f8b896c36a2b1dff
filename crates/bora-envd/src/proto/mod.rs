//! The envd wire messages, written by hand from E2B's public protocol
//! definitions (`spec/envd/process/process.proto`,
//! `spec/envd/filesystem/filesystem.proto`).
//!
//! Each message carries `prost` derives for the binary encoding
//! (`application/proto`) and serde derives for the proto3 JSON mapping
//! (`application/json`, what the official SDKs send). Field numbers are the
//! wire contract: they must stay exactly as upstream. JSON names are the
//! proto3 camelCase names; parsers also accept the original snake_case
//! names, as the mapping requires.
//!
//! A `oneof` is a Rust enum in prost; in JSON it is whichever one of its
//! fields is set, inlined into the message. Messages with a oneof therefore
//! convert through a "shadow" struct with every alternative as an optional
//! field (see [`process::ProcessSelector`] for the pattern).

pub mod filesystem;
pub mod json;
pub mod process;

use chrono::{DateTime, SecondsFormat, Utc};

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        let dt: DateTime<Utc> = t.into();
        Self {
            seconds: dt.timestamp(),
            nanos: dt.timestamp_subsec_nanos() as i32,
        }
    }

    /// RFC 3339 in UTC with `Z`, as the proto3 JSON mapping prints it.
    pub fn to_rfc3339(&self) -> String {
        DateTime::<Utc>::from_timestamp(self.seconds, self.nanos.max(0) as u32)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
        Some(Self {
            seconds: dt.timestamp(),
            nanos: dt.timestamp_subsec_nanos() as i32,
        })
    }
}

/// Declares a proto enum: a Rust enum for code to match on, plus the
/// [`json::ProtoEnum`] names the JSON mapping prints and parses.
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        $name:ident = $proto:literal { $($variant:ident = $value:literal => $json:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum $name {
            $($variant = $value,)*
        }

        impl $crate::proto::json::ProtoEnum for $name {
            const NAME: &'static str = $proto;
            fn value_name(v: i32) -> Option<&'static str> {
                match v {
                    $($value => Some($json),)*
                    _ => None,
                }
            }
            fn from_value_name(name: &str) -> Option<i32> {
                match name {
                    $($json => Some($value),)*
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use proto_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_rfc3339() {
        let t = Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_000_000,
        };
        let s = t.to_rfc3339();
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("2023-11-14T23:13:20+01:00").map(|t| t.seconds),
            Some(1_700_000_000)
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
