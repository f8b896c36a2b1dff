//! Golden-file tests for everything a user reads: each `golden/NAME.yaml` is
//! parsed as `bora.yaml`, and the outcome must equal `golden/NAME.expected`,
//! either the rendered errors or `OK` followed by the parsed manifest as
//! pretty JSON.
//!
//! After an intended change of messages, rewrite the expected files with
//! `BLESS=1 cargo test -p bora-manifest --test golden` and review the diff.

use std::fs;
use std::path::{Path, PathBuf};

/// What a user would see for `source`.
fn outcome(source: &str) -> String {
    match bora_manifest::parse_manifest(source, "bora.yaml") {
        Ok(manifest) => {
            // A manifest that parsed must satisfy the API's own checks too.
            for service in &manifest.services {
                let violations = bora_manifest::validate_service(service);
                assert!(violations.is_empty(), "{}: {violations:?}", service.name);
            }
            let json = serde_json::to_string_pretty(&manifest).expect("manifests serialize");
            format!("OK\n{json}\n")
        }
        Err(errors) => format!("{errors}\n"),
    }
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .expect("tests/golden exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var("BLESS").is_ok_and(|v| v == "1");
    let cases = cases(&dir);
    assert!(
        cases.len() >= 30,
        "expected the full set of golden cases, found {}",
        cases.len()
    );

    let mut failures = Vec::new();
    for case in &cases {
        let source = fs::read_to_string(case).expect("readable case");
        let actual = outcome(&source);
        let expected_path = case.with_extension("expected");
        if bless {
            fs::write(&expected_path, &actual).expect("writable expected file");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "--- {} ---\nexpected:\n{expected}\nactual:\n{actual}",
                case.display()
            ));
        }
    }

    // An expected file whose case was deleted or renamed is stale.
    for entry in fs::read_dir(&dir).expect("tests/golden exists") {
        let path = entry.expect("readable directory").path();
        if path.extension().is_some_and(|ext| ext == "expected")
            && !path.with_extension("yaml").exists()
        {
            failures.push(format!("{}: no matching .yaml case", path.display()));
        }
    }

    assert!(
        failures.is_empty(),
        "{} golden case(s) differ (run with BLESS=1 to accept):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}
