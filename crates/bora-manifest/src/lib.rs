//! Strict parsing and validation of `bora.yaml`.
//!
//! A `bora.yaml` is a [`bora_api::AppManifest`]: the same types the REST API
//! takes, so the file and the API never disagree. This crate reads the file
//! into those types and checks the rules that the types alone cannot express,
//! and when something is wrong it reports *every* problem it can find, each
//! with file, line, column, field path, what is wrong and what to do:
//!
//! ```text
//! error: bora.yaml:12:20: services[0].instance_type: unknown value `huge`
//!    |
//! 12 |     instance_type: huge
//!    |                    ^^^^ expected one of: nano, micro, small, medium, large
//! ```
//!
//! # How it works
//!
//! 1. `yaml`: the YAML text becomes a tree of nodes that remember their
//!    source span. Duplicate keys, a second document, unsupported tags and
//!    runaway alias expansion are refused here; plain scalars are resolved by
//!    the YAML 1.2 core schema (`yes` stays a string, `"8000"` is a string).
//! 2. `de`: a serde `Deserializer` over that tree fills the `bora-api`
//!    types, so `deny_unknown_fields`, defaults and enum names come from one
//!    place. Every error it raises carries the path and span of its node. To
//!    report more than the first error, the pipeline takes the offending node
//!    out and deserializes again (`parse`).
//! 3. `validate`: cross-field rules (a route must name a declared port,
//!    `min <= max`, …) on the typed values, located by field path and mapped
//!    back to spans through the tree.
//!
//! # Why `saphyr-parser`
//!
//! `serde_yaml` is unmaintained. `saphyr-parser` is the maintained YAML 1.2
//! parser of the saphyr project (successor of `yaml-rust`), and its event
//! stream gives a line and column for every scalar, key and collection.
//! `serde-saphyr`, a ready-made serde deserializer of the same family, was
//! evaluated and not used: in a probe it accepted `port: "8000"` as a number,
//! stopped at the first error, gave no field path, pointed a missing field at
//! the mapping's last key, and wrote messages meant for programmers ("set
//! DuplicateKeyPolicy in Options"). Above all, the cross-field rules need
//! the span of arbitrary fields after deserialization, which only a tree of
//! our own keeps. Reading events ourselves costs a few hundred lines and
//! gives full control over the messages, which golden files pin.
//!
//! # Tests
//!
//! - `tests/golden/*.yaml`: one file per kind of mistake (and valid files),
//!   each with the exact output in `*.expected`. After an intended change of
//!   messages: `BLESS=1 cargo test -p bora-manifest --test golden`, then
//!   review the diff.
//! - `tests/no_panic.rs`: property tests on arbitrary text and on mutations
//!   of valid files; `fuzz/` holds the same property as a cargo-fuzz target.

#![forbid(unsafe_code)]

mod de;
mod error;
mod parse;
mod path;
mod suggest;
mod validate;
mod yaml;

pub use error::{ManifestError, ManifestErrors, Snippet, Violation};

/// Parses and validates a `bora.yaml`; `file_name` is used in messages.
///
/// On success the services are normalized ([`normalize_service`]). On failure
/// every problem found (up to 50) is returned, in source order: YAML syntax
/// errors stop at the first; type errors (unknown fields, wrong kinds of
/// values, missing fields) are all collected; the semantic rules of
/// [`validate_service`] and the app-level ones (valid app name, at least one
/// service, unique service names) run on every service that has no type
/// error.
pub fn parse_manifest(
    source: &str,
    file_name: &str,
) -> Result<bora_api::AppManifest, ManifestErrors> {
    parse::parse(source, file_name)
}

/// Checks the rules of one service that its types cannot express; used for
/// `bora.yaml` and for JSON bodies of the REST API alike. Paths are relative
/// to the service (`ports[0].port`). An empty result means the spec is valid.
pub fn validate_service(spec: &bora_api::ServiceSpec) -> Vec<Violation> {
    validate::check_service(spec)
        .into_iter()
        .map(validate::Finding::into_violation)
        .collect()
}

/// Fills derived defaults: a `web` service with ports but no routes gets the
/// route `{ path: "/", port: <its first http port> }`. Idempotent.
pub fn normalize_service(spec: &mut bora_api::ServiceSpec) {
    validate::normalize(spec);
}
