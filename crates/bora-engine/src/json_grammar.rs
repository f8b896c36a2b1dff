//! Constrained decoding for `response_format` `json_object` and
//! `json_schema`, and for forced tool calls: a byte-level pushdown automaton for JSON (optionally shaped
//! by a schema) that masks, at each step, every token whose bytes would make
//! the output invalid.
//!
//! # The output it allows
//!
//! - Compact JSON: no whitespace outside strings (the model cannot stall on
//!   spaces and newlines, and every path is short).
//! - `json_object`: any JSON object; nesting at most [`MAX_DEPTH`] deep.
//! - `json_schema`: the subset [`Grammar::from_schema`] documents. Object
//!   properties are produced in schema order; optional ones may be left
//!   out; no others are allowed (`additionalProperties` is false whatever
//!   `strict` says).
//! - `anyOf`: a value of any alternative. The matcher follows every
//!   alternative that still accepts the output (at most [`MAX_READINGS`]
//!   readings at once), so alternatives may share a prefix: tool calls are
//!   an `anyOf` of objects that differ from their `name` on.
//! - Numbers have at most [`MAX_NUMBER_LEN`] characters and two exponent
//!   digits; integers at most [`MAX_INTEGER_LEN`] characters.
//! - Strings are valid UTF-8 (overlong forms and surrogates are refused)
//!   with JSON escapes; a `\u` escape may not name a surrogate (characters
//!   outside the BMP come as UTF-8 bytes).
//!
//! The end-of-turn token is allowed only once the value is complete, so a
//! generation that ends by itself always parses. One cut by `max_tokens`
//! is truncated JSON, reported with `finish_reason: length`; a `stop`
//! string the request gives can also cut it (`finish_reason: stop`): stop
//! strings are applied to the text after decoding, as without a grammar.
//!
//! # Cost
//!
//! [`Matcher::mask`] checks the most likely tokens first, in logit order,
//! and keeps the first [`CANDIDATES`] valid ones found among the
//! [`SCAN_FIRST`] most likely; only when none of those is valid does it scan
//! the whole vocabulary. Greedy decoding is therefore exact, and sampling
//! draws from the valid tokens among the most likely ones (like a top-k of
//! at most [`CANDIDATES`]).

use std::sync::Arc;

use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

/// Deepest nesting of objects and arrays.
pub const MAX_DEPTH: usize = 32;
/// Longest number, in characters.
pub const MAX_NUMBER_LEN: usize = 24;
/// Longest integer, in characters (so it fits an `i64`).
pub const MAX_INTEGER_LEN: usize = 18;
/// Most likely tokens checked before falling back to a full scan.
pub const SCAN_FIRST: usize = 256;
/// Valid tokens kept from the first scan.
pub const CANDIDATES: usize = 64;
/// Most ways of reading the output kept at once while `anyOf` alternatives
/// are undecided (beyond that, the later alternatives are dropped).
pub const MAX_READINGS: usize = 64;

type NodeId = usize;

/// A JSON document that keeps the order of object keys (the schema's
/// property order decides the output's), as the request body gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(serde_json::Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in document order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The value at `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Self::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The same document as a [`Value`] (objects lose their key order).
    pub fn to_value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Number(n) => Value::Number(n.clone()),
            Self::String(s) => Value::String(s.clone()),
            Self::Array(items) => Value::Array(items.iter().map(Self::to_value).collect()),
            Self::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// Compact JSON text, keys in document order.
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Array(items) => {
                let parts: Vec<Vec<u8>> = items.iter().map(Self::to_bytes).collect();
                [b"[".to_vec(), parts.join(&b","[..]), b"]".to_vec()].concat()
            }
            Self::Object(entries) => {
                let parts: Vec<Vec<u8>> = entries
                    .iter()
                    .map(|(k, v)| {
                        [
                            serde_json::to_vec(k).unwrap_or_default(),
                            b":".to_vec(),
                            v.to_bytes(),
                        ]
                        .concat()
                    })
                    .collect();
                [b"{".to_vec(), parts.join(&b","[..]), b"}".to_vec()].concat()
            }
            other => serde_json::to_vec(&other.to_value()).unwrap_or_default(),
        }
    }
}

