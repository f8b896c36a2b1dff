//! A serde [`Deserializer`] over the located YAML tree, so that the types of
//! `bora-api` are filled straight from it and every error knows the field
//! path and the source span it belongs to.
//!
//! Errors are created by serde's visitors, which know nothing of positions;
//! each deserializer method stamps the errors coming out of it with its own
//! node's path and span, unless a deeper node already did ([`DeError::located_at`]).

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

use crate::path::{Path, Segment};
use crate::suggest;
use crate::yaml::{Entry, Node, Span, Value};

/// Where an error belongs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Location {
    /// The path of the value; for an error about a key, the path of the
    /// value under that key.
    pub path: Path,
    pub span: Span,
}

/// A deserialization error with what serde told us about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeError {
    pub kind: DeErrorKind,
    pub location: Option<Location>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeErrorKind {
    /// A value of the wrong kind: a string where a number belongs, say.
    InvalidType {
        found: Found,
        expected: String,
    },
    /// A value of the right kind that does not fit: 70000 for a port.
    InvalidValue {
        found: Found,
        expected: String,
    },
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    UnknownVariant {
        value: String,
        expected: &'static [&'static str],
    },
    MissingField(&'static str),
    /// Anything else, with the message the type's own parser gave (an
    /// invalid duration, say).
    Custom(String),
}

/// What was found instead of what was expected.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    Nothing,
    Bool(bool),
    /// A number, as written in the file when known.
    Number(String),
    Str(String),
    List,
    Mapping,
    Other(String),
}

impl Found {
    fn of(node: &Node) -> Self {
        match &node.value {
            Value::Null => Found::Nothing,
            Value::Bool(b) => Found::Bool(*b),
            Value::Int(i) => Found::Number(node.written.clone().unwrap_or_else(|| i.to_string())),
            Value::Float(x) => Found::Number(node.written.clone().unwrap_or_else(|| x.to_string())),
            Value::Str(s) => Found::Str(s.clone()),
            Value::Seq(_) => Found::List,
            Value::Map(_) => Found::Mapping,
        }
    }
}

impl From<de::Unexpected<'_>> for Found {
    fn from(unexpected: de::Unexpected<'_>) -> Self {
        use de::Unexpected as U;
        match unexpected {
            U::Bool(b) => Found::Bool(b),
            U::Unsigned(u) => Found::Number(u.to_string()),
            U::Signed(i) => Found::Number(i.to_string()),
            U::Float(x) => Found::Number(x.to_string()),
            U::Char(c) => Found::Str(c.to_string()),
            U::Str(s) => Found::Str(s.to_string()),
            U::Unit | U::Option => Found::Nothing,
            U::Seq => Found::List,
            U::Map => Found::Mapping,
            other => Found::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Nothing => f.write_str("nothing"),
            Found::Bool(b) => write!(f, "the boolean `{b}`"),
            Found::Number(n) => write!(f, "the number `{n}`"),
            Found::Str(s) => write!(f, "the string {}", quote_short(s)),
            Found::List => f.write_str("a list"),
            Found::Mapping => f.write_str("a mapping"),
            Found::Other(what) => f.write_str(what),
        }
    }
}

/// `s` in double quotes, escaped the way YAML (and JSON) read it back.
fn json_quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `s` quoted, cut after 40 characters.
fn quote_short(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        json_quote(s)
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{}…", json_quote(&head))
    }
}

/// serde's names for what a visitor expects, in the words of a YAML file.
fn expected_in_words(expected: &str) -> String {
    let integer = |max: &str| format!("a whole number from 0 to {max}");
    match expected {
        "u8" => integer("255"),
        "u16" => integer("65535"),
        "u32" => integer("4294967295"),
        "u64" => integer("18446744073709551615"),
        "i8" | "i16" | "i32" | "i64" => "a whole number".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        "a boolean" | "bool" => "`true` or `false`".to_string(),
        other if other.starts_with("struct ") => "a mapping".to_string(),
        other => other.to_string(),
    }
}

