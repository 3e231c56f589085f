//! etcd protected as docs/cluster.md ("Protecting etcd") says: TLS with the
//! cluster's own CA, client certificates demanded by etcd, and role-based
//! authentication with a role limited to the router's `key_prefix`. Real
//! etcd (three members, TLS client URLs) and real routers in simulated
//! hosts' namespaces; certificates made by `openssl` in the test.
//!
//! Whoever can write etcd's keys can claim blocks and name any address's
//! project: each refusal below is a router that must not get in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;
use vassal_tests::cluster_harness::{
    Cluster, ClusterRouter, ClusterRouterSpec, ClusterVassal, EtcdProtection,
};
use vassal_tests::pki::Pki;
use vassal_tests::wait_until;

/// How long a router that must refuse to start may take to exit.
const REFUSAL: Duration = Duration::from_secs(20);

/// A router on host 0 whose `[cluster]` table has `extra` lines.
fn router(cluster: &Cluster, node: &str, extra: String) -> ClusterRouter {
    router_on(cluster, 0, node, extra)
}

/// A router on host `host` whose `[cluster]` table has `extra` lines.
fn router_on(cluster: &Cluster, host: usize, node: &str, extra: String) -> ClusterRouter {
    let mut spec = ClusterRouterSpec::node(node);
    spec.cluster_extra = extra;
    ClusterRouter::configure(cluster, host, &spec)
}

/// Asserts that `r` exits non-zero and that its fatal error names every
/// etcd endpoint, each with all of `want` (the step and the hint).
fn assert_refused(cluster: &Cluster, r: &mut ClusterRouter, want: &[&str]) {
    r.spawn_nowait();
    let status = r.exit_within(REFUSAL);
    let log = r.log_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the router was not refused ({status:?}); log:\n{log}"
    );
    let fatal = log
        .lines()
        .find(|l| l.contains("joining the cluster"))
        .unwrap_or_else(|| panic!("no fatal error in the log:\n{log}"));
    // "... (https://A: step: why; https://B: step: why) and ..."
    let causes: Vec<&str> = fatal.split("; ").collect();
    for endpoint in cluster.endpoints() {
        let cause = causes
            .iter()
            .find(|c| c.contains(&format!("{endpoint}: ")))
            .unwrap_or_else(|| panic!("{endpoint} is not named: {fatal}"));
        for w in want {
            assert!(cause.contains(w), "wanted {w:?} for {endpoint} in: {fatal}");
        }
    }
    // Nothing of this router's was written under the prefix.
    let out = cluster.etcdctl(&["get", "--prefix", "/vassal/"]);
    assert!(out.status.success());
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(
        !all.contains(&format!("/vassal/nodes/{}", r.node))
            && !all.contains(&format!("\"node\":\"{}\"", r.node)),
        "keys were written: {all}"
    );
}

/// A password file (mode 0600) in the cluster's directory.
fn password_file(cluster: &Cluster, name: &str, password: &str) -> PathBuf {
    let path = cluster.dir.join(format!("{name}.password"));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn tls_and_client_certs() -> EtcdProtection {
    EtcdProtection {
        tls: true,
        client_cert_auth: true,
        auth: false,
    }
}

fn tls_and_users() -> EtcdProtection {
    EtcdProtection {
        tls: true,
        client_cert_auth: false,
        auth: true,
    }
}

/// The etcd keys of the vassal's identity, once written.
fn identity_in_etcd(cluster: &Cluster, v: &ClusterVassal, project: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        let out = cluster.etcdctl(&["get", &format!("/vassal/identities/{}", v.addr)]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("\"project\":\"{project}\""))
    })
}

#[test]
fn with_the_right_ca_and_client_certificate_a_router_gets_its_block_and_registers_identities() {
    let cluster = Cluster::new_protected(3, tls_and_client_certs());
    let mut a = router(&cluster, "host-0", cluster.tls_keys(Some("vassal-host-0")));
    a.spawn();
    let block = a.block();
    assert!(
        block.starts_with("10.240.") && block.ends_with(".0/24"),
        "{block}"
    );
    let v = ClusterVassal::launch(&a, "alpha", "web");
    assert!(v.accepted(), "{:?}", v.answer);
    assert!(identity_in_etcd(&cluster, &v, "alpha"));
    // The router's own watch (over TLS) brings it back into its cache.
    assert!(
        wait_until(Duration::from_secs(10), || a.identities().iter().any(
            |(addr, project, node)| *addr == v.addr.to_string()
                && project == "alpha"
                && node == "host-0"
        )),
        "{:?}",
        a.identities()
    );
    assert_eq!(a.metric("vassal_cluster_etcd_up"), Some(1.0));
}

#[test]
fn a_router_whose_ca_does_not_match_etcd_s_is_refused_naming_the_endpoint_and_the_step() {
    let cluster = Cluster::new_protected(3, tls_and_client_certs());
    // An impostor's CA: the router must not believe etcd's servers are the
    // real ones (its client certificate is a good one).
    let impostor = Pki::new(&cluster.dir, "impostor-ca");
    let keys = cluster.tls_keys(Some("vassal-host-0")).replace(
        &cluster.pki.as_ref().unwrap().ca.display().to_string(),
        &impostor.ca.display().to_string(),
    );
    let mut r = router(&cluster, "host-0", keys);
    assert_refused(
        &cluster,
        &mut r,
        &[
            "granting a lease: ",
            "TLS handshake: the server's certificate is not signed by cluster.etcd_ca",
        ],
    );
}

