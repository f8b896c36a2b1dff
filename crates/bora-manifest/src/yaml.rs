//! YAML text to a tree of [`Node`]s that remember where they were written.
//!
//! We read the event stream of `saphyr-parser` ourselves instead of using a
//! ready-made document type so that we can:
//!
//! - keep a line and column for every key and every value;
//! - reject duplicate keys (a ready-made hash map would silently keep one);
//! - reject a second document;
//! - resolve plain scalars by the YAML 1.2 core schema, so `yes` stays the
//!   string `"yes"` and `"8000"` (quoted) stays a string;
//! - expand aliases and `<<` merge keys with a budget, so a small file cannot
//!   expand into billions of values ("billion laughs"), and limit nesting depth
//!   so that deep input cannot exhaust the stack.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Tag};

use crate::path::{Path, Segment};

/// The most values a document may hold once aliases are expanded.
const MAX_NODES: usize = 100_000;
/// The deepest nesting of lists and mappings accepted.
const MAX_DEPTH: usize = 64;

/// A position in the source: line and column, both counted from 1; the
/// column counts characters, not bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<saphyr_parser::Marker> for Pos {
    fn from(marker: saphyr_parser::Marker) -> Self {
        Pos {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

/// Where a node was written: from `start` up to (not including) `end`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: Pos,
    pub end: Pos,
}

impl Span {
    /// An empty span at one position (an error in the YAML syntax, say).
    pub(crate) fn at(pos: Pos) -> Self {
        Span {
            start: pos,
            end: pos,
        }
    }
}

impl From<saphyr_parser::Span> for Span {
    fn from(span: saphyr_parser::Span) -> Self {
        Span {
            start: span.start.into(),
            end: span.end.into(),
        }
    }
}

/// One value of the document and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub span: Span,
    /// Set when error recovery takes the node out of the document: readers
    /// then skip it, but list indices of the nodes after it stay the same.
    pub removed: bool,
    /// For a plain scalar read as a number or boolean, the text as written
    /// (`1.10`, `0x1F`, `True`), which the value alone does not keep.
    pub written: Option<String>,
}

/// A YAML value after scalar resolution (YAML 1.2 core schema).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` of a mapping. Keys are always strings: a scalar key is
/// kept as written (`8000: x` has the key `"8000"`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

impl Node {
    fn new(value: Value, span: Span) -> Self {
        Node {
            value,
            span,
            removed: false,
            written: None,
        }
    }

    /// How many nodes this subtree holds, itself included.
    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|e| e.value.size()).sum(),
            _ => 0,
        }
    }

    /// The entry for `key`, if this is a mapping that has it (and it was not
    /// removed).
    pub(crate) fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key && !e.value.removed),
            _ => None,
        }
    }

    fn child(&self, segment: &Segment) -> Option<&Node> {
        match (segment, &self.value) {
            (Segment::Key(key), _) => self.entry(key).map(|e| &e.value),
            (Segment::Index(i), Value::Seq(items)) => items.get(*i).filter(|n| !n.removed),
            (Segment::Index(_), _) => None,
        }
    }

    fn child_mut(&mut self, segment: &Segment) -> Option<&mut Node> {
        match (segment, &mut self.value) {
            (Segment::Key(key), Value::Map(entries)) => entries
                .iter_mut()
                .find(|e| e.key == *key && !e.value.removed)
                .map(|e| &mut e.value),
            (Segment::Index(i), Value::Seq(items)) => items.get_mut(*i).filter(|n| !n.removed),
            _ => None,
        }
    }

    /// The node at `path`, if there is one.
    pub(crate) fn get(&self, path: &Path) -> Option<&Node> {
        path.segments()
            .iter()
            .try_fold(self, |node, segment| node.child(segment))
    }

    /// Where to point for `path`: the span of the node at `path` (or of its
    /// key, if `on_key`); when the path does not exist (a field that was left
    /// out), the span of the deepest node on the way to it.
    pub(crate) fn locate(&self, path: &Path, on_key: bool) -> Span {
        let mut node = self;
        let segments = path.segments();
        for (i, segment) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            if let (true, true, Segment::Key(key)) = (is_last, on_key, segment)
                && let Some(entry) = node.entry(key)
            {
                return entry.key_span;
            }
            match node.child(segment) {
                Some(child) => node = child,
                None => return node.span,
            }
        }
        node.span
    }

    /// Marks the node at `path` as removed; returns whether there was one.
    pub(crate) fn remove(&mut self, path: &Path) -> bool {
        let mut node = self;
        for segment in path.segments() {
            match node.child_mut(segment) {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.removed = true;
        true
    }

    /// The kind of value, as messages name it.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A problem found while reading the YAML text itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoadError {
    pub span: Span,
    /// The field path, when the error is inside the document's structure.
    pub path: Path,
    pub message: String,
    pub help: Option<String>,
}

impl LoadError {
    fn new(span: Span, message: impl Into<String>, help: impl Into<Option<String>>) -> Self {
        LoadError {
            span,
            path: Path::root(),
            message: message.into(),
            help: help.into(),
        }
    }

    fn from_scan(source: &str, error: &ScanError) -> Self {
        let mut pos = Pos::from(*error.marker());
        let info = error.info();
        let mentions_tabs = info
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|word| word == "tab" || word == "tabs");
        let help = if mentions_tabs {
            // The parser notices a tab where it wants the next token; point
            // at the tab itself when the indentation of that line has one.
            if let Some(tab) = source
                .lines()
                .nth(pos.line.saturating_sub(1))
                .and_then(|line| {
                    line.chars()
                        .take_while(|c| c.is_whitespace())
                        .position(|c| c == '\t')
                })
            {
                pos.column = tab + 1;
            }
            Some("indent with spaces: YAML does not allow tabs in indentation".to_string())
        } else if info.contains("indent") || info.contains("did not find expected") {
            Some("check the indentation: the keys of one mapping, and the `- ` items of one list, start in the same column".to_string())
        } else if info.contains("unknown anchor") {
            Some(
                "an alias `*name` refers to a value marked `&name` earlier in the file".to_string(),
            )
        } else if info.contains("mapping values are not allowed") {
            Some(
                "put a value that contains `: ` in quotes, or check the indentation of this line"
                    .to_string(),
            )
        } else {
            None
        };
        LoadError::new(Span::at(pos), format!("invalid YAML: {info}"), help)
    }
}

