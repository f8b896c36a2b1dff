//! Layer tarballs are untrusted: unpacking one must never panic, and never
//! write outside its target directory (the target lives inside a scratch
//! directory whose other contents are checked afterwards).
#![no_main]

use bora_image::Compression;
use bora_image::unpack::unpack_layer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let target = scratch.path().join("layer");
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let _ = std::fs::remove_dir_all(&target);
        let _ = unpack_layer(data, compression, &target, "sha256:fuzz");
        let entries: Vec<_> = std::fs::read_dir(scratch.path())
            .expect("read scratch")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "layer")
            .collect();
        assert!(entries.is_empty(), "unpacking wrote outside its target: {entries:?}");
    }
});
