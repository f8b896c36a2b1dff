//! `parse_manifest` as its callers see it: structured errors, every error at
//! once, normalized results.

use bora_api::{RouteSpec, ServiceType};
use bora_manifest::{ManifestError, parse_manifest};

fn errors(source: &str) -> Vec<ManifestError> {
    parse_manifest(source, "app/bora.yaml")
        .expect_err("the source is invalid")
        .errors
}

#[test]
fn errors_are_structured() {
    let source = "app: hello\nservices:\n  - name: web\n    image: busybox\n    ports: [{ port: 8000 }]\n    instance_type: huge\n";
    let errors = errors(source);
    assert_eq!(errors.len(), 1);
    let error = &errors[0];
    assert_eq!(error.file, "app/bora.yaml");
    assert_eq!((error.line, error.column), (6, 20));
    assert_eq!(error.path, "services[0].instance_type");
    assert_eq!(error.message, "unknown value `huge`");
    assert_eq!(
        error.help.as_deref(),
        Some("expected one of: nano, micro, small, medium, large")
    );
    let snippet = error.snippet.as_ref().expect("has a snippet");
    assert_eq!(snippet.text, "    instance_type: huge");
    assert_eq!(snippet.underline, 4);
    assert!(
        error
            .to_string()
            .starts_with("error: app/bora.yaml:6:20: services[0].instance_type: ")
    );
}

#[test]
fn every_error_is_reported_in_file_order() {
    let source = "\
app: Hello
services:
  - name: web
    imagee: busybox
    ports: [{ port: \"8000\" }]
  - name: api
    image: busybox
    ports: [{ port: 8000 }]
    scaling: { min: 2, max: 1 }
";
    let found: Vec<(usize, String)> = errors(source)
        .into_iter()
        .map(|e| (e.line, e.path))
        .collect();
    assert_eq!(
        found,
        [
            (1, "app".to_string()),
            (4, "services[0].imagee".to_string()),
            (5, "services[0].ports[0].port".to_string()),
            (9, "services[1].scaling.min".to_string()),
        ]
    );
}

#[test]
fn a_misspelt_field_does_not_also_count_as_missing() {
    let source =
        "app: hello\nservices:\n  - name: web\n    imagee: busybox\n    ports: [{ port: 8000 }]\n";
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].help.as_deref(), Some("did you mean `image`?"));
}

#[test]
fn a_missing_field_is_reported_once_at_its_mapping() {
    let source = "app: hello\nservices:\n  - image: busybox\n    ports: [{ port: 8000 }]\n";
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (3, 5));
    assert_eq!(errors[0].path, "services[0]");
    assert_eq!(errors[0].message, "missing field `name`");

    // `image` may be absent in the types (a built-in model has none); the
    // rules ask for it, at the service's mapping too.
    let source = "app: hello\nservices:\n  - name: web\n    ports: [{ port: 8000 }]\n";
    let found = self::errors(source);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].line, found[0].column), (3, 5));
    assert_eq!(found[0].path, "services[0].image");
    assert_eq!(found[0].message, "a web service needs an `image`");
}

#[test]
fn valid_files_are_normalized() {
    let source = "app: hello\nservices:\n  - name: web\n    image: busybox\n    ports: [{ port: 8000 }]\n  - name: jobs\n    type: worker\n    image: busybox\n";
    let manifest = parse_manifest(source, "bora.yaml").expect("valid");
    assert_eq!(manifest.app, "hello");
    assert_eq!(
        manifest.services[0].routes,
        vec![RouteSpec {
            path: "/".into(),
            port: 8000
        }]
    );
    assert_eq!(manifest.services[1].kind, ServiceType::Worker);
    assert!(manifest.services[1].routes.is_empty());
}

#[test]
fn json_is_accepted_too() {
    let source = r#"{"app": "hello", "services": [{"name": "web", "image": "busybox", "ports": [{"port": 8000}]}]}"#;
    let manifest = parse_manifest(source, "bora.json").expect("JSON is YAML");
    assert_eq!(manifest.services[0].name, "web");
}

#[test]
fn yaml_1_1_booleans_stay_strings() {
    let source = "app: hello\nservices:\n  - name: web\n    image: busybox\n    ports: [{ port: 8000 }]\n    env: { A: yes, B: off }\n";
    let manifest = parse_manifest(source, "bora.yaml").expect("valid");
    let env = &manifest.services[0].env;
    assert_eq!(env["A"], bora_api::EnvValue::Plain("yes".into()));
    assert_eq!(env["B"], bora_api::EnvValue::Plain("off".into()));
}
