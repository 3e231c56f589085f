//! The documented systemd units are valid: `systemd-analyze verify` accepts
//! them without a warning, with the freshly built binaries where the units
//! expect `/usr/local/bin`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// Copies `unit` from docs/operations into `dir` as `as_name`, with the
/// binaries' directory in place of /usr/local/bin; returns its path.
fn unit_copy(dir: &Path, unit: &str, as_name: &str) -> std::path::PathBuf {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations/");
    let text = std::fs::read_to_string(format!("{docs}{unit}")).unwrap();
    assert!(
        text.contains("/usr/local/bin/"),
        "{unit} names its binaries"
    );
    let bins = vassal_tests::binary("vassal-router");
    let bins = bins.parent().unwrap().display().to_string();
    let path = dir.join(as_name);
    std::fs::write(&path, text.replace("/usr/local/bin", &bins)).unwrap();
    path
}

/// `systemd-analyze verify`: exit status and everything it said.
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn ops_systemd_units_verify_without_warnings() {
    let dir = std::env::temp_dir().join(format!("vassal-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let router = unit_copy(&dir, "vassal-router.service", "vassal-router.service");
    // A template is verified through an instance of it.
    let vassal = unit_copy(&dir, "vassal@.service", "vassal@alice.service");
    for unit in [&router, &vassal] {
        let (ok, said) = verify(unit);
        assert!(ok && said.trim().is_empty(), "{}:\n{said}", unit.display());
    }
    // The check can fail: a misspelt key is reported.
    let text = std::fs::read_to_string(&router).unwrap();
    let bad = dir.join("bad.service");
    std::fs::write(&bad, text.replace("Restart=always", "Restrat=always")).unwrap();
    let (_, said) = verify(&bad);
    assert!(said.contains("Restrat"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