/// Parses `source` into a tree. `Ok(None)` means the document is empty
/// (nothing, only comments, or an explicit null).
pub(crate) fn load(source: &str) -> Result<Option<Node>, LoadError> {
    let mut loader = Loader::default();
    let mut parser = Parser::new_from_str(source);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| LoadError::from_scan(source, &e))?;
        loader.on_event(event, span.into())?;
    }
    Ok(loader.root.filter(|root| root.value != Value::Null))
}

/// A key read but whose value has not come yet.
#[derive(Debug)]
struct PendingKey {
    text: String,
    span: Span,
    /// `<<`, the merge key: its value's entries are merged into the mapping.
    is_merge: bool,
}

/// A list or mapping whose end has not been reached yet.
#[derive(Debug)]
enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Span,
        anchor: usize,
        entries: Vec<Entry>,
        /// The keys in `entries` and where each was written, to find
        /// duplicates without a quadratic search.
        seen: HashMap<String, Span>,
        key: Option<PendingKey>,
        merges: Vec<Node>,
    },
}

#[derive(Debug)]
struct Loader {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    /// Nodes still allowed, counting every expansion of an alias.
    budget: usize,
}

impl Default for Loader {
    fn default() -> Self {
        Loader {
            stack: Vec::new(),
            anchors: HashMap::new(),
            root: None,
            documents: 0,
            budget: MAX_NODES,
        }
    }
}

impl Loader {
    /// Handles one parser event; errors get the path of the value being read.
    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<(), LoadError> {
        self.handle(event, span).map_err(|mut error| {
            if error.path.is_root() {
                error.path = self.current_path();
            }
            error
        })
    }

    /// The path of the value being read: the pending key of every mapping and
    /// the next index of every list on the stack.
    fn current_path(&self) -> Path {
        self.stack
            .iter()
            .fold(Path::root(), |path, frame| match frame {
                Frame::Seq { items, .. } => path.index(items.len()),
                Frame::Map { key: Some(key), .. } => path.key(&key.text),
                Frame::Map { key: None, .. } => path,
            })
    }

