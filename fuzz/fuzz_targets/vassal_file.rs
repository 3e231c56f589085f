//! Vassal files: validation never panics, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vassal_launch::config::{Overrides, VassalConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = VassalConfig::parse(text, "fuzz.toml", &Overrides::default());
});