fn is_integer_type(expected: &str) -> bool {
    matches!(
        expected,
        "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64"
    )
}

impl DeError {
    fn new(kind: DeErrorKind) -> Self {
        DeError {
            kind,
            location: None,
        }
    }

    /// Stamps the error with `path` and `span` unless it already has a location.
    fn located_at(mut self, path: &Path, span: Span) -> Self {
        if self.location.is_none() {
            self.location = Some(Location {
                path: path.clone(),
                span,
            });
        }
        self
    }

    /// The name of the field the error is about, if it is under a key.
    fn field(&self) -> Option<&str> {
        match self.location.as_ref()?.path.segments().last()? {
            Segment::Key(key) => Some(key),
            Segment::Index(_) => None,
        }
    }

    /// The one-line message (what is wrong) and the help (what is allowed,
    /// or what to do), as shown to the user.
    pub(crate) fn describe(&self) -> (String, Option<String>) {
        match &self.kind {
            DeErrorKind::InvalidType { found, expected } => (
                format!("expected {}, found {found}", expected_in_words(expected)),
                type_help(found, expected, self.field()),
            ),
            DeErrorKind::InvalidValue { found, expected } => (
                format!("{found} is out of range"),
                Some(format!("expected {}", expected_in_words(expected))),
            ),
            DeErrorKind::UnknownField { field, expected } => {
                let help = if let Some(close) = suggest::closest(field, expected.iter().copied()) {
                    format!("did you mean `{close}`?")
                } else if let Some(ours) = suggest::synonym(field, expected.iter().copied()) {
                    format!("bora.yaml calls this `{ours}`")
                } else {
                    format!("expected one of: {}", expected.join(", "))
                };
                (format!("unknown field `{field}`"), Some(help))
            }
            DeErrorKind::UnknownVariant { value, expected } => {
                let allowed = expected.join(", ");
                let help = match suggest::closest(value, expected.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`? expected one of: {allowed}"),
                    None => format!("expected one of: {allowed}"),
                };
                (format!("unknown value `{value}`"), Some(help))
            }
            DeErrorKind::MissingField(field) => (
                format!("missing field `{field}`"),
                Some(missing_field_help(field)),
            ),
            DeErrorKind::Custom(message) => (message.clone(), None),
        }
    }
}

/// What to do about a value of the wrong kind, when there is a likely fix.
fn type_help(found: &Found, expected: &str, field: Option<&str>) -> Option<String> {
    match found {
        Found::Nothing => Some("write a value here".to_string()),
        Found::Mapping if expected == "a sequence" => {
            Some("write a list: start each item with `- `".to_string())
        }
        Found::Str(s) if is_integer_type(expected) && s.trim().parse::<i128>().is_ok() => {
            Some(format!("remove the quotes: {}", s.trim()))
        }
        Found::Number(_) if expected.contains("duration") => {
            Some("add a unit, like 30s, 500ms or 5m".to_string())
        }
        Found::Number(text) if expected == "a string" => {
            Some(format!("to use it as text, put it in quotes: \"{text}\""))
        }
        Found::Bool(b) if expected == "a string" => {
            Some(format!("to use it as text, put it in quotes: \"{b}\""))
        }
        Found::Str(s) if expected == "a sequence" && matches!(field, Some("command" | "args")) => {
            let words: Vec<String> = s.split_whitespace().map(json_quote).collect();
            Some(format!("write a list: [{}]", words.join(", ")))
        }
        Found::Number(port) if expected.contains("`port`") => {
            Some(format!("write {{ port: {port} }}"))
        }
        _ => None,
    }
}

/// How to add a required field that is missing.
fn missing_field_help(field: &str) -> String {
    match field {
        "app" => "add `app: <name>` at the top, e.g. `app: hello`".to_string(),
        "services" => {
            "add a `services:` list with at least one service (each needs a `name` and an `image`)"
                .to_string()
        }
        "name" => "add `name: <name>`, e.g. `name: web`".to_string(),
        "image" => {
            "add `image: <image reference>`, e.g. `image: registry.example.com/team/web:1.0`"
                .to_string()
        }
        "port" => "add `port: <number>`, e.g. `port: 8000`".to_string(),
        "path" => "add `path: <path>`, e.g. `path: /`".to_string(),
        "secret" => "write `{ secret: <name of the secret> }`".to_string(),
        other => format!("add `{other}: <value>`"),
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (message, _) = self.describe();
        match &self.location {
            Some(location) if !location.path.is_root() => write!(f, "{}: {message}", location.path),
            _ => f.write_str(&message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        DeError::new(DeErrorKind::Custom(message.to_string()))
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DeError::new(DeErrorKind::InvalidType {
            found: unexpected.into(),
            expected: expected.to_string(),
        })
    }

    fn invalid_value(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DeError::new(DeErrorKind::InvalidValue {
            found: unexpected.into(),
            expected: expected.to_string(),
        })
    }

    fn invalid_length(len: usize, expected: &dyn de::Expected) -> Self {
        DeError::custom(format_args!("expected {expected}, found {len} items"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownVariant {
            value: variant.to_string(),
            expected,
        })
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownField {
            field: field.to_string(),
            expected,
        })
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(DeErrorKind::MissingField(field))
    }
}

/// Deserializes one node; `path` is where the node sits in the document.
pub(crate) struct NodeDe<'a> {
    node: &'a Node,
    path: Path,
}

impl<'a> NodeDe<'a> {
    pub(crate) fn new(node: &'a Node, path: Path) -> Self {
        NodeDe { node, path }
    }

    /// Gives an error from a visitor of this node its location.
    fn locate(&self, error: DeError) -> DeError {
        // A hand-written visitor (like the one of `EnvValue`) reports an
        // unknown field after it has read the key; point at that key.
        if error.location.is_none()
            && let DeErrorKind::UnknownField { field, .. } = &error.kind
            && let Some(entry) = self.node.entry(field)
        {
            let path = self.path.key(field);
            return error.located_at(&path, entry.key_span);
        }
        // serde's visitors describe a number by its value; show it as written.
        let mut error = error;
        if error.location.is_none()
            && let DeErrorKind::InvalidType { found, .. } | DeErrorKind::InvalidValue { found, .. } =
                &mut error.kind
            && let (Found::Number(_), Some(written)) = (&*found, &self.node.written)
        {
            *found = Found::Number(written.clone());
        }
        error.located_at(&self.path, self.node.span)
    }

    fn wrong_type(&self, expected: String) -> DeError {
        self.locate(DeError::new(DeErrorKind::InvalidType {
            found: Found::of(self.node),
            expected,
        }))
    }
}

/// Lists names as "`a`, `b`, `c`".
fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'de> Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => {
                if let Ok(u) = u64::try_from(*i) {
                    visitor.visit_u64(u)
                } else if let Ok(i) = i64::try_from(*i) {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_i128(*i)
                }
            }
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                current: None,
                path: &self.path,
            }),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.value == Value::Null {
            visitor.visit_none().map_err(|e| self.locate(e))
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Str(s) => visitor
                .visit_enum(s.as_str().into_deserializer())
                .map_err(|e| self.locate(e)),
            _ => Err(self.wrong_type(format!("one of {}", backticked(variants)))),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(_) => self.deserialize_any(visitor),
            _ => Err(self.wrong_type(format!("a mapping with {}", backticked(fields)))),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// Reads a list, item by item, skipping items removed by error recovery.
struct SeqDe<'a, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: &'p Path,
}

impl<'de> SeqAccess<'de> for SeqDe<'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        for (index, node) in self.items.by_ref() {
            if !node.removed {
                return seed
                    .deserialize(NodeDe::new(node, self.path.index(index)))
                    .map(Some);
            }
        }
        Ok(None)
    }
}

/// Reads a mapping, entry by entry, skipping entries removed by error recovery.
struct MapDe<'a, 'p> {
    entries: std::slice::Iter<'a, Entry>,
    current: Option<&'a Entry>,
    path: &'p Path,
}

impl<'de> MapAccess<'de> for MapDe<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.by_ref().find(|e| !e.value.removed) else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key = KeyDe {
            key: &entry.key,
            path: self.path.key(&entry.key),
            span: entry.key_span,
        };
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.current.take() else {
            return Err(de::Error::custom("a value was read before its key"));
        };
        seed.deserialize(NodeDe::new(&entry.value, self.path.key(&entry.key)))
    }
}

/// Deserializes a mapping key (always a string); errors point at the key.
struct KeyDe<'a> {
    key: &'a str,
    path: Path,
    span: Span,
}

impl<'de> Deserializer<'de> for KeyDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor
            .visit_borrowed_str(self.key)
            .map_err(|e: DeError| e.located_at(&self.path, self.span))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::yaml::{Pos, load};

    fn from_yaml<T: Deserialize<'static>>(source: &str) -> Result<T, DeError> {
        // Leaking keeps the test helper simple: borrowed strings live forever.
        let node: &'static Node = Box::leak(Box::new(
            load(source).expect("valid YAML").expect("not empty"),
        ));
        T::deserialize(NodeDe::new(node, Path::root()))
    }

    #[test]
    fn fills_api_types() {
        let spec: bora_api::ServiceSpec = from_yaml(
            "name: web\nimage: x\nports: [{ port: 8000 }]\nenv: { A: yes, B: 1, C: { secret: s } }\n",
        )
        .expect("valid");
        assert_eq!(spec.ports[0].port, 8000);
        assert_eq!(spec.env["A"], bora_api::EnvValue::Plain("yes".into()));
        assert_eq!(spec.env["B"], bora_api::EnvValue::Plain("1".into()));
    }

    #[test]
    fn unknown_fields_point_at_the_key() {
        let err = from_yaml::<bora_api::ServiceSpec>("name: web\nimagee: x\n").unwrap_err();
        let location = err.location.clone().expect("located");
        assert_eq!(location.path.to_string(), "imagee");
        assert_eq!(location.span.start, Pos { line: 2, column: 1 });
        assert_eq!(err.describe().1.as_deref(), Some("did you mean `image`?"));

        let err =
            from_yaml::<BTreeMap<String, bora_api::EnvValue>>("A: { secrt: x }\n").unwrap_err();
        let location = err.location.expect("located");
        assert_eq!(location.path.to_string(), "A.secrt");
        assert_eq!(location.span.start, Pos { line: 1, column: 6 });
    }

    #[test]
    fn quoted_numbers_are_not_numbers() {
        let err = from_yaml::<bora_api::PortSpec>("port: \"8000\"\n").unwrap_err();
        let (message, help) = err.describe();
        assert_eq!(
            message,
            "expected a whole number from 0 to 65535, found the string \"8000\""
        );
        assert_eq!(help.as_deref(), Some("remove the quotes: 8000"));
    }

    #[test]
    fn missing_fields_point_at_the_mapping() {
        let err = from_yaml::<bora_api::ServiceSpec>("x: 1\nname: web\n").unwrap_err();
        // The unknown field comes first; the missing one is found at the end.
        assert!(matches!(err.kind, DeErrorKind::UnknownField { .. }));
        // (`image` may be absent: a built-in model has none; validation
        // asks for it elsewhere.)
        let err = from_yaml::<bora_api::ServiceSpec>("\nimage: web\n").unwrap_err();
        assert_eq!(err.kind, DeErrorKind::MissingField("name"));
        let location = err.location.expect("located");
        assert!(location.path.is_root());
        assert_eq!(location.span.start, Pos { line: 2, column: 1 });
    }
}