    fn handle(&mut self, event: Event<'_>, span: Span) -> Result<(), LoadError> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(LoadError::new(
                        span,
                        "a second YAML document starts here",
                        "a bora.yaml holds one app: remove this `---` and what follows, or move it to its own file".to_string(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if self.expects_key() {
                    self.on_key(text.into_owned(), style, span)?;
                } else {
                    let value = resolve_scalar(&text, style, tag.as_deref(), span)?;
                    let mut node = Node::new(value, span);
                    if matches!(node.value, Value::Bool(_) | Value::Int(_) | Value::Float(_)) {
                        node.written = Some(text.into_owned());
                    }
                    self.spend(1, span)?;
                    self.finish(node, anchor)?;
                }
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", span)?;
                self.enter(span)?;
                self.stack.push(Frame::Seq {
                    start: span,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", span)?;
                self.enter(span)?;
                self.stack.push(Frame::Map {
                    start: span,
                    anchor,
                    entries: Vec::new(),
                    seen: HashMap::new(),
                    key: None,
                    merges: Vec::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => self.on_end(span)?,
            Event::Alias(id) => {
                if self.expects_key() {
                    return Err(not_a_key("an alias", span));
                }
                let Some(size) = self.anchors.get(&id).map(Node::size) else {
                    return Err(LoadError::new(
                        span,
                        "this alias cannot be expanded here",
                        "an alias (`*name`) must refer to an earlier, complete value marked `&name`".to_string(),
                    ));
                };
                // Spend before cloning, so that an expansion over budget is
                // never built.
                self.spend(size, span)?;
                let Some(mut node) = self.anchors.get(&id).cloned() else {
                    return Ok(());
                };
                node.span = span;
                self.finish(node, 0)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    /// Whether the next value read is a key of the innermost mapping.
    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn spend(&mut self, nodes: usize, span: Span) -> Result<(), LoadError> {
        self.budget = self.budget.checked_sub(nodes).ok_or_else(|| {
            LoadError::new(
                span,
                format!("the file expands to more than {MAX_NODES} values"),
                "check for aliases (`*name`) that expand into each other many times".to_string(),
            )
        })?;
        Ok(())
    }

    fn enter(&mut self, span: Span) -> Result<(), LoadError> {
        if self.expects_key() {
            return Err(not_a_key("a list or mapping", span));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(LoadError::new(
                span,
                format!("lists and mappings are nested more than {MAX_DEPTH} levels deep"),
                None,
            ));
        }
        self.spend(1, span)
    }

    fn on_key(&mut self, text: String, style: ScalarStyle, span: Span) -> Result<(), LoadError> {
        let Some(Frame::Map { seen, key, .. }) = self.stack.last_mut() else {
            return Ok(());
        };
        let is_merge = style == ScalarStyle::Plain && text == "<<";
        if !is_merge && let Some(first) = seen.get(&text) {
            let mut error = LoadError::new(
                span,
                format!("duplicate key `{text}`"),
                format!(
                    "`{text}` is already set on line {}; keep only one of them",
                    first.start.line
                ),
            );
            error.path = self.current_path().key(&text);
            return Err(error);
        }
        if !is_merge {
            seen.insert(text.clone(), span);
        }
        *key = Some(PendingKey {
            text,
            span,
            is_merge,
        });
        Ok(())
    }

    /// Closes the innermost list or mapping.
    fn on_end(&mut self, end: Span) -> Result<(), LoadError> {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let (value, start, anchor) = match frame {
            Frame::Seq {
                start,
                anchor,
                items,
            } => (Value::Seq(items), start, anchor),
            Frame::Map {
                start,
                anchor,
                mut entries,
                mut seen,
                merges,
                ..
            } => {
                for merged in merges {
                    merge_into(&mut entries, &mut seen, merged)?;
                }
                (Value::Map(entries), start, anchor)
            }
        };
        let span = Span {
            start: start.start,
            end: end.end,
        };
        self.finish(Node::new(value, span), anchor)
    }

    /// Records a complete node as an anchor (if it has one) and places it in
    /// its parent.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), LoadError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                key,
                merges,
                ..
            }) => match key.take() {
                Some(PendingKey { is_merge: true, .. }) => merges.push(node),
                Some(PendingKey { text, span, .. }) => entries.push(Entry {
                    key: text,
                    key_span: span,
                    value: node,
                }),
                // Scalars and aliases are handled before they get here, and
                // lists and mappings are refused when they start.
                None => return Err(not_a_key("this value", node.span)),
            },
        }
        Ok(())
    }
}

fn not_a_key(what: &str, span: Span) -> LoadError {
    LoadError::new(
        span,
        format!("{what} cannot be a mapping key"),
        "keys are plain words, like `image` or `GREETING`".to_string(),
    )
}

/// Applies a `<<: *defaults` merge: the entries of the merged mapping(s) that
/// the mapping does not set itself are added to it.
fn merge_into(
    entries: &mut Vec<Entry>,
    seen: &mut HashMap<String, Span>,
    merged: Node,
) -> Result<(), LoadError> {
    let span = merged.span;
    let sources = match merged.value {
        Value::Map(merged_entries) => vec![merged_entries],
        Value::Seq(items) => items
            .into_iter()
            .map(|item| match item.value {
                Value::Map(merged_entries) => Ok(merged_entries),
                _ => Err(item.span),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad_merge)?,
        _ => return Err(bad_merge(span)),
    };
    for source in sources {
        for entry in source {
            if !seen.contains_key(&entry.key) {
                seen.insert(entry.key.clone(), entry.key_span);
                entries.push(entry);
            }
        }
    }
    Ok(())
}

fn bad_merge(span: Span) -> LoadError {
    LoadError::new(
        span,
        "`<<` merges mappings only",
        "write `<<: *name`, where `&name` is set on a mapping".to_string(),
    )
}

fn unsupported_tag(tag: &Tag, span: Span) -> LoadError {
    LoadError::new(
        span,
        format!("unsupported YAML tag `{tag}`"),
        "bora.yaml does not use tags: remove it".to_string(),
    )
}

fn check_collection_tag(tag: Option<&Tag>, kind: &str, span: Span) -> Result<(), LoadError> {
    match tag {
        None => Ok(()),
        Some(tag) if tag.is_yaml_core_schema() && tag.suffix == kind => Ok(()),
        Some(tag) => Err(unsupported_tag(tag, span)),
    }
}

/// The value of a scalar: plain scalars are resolved by the YAML 1.2 core
/// schema; quoted and block scalars are strings; `!!str`, `!!int` and the
/// other core tags force a type.
fn resolve_scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    span: Span,
) -> Result<Value, LoadError> {
    let Some(tag) = tag else {
        return Ok(if style == ScalarStyle::Plain {
            resolve_plain(text)
        } else {
            Value::Str(text.to_string())
        });
    };
    // `! value`: the non-specific tag, which makes any scalar a string.
    if tag.handle == "!" && tag.suffix.is_empty() {
        return Ok(Value::Str(text.to_string()));
    }
    if !tag.is_yaml_core_schema() {
        return Err(unsupported_tag(tag, span));
    }
    let resolved = resolve_plain(text);
    let ok = match (tag.suffix.as_str(), resolved) {
        ("str", _) => Some(Value::Str(text.to_string())),
        ("null", Value::Null) => Some(Value::Null),
        ("bool", v @ Value::Bool(_)) => Some(v),
        ("int", v @ Value::Int(_)) => Some(v),
        ("float", v @ Value::Float(_)) => Some(v),
        ("float", Value::Int(i)) => Some(Value::Float(i as f64)),
        ("null" | "bool" | "int" | "float", _) => None,
        _ => return Err(unsupported_tag(tag, span)),
    };
    ok.ok_or_else(|| {
        LoadError::new(
            span,
            format!("`{text}` is not a valid `{tag}` value"),
            "remove the tag, or fix the value".to_string(),
        )
    })
}

/// Resolves a plain (unquoted) scalar by the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(int) = parse_int(text) {
        return Value::Int(int);
    }
    if looks_like_float(text)
        && let Ok(float) = text.parse::<f64>()
    {
        return Value::Float(float);
    }
    Value::Str(text.to_string())
}

/// `[-+]?[0-9]+`, `0o[0-7]+` or `0x[0-9a-fA-F]+`, if it fits.
fn parse_int(text: &str) -> Option<i128> {
    if let Some(octal) = text.strip_prefix("0o") {
        return octal
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| i128::from_str_radix(octal, 8).ok())
            .flatten();
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| i128::from_str_radix(hex, 16).ok())
            .flatten();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the core schema's
/// float syntax (Rust's own parser accepts more, like `inf`).
fn looks_like_float(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = all_digits(whole)
        && fraction.is_none_or(all_digits)
        && (!whole.is_empty() || fraction.is_some_and(|f| !f.is_empty()));
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
        !digits.is_empty() && all_digits(digits)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(source: &str) -> Node {
        load(source).expect("loads").expect("not empty")
    }

    #[test]
    fn resolves_plain_scalars_by_the_core_schema() {
        assert_eq!(resolve_plain("yes"), Value::Str("yes".into()));
        assert_eq!(resolve_plain("on"), Value::Str("on".into()));
        assert_eq!(resolve_plain("true"), Value::Bool(true));
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(resolve_plain("8000"), Value::Int(8000));
        assert_eq!(resolve_plain("-3"), Value::Int(-3));
        assert_eq!(resolve_plain("0x1F"), Value::Int(31));
        assert_eq!(resolve_plain("0o17"), Value::Int(15));
        assert_eq!(resolve_plain("1.5"), Value::Float(1.5));
        assert_eq!(resolve_plain("1e3"), Value::Float(1000.0));
        assert_eq!(resolve_plain(".5"), Value::Float(0.5));
        assert_eq!(resolve_plain("inf"), Value::Str("inf".into()));
        assert_eq!(resolve_plain("1.2.3"), Value::Str("1.2.3".into()));
        assert_eq!(resolve_plain("."), Value::Str(".".into()));
        assert_eq!(resolve_plain("5s"), Value::Str("5s".into()));
        assert_eq!(resolve_plain("+"), Value::Str("+".into()));
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let node = root("a: \"8000\"\nb: '~'\nc: |\n  x\n");
        assert_eq!(
            node.entry("a").map(|e| &e.value.value),
            Some(&Value::Str("8000".into()))
        );
        assert_eq!(
            node.entry("b").map(|e| &e.value.value),
            Some(&Value::Str("~".into()))
        );
        assert_eq!(
            node.entry("c").map(|e| &e.value.value),
            Some(&Value::Str("x\n".into()))
        );
    }

    #[test]
    fn keeps_positions() {
        let node = root("app: hello\nservices:\n  - name: web\n");
        let name = node
            .get(&Path::root().key("services").index(0).key("name"))
            .expect("name");
        assert_eq!(
            name.span.start,
            Pos {
                line: 3,
                column: 11
            }
        );
        assert_eq!(
            name.span.end,
            Pos {
                line: 3,
                column: 14
            }
        );
        let key_span = node.locate(&Path::root().key("services").index(0).key("name"), true);
        assert_eq!(key_span.start, Pos { line: 3, column: 5 });
        // A path that does not exist points at the deepest node on the way.
        let missing = node.locate(&Path::root().key("services").index(0).key("image"), false);
        assert_eq!(missing.start, Pos { line: 3, column: 5 });
    }

    #[test]
    fn rejects_duplicate_keys() {
        let err = load("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.message, "duplicate key `a`");
        assert_eq!(err.span.start, Pos { line: 3, column: 1 });
    }

    #[test]
    fn expands_aliases_and_merges() {
        let node = root("a: &x { p: 1, q: 2 }\nb:\n  <<: *x\n  q: 3\nc: *x\n");
        let b = node.get(&Path::root().key("b")).expect("b");
        assert_eq!(b.entry("p").map(|e| &e.value.value), Some(&Value::Int(1)));
        assert_eq!(b.entry("q").map(|e| &e.value.value), Some(&Value::Int(3)));
        assert!(b.entry("<<").is_none());
        let c = node.get(&Path::root().key("c")).expect("c");
        assert_eq!(c.span.start, Pos { line: 5, column: 4 });
    }

    #[test]
    fn refuses_exponential_aliases() {
        let mut source = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            source.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = load(&source).unwrap_err();
        assert!(
            err.message.contains("expands to more than"),
            "{}",
            err.message
        );
    }

    #[test]
    fn refuses_deep_nesting() {
        let source = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let err = load(&source).unwrap_err();
        assert!(err.message.contains("nested more than"), "{}", err.message);
    }

    #[test]
    fn empty_documents_are_none() {
        assert_eq!(load(""), Ok(None));
        assert_eq!(load("# only a comment\n"), Ok(None));
        assert_eq!(load("---\n"), Ok(None));
        assert_eq!(load("~\n"), Ok(None));
    }

    #[test]
    fn a_second_document_is_an_error() {
        let err = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.span.start.line, 2);
    }

    #[test]
    fn tags() {
        assert_eq!(
            root("a: !!str 8000\n").entry("a").map(|e| &e.value.value),
            Some(&Value::Str("8000".into()))
        );
        assert_eq!(
            root("a: !!int 8000\n").entry("a").map(|e| &e.value.value),
            Some(&Value::Int(8000))
        );
        assert!(load("a: !!int x\n").is_err());
        assert!(load("a: !custom x\n").is_err());
    }
}