impl serde::Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Self::Null => s.serialize_unit(),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Number(n) => n.serialize(s),
            Self::String(text) => s.serialize_str(text),
            Self::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> std::result::Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> std::result::Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Json, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> std::result::Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> std::result::Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> std::result::Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> std::result::Result<Json, E> {
                serde_json::Number::from_f64(n)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("a number must be finite"))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Json, E> {
                Ok(Json::String(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> std::result::Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Json, A::Error> {
                let mut entries: Vec<(String, Json)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    // A repeated key: the last one wins, as in serde_json.
                    entries.retain(|(key, _)| *key != k);
                    entries.push((k, v));
                }
                Ok(Json::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A compiled schema node.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Any JSON value.
    Any,
    /// An object: declared properties in order, or (`free`) any keys whose
    /// values all match one node.
    Object {
        props: Vec<Prop>,
        free: Option<NodeId>,
    },
    /// An array.
    Array {
        items: NodeId,
        min: usize,
        max: Option<usize>,
    },
    /// A string with a length range in characters.
    String { min: usize, max: Option<usize> },
    /// A number; `integer` forbids a fraction and an exponent.
    Number { integer: bool },
    /// One of these exact JSON texts (enum, const, boolean, null).
    Literal(Vec<Vec<u8>>),
    /// A value of any of these nodes (`anyOf`): the matcher follows every
    /// alternative that still accepts the output.
    AnyOf(Vec<NodeId>),
}

#[derive(Debug, Clone, PartialEq)]
struct Prop {
    /// The key as JSON, quotes included.
    key: Vec<u8>,
    value: NodeId,
    required: bool,
}

/// A compiled JSON grammar, shared read-only by the sequences that use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    nodes: Vec<Node>,
    root: NodeId,
}

const ANY: NodeId = 0;
const ANY_OBJECT: NodeId = 1;
const ANY_ARRAY: NodeId = 2;
const ANY_STRING: NodeId = 3;
const ANY_NUMBER: NodeId = 4;
const KEYWORDS: NodeId = 5;

impl Grammar {
    fn base() -> Self {
        Self {
            nodes: vec![
                Node::Any,
                Node::Object {
                    props: vec![],
                    free: Some(ANY),
                },
                Node::Array {
                    items: ANY,
                    min: 0,
                    max: None,
                },
                Node::String { min: 0, max: None },
                Node::Number { integer: false },
                Node::Literal(vec![b"true".to_vec(), b"false".to_vec(), b"null".to_vec()]),
            ],
            root: ANY,
        }
    }

    /// Any JSON object (`response_format: {type: json_object}`).
    pub fn any_object() -> Self {
        Self {
            root: ANY_OBJECT,
            ..Self::base()
        }
    }

    /// Compiles a JSON schema. Supported: `type` (one of object, string,
    /// number, integer, boolean, null, array), `properties`, `required`,
    /// `additionalProperties: false`, `items`, `minItems`, `maxItems`,
    /// `minLength`, `maxLength`, `enum`, `const`, `anyOf` (with nothing but
    /// annotations beside it), and the annotations `title`, `description`,
    /// `$schema`, `$id`, `examples`, `default`.
    /// An empty schema allows any value. Anything else fails with the path
    /// of the keyword (`path` is the path of `schema` itself).
    pub fn from_schema(schema: &Json, path: &str) -> Result<Self> {
        let mut g = Self::base();
        g.root = g.compile(schema, path)?;
        Ok(g)
    }

    fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn compile(&mut self, schema: &Json, path: &str) -> Result<NodeId> {
        let Json::Object(entries) = schema else {
            return Err(EngineError::invalid(
                path,
                format!("{path} must be a JSON object"),
            ));
        };
        let unsupported = |key: &str, why: &str| {
            let at = format!("{path}.{key}");
            EngineError::invalid(&at, format!("{at} is not supported{why}"))
        };
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "enum",
            "const",
            "title",
            "description",
            "$schema",
            "$id",
            "examples",
            "default",
            "anyOf",
        ];
        let obj = schema;
        let has = |key: &str| obj.get(key).is_some();
        if let Some((key, _)) = entries.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
            return Err(unsupported(
                key,
                " (supported: type, properties, required, additionalProperties: false, items, minItems, maxItems, minLength, maxLength, enum, const, anyOf)",
            ));
        }
        let count = |key: &str| -> Result<Option<usize>> {
            match obj.get(key) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                    let at = format!("{path}.{key}");
                    EngineError::invalid(&at, format!("{at} must be a non-negative integer"))
                }),
            }
        };
        if let Some(alts) = obj.get("anyOf") {
            return self.compile_any_of(entries, alts, path);
        }
        if has("enum") || has("const") {
            let values: Vec<&Json> = match (obj.get("enum"), obj.get("const")) {
                (Some(_), Some(_)) => return Err(unsupported("const", " together with enum")),
                (Some(Json::Array(vs)), None) if !vs.is_empty() => vs.iter().collect(),
                (Some(_), None) => {
                    let at = format!("{path}.enum");
                    return Err(EngineError::invalid(
                        &at,
                        format!("{at} must be a non-empty array"),
                    ));
                }
                (None, Some(v)) => vec![v],
                (None, None) => unreachable!("checked above"),
            };
            let alts = values.into_iter().map(Json::to_bytes).collect();
            return Ok(self.add(Node::Literal(alts)));
        }
        let kind = match obj.get("type") {
            None if has("properties") => "object",
            None if has("items") => "array",
            None => return Ok(ANY),
            Some(Json::String(t)) => t.as_str(),
            Some(_) => return Err(unsupported("type", " unless it is a single type name")),
        };
        for (key, kinds) in [
            ("properties", &["object"][..]),
            ("required", &["object"]),
            ("additionalProperties", &["object"]),
            ("items", &["array"]),
            ("minItems", &["array"]),
            ("maxItems", &["array"]),
            ("minLength", &["string"]),
            ("maxLength", &["string"]),
        ] {
            if has(key) && !kinds.contains(&kind) {
                return Err(unsupported(key, &format!(" for type '{kind}'")));
            }
        }
        let node = match kind {
            "object" => {
                match obj.get("additionalProperties") {
                    None | Some(Json::Bool(false)) => {}
                    Some(_) => {
                        return Err(unsupported("additionalProperties", " unless it is false"));
                    }
                }
                let required: Vec<&str> = match obj.get("required") {
                    None => vec![],
                    Some(Json::Array(names)) => names
                        .iter()
                        .map(|n| {
                            n.as_str().ok_or_else(|| {
                                let at = format!("{path}.required");
                                EngineError::invalid(&at, format!("{at} must list strings"))
                            })
                        })
                        .collect::<Result<_>>()?,
                    Some(_) => {
                        let at = format!("{path}.required");
                        return Err(EngineError::invalid(&at, format!("{at} must be an array")));
                    }
                };
                let mut props = Vec::new();
                if let Some(ps) = obj.get("properties") {
                    let Json::Object(ps) = ps else {
                        let at = format!("{path}.properties");
                        return Err(EngineError::invalid(&at, format!("{at} must be an object")));
                    };
                    for (name, sub) in ps {
                        let value = self.compile(sub, &format!("{path}.properties.{name}"))?;
                        props.push(Prop {
                            key: serde_json::to_vec(name).unwrap_or_default(),
                            value,
                            required: required.contains(&name.as_str()),
                        });
                    }
                }
                if let Some(missing) = required.iter().find(|r| {
                    !props
                        .iter()
                        .any(|p| p.key == serde_json::to_vec(r).unwrap_or_default())
                }) {
                    let at = format!("{path}.required");
                    return Err(EngineError::invalid(
                        &at,
                        format!("{at} names '{missing}', which is not in properties"),
                    ));
                }
                Node::Object { props, free: None }
            }
            "array" => {
                let items = match obj.get("items") {
                    None => ANY,
                    Some(sub) => self.compile(sub, &format!("{path}.items"))?,
                };
                let min = count("minItems")?.unwrap_or(0);
                let max = count("maxItems")?;
                if max.is_some_and(|m| m < min) {
                    let at = format!("{path}.maxItems");
                    return Err(EngineError::invalid(&at, format!("{at} is below minItems")));
                }
                Node::Array { items, min, max }
            }
            "string" => {
                let min = count("minLength")?.unwrap_or(0);
                let max = count("maxLength")?;
                if max.is_some_and(|m| m < min) {
                    let at = format!("{path}.maxLength");
                    return Err(EngineError::invalid(
                        &at,
                        format!("{at} is below minLength"),
                    ));
                }
                Node::String { min, max }
            }
            "number" => return Ok(ANY_NUMBER),
            "integer" => Node::Number { integer: true },
            "boolean" => Node::Literal(vec![b"true".to_vec(), b"false".to_vec()]),
            "null" => Node::Literal(vec![b"null".to_vec()]),
            other => {
                return Err(unsupported(
                    "type",
                    &format!(
                        " for '{other}' (supported: object, array, string, number, integer, boolean, null)"
                    ),
                ));
            }
        };
        Ok(self.add(node))
    }

    /// `anyOf`: only annotations may stand next to it (no `type` or other
    /// constraints to intersect with the alternatives).
    fn compile_any_of(
        &mut self,
        entries: &[(String, Json)],
        alts: &Json,
        path: &str,
    ) -> Result<NodeId> {
        const BESIDE: &[&str] = &[
            "anyOf",
            "title",
            "description",
            "$schema",
            "$id",
            "examples",
            "default",
        ];
        if let Some((key, _)) = entries.iter().find(|(k, _)| !BESIDE.contains(&k.as_str())) {
            let at = format!("{path}.{key}");
            return Err(EngineError::invalid(
                &at,
                format!(
                    "{at} is not supported together with anyOf (move it into each alternative)"
                ),
            ));
        }
        let at = format!("{path}.anyOf");
        let alts = match alts {
            Json::Array(alts) if !alts.is_empty() => alts,
            _ => {
                return Err(EngineError::invalid(
                    &at,
                    format!("{at} must be a non-empty array of schemas"),
                ));
            }
        };
        let mut nodes = Vec::with_capacity(alts.len());
        for (i, alt) in alts.iter().enumerate() {
            nodes.push(self.compile(alt, &format!("{at}[{i}]"))?);
        }
        Ok(match nodes.as_slice() {
            [one] => *one,
            _ => self.add(Node::AnyOf(nodes)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Backslash,
    Hex(u8),
    /// The first hex digit was `d`: the second must keep it out of the
    /// surrogate range.
    HexAfterD,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ObjState {
    /// After `{`.
    Start,
    /// Inside a declared key: candidate property indices, bytes matched.
    Key(Vec<usize>, usize),
    /// After a key, expecting `:`; the value's node.
    Colon(NodeId),
    AfterValue,
    AfterComma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrState {
    Start,
    AfterValue,
    AfterComma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumState {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
    /// Two exponent digits: the most (so the value stays a finite `f64`).
    Exp2,
}

impl NumState {
    fn complete(self) -> bool {
        matches!(
            self,
            Self::Zero | Self::Int | Self::Frac | Self::Exp | Self::Exp2
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// A value of this node is expected next.
    Value(NodeId),
    Object {
        node: NodeId,
        state: ObjState,
        /// Declared properties before this index are used or skipped.
        next: usize,
    },
    Array {
        node: NodeId,
        state: ArrState,
        count: usize,
    },
    String {
        node: NodeId,
        escape: Escape,
        /// UTF-8 continuation bytes still expected.
        utf8: u8,
        /// The range of the next continuation byte.
        next_range: (u8, u8),
        chars: usize,
    },
    Number {
        integer: bool,
        state: NumState,
        len: usize,
    },
    Literal {
        node: NodeId,
        candidates: Vec<usize>,
        pos: usize,
    },
}

enum Step {
    /// The byte was consumed; the frame goes on.
    Consumed,
    /// The byte was consumed and completed the frame's value.
    Done,
    /// The frame's value was already complete; the byte belongs to the parent.
    Pass,
    /// Replace this frame by another and feed it the byte.
    Become(Frame),
    /// Replace this frame by another, which consumed the byte (its opening).
    Opened(Frame),
    /// Push a child frame (the parent already moved on) and feed it the byte.
    Push(Frame),
    /// Push a child frame; the parent consumed the byte.
    PushAfter(Frame),
    /// The byte is not allowed here.
    Reject,
}

/// The automaton's state for one sequence.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    /// One parse stack per way of reading the output so far: a single one,
    /// except while an `anyOf` has not yet been decided.
    stacks: Vec<Vec<Frame>>,
}

/// What feeding a byte to one parse stack did.
enum Fed {
    /// The byte was accepted.
    Yes,
    /// The byte is not allowed.
    No,
    /// The top frame expects a value of an `anyOf`: the byte goes to each
    /// alternative in a copy of the stack.
    Fork(Vec<NodeId>),
}

impl Matcher {
    /// The start state: one value of the grammar's root is expected.
    pub fn new(grammar: Arc<Grammar>) -> Self {
        let root = grammar.root;
        Self {
            grammar,
            stacks: vec![vec![Frame::Value(root)]],
        }
    }

    /// Whether the output so far is one complete value (so generation may
    /// end here).
    pub fn is_complete(&self) -> bool {
        self.stacks.iter().any(|stack| match stack.as_slice() {
            [] => true,
            [Frame::Number { state, .. }] => state.complete(),
            [
                Frame::Literal {
                    node,
                    candidates,
                    pos,
                },
            ] => self.literal_complete(*node, candidates, *pos),
            _ => false,
        })
    }

    fn literal_complete(&self, node: NodeId, candidates: &[usize], pos: usize) -> bool {
        let Node::Literal(alts) = &self.grammar.nodes[node] else {
            return false;
        };
        candidates.iter().any(|&c| alts[c].len() == pos)
    }

    /// Feeds `bytes`; on `false` the state is unspecified (use a clone to
    /// test).
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(b))
    }

    /// Whether `bytes` may come next.
    pub fn allows(&self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && self.clone().advance(bytes)
    }

    fn feed(&mut self, b: u8) -> bool {
        let mut todo: std::collections::VecDeque<Vec<Frame>> =
            std::mem::take(&mut self.stacks).into();
        while let Some(mut stack) = todo.pop_front() {
            match feed_stack(&self.grammar, &mut stack, b) {
                // Readings that have converged are kept once; past the
                // limit, the later alternatives are dropped.
                Fed::Yes if !self.stacks.contains(&stack) && self.stacks.len() < MAX_READINGS => {
                    self.stacks.push(stack);
                }
                Fed::Yes | Fed::No => {}
                Fed::Fork(alts) => {
                    // In schema order, before the readings not yet fed.
                    for alt in alts.into_iter().rev() {
                        let mut copy = stack.clone();
                        if let Some(top) = copy.last_mut() {
                            *top = Frame::Value(alt);
                        }
                        todo.push_front(copy);
                    }
                }
            }
        }
        !self.stacks.is_empty()
    }

    /// Masks (sets to -inf) the logits of every token that may not come
    /// next: tokens that break the grammar, control tokens, and end-of-turn
    /// tokens before the value is complete. See the module docs for which
    /// tokens are checked. Returns whether any token is left.
    pub fn mask(&self, logits: &mut [f32], tokenizer: &TextTokenizer) -> bool {
        let complete = self.is_complete();
        let valid = |id: u32| {
            if tokenizer.is_end_of_generation(id) {
                complete
            } else {
                !tokenizer.is_control(id) && self.allows(tokenizer.token_bytes(id))
            }
        };
        let mut order: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let first = SCAN_FIRST.min(order.len());
        if first > 0 && first < order.len() {
            order.select_nth_unstable_by(first - 1, by_logit);
        }
        order[..first].sort_unstable_by(by_logit);
        let mut keep: Vec<u32> = order[..first]
            .iter()
            .copied()
            .filter(|&id| valid(id))
            .take(CANDIDATES)
            .collect();
        if keep.is_empty() {
            keep = order[first..]
                .iter()
                .copied()
                .filter(|&id| valid(id))
                .collect();
        }
        let mut kept = vec![f32::NEG_INFINITY; logits.len()];
        for &id in &keep {
            kept[id as usize] = logits[id as usize];
        }
        logits.copy_from_slice(&kept);
        !keep.is_empty()
    }
}

/// Feeds `b` to one parse stack.
fn feed_stack(g: &Grammar, stack: &mut Vec<Frame>, b: u8) -> Fed {
    loop {
        let Some(top) = stack.last_mut() else {
            return Fed::No;
        };
        if let Frame::Value(node) = top
            && let Node::AnyOf(alts) = &g.nodes[*node]
        {
            return Fed::Fork(alts.clone());
        }
        match step(g, top, b) {
            Step::Consumed => return Fed::Yes,
            Step::Done => {
                stack.pop();
                return Fed::Yes;
            }
            Step::Pass => {
                stack.pop();
            }
            Step::Become(frame) => *top = frame,
            Step::Opened(frame) => {
                *top = frame;
                return Fed::Yes;
            }
            Step::Push(_) | Step::PushAfter(_) if stack.len() >= 2 * MAX_DEPTH => {
                return Fed::No;
            }
            Step::Push(frame) => stack.push(frame),
            Step::PushAfter(frame) => {
                stack.push(frame);
                return Fed::Yes;
            }
            Step::Reject => return Fed::No,
        }
    }
}

fn step(g: &Grammar, frame: &mut Frame, b: u8) -> Step {
    match frame {
        Frame::Value(node) => start_value(g, *node, b),
        Frame::Object { node, state, next } => {
            let (props, free) = match &g.nodes[*node] {
                Node::Object { props, free } => (props, *free),
                _ => return Step::Reject,
            };
            // Declared properties that may come next: up to the first required.
            let allowed = || {
                let end = props[*next..]
                    .iter()
                    .position(|p| p.required)
                    .map_or(props.len(), |i| *next + i + 1);
                (*next..end).collect::<Vec<_>>()
            };
            let may_close = free.is_some() || props[*next..].iter().all(|p| !p.required);
            match state {
                ObjState::Start | ObjState::AfterComma if b == b'"' => {
                    if let Some(value) = free {
                        *state = ObjState::Colon(value);
                        return Step::PushAfter(Frame::String {
                            node: ANY_STRING,
                            escape: Escape::None,
                            utf8: 0,
                            next_range: (0x80, 0xBF),
                            chars: 0,
                        });
                    }
                    let candidates = allowed();
                    if candidates.is_empty() {
                        return Step::Reject;
                    }
                    *state = ObjState::Key(candidates, 1);
                    Step::Consumed
                }
                ObjState::Start | ObjState::AfterValue if b == b'}' && may_close => Step::Done,
                ObjState::Key(candidates, pos) => {
                    candidates.retain(|&c| props[c].key.get(*pos) == Some(&b));
                    *pos += 1;
                    match candidates.as_slice() {
                        [] => Step::Reject,
                        [c, ..] if props[*c].key.len() == *pos => {
                            // Quoted keys are never prefixes of each other.
                            let c = *c;
                            *next = c + 1;
                            *state = ObjState::Colon(props[c].value);
                            Step::Consumed
                        }
                        _ => Step::Consumed,
                    }
                }
                ObjState::Colon(value) if b == b':' => {
                    let value = *value;
                    *state = ObjState::AfterValue;
                    Step::PushAfter(Frame::Value(value))
                }
                ObjState::AfterValue if b == b',' => {
                    if free.is_none() && *next >= props.len() {
                        return Step::Reject;
                    }
                    *state = ObjState::AfterComma;
                    Step::Consumed
                }
                _ => Step::Reject,
            }
        }
        Frame::Array { node, state, count } => {
            let Node::Array { items, min, max } = g.nodes[*node] else {
                return Step::Reject;
            };
            match state {
                ArrState::Start if b == b']' && min == 0 => Step::Done,
                ArrState::AfterValue if b == b']' && *count >= min => Step::Done,
                ArrState::AfterValue if b == b',' && max.is_none_or(|m| *count < m) => {
                    *state = ArrState::AfterComma;
                    Step::Consumed
                }
                ArrState::Start | ArrState::AfterComma if max.is_none_or(|m| *count < m) => {
                    *state = ArrState::AfterValue;
                    *count += 1;
                    Step::Push(Frame::Value(items))
                }
                _ => Step::Reject,
            }
        }
        Frame::String {
            node,
            escape,
            utf8,
            next_range,
            chars,
        } => {
            let (min, max) = match g.nodes[*node] {
                Node::String { min, max } => (min, max),
                _ => (0, None),
            };
            let room = max.is_none_or(|m| *chars < m);
            match *escape {
                Escape::Backslash => {
                    *escape = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Escape::None,
                        b'u' => Escape::Hex(4),
                        _ => return Step::Reject,
                    };
                    return Step::Consumed;
                }
                Escape::Hex(n) => {
                    if !b.is_ascii_hexdigit() {
                        return Step::Reject;
                    }
                    *escape = match n {
                        4 if b.eq_ignore_ascii_case(&b'd') => Escape::HexAfterD,
                        1 => Escape::None,
                        n => Escape::Hex(n - 1),
                    };
                    return Step::Consumed;
                }
                Escape::HexAfterD => {
                    if !matches!(b, b'0'..=b'7') {
                        return Step::Reject;
                    }
                    *escape = Escape::Hex(2);
                    return Step::Consumed;
                }
                Escape::None => {}
            }
            if *utf8 > 0 {
                if (next_range.0..=next_range.1).contains(&b) {
                    *utf8 -= 1;
                    *next_range = (0x80, 0xBF);
                    return Step::Consumed;
                }
                return Step::Reject;
            }
            match b {
                b'"' if *chars >= min => Step::Done,
                b'"' => Step::Reject,
                _ if !room => Step::Reject,
                b'\\' => {
                    *escape = Escape::Backslash;
                    *chars += 1;
                    Step::Consumed
                }
                0x20..=0x7F => {
                    *chars += 1;
                    Step::Consumed
                }
                0xC2..=0xF4 => {
                    *utf8 = match b {
                        0xC2..=0xDF => 1,
                        0xE0..=0xEF => 2,
                        _ => 3,
                    };
                    // No overlong forms, no surrogates, nothing past U+10FFFF.
                    *next_range = match b {
                        0xE0 => (0xA0, 0xBF),
                        0xED => (0x80, 0x9F),
                        0xF0 => (0x90, 0xBF),
                        0xF4 => (0x80, 0x8F),
                        _ => (0x80, 0xBF),
                    };
                    *chars += 1;
                    Step::Consumed
                }
                _ => Step::Reject,
            }
        }
        Frame::Number {
            integer,
            state,
            len,
        } => {
            use NumState as N;
            let next = match (*state, b) {
                (N::Start, b'-') => Some(N::Minus),
                (N::Start, b'0') => Some(N::Zero),
                // `-0` reads back as a float, not an integer.
                (N::Minus, b'0') if !*integer => Some(N::Zero),
                (N::Start | N::Minus, b'1'..=b'9') => Some(N::Int),
                (N::Int, b'0'..=b'9') => Some(N::Int),
                (N::Zero | N::Int, b'.') if !*integer => Some(N::Dot),
                (N::Dot | N::Frac, b'0'..=b'9') => Some(N::Frac),
                (N::Zero | N::Int | N::Frac, b'e' | b'E') if !*integer => Some(N::E),
                (N::E, b'+' | b'-') => Some(N::ESign),
                (N::E | N::ESign, b'0'..=b'9') => Some(N::Exp),
                (N::Exp, b'0'..=b'9') => Some(N::Exp2),
                _ => None,
            };
            match next {
                Some(s)
                    if *len
                        < if *integer {
                            MAX_INTEGER_LEN
                        } else {
                            MAX_NUMBER_LEN
                        } =>
                {
                    *state = s;
                    *len += 1;
                    Step::Consumed
                }
                _ if state.complete() => Step::Pass,
                _ => Step::Reject,
            }
        }
        Frame::Literal {
            node,
            candidates,
            pos,
        } => {
            let Node::Literal(alts) = &g.nodes[*node] else {
                return Step::Reject;
            };
            let complete = candidates.iter().any(|&c| alts[c].len() == *pos);
            let matching: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&c| alts[c].get(*pos) == Some(&b))
                .collect();
            if matching.is_empty() {
                return if complete { Step::Pass } else { Step::Reject };
            }
            *pos += 1;
            let longer = matching.iter().any(|&c| alts[c].len() > *pos);
            *candidates = matching;
            if longer { Step::Consumed } else { Step::Done }
        }
    }
}

/// What a value of `node` does with its first byte.
fn start_value(g: &Grammar, node: NodeId, b: u8) -> Step {
    let literal = |node: NodeId| Frame::Literal {
        node,
        candidates: match &g.nodes[node] {
            Node::Literal(alts) => (0..alts.len()).collect(),
            _ => vec![],
        },
        pos: 0,
    };
    let frame = match (&g.nodes[node], b) {
        (Node::Any | Node::Object { .. }, b'{') => Frame::Object {
            node: if matches!(g.nodes[node], Node::Any) {
                ANY_OBJECT
            } else {
                node
            },
            state: ObjState::Start,
            next: 0,
        },
        (Node::Any | Node::Array { .. }, b'[') => Frame::Array {
            node: if matches!(g.nodes[node], Node::Any) {
                ANY_ARRAY
            } else {
                node
            },
            state: ArrState::Start,
            count: 0,
        },
        (Node::Any | Node::String { .. }, b'"') => Frame::String {
            node: if matches!(g.nodes[node], Node::Any) {
                ANY_STRING
            } else {
                node
            },
            escape: Escape::None,
            utf8: 0,
            next_range: (0x80, 0xBF),
            chars: 0,
        },
        (Node::Any, b'-' | b'0'..=b'9') => {
            return Step::Become(Frame::Number {
                integer: false,
                state: NumState::Start,
                len: 0,
            });
        }
        (Node::Number { integer }, _) => {
            return Step::Become(Frame::Number {
                integer: *integer,
                state: NumState::Start,
                len: 0,
            });
        }
        (Node::Any, b't' | b'f' | b'n') => return Step::Become(literal(KEYWORDS)),
        (Node::Literal(_), _) => return Step::Become(literal(node)),
        _ => return Step::Reject,
    };
    // The opening byte is this frame's own: it is consumed here.
    Step::Opened(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn j(v: Value) -> Json {
        serde_json::from_value(v).unwrap()
    }

    fn matcher(schema: Option<&str>) -> Matcher {
        let g = match schema {
            None => Grammar::any_object(),
            Some(text) => {
                let ordered: Json = serde_json::from_str(text).unwrap();
                Grammar::from_schema(&ordered, "schema").unwrap()
            }
        };
        Matcher::new(Arc::new(g))
    }

    /// Whether `text` is accepted in full, and whether it is complete.
    fn run(m: &Matcher, text: &str) -> (bool, bool) {
        let mut m = m.clone();
        let ok = m.advance(text.as_bytes());
        (ok, ok && m.is_complete())
    }

    /// A schema with every supported keyword, as text (its property order
    /// is the output's).
    const PERSON: &str = r#"{
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 5, "description": "who"},
            "age": {"type": "integer"},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
            "ok": {"type": "boolean"},
            "kind": {"const": "x"},
            "pet": {"type": "object", "properties": {"n": {"type": "null"}}, "required": ["n"]},
            "opt": {"enum": [1, 10, "z"]}
        },
        "required": ["name", "age", "tags", "ok", "kind"],
        "additionalProperties": false
    }"#;

    /// Tool calls: alternatives that share a prefix and differ from the
    /// `name` on, one with an array of `anyOf` items.
    const CALLS: &str = r#"{"anyOf": [
        {"type": "object", "properties": {
            "name": {"const": "get_weather"},
            "arguments": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 8},
                "unit": {"enum": ["celsius", "fahrenheit"]}
            }, "required": ["city"]}
        }, "required": ["name", "arguments"]},
        {"type": "object", "properties": {
            "name": {"const": "get_time"},
            "arguments": {"type": "object", "properties": {
                "zones": {"type": "array", "maxItems": 3, "items": {"anyOf": [
                    {"type": "string", "maxLength": 3}, {"type": "integer"}, {"type": "null"}
                ]}}
            }}
        }, "required": ["name", "arguments"]}
    ]}"#;

    #[test]
    fn any_of_follows_every_alternative() {
        let m = matcher(Some(CALLS));
        for text in [
            r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#,
            r#"{"name":"get_weather","arguments":{"city":"Oslo","unit":"celsius"}}"#,
            r#"{"name":"get_time","arguments":{}}"#,
            r#"{"name":"get_time","arguments":{"zones":["UTC",-5,null]}}"#,
        ] {
            assert_eq!(run(&m, text), (true, true), "{text}");
        }
        for text in [
            r#"{"name":"get_stock""#,
            r#"{"name":"get_time","arguments":{"city""#,
            r#"{"name":"get_weather","arguments":{}}"#,
            r#"{"name":"get_time","arguments":{"zones":["CEST"]"#,
            r#"{"name":"get_time","arguments":{"zones":[1.5]"#,
            r#"{"name":"get_time","arguments":{"zones":[1,2,3,4]"#,
        ] {
            assert!(!run(&m, text).0, "{text}");
        }
        // Overlapping alternatives: both readings live until one ends.
        let m = matcher(Some(
            r#"{"anyOf": [{"type": "string", "maxLength": 2}, {"const": "abc"}, {"type": "integer"}]}"#,
        ));
        assert_eq!(run(&m, r#""ab""#), (true, true));
        assert_eq!(run(&m, r#""abc""#), (true, true));
        assert_eq!(run(&m, "12"), (true, true));
        assert!(!run(&m, r#""abd"#).0);
        assert!(!run(&m, "true").0);
        // Readings that converge are kept once.
        let mut m = matcher(Some(
            r#"{"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]}}"#,
        ));
        assert!(m.advance(b"[\"ab"));
        assert_eq!(m.stacks.len(), 2);
        assert!(m.advance(b"\","));
        assert_eq!(m.stacks.len(), 1);
    }

    #[test]
    fn json_keeps_key_order_when_written() {
        let text = r#"{"z":1,"a":[true,null,"x"],"m":{"b":2.5,"a":"y"}}"#;
        let json: Json = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), text);
    }

    #[test]
    fn json_object_accepts_valid_objects() {
        let m = matcher(None);
        for text in [
            "{}",
            r#"{"a":1}"#,
            r#"{"a":[true,null,"x\u00e9\n"],"b":{"c":-1.5e3,"d":[]},"é":0}"#,
            "{\"k\":\"日本\"}",
        ] {
            assert_eq!(run(&m, text), (true, true), "{text}");
        }
    }

    #[test]
    fn json_object_rejects_invalid_prefixes() {
        let m = matcher(None);
        for text in [
            "[",
            "1",
            "\"a\"",
            " {",
            "{ }",
            "{\"a\" :1}",
            "{\"a\":01}",
            "{,",
            "{\"a\":1,}",
            "{\"a\":tru ",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{}}",
            "{}x",
        ] {
            assert!(!run(&m, text).0, "{text:?}");
        }
        // Prefixes are fine but not complete.
        assert_eq!(run(&m, "{\"a\":1"), (true, false));
        assert_eq!(run(&m, "{\"a\":\"\\u00"), (true, false));
        assert!(!run(&m, "{\"a\":\"\\ud800").0);
        assert!(run(&m, "{\"a\":\"\\uD7ff\"}").1);
        let mut surrogate = m.clone();
        assert!(!surrogate.advance(b"{\"a\":\"\xed\xa0"));
        // Invalid UTF-8 inside a string.
        let mut bad = m.clone();
        assert!(!bad.advance(b"{\"a\":\"\xff"));
        let mut cut = m.clone();
        assert!(!cut.advance(b"{\"a\":\"\xe6\x97\""));
    }

    #[test]
    fn schema_shapes_the_object() {
        let m = matcher(Some(PERSON));
        for text in [
            r#"{"name":"bob","age":3,"tags":["a"],"ok":true,"kind":"x"}"#,
            r#"{"name":"","age":-20,"score":1.5,"tags":["b","a"],"ok":false,"kind":"x","pet":{"n":null},"opt":10}"#,
            r#"{"name":"bob","age":0,"tags":["a"],"ok":true,"kind":"x","opt":"z"}"#,
        ] {
            assert_eq!(run(&m, text), (true, true), "{text}");
        }
        for text in [
            r#"{"age":3"#,                                   // out of order
            r#"{"name":"bobbyb"#,                            // too long
            r#"{"name":"bob","age":3.5"#,                    // not an integer
            r#"{"name":"bob","age":3}"#,                     // required missing
            r#"{"name":"bob","age":3,"tags":[]"#,            // minItems
            r#"{"name":"bob","age":3,"tags":["a","a","a"]"#, // maxItems
            r#"{"name":"bob","age":3,"tags":["c"]"#,         // enum
            r#"{"name":"bob","age":3,"tags":["a"],"ok":true,"kind":"y"#,
            r#"{"name":"b","age":1,"tags":["a"],"ok":true,"kind":"x","extra""#,
            r#"{"name":"b","age":1,"tags":["a"],"ok":true,"kind":"x","opt":100"#,
        ] {
            assert!(!run(&m, text).0, "{text}");
        }
        // A trailing number is complete only when it is a whole value.
        let num = matcher(Some(r#"{"enum": [1, 10]}"#));
        assert_eq!(run(&num, "1"), (true, true));
        assert_eq!(run(&num, "10"), (true, true));
        assert!(!run(&num, "100").0);
        let int = matcher(Some(r#"{"type": "integer"}"#));
        assert_eq!(run(&int, "-10"), (true, true));
        assert!(!run(&int, "-0").0);
    }

    #[test]
    fn unsupported_keywords_are_named() {
        for (schema, path) in [
            (json!({"type": "string", "pattern": "a+"}), "schema.pattern"),
            (
                json!({"type": "object", "properties": {"a": {"type": "number", "minimum": 0}}}),
                "schema.properties.a.minimum",
            ),
            (json!({"type": ["string", "null"]}), "schema.type"),
            (json!({"anyOf": []}), "schema.anyOf"),
            (json!({"anyOf": {}}), "schema.anyOf"),
            (
                json!({"type": "string", "anyOf": [{"type": "string"}]}),
                "schema.type",
            ),
            (
                json!({"anyOf": [{"type": "string"}, {"type": "date"}]}),
                "schema.anyOf[1].type",
            ),
            (
                json!({"type": "object", "additionalProperties": true}),
                "schema.additionalProperties",
            ),
            (
                json!({"type": "object", "required": ["x"]}),
                "schema.required",
            ),
            (json!({"type": "string", "items": {}}), "schema.items"),
            (json!({"type": "date"}), "schema.type"),
        ] {
            match Grammar::from_schema(&j(schema.clone()), "schema").unwrap_err() {
                EngineError::InvalidRequest { param, .. } => {
                    assert_eq!(param.as_deref(), Some(path), "{schema}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A small validator for the supported subset.
    fn valid(schema: &Value, v: &Value) -> bool {
        if let Some(alts) = schema.get("anyOf") {
            return alts.as_array().unwrap().iter().any(|s| valid(s, v));
        }
        if let Some(alts) = schema.get("enum") {
            return alts.as_array().unwrap().contains(v);
        }
        if let Some(c) = schema.get("const") {
            return c == v;
        }
        let kind = schema.get("type").and_then(Value::as_str);
        let n = |k: &str| schema.get(k).and_then(Value::as_u64).map(|n| n as usize);
        match (kind, v) {
            (None, _) => true,
            (Some("object"), Value::Object(o)) => {
                let props = schema["properties"].as_object().unwrap();
                let required = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                required.iter().all(|r| o.contains_key(r.as_str().unwrap()))
                    && o.iter()
                        .all(|(k, x)| props.get(k).is_some_and(|s| valid(s, x)))
            }
            (Some("array"), Value::Array(a)) => {
                a.len() >= n("minItems").unwrap_or(0)
                    && n("maxItems").is_none_or(|m| a.len() <= m)
                    && a.iter()
                        .all(|x| valid(schema.get("items").unwrap_or(&json!({})), x))
            }
            (Some("string"), Value::String(s)) => {
                let len = s.chars().count();
                len >= n("minLength").unwrap_or(0) && n("maxLength").is_none_or(|m| len <= m)
            }
            (Some("number"), Value::Number(_)) => true,
            (Some("integer"), Value::Number(x)) => x.is_i64() || x.is_u64(),
            (Some("boolean"), Value::Bool(_)) => true,
            (Some("null"), Value::Null) => true,
            _ => false,
        }
    }

    /// Walks the automaton byte by byte with `choices` as the randomness;
    /// after `patience` bytes it prefers the bytes that close values.
    fn walk(m: &Matcher, choices: &[u16], patience: usize) -> (Vec<u8>, bool) {
        const CLOSING: &[u8] = b"\"}]0ab:,[{lrusetnf1";
        let mut m = m.clone();
        let mut out = Vec::new();
        for (i, &c) in choices.iter().enumerate() {
            let allowed: Vec<u8> = (0..=255u8).filter(|b| m.allows(&[*b])).collect();
            if allowed.is_empty() {
                assert!(
                    m.is_complete(),
                    "stuck after {:?}",
                    String::from_utf8_lossy(&out)
                );
                return (out, true);
            }
            let b = if i < patience {
                allowed[c as usize % allowed.len()]
            } else {
                CLOSING
                    .iter()
                    .copied()
                    .find(|b| allowed.contains(b))
                    .unwrap_or(allowed[c as usize % allowed.len()])
            };
            assert!(m.advance(&[b]));
            out.push(b);
            if m.is_complete() && c % 3 == 0 {
                return (out, true);
            }
        }
        let complete = m.is_complete();
        (out, complete)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_complete_path_parses_and_validates(
            choices in proptest::collection::vec(any::<u16>(), 400),
            patience in 0usize..60,
        ) {
            let person: Value = serde_json::from_str(PERSON).unwrap();
            let calls: Value = serde_json::from_str(CALLS).unwrap();
            for (m, schema) in [
                (matcher(Some(PERSON)), Some(&person)),
                (matcher(Some(CALLS)), Some(&calls)),
                (matcher(None), None),
            ] {
                let (bytes, complete) = walk(&m, &choices, patience);
                prop_assert!(complete, "did not finish: {:?}", String::from_utf8_lossy(&bytes));
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&bytes))))?;
                prop_assert!(value.is_object());
                if let Some(schema) = schema {
                    prop_assert!(valid(schema, &value), "{value}");
                }
            }
        }
    }
}
