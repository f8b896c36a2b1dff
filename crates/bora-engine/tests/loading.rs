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

/// Corrupt headers (what the `gguf_header` fuzz target explores, in a
/// deterministic sample): huge counts and lengths, and flipped bytes across
/// the first kilobytes, must fail with an error, never a panic or an
/// unbounded allocation.
#[test]
fn corrupt_headers_are_rejected() {
    let Some(model) = common::smollm2() else {
        return;
    };
    use std::io::Read;
    let mut header = vec![0u8; 1 << 16];
    std::fs::File::open(&model)
        .unwrap()
        .read_exact(&mut header)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.gguf");
    let check = |bytes: &[u8], what: &str| {
        std::fs::write(&path, bytes).unwrap();
        let run = std::panic::catch_unwind(|| {
            TextModel::load(&path, None, &Device::Cpu, WeightPrecision::Quantized)
        });
        match run {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("{what}: a corrupt header loaded"),
            Err(_) => panic!("{what}: loading panicked"),
        }
    };
    // Layout: magic (4), version (4), tensor count (8), metadata count (8),
    // then the first key's length (8).
    for (offset, value, what) in [
        (8, u64::MAX, "tensor count"),
        (16, u64::MAX, "metadata count"),
        (24, 1 << 40, "key length"),
        (24, u64::MAX, "key length"),
    ] {
        let mut bytes = header.clone();
        bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        check(&bytes, what);
    }
    // Flip bytes at pseudo-random places (a fixed LCG: reproducible).
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..300 {
        let mut bytes = header.clone();
        for _ in 0..4 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let at = (state >> 33) as usize % 4096;
            bytes[at] ^= (state >> 24) as u8 | 1;
        }
        check(&bytes, &format!("round {round}"));
    }
}
