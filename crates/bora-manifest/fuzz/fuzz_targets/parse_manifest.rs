//! `parse_manifest` must never panic, and what it accepts must pass
//! `validate_service`, whatever bytes it is given.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match bora_manifest::parse_manifest(source, "bora.yaml") {
        Ok(manifest) => {
            for service in &manifest.services {
                assert!(bora_manifest::validate_service(service).is_empty());
            }
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty());
            let _ = errors.to_string();
        }
    }
});
