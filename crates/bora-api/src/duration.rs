//! Durations as users write them: `500ms`, `30s`, `5m`, `1h 30m`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string (`30s`, `5m`), as in `bora.yaml` and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

/// The error for a string that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected a number and a unit, like 500ms, 30s, 5m or 1h")]
pub struct ParseDurationError {
    pub input: String,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: s.to_string(),
        };
        // humantime accepts a bare "0" and unit-less numbers only as "0"; we
        // require a unit everywhere else so `5` is never silently 5 seconds.
        let trimmed = s.trim();
        if trimmed.is_empty() || trimmed.chars().all(|c| c.is_ascii_digit()) && trimmed != "0" {
            return Err(err());
        }
        humantime::parse_duration(trimmed)
            .map(Duration)
            .map_err(|_| err())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 500ms, 30s, 5m or 1h")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A duration: a number and a unit (ms, s, m, h), e.g. `30s`, `5m`.",
            ))
            .examples(["30s"])
            .into()
    }
}

impl utoipa::ToSchema for Duration {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(
            "500ms".parse::<Duration>().unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!("30s".parse::<Duration>().unwrap(), Duration::from_secs(30));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::from_secs(300));
        assert_eq!(
            "1h 30m".parse::<Duration>().unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!("0".parse::<Duration>().unwrap(), Duration::from_secs(0));
    }

    #[test]
    fn rejects_missing_unit_and_garbage() {
        for bad in ["", "5", "abc", "5 parsecs", "-3s"] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(
                err.to_string().contains("expected a number and a unit"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn round_trips_through_display() {
        for s in ["500ms", "30s", "5m", "2h"] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
    }
}
