//! uWSGI .ini import: never panics, and what it emits is a valid rule file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(toml) = firewall_rules::uwsgi::import(text, Path::new("fuzz.ini")) {
        if let Err(e) = firewall_rules::RuleSet::parse(&toml, Path::new("imported.toml")) {
            panic!("import produced an invalid rule file: {e}\n{toml}");
        }
    }
});
