//! The `bora.yaml` pipeline: YAML text → located tree → `AppManifest`
//! (recovering from errors to find as many as possible) → semantic checks →
//! errors with file, line, column and snippet.

use std::collections::HashMap;

use bora_api::{AppManifest, EnvValue, ServiceSpec};
use serde::Deserialize;

use crate::de::{DeError, DeErrorKind, NodeDe};
use crate::error::{ManifestError, ManifestErrors, Snippet};
use crate::path::Path;
use crate::suggest;
use crate::validate::{self, Finding};
use crate::yaml::{self, Node, Pos, Span, Value};

/// Report at most this many errors: past that, more only bury the first.
const MAX_ERRORS: usize = 50;
/// Upper bound on deserialization attempts during error recovery.
const MAX_ATTEMPTS: usize = 500;

/// A problem before it is rendered against the source.
#[derive(Debug, Clone)]
struct Problem {
    span: Span,
    path: Path,
    message: String,
    help: Option<String>,
}

impl Problem {
    fn from_finding(tree: &Node, finding: Finding) -> Self {
        Problem {
            span: tree.locate(&finding.path, finding.on_key),
            path: finding.path,
            message: finding.message,
            help: finding.help,
        }
    }
}

/// See [`parse_manifest`](crate::parse_manifest).
pub(crate) fn parse(source: &str, file: &str) -> Result<AppManifest, ManifestErrors> {
    let fail = |problems: Vec<Problem>| Err(render(source, file, problems));
    let mut tree = match yaml::load(source) {
        Err(error) => {
            return fail(vec![Problem {
                span: error.span,
                path: error.path,
                message: error.message,
                help: error.help,
            }]);
        }
        Ok(None) => {
            let mut errors = render(source, file, vec![Problem {
                span: Span::at(Pos { line: 1, column: 1 }),
                path: Path::root(),
                message: "the file is empty".to_string(),
                help: Some(
                    "a bora.yaml names the app and lists its services, e.g. `app: hello` and `services: [{ name: web, image: busybox }]`"
                        .to_string(),
                ),
            }]);
            // A comment-only file has a first line, but nothing to point at.
            for error in &mut errors.errors {
                error.snippet = None;
            }
            return Err(errors);
        }
        Ok(Some(tree)) => tree,
    };
    if !matches!(tree.value, Value::Map(_)) {
        return fail(vec![Problem {
            span: tree.span,
            path: Path::root(),
            message: format!(
                "the top level must be a mapping, found {}",
                tree.kind_name()
            ),
            help: Some("start the file with `app: <name>`, then a `services:` list".to_string()),
        }]);
    }

    let (manifest, mut problems) = deserialize_with_recovery(&mut tree);
    if let Some(manifest) = &manifest {
        let tainted: Vec<Path> = problems.iter().map(|p| p.path.clone()).collect();
        let room = MAX_ERRORS.saturating_sub(problems.len());
        problems.extend(check_manifest(&tree, manifest, &tainted, room));
    }
    match manifest {
        Some(mut manifest) if problems.is_empty() => {
            for service in &mut manifest.services {
                validate::normalize(service);
            }
            Ok(manifest)
        }
        _ => fail(problems),
    }
}

/// Deserializes the tree into an [`AppManifest`]. serde stops at the first
/// error, so to report more than one we take the offending node out of the
/// tree and try again, until it succeeds or cannot go on.
///
/// Taking a node out may make its parent lack a required field; that error
/// follows from one already reported, so it is not reported again, and the
/// parent is taken out in turn. A misspelt field (`imagee`) likewise explains
/// the missing field it was meant to be (`image`).
fn deserialize_with_recovery(tree: &mut Node) -> (Option<AppManifest>, Vec<Problem>) {
    let mut problems = Vec::new();
    // Paths whose absence is already explained by a reported problem.
    let mut explained: Vec<Path> = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        let error = match AppManifest::deserialize(NodeDe::new(tree, Path::root())) {
            Ok(manifest) => return (Some(manifest), problems),
            Err(error) => error,
        };
        let (path, span) = match &error.location {
            Some(location) => (location.path.clone(), location.span),
            None => (Path::root(), tree.span),
        };
        let is_explained = match &error.kind {
            DeErrorKind::MissingField(field) => explained.contains(&path.key(field)),
            _ => false,
        };
        if !is_explained {
            if let Some(meant) = intended_field(&error)
                && let Some(parent) = path.parent()
            {
                explained.push(parent.key(meant));
            }
            problems.push(problem_from(&error, path.clone(), span));
        }
        if path.is_root() || problems.len() >= MAX_ERRORS || !tree.remove(&path) {
            break;
        }
        explained.push(path);
    }
    (None, problems)
}

/// For an unknown field that was likely meant as a known one, the known one.
fn intended_field(error: &DeError) -> Option<&'static str> {
    match &error.kind {
        DeErrorKind::UnknownField { field, expected } => {
            suggest::closest(field, expected.iter().copied())
                .or_else(|| suggest::synonym(field, expected.iter().copied()))
        }
        _ => None,
    }
}

