//! Shared helpers: where the test models are (fetched by
//! `scripts/fetch-models.sh`), and the reference outputs in `shared/reference`.

#![allow(dead_code)]

use std::path::PathBuf;

/// The model cache, as `scripts/fetch-models.sh` uses it.
pub fn model_cache() -> PathBuf {
    match std::env::var_os("BORA_MODEL_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/bora/models")
        }
    }
}

/// The SmolLM2 GGUF file, or `None` (with a loud message) when not fetched.
pub fn smollm2() -> Option<PathBuf> {
    present(model_cache().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// The all-MiniLM-L6-v2 directory, or `None` (with a loud message).
pub fn minilm() -> Option<PathBuf> {
    let dir = model_cache().join("all-minilm-l6-v2");
    present(dir.join("model.safetensors")).map(|_| dir)
}

fn present(path: PathBuf) -> Option<PathBuf> {
    if path.is_file() {
        Some(path)
    } else if std::env::var_os("CI").is_some() {
        // CI fetched the models first (scripts/test.sh): missing means broken.
        panic!(
            "test model {} is missing although scripts/test.sh fetches it",
            path.display()
        );
    } else {
        eprintln!(
            "\n!!! SKIPPED: test model {} is missing; run scripts/fetch-models.sh to fetch it !!!\n",
            path.display()
        );
        None
    }
}

/// A reference file from `shared/reference` (next to the repository).
pub fn reference(name: &str) -> serde_json::Value {
    let dir = match std::env::var_os("BORA_REFERENCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference"),
    };
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set BORA_REFERENCE_DIR)", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of numbers as a vector.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of numbers as `f64`s.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
