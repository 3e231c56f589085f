//! `--address auto` / `address = "auto"`: the launcher leases the vassal's
//! address from the router before the namespaces exist (docs/design.md,
//! "Launch order", step 1), and the same name gets the same address again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use vassal_tests::binary;
use vassal_tests::cluster_harness::{Cluster, ClusterRouter, ClusterRouterSpec};
use vassal_tests::launcher_harness::{
    code, name, stderr, stdout, toml_string, vassal_file, TempDir, PROJECT_UID,
};
use vassal_tests::router_harness::{TestRouter, PYTHON};

const OPEN_RULES: &str = "[default]\nout = \"allow\"\nin = \"deny\"\nestablished = true\n";

/// The vassal connects to `gateway:port` over UDP (no traffic needed) and
/// prints the source address the kernel picked: its own.
fn own_address_script(gateway: Ipv4Addr) -> String {
    format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('{gateway}', 9))\nprint(s.getsockname()[0])"
    )
}

fn launch_auto(socket: &std::path::Path, n: &str, gateway: Ipv4Addr) -> (i32, String, String) {
    let out = Command::new(binary("vassal-launch"))
        .args([
            "run",
            "--name",
            n,
            "--uid",
            &PROJECT_UID.to_string(),
            "--address",
            "auto",
            "--router",
        ])
        .arg(socket)
        .args(["--", PYTHON, "-c", &own_address_script(gateway)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (code(&out), stdout(&out), stderr(&out))
}

#[test]
fn launcher_auto_address_is_leased_from_the_subnet_and_kept_by_name() {
    let router = TestRouter::with_rules(OPEN_RULES);
    let n = name("la");
    let (rc, out, err) = launch_auto(&router.socket, &n, router.gateway());
    assert_eq!(rc, 0, "{err}\n{}", router.log_text());
    let first: Ipv4Addr = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?} {err}"));
    let (a, b) = router.net;
    assert!(
        first.to_string().starts_with(&format!("10.{a}.{b}.")),
        "{first}"
    );
    assert_ne!(first, router.gateway());
    // Relaunched under the same name: the same address.
    let (rc, out, err) = launch_auto(&router.socket, &n, router.gateway());
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.trim(), first.to_string());
    // Another name: another address.
    let other = name("la");
    let (rc, out, err) = launch_auto(&router.socket, &other, router.gateway());
    assert_eq!(rc, 0, "{err}");
    assert_ne!(out.trim(), first.to_string());
}

#[test]
fn launcher_auto_address_in_a_vassal_file_is_checked_and_used() {
    let router = TestRouter::with_rules(OPEN_RULES);
    let dir = TempDir::new();
    let n = name("lf");
    let rest = format!(
        "[network]\nrouter = {}\naddress = \"auto\"\n",
        toml_string(&router.socket.display().to_string())
    );
    let script = own_address_script(router.gateway());
    let file = vassal_file(&dir, &n, &[PYTHON, "-c", &script], &rest);
    let check = Command::new(binary("vassal-launch"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(code(&check), 0, "{}", stderr(&check));
    assert!(
        stdout(&check).contains("address auto"),
        "{}",
        stdout(&check)
    );
    let out = Command::new(binary("vassal-launch"))
        .args(["run", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), router.log_text());
    let (a, b) = router.net;
    assert!(
        stdout(&out).trim().starts_with(&format!("10.{a}.{b}.")),
        "{}",
        stdout(&out)
    );
    // A fixed address6 beside an automatic address is a file error.
    let bad = vassal_file(
        &dir,
        &n,
        &["/bin/true"],
        &format!("{rest}address6 = \"fd00::2\"\n"),
    );
    let check = Command::new(binary("vassal-launch"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(code(&check), 2);
    assert!(
        stderr(&check).contains("network.address6"),
        "{}",
        stderr(&check)
    );
}

#[test]
fn launcher_auto_address_comes_from_the_cluster_block() {
    let cluster = Cluster::new(3);
    let r = ClusterRouter::start(&cluster, 0, &ClusterRouterSpec::node("host-0"));
    let block = r.block();
    let gateway: Ipv4Addr = block.replace(".0/24", ".1").parse().unwrap();
    let n = name("lc");
    let (rc, out, err) = launch_auto(&r.socket, &n, gateway);
    assert_eq!(rc, 0, "{err}\n{}", r.log_text());
    assert!(
        out.trim().starts_with(&block.replace(".0/24", ".")),
        "{out} not in {block}"
    );
}