#[test]
fn a_router_without_a_client_certificate_is_refused_when_etcd_demands_one() {
    let cluster = Cluster::new_protected(3, tls_and_client_certs());
    let mut r = router(&cluster, "host-0", cluster.tls_keys(None));
    assert_refused(
        &cluster,
        &mut r,
        &[
            "granting a lease: TLS handshake: etcd ",
            "this router's client certificate (cluster.etcd_cert/etcd_key missing",
        ],
    );
}

/// The `[cluster]` keys for etcd user `user` with its password in `file`,
/// over TLS.
fn user_keys(cluster: &Cluster, user: &str, file: &std::path::Path) -> String {
    format!(
        "{}etcd_user = \"{user}\"\netcd_password_file = \"{}\"\n",
        cluster.tls_keys(None),
        file.display()
    )
}

#[test]
fn with_etcd_users_a_wrong_password_is_refused_and_the_right_one_works() {
    let cluster = Cluster::new_protected(3, tls_and_users());
    cluster.add_user("vassal-host-0", "the-right-password", "/vassal");
    let file = password_file(&cluster, "host-0", "a-wrong-password");
    let keys = user_keys(&cluster, "vassal-host-0", &file);
    let mut r = router(&cluster, "host-0", keys);
    assert_refused(
        &cluster,
        &mut r,
        &["connecting and authenticating: authentication: etcd refused cluster.etcd_user"],
    );
    // The right password: the same router gets in.
    password_file(&cluster, "host-0", "the-right-password");
    r.spawn();
    let v = ClusterVassal::launch(&r, "alpha", "web");
    assert!(v.accepted(), "{:?}", v.answer);
    assert!(identity_in_etcd(&cluster, &v, "alpha"));
    let log = r.log_text();
    assert!(
        !log.contains("the-right-password") && !log.contains("a-wrong-password"),
        "a password reached the log:\n{log}"
    );
}

#[test]
fn a_user_whose_role_is_limited_to_another_prefix_cannot_write_ours() {
    let cluster = Cluster::new_protected(3, tls_and_users());
    // Another tenant of the same etcd, allowed only under /other/.
    cluster.add_user("other", "other-password", "/other");
    let file = password_file(&cluster, "other", "other-password");
    let keys = user_keys(&cluster, "other", &file);
    let mut r = router(&cluster, "host-0", keys);
    assert_refused(
        &cluster,
        &mut r,
        &["authorization: the etcd user (cluster.etcd_user, else the client certificate's common name) has no role granting readwrite on cluster.key_prefix"],
    );
    // The user can write its own prefix: the refusal is the role's.
    let out = cluster.etcdctl(&["--user=other:other-password", "put", "/other/x", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_client_certificates_and_users_the_certificate_s_common_name_is_the_etcd_user() {
    let cluster = Cluster::new_protected(
        3,
        EtcdProtection {
            tls: true,
            client_cert_auth: true,
            auth: true,
        },
    );
    // A user named after host 0's certificate; no password in the router.
    cluster.add_user("vassal-host-0", "never-used-by-the-router", "/vassal");
    let mut a = router(&cluster, "host-0", cluster.tls_keys(Some("vassal-host-0")));
    a.spawn();
    let v = ClusterVassal::launch(&a, "alpha", "web");
    assert!(v.accepted(), "{:?}", v.answer);
    assert!(identity_in_etcd(&cluster, &v, "alpha"));
    // A certificate of the right CA whose name is no etcd user gets in
    // through TLS and no further.
    let mut b = router_on(&cluster, 1, "host-1", cluster.tls_keys(Some("intruder")));
    assert_refused(
        &cluster,
        &mut b,
        &["authorization: the etcd user (cluster.etcd_user, else the client certificate's common name) has no role"],
    );
}

#[test]
fn check_config_refuses_a_key_others_can_read_without_showing_it() {
    vassal_tests::require_root();
    let dir = std::env::temp_dir().join(vassal_tests::unique("cks"));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::new(&dir, "ca");
    let client = pki.issue("client", "vassal-host-0", &[]);
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\netcd = [\"https://198.51.100.10:2379\"]\nnode = \"host-0\"\nunderlay = \"198.51.100.10\"\nprefix = \"10.240.0.0/16\"\nblock = 24\netcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
            pki.ca.display(),
            client.cert.display(),
            client.key.display()
        ),
    )
    .unwrap();
    let check = || {
        std::process::Command::new(vassal_tests::binary("vassal-router"))
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let ok = check();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::set_permissions(&client.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let secret = std::fs::read_to_string(&client.key).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "a readable key was accepted");
    let want = format!(
        "{}:9:12: cluster.etcd_key: {} has mode 0644: group or others may access it (chmod 600)",
        config.display(),
        client.key.display()
    );
    assert!(stderr.contains(&want), "wanted {want}\ngot {stderr}");
    let body = secret.lines().nth(1).unwrap();
    assert!(
        !stderr.contains(body),
        "the key's content reached the error"
    );
}
