//! Serde helpers for the proto3 JSON mapping
//! (<https://protobuf.dev/programming-guides/json/>), for the field types
//! whose JSON form differs from what serde would do by default.
//!
//! Parsers must be lenient (every integer may come as a number or a string,
//! bytes as standard or URL-safe base64 with or without padding, enums as
//! their name or their number) while printers emit the canonical form
//! (64-bit integers as strings, standard padded base64, enum names).

use std::fmt;
use std::marker::PhantomData;

use base64::Engine;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

/// An integer that may arrive as a JSON number or a JSON string.
struct IntVisitor<T>(PhantomData<T>);

impl<'de, T> Visitor<'de> for IntVisitor<T>
where
    T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr + Default,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer, as a number or a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // proto3 JSON allows `1.0` or `1e3` for integers, as long as the value
        // is integral.
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::custom(format!("{v} is not an integer")));
        }
        if v < 0.0 {
            self.visit_i64(v as i64)
        } else {
            self.visit_u64(v as u64)
        }
    }

    /// `null` means the default value in proto3 JSON.
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.trim()
            .parse()
            .map_err(|_| E::custom(format!("{v:?} is not an integer")))
    }
}

fn de_int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr + Default,
{
    d.deserialize_any(IntVisitor(PhantomData))
}

/// `int64`/`uint64`: printed as a string, parsed from a string or a number.
pub mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        de_int(d)
    }
}

/// `int32`/`uint32`/`sint32`: printed as a number, parsed from either form.
pub mod int32 {
    use super::*;

    pub fn serialize<S: Serializer, T: serde::Serialize>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr + Default,
    {
        de_int(d)
    }
}

/// Decodes base64 in any of the alphabets proto3 JSON parsers accept.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::{DecodePaddingMode, general_purpose};
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);
    if s.contains(['-', '_']) {
        URL_SAFE.decode(s)
    } else {
        STANDARD
            .decode(s)
            .or_else(|_| general_purpose::STANDARD.decode(s))
    }
}

/// `bytes`: standard base64 with padding; parsing accepts both alphabets.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        decode_base64(&s).map_err(|e| de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// `optional bytes` (and bytes inside oneof shadows).
pub mod opt_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::bytes::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => decode_base64(&s)
                .map(Some)
                .map_err(|e| de::Error::custom(format!("invalid base64: {e}"))),
            None => Ok(None),
        }
    }
}

/// A proto enum: its value names, for the JSON mapping (prost keeps enum
/// fields as `i32`).
pub trait ProtoEnum {
    /// The enum's full proto name, for error messages.
    const NAME: &'static str;
    /// Name of a known value.
    fn value_name(v: i32) -> Option<&'static str>;
    /// Value of a known name.
    fn from_value_name(name: &str) -> Option<i32>;
}

/// An enum field (`i32` in prost): printed as its name (or its number when
/// unknown), parsed from a name or a number.
pub mod enumeration {
    use super::*;

    pub fn serialize<S: Serializer, E: ProtoEnum>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        match E::value_name(*v) {
            Some(name) => s.serialize_str(name),
            None => s.serialize_i32(*v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, E: ProtoEnum>(d: D) -> Result<i32, D::Error> {
        struct V<E>(PhantomData<E>);
        impl<E: ProtoEnum> Visitor<'_> for V<E> {
            type Value = i32;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a {} name or number", E::NAME)
            }
            fn visit_str<Er: de::Error>(self, v: &str) -> Result<i32, Er> {
                E::from_value_name(v)
                    .ok_or_else(|| Er::custom(format!("unknown {} value {v:?}", E::NAME)))
            }
            fn visit_i64<Er: de::Error>(self, v: i64) -> Result<i32, Er> {
                i32::try_from(v).map_err(|_| Er::custom(format!("enum value {v} out of range")))
            }
            fn visit_u64<Er: de::Error>(self, v: u64) -> Result<i32, Er> {
                i32::try_from(v).map_err(|_| Er::custom(format!("enum value {v} out of range")))
            }
            fn visit_unit<Er: de::Error>(self) -> Result<i32, Er> {
                Ok(0)
            }
        }
        d.deserialize_any(V::<E>(PhantomData))
    }
}

/// `google.protobuf.Timestamp`: an RFC 3339 string in UTC.
pub mod timestamp {
    use super::*;
    use crate::proto::Timestamp;

    pub fn serialize<S: Serializer>(v: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.collect_str(&t.to_rfc3339()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => Timestamp::parse_rfc3339(&s)
                .map(Some)
                .ok_or_else(|| de::Error::custom(format!("invalid timestamp {s:?}"))),
            None => Ok(None),
        }
    }
}
