//! Property tests: `parse_manifest` never panics, whatever it is given, and
//! what it accepts is consistent with the rest of the API.

use bora_manifest::{parse_manifest, validate_service};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("golden/ok_example.yaml");
const ANCHORS: &str = include_str!("golden/ok_anchors.yaml");

/// Checks everything that must hold for any input.
fn check(source: &str) {
    match parse_manifest(source, "bora.yaml") {
        Ok(manifest) => {
            for service in &manifest.services {
                assert_eq!(
                    validate_service(service),
                    vec![],
                    "accepted an invalid service"
                );
            }
            // JSON is YAML: the canonical rendering parses back to the same manifest.
            let json = serde_json::to_string_pretty(&manifest).expect("serializes");
            let again = parse_manifest(&json, "bora.json").expect("its own JSON parses");
            assert_eq!(again, manifest);
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty());
            let lines = source.split('\n').count();
            for error in &errors.errors {
                assert!(
                    error.line >= 1 && error.line <= lines + 1,
                    "line {} of {lines}",
                    error.line
                );
                assert!(error.column >= 1);
                assert!(!error.message.is_empty());
            }
            assert!(errors.to_string().starts_with("error: bora.yaml:"));
        }
    }
}

/// One edit of a source text, at character positions given as fractions of
/// its length so that the same strategy works for any text.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: f64, len: usize },
    Insert { at: f64, text: String },
    DuplicateLine { at: f64 },
    SwapLines { a: f64, b: f64 },
}

fn edit() -> impl Strategy<Value = Edit> {
    let fragment = prop_oneof![
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("  ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("<<: *a\n".to_string()),
        Just("\"".to_string()),
        Just("{".to_string()),
        Just("]".to_string()),
        Just("0".to_string()),
        Just("---\n".to_string()),
        Just("!!int ".to_string()),
        "[a-z_]{1,8}",
        any::<String>(),
    ];
    prop_oneof![
        (0.0..1.0, 1usize..20).prop_map(|(at, len)| Edit::Delete { at, len }),
        (0.0..1.0, fragment).prop_map(|(at, text)| Edit::Insert { at, text }),
        (0.0..1.0).prop_map(|at| Edit::DuplicateLine { at }),
        (0.0..1.0, 0.0..1.0).prop_map(|(a, b)| Edit::SwapLines { a, b }),
    ]
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn index(fraction: f64, len: usize) -> usize {
    ((fraction * len as f64) as usize).min(len)
}

fn apply(source: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = source.chars().collect();
    match edit {
        Edit::Delete { at, len } => {
            let start = index(*at, chars.len());
            let end = (start + len).min(chars.len());
            chars.drain(start..end);
            chars.into_iter().collect()
        }
        Edit::Insert { at, text } => {
            let at = index(*at, chars.len());
            chars.splice(at..at, text.chars());
            chars.into_iter().collect()
        }
        Edit::DuplicateLine { at } => {
            let mut lines: Vec<&str> = source.split('\n').collect();
            let i = index(*at, lines.len() - 1);
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Edit::SwapLines { a, b } => {
            let mut lines: Vec<&str> = source.split('\n').collect();
            let (a, b) = (index(*a, lines.len() - 1), index(*b, lines.len() - 1));
            lines.swap(a, b);
            lines.join("\n")
        }
    }
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_strings(source in any::<String>()) {
        check(&source);
    }

    #[test]
    fn never_panics_on_yaml_like_strings(source in "[a-z0-9:\\-\\[\\]{},&*!|>#'\" \n\t.~<]{0,120}") {
        check(&source);
    }

    #[test]
    fn never_panics_on_mutations_of_valid_files(
        base in prop_oneof![Just(EXAMPLE), Just(ANCHORS)],
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let source = edits.iter().fold(base.to_string(), |source, e| apply(&source, e));
        check(&source);
    }
}

#[test]
fn the_bases_are_valid() {
    parse_manifest(EXAMPLE, "bora.yaml").expect("example is valid");
    parse_manifest(ANCHORS, "bora.yaml").expect("anchors case is valid");
}
