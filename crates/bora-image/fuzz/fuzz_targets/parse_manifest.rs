//! Manifests, indexes and image configs come from registries and layouts
//! we do not control: parsing them must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bora_image::manifest::parse_manifest(data, None, "fuzz", "manifest");
    let _ = bora_image::manifest::parse_manifest(
        data,
        Some("application/vnd.oci.image.index.v1+json"),
        "fuzz",
        "index",
    );
    let _ = bora_image::manifest::parse_config(data, 1, None, "fuzz");
});