fn problem_from(error: &DeError, path: Path, span: Span) -> Problem {
    let (message, help) = error.describe();
    Problem {
        span,
        path,
        message,
        help,
    }
}

/// The app-level rules, and the service rules for every service that was
/// read without errors (in one that had errors, a removed field would make
/// the rules complain about the wrong thing). Returns at most `limit`
/// problems.
fn check_manifest(
    tree: &Node,
    manifest: &AppManifest,
    tainted: &[Path],
    limit: usize,
) -> Vec<Problem> {
    let is_tainted = |path: &Path| tainted.iter().any(|t| t.starts_with(path));
    let services_path = Path::root().key("services");
    let mut findings: Vec<Finding> = Vec::new();
    findings.extend(validate::check_name(
        "app name",
        &manifest.app,
        Path::root().key("app"),
    ));
    if manifest.services.is_empty() && !is_tainted(&services_path) {
        findings.push(
            Finding::new(services_path.clone(), "`services` is empty")
                .help("add at least one service, with a `name` and an `image`"),
        );
    }

    // Services taken out by error recovery are not in `manifest`; map each
    // service to its index in the file.
    let file_indices: Vec<usize> = match tree.get(&services_path).map(|n| &n.value) {
        Some(Value::Seq(items)) => items
            .iter()
            .enumerate()
            .filter(|(_, item)| !item.removed)
            .map(|(i, _)| i)
            .collect(),
        _ => Vec::new(),
    };

    let mut first_with_name: HashMap<&str, usize> = HashMap::new();
    for (service, &index) in manifest.services.iter().zip(&file_indices) {
        let service_path = services_path.index(index);
        if !is_tainted(&service_path) {
            for finding in validate::check_service(service) {
                findings.push(Finding {
                    path: service_path.join(&finding.path),
                    ..finding
                });
            }
            findings.extend(check_env_as_written(tree, service, &service_path));
        }
        match first_with_name.get(service.name.as_str()) {
            Some(&first) => {
                let first_line = tree
                    .locate(&services_path.index(first).key("name"), false)
                    .start
                    .line;
                findings.push(
                    Finding::new(service_path.key("name"), format!("service name `{}` is used twice", service.name))
                        .help(format!(
                            "services[{first}] on line {first_line} already has it; names are unique within an app"
                        )),
                );
            }
            None => {
                first_with_name.insert(&service.name, index);
            }
        }
    }
    // Locating a finding searches the tree, so only locate those reported.
    findings
        .into_iter()
        .take(limit)
        .map(|finding| Problem::from_finding(tree, finding))
        .collect()
}

/// Environment values are strings, but YAML reads `VERSION: 1.10` as the
/// number 1.1 and `FLAG: True` as `true`. Where that changes the text, ask for
/// quotes rather than silently passing something else than what was written.
fn check_env_as_written(tree: &Node, service: &ServiceSpec, service_path: &Path) -> Vec<Finding> {
    let env_path = service_path.key("env");
    let Some(Node {
        value: Value::Map(entries),
        ..
    }) = tree.get(&env_path)
    else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for entry in entries {
        let (Some(written), Some(EnvValue::Plain(read))) =
            (&entry.value.written, service.env.get(&entry.key))
        else {
            continue;
        };
        if written != read {
            findings.push(
                Finding::new(
                    env_path.key(&entry.key),
                    format!(
                        "`{written}` is read as {} `{read}`",
                        entry.value.kind_name()
                    ),
                )
                .help(format!(
                    "put it in quotes to keep it as written: \"{written}\""
                )),
            );
        }
    }
    findings
}

/// Renders problems against the source, in the order they appear in it.
fn render(source: &str, file: &str, mut problems: Vec<Problem>) -> ManifestErrors {
    problems.sort_by_key(|p| (p.span.start.line, p.span.start.column));
    let lines: Vec<&str> = source
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let errors = problems
        .into_iter()
        .map(|problem| {
            let start = problem.span.start;
            let snippet = start
                .line
                .checked_sub(1)
                .and_then(|i| lines.get(i))
                .filter(|text| !text.trim().is_empty())
                .map(|text| Snippet {
                    text: (*text).to_string(),
                    underline: underline(text, problem.span),
                });
            ManifestError {
                file: file.to_string(),
                line: start.line.max(1),
                column: start.column.max(1),
                path: problem.path.to_string(),
                message: problem.message,
                help: problem.help,
                snippet,
            }
        })
        .collect();
    ManifestErrors { errors }
}

/// How many characters of `line` to underline for `span`: up to its end if it
/// ends on the same line, else to the end of the line; without trailing
/// blanks; at least one.
fn underline(line: &str, span: Span) -> usize {
    let start = span.start.column.saturating_sub(1);
    let rest = line.chars().skip(start);
    let covered: String = if span.end.line == span.start.line {
        rest.take(span.end.column.saturating_sub(span.start.column))
            .collect()
    } else {
        rest.collect()
    };
    covered.trim_end().chars().count().max(1)
}
