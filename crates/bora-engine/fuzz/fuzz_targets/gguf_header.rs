//! GGUF files are untrusted: opening one (parsing the header, validating
//! the metadata, the tokenizer and the tensor table) must return a model or
//! an error, never panic. `GgufFile::open` reads from a path, so each input
//! is written to a scratch file first.
#![no_main]

use std::io::Write;

use bora_engine::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new().expect("scratch file");
    file.write_all(data).expect("writing the scratch file");
    file.flush().expect("flushing the scratch file");
    if let Ok(gguf) = GgufFile::open(file.path()) {
        // A header that validates must also build a tokenizer or say why.
        let _ = bora_engine::tokenizer::TextTokenizer::from_gguf(&gguf.tokenizer);
    }
});
