//! Model files that are truncated, corrupt or missing fail with an error
//! that names the file and says what is wrong.

mod common;

use bora_engine::bert::BertEmbedder;
use bora_engine::{EngineError, TextModel, WeightPrecision};
use candle_core::Device;

fn load(path: &std::path::Path) -> EngineError {
    TextModel::load(path, None, &Device::Cpu, WeightPrecision::Quantized).unwrap_err()
}

#[test]
fn missing_file() {
    let err = load(std::path::Path::new("/nonexistent/model.gguf"));
    assert!(matches!(err, EngineError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn garbage_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.gguf");
    std::fs::write(&path, b"this is not a model file, just some text").unwrap();
    let err = load(&path);
    let msg = err.to_string();
    assert!(matches!(err, EngineError::InvalidModel { .. }), "{err:?}");
    assert!(
        msg.contains("garbage.gguf") && msg.contains("not a readable GGUF file"),
        "{msg}"
    );
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(load(&path), EngineError::InvalidModel { .. }));
}

#[test]
fn truncated_files() {
    let Some(model) = common::smollm2() else {
        return;
    };
    let bytes = std::fs::read(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cut in the header, in the metadata, and in the tensor data.
    for (cut, expect) in [
        (10, "not a readable GGUF file"),
        (200_000, "not a readable GGUF file"),
        (bytes.len() / 2, "truncated"),
        (bytes.len() - 1, "truncated"),
    ] {
        let path = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = load(&path).to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(expect),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn missing_embedding_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = BertEmbedder::load(dir.path(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    let Some(real) = common::minilm() else { return };
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(real.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let err = BertEmbedder::load(dir.path(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
