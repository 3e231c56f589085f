//! Rules that name the other end's project (`peer`, `peer_project`,
//! docs/rules.md) with real vassals attached to a real router: a project's
//! vassals reach each other, another project is shut out, a named peer
//! project is let in on its port only. Across hosts the same rules apply
//! with the identity cache (docs/cluster.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vassal_tests::router_harness::{echo_server, tcp_echo, TestRouter, TestVassal};

/// Same project both ways; redis-team's port 6379 open to every known
/// vassal; nothing else between vassals.
const PEER_RULES: &str = r#"
[default]
out = "deny"
in = "deny"
established = true

[[out]]
action = "allow"
peer = "same"

[[out]]
action = "allow"
peer_project = "redis-team"
proto = "tcp"
dst_port = 6379

[[in]]
action = "allow"
peer = "same"

[[in]]
action = "allow"
project = "redis-team"
peer = "vassal"
proto = "tcp"
dst_port = 6379
"#;

#[test]
fn router_peer_rules_let_a_project_reach_itself_and_keep_others_out() {
    let router = TestRouter::with_rules(PEER_RULES);
    let app = TestVassal::attach(&router, "shop", 2);
    let db = TestVassal::attach(&router, "shop", 3);
    let intruder = TestVassal::attach(&router, "mallory", 4);
    let redis = TestVassal::attach(&router, "redis-team", 5);

    // Same project: ping and TCP both ways.
    assert!(
        app.ping(&db.addr.to_string(), 2, 56),
        "{}",
        router.log_text()
    );
    assert!(db.ping(&app.addr.to_string(), 1, 56));
    let _db_server = echo_server(&db.ns, "0.0.0.0", 5432, &router.dir.join("echo-db"));
    assert!(tcp_echo(&app.ns, &db.addr.to_string(), 5432, 50_000));

    // Another project: refused by its own out chain (not "same") and, when
    // it could send, by the receiver's in chain.
    assert!(intruder.ping_fails(&db.addr.to_string()));
    assert!(!tcp_echo(&intruder.ns, &db.addr.to_string(), 5432, 10));
    assert!(router.dropped("mallory", "firewall") >= 1.0);

    // A named peer project on its port: shop and mallory reach redis:6379
    // (their out chain names redis-team, redis-team's in chain lets any
    // known vassal in), and nothing else of redis.
    let _redis = echo_server(&redis.ns, "0.0.0.0", 6379, &router.dir.join("echo-redis"));
    let _redis2 = echo_server(&redis.ns, "0.0.0.0", 6380, &router.dir.join("echo-redis2"));
    assert!(tcp_echo(&app.ns, &redis.addr.to_string(), 6379, 1000));
    assert!(tcp_echo(&intruder.ns, &redis.addr.to_string(), 6379, 1000));
    assert!(!tcp_echo(&app.ns, &redis.addr.to_string(), 6380, 10));
    // And redis cannot open anything toward shop.
    assert!(redis.ping_fails(&app.addr.to_string()));
}
