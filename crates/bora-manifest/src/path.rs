//! Field paths such as `services[0].health_check.interval`: where in the file
//! a value sits, independent of line numbers.

use std::fmt;

/// One step down into a value: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// A sequence of steps from the top of the document (or of a service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Path(Vec<Segment>);

impl Path {
    /// The path of the top level.
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// This path, one key further down.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_string()));
        Path(segments)
    }

    /// This path, one list index further down.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Path(segments)
    }

    /// `other` appended to this path.
    pub(crate) fn join(&self, other: &Path) -> Self {
        let mut segments = self.0.clone();
        segments.extend(other.0.iter().cloned());
        Path(segments)
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `self` is `prefix` or lies below it.
    pub(crate) fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The path one step up, or `None` at the top.
    pub(crate) fn parent(&self) -> Option<Path> {
        let (_, rest) = self.0.split_last()?;
        Some(Path(rest.to_vec()))
    }
}

/// Keys that can be written after a dot without ambiguity; anything else
/// (an environment variable named `A.B`, say) is written as `["A.B"]`.
fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if is_plain_key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(key)?;
                }
                // JSON string syntax gives an unambiguous, escaped rendering.
                Segment::Key(key) => write!(f, "[{}]", serde_json::Value::from(key.as_str()))?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_keys_and_indices() {
        let path = Path::root()
            .key("services")
            .index(0)
            .key("health_check")
            .key("interval");
        assert_eq!(path.to_string(), "services[0].health_check.interval");
        assert_eq!(
            Path::root().key("env").key("A.B").to_string(),
            r#"env["A.B"]"#
        );
        assert_eq!(Path::root().key("").to_string(), r#"[""]"#);
        assert_eq!(Path::root().to_string(), "");
    }

    #[test]
    fn prefixes_and_parents() {
        let service = Path::root().key("services").index(1);
        let port = service.key("ports").index(0).key("port");
        assert!(port.starts_with(&service));
        assert!(!service.starts_with(&port));
        assert_eq!(service.key("name").parent(), Some(service.clone()));
        assert_eq!(Path::root().parent(), None);
        assert_eq!(
            service.join(&Path::root().key("image")),
            service.key("image")
        );
    }
}
