//! Inputs the fuzzers found (fuzz/, docs/fuzzing.md), kept as tests.

use firewall_rules::RuleSet;
use std::path::Path;

/// uwsgi_import: control characters on an imported line were copied into a
/// TOML comment, which TOML refuses, so the emitted rule file did not parse.
#[test]
fn uwsgi_import_output_parses_with_control_characters_in_lines() {
    let ini = "[uwsgi]\ntuntap-router-firewall-in = allow \t\x0b\t0.0.0.0 10.200.0.2\n";
    let toml = firewall_rules::uwsgi::import(ini, Path::new("emperor\x0c.ini")).unwrap();
    let rules =
        RuleSet::parse(&toml, Path::new("imported.toml")).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(rules.rule_count(firewall_rules::Chain::In), 1);
    assert!(toml.contains("emperor?.ini"), "{toml}");
}
