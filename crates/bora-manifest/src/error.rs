//! The errors users read, and how they are rendered.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One rule a service spec breaks, found by [`validate_service`](crate::validate_service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Where, relative to the service: `ports[0].port`, `env.GREETING`,
    /// `health_check.interval`. Keys that are not plain words are quoted:
    /// `env["A.B"]`.
    pub path: String,
    /// What is wrong, then what to do about it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// One problem in a `bora.yaml`, with where it is.
///
/// Its `Display` is a block like a compiler's:
///
/// ```text
/// error: bora.yaml:12:20: services[0].instance_type: unknown value `huge`
///    |
/// 12 |     instance_type: huge
///    |                    ^^^^ expected one of: nano, micro, small, medium, large
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestError {
    /// The file name given to [`parse_manifest`](crate::parse_manifest).
    pub file: String,
    /// Line of the offending node, from 1.
    pub line: usize,
    /// Column of the offending node, from 1, in characters.
    pub column: usize,
    /// The field path, like `services[0].health_check.interval`; empty when
    /// the error is about the file as a whole (a YAML syntax error, say).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What is allowed, or what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The source line, to show under the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<Snippet>,
}

/// The line of source an error points into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snippet {
    /// The whole line, without its line break.
    pub text: String,
    /// How many characters to underline, starting at the error's column
    /// (at least 1).
    pub underline: usize,
}

/// Every problem found in a `bora.yaml`, in the order they appear in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all(.errors))]
pub struct ManifestErrors {
    pub errors: Vec<ManifestError>,
}

/// One block per error, separated by blank lines.
fn render_all(errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n\n")
}

impl std::error::Error for ManifestError {}

/// How wide a tab is drawn in snippets.
const TAB_WIDTH: usize = 4;

fn display_width(c: char) -> usize {
    if c == '\t' { TAB_WIDTH } else { 1 }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        match (&self.snippet, &self.help) {
            (Some(snippet), help) => {
                let number = self.line.to_string();
                let gutter = " ".repeat(number.len());
                let start = self.column.saturating_sub(1);
                let text: String = snippet
                    .text
                    .chars()
                    .flat_map(|c| {
                        let replacement = if c == '\t' { ' ' } else { c };
                        std::iter::repeat_n(replacement, display_width(c))
                    })
                    .collect();
                let indent: usize = snippet.text.chars().take(start).map(display_width).sum();
                let carets: usize = snippet
                    .text
                    .chars()
                    .skip(start)
                    .take(snippet.underline)
                    .map(display_width)
                    .sum::<usize>()
                    .max(1);
                write!(f, "\n{gutter} |\n{number} | {text}\n{gutter} | ")?;
                write!(f, "{}{}", " ".repeat(indent), "^".repeat(carets))?;
                if let Some(help) = help {
                    write!(f, " {help}")?;
                }
            }
            (None, Some(help)) => write!(
                f,
                "\n{} = help: {help}",
                " ".repeat(self.line.to_string().len())
            )?,
            (None, None) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(snippet: Option<Snippet>, help: Option<&str>) -> ManifestError {
        ManifestError {
            file: "bora.yaml".into(),
            line: 12,
            column: 20,
            path: "services[0].instance_type".into(),
            message: "unknown value `huge`".into(),
            help: help.map(str::to_string),
            snippet,
        }
    }

    #[test]
    fn renders_like_a_compiler() {
        let snippet = Snippet {
            text: "    instance_type: huge".into(),
            underline: 4,
        };
        let expected = "\
error: bora.yaml:12:20: services[0].instance_type: unknown value `huge`
   |
12 |     instance_type: huge
   |                    ^^^^ expected one of: nano, micro";
        assert_eq!(
            error(Some(snippet), Some("expected one of: nano, micro")).to_string(),
            expected
        );
    }

    #[test]
    fn renders_help_without_a_snippet() {
        let expected = "\
error: bora.yaml:12:20: services[0].instance_type: unknown value `huge`
   = help: use small";
        assert_eq!(error(None, Some("use small")).to_string(), expected);
    }

    #[test]
    fn expands_tabs_in_snippets() {
        let mut e = error(
            Some(Snippet {
                text: "\t- x".into(),
                underline: 1,
            }),
            None,
        );
        e.column = 1;
        e.line = 3;
        assert!(e.to_string().ends_with("3 |     - x\n  | ^^^^"), "{e}");
    }

    #[test]
    fn violations_display_path_and_message() {
        let v = Violation {
            path: "ports[0].port".into(),
            message: "port 0 is not allowed".into(),
        };
        assert_eq!(v.to_string(), "ports[0].port: port 0 is not allowed");
    }
}
