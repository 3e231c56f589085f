//! The documented systemd units are valid: `systemd-analyze verify` accepts
//! them without a warning, with the freshly built binaries where the units
//! expect `/usr/local/bin` (verify checks that every Exec binary exists,
//! which the test shows too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory removed on drop, pass or fail.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The documented unit `unit` (docs/operations/).
fn documented(unit: &str) -> String {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations/");
    std::fs::read_to_string(format!("{docs}{unit}")).unwrap()
}

/// Copies `unit` into `dir` as `as_name`, with `bins` in place of
/// /usr/local/bin (nothing else changes); returns its path.
fn unit_copy(dir: &Path, unit: &str, as_name: &str, bins: &str) -> PathBuf {
    let text = documented(unit);
    assert!(
        text.contains("ExecStart=/usr/local/bin/"),
        "{unit} runs its binary from /usr/local/bin, as docs/operations.md installs it"
    );
    let path = dir.join(as_name);
    std::fs::write(&path, text.replace("/usr/local/bin", bins)).unwrap();
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
    let scratch =
        Scratch(std::env::temp_dir().join(format!("vassal-units-{}", std::process::id())));
    let dir = &scratch.0;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    // Both binaries, freshly built, in one directory as in /usr/local/bin.
    let router_bin = vassal_tests::binary("vassal-router");
    let launch_bin = vassal_tests::binary("vassal-launch");
    assert_eq!(router_bin.parent(), launch_bin.parent());
    let bins = router_bin.parent().unwrap().display().to_string();

    // A vassal's unit reaps dead launchers' leftovers before it starts.
    assert!(
        documented("vassal@.service").contains("ExecStartPre=/usr/local/bin/vassal-launch gc\n"),
        "vassal@.service runs `vassal-launch gc` at start"
    );
    let router = unit_copy(dir, "vassal-router.service", "vassal-router.service", &bins);
    // A template is verified through an instance of it.
    let vassal = unit_copy(dir, "vassal@.service", "vassal@alice.service", &bins);
    for unit in [&router, &vassal] {
        let (ok, said) = verify(unit);
        assert!(ok && said.trim().is_empty(), "{}:\n{said}", unit.display());
    }

    // The check can fail. A misspelt key is reported...
    let text = std::fs::read_to_string(&router).unwrap();
    let bad = dir.join("bad.service");
    std::fs::write(&bad, text.replace("Restart=always", "Restrat=always")).unwrap();
    let (_, said) = verify(&bad);
    assert!(said.contains("Restrat"), "{said}");
    // ...and so is a binary missing where the unit expects it (why the
    // test puts the built ones there).
    let missing = dir.join("missing-bin");
    for (unit, name, binary) in [
        (
            "vassal-router.service",
            "vassal-router.service",
            "vassal-router",
        ),
        ("vassal@.service", "vassal@bob.service", "vassal-launch"),
    ] {
        let sub = dir.join("missing");
        std::fs::create_dir_all(&sub).unwrap();
        let path = unit_copy(&sub, unit, name, &missing.display().to_string());
        let (ok, said) = verify(&path);
        assert!(
            !ok && said.contains(&format!("{}/{binary} is not executable", missing.display())),
            "{said}"
        );
    }
}
