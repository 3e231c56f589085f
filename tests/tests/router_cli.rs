//! The `vassal-router` command line: help, config and rule checks with
//! their exit codes, uWSGI import, and a router refusing a bad rule file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use vassal_tests::{binary, unique};

fn router(args: &[&str]) -> std::process::Output {
    Command::new(binary("vassal-router"))
        .args(args)
        .output()
        .unwrap()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vassal-cli-{}", unique("c")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn router_help_teaches_with_examples() {
    let out = router(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "run",
        "check-rules",
        "import-uwsgi",
        "stats",
        "reload",
        "Examples:",
    ] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
    let out = router(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.200.0.1/16"));
}

#[test]
fn router_check_rules_summarises_or_exits_2_with_positions() {
    let dir = tempdir();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[default]\nout = \"allow\"\n\n[[out]]\naction = \"deny\"\ndst = \"10.0.0.0/8\"\n",
    )
    .unwrap();
    let out = router(&["check-rules", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("out 1 rule"),
        "{out:?}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[out]]\naction = \"deny\"\ndst = \"10.0.0.1/8\"\n").unwrap();
    let out = router(&["check-rules", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn router_check_config_refuses_unknown_keys_with_their_position() {
    let dir = tempdir();
    let file = dir.join("router.toml");
    std::fs::write(
        &file,
        "device = \"vr9\"\n[nat]\nmasquerade = true\negress = \"eth0\"\n",
    )
    .unwrap();
    let out = router(&["check-config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("router.toml:4:1") && err.contains("egress"),
        "{err}"
    );
    std::fs::write(&file, "device = \"vr9\"\n").unwrap();
    assert!(router(&["check-config", file.to_str().unwrap()])
        .status
        .success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn router_import_uwsgi_prints_a_rule_file_check_rules_accepts() {
    let dir = tempdir();
    let ini = dir.join("emperor.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\ntuntap-router-firewall-out = allow 192.168.0.0/24 192.168.0.1\ntuntap-router-firewall-out = deny 192.168.0.0/24 192.168.0.0/24\ntuntap-router-firewall-in = deny\n",
    )
    .unwrap();
    let out = router(&["import-uwsgi", ini.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let rules = dir.join("imported.toml");
    std::fs::write(&rules, &out.stdout).unwrap();
    let check = router(&["check-rules", rules.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{check:?}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn router_run_refuses_an_invalid_rule_file_before_touching_the_system() {
    let dir = tempdir();
    let device = unique("vr");
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "[default]\nout = \"sometimes\"\n").unwrap();
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        format!(
            "device = \"{device}\"\nrules = \"{}\"\ncontrol_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n[nat]\nmasquerade = true\n",
            rules.display(),
            dir.join("r.sock").display()
        ),
    )
    .unwrap();
    let out = router(&["run", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sometimes"),
        "{out:?}"
    );
    // No device, no socket, no NAT table were created.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{device}")).exists());
    assert!(!dir.join("r.sock").exists());
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains(&vassal_router::nat::table_name(&device))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
