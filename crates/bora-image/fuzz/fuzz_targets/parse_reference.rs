//! Image references come from users and API bodies: never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(r) = bora_image::reference::Reference::parse(s)
    {
        let _ = r.to_string();
        let _ = r.pinned("sha256:0000000000000000000000000000000000000000000000000000000000000000");
    }
});
