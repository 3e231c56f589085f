//! The attach protocol on a real router: refusals with their reasons,
//! detach on close, re-attach, and the control socket's own protections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use vassal_attach::{transport, Hello, RefuseReason, Request, Response, PROTOCOL_VERSION};
use vassal_tests::router_harness::{as_uid, create_tun_in, RouterSpec, TestRouter, TestVassal};
use vassal_tests::{wait_until, Netns};

const OPEN_RULES: &str = "[default]\nout = \"allow\"\nin = \"deny\"\n";

fn refused(answer: Response) -> RefuseReason {
    match answer {
        Response::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn hello(project: &str, ipv4: std::net::Ipv4Addr) -> Request {
    Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        project: project.into(),
        ipv4,
        ipv6: None,
        net_out: None,
        net_in: None,
    })
}

#[test]
fn router_duplicate_address_is_refused_and_the_holder_keeps_it() {
    let router = TestRouter::with_rules(OPEN_RULES);
    let holder = TestVassal::attach(&router, "alice", 2);
    let mut intruder = TestVassal::create(&router, "mallory", 2, false);
    assert_eq!(refused(intruder.hello(&router)), RefuseReason::AddressInUse);
    assert!(holder.ping(&router.gateway().to_string(), 2, 56));
    assert_eq!(router.metric("vassal_attached", "project=\"alice\""), 1.0);
    assert_eq!(
        router.metric("vassal_attach_refusals_total", "reason=\"address_in_use\""),
        1.0
    );
}

#[test]
fn router_detach_on_close_then_reattach_keeps_counters() {
    let router = TestRouter::with_rules(OPEN_RULES);
    let mut v = TestVassal::attach(&router, "alice", 2);
    assert!(v.ping(&router.gateway().to_string(), 2, 56));
    v.detach();
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_attached", "project=\"alice\"")
        == 0.0));
    assert!(v.ping_fails(&router.gateway().to_string()));
    // Another project may now take the address... but alice comes back first.
    match v.hello(&router) {
        Response::Accepted { .. } => {}
        other => panic!("re-attach refused: {other:?}"),
    }
    assert!(v.ping(&router.gateway().to_string(), 2, 56));
    // Counters outlived the reconnect: 5 echo requests of 84 bytes (the one
    // sent while detached waited in the tun's queue and left after re-attach).
    assert_eq!(
        router.metric("vassal_tx_packets_total", "project=\"alice\""),
        5.0
    );
    assert_eq!(
        router.metric("vassal_tx_bytes_total", "project=\"alice\""),
        420.0
    );
}

#[test]
fn router_addresses_outside_the_subnet_and_project_table_mismatches_are_refused() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some(OPEN_RULES.into()),
        extra: String::new(),
        ..Default::default()
    });
    // Same router, restarted with a [[project]] table naming alice's address.
    let mut router = router;
    let table = format!(
        "\n[[project]]\nname = \"alice\"\naddress = \"{}\"\n",
        router.addr(10)
    );
    let mut config = std::fs::read_to_string(&router.config_path).unwrap();
    config.push_str(&table);
    std::fs::write(&router.config_path, config).unwrap();
    router.stop(nix::sys::signal::Signal::SIGTERM);
    router.spawn();

    let ns = Netns::new("vn");
    let tun = create_tun_in(&ns, "vt0", 0);
    let ask = |req: &Request| {
        let conn = transport::connect(&router.socket).unwrap();
        transport::call(conn.as_fd(), req, Some(tun.as_fd())).unwrap()
    };
    for bad in [
        router.gateway(),
        router.addr(0),
        router.addr(255),
        "10.1.2.3".parse().unwrap(),
    ] {
        assert_eq!(
            refused(ask(&hello("bob", bad))),
            RefuseReason::AddressOutsideSubnet,
            "{bad}"
        );
    }
    // alice must use .10; nobody else may take .10.
    assert_eq!(
        refused(ask(&hello("alice", router.addr(11)))),
        RefuseReason::ProjectMismatch
    );
    assert_eq!(
        refused(ask(&hello("bob", router.addr(10)))),
        RefuseReason::ProjectMismatch
    );
    // IPv6 on a router without gateway6.
    let mut v6 = hello("bob", router.addr(12));
    if let Request::Hello(h) = &mut v6 {
        h.ipv6 = Some("fd00::12".parse().unwrap());
    }
    assert_eq!(refused(ask(&v6)), RefuseReason::AddressOutsideSubnet);
    // A wrong version.
    let mut old = hello("bob", router.addr(12));
    if let Request::Hello(h) = &mut old {
        h.version = 99;
    }
    assert_eq!(refused(ask(&old)), RefuseReason::BadVersion);
    // A version-1 launcher (before version 2) still attaches.
    let mut v1 = hello("bob", router.addr(12));
    if let Request::Hello(h) = &mut v1 {
        h.version = 1;
    }
    assert!(matches!(ask(&v1), Response::Accepted { .. }));
    // The right address is accepted.
    assert!(matches!(
        ask(&hello("alice", router.addr(10))),
        Response::Accepted { .. }
    ));
}

#[test]
fn router_malformed_hellos_and_non_tun_descriptors_are_refused() {
    let router = TestRouter::with_rules(OPEN_RULES);
    // Not JSON.
    let conn = transport::connect(&router.socket).unwrap();
    transport::send_datagram(conn.as_fd(), b"hello router", None).unwrap();
    assert_eq!(
        refused(transport::recv_response(conn.as_fd()).unwrap()),
        RefuseReason::Malformed
    );
    // The router closed it.
    assert!(matches!(
        transport::recv_response(conn.as_fd()),
        Err(transport::TransportError::Closed)
    ));
    // A bad project name.
    let conn = transport::connect(&router.socket).unwrap();
    transport::send_datagram(
        conn.as_fd(),
        br#"{"type":"hello","version":1,"project":"../etc","ipv4":"10.0.0.2"}"#,
        None,
    )
    .unwrap();
    assert_eq!(
        refused(transport::recv_response(conn.as_fd()).unwrap()),
        RefuseReason::Malformed
    );
    // An event on a connection that attached no vassal: nobody to charge.
    let conn = transport::connect(&router.socket).unwrap();
    transport::send_datagram(
        conn.as_fd(),
        br#"{"type":"event","event":"oom_kill","count":1}"#,
        None,
    )
    .unwrap();
    assert_eq!(
        refused(transport::recv_response(conn.as_fd()).unwrap()),
        RefuseReason::Malformed
    );
    assert_eq!(
        router.metric("vassal_events_total", "event=\"oom_kill\""),
        0.0
    );
    // No fd.
    let conn = transport::connect(&router.socket).unwrap();
    let answer = transport::call(conn.as_fd(), &hello("bob", router.addr(5)), None).unwrap();
    assert_eq!(refused(answer), RefuseReason::BadDevice);
    // A pipe instead of a tun.
    let (r, _w) = nix::unistd::pipe().unwrap();
    let conn = transport::connect(&router.socket).unwrap();
    let answer =
        transport::call(conn.as_fd(), &hello("bob", router.addr(5)), Some(r.as_fd())).unwrap();
    assert_eq!(refused(answer), RefuseReason::BadDevice);
    // A tap device carries ethernet frames: every packet would misparse.
    let ns = Netns::new("vn");
    let tap = create_tun_in(&ns, "vt1", libc::IFF_TAP);
    let conn = transport::connect(&router.socket).unwrap();
    let answer = transport::call(
        conn.as_fd(),
        &hello("bob", router.addr(5)),
        Some(tap.as_fd()),
    )
    .unwrap();
    assert_eq!(refused(answer), RefuseReason::BadDevice);
    // The router is unharmed.
    let v = TestVassal::attach(&router, "bob", 5);
    assert!(v.ping(&router.gateway().to_string(), 1, 56));
}

#[test]
fn router_unauthorized_uids_are_refused_root_included() {
    // launcher_uids without 0: root itself is refused.
    let router = TestRouter::start(&RouterSpec {
        rules: Some(OPEN_RULES.into()),
        top: "launcher_uids = [4242]".into(),
        ..Default::default()
    });
    let mut v = TestVassal::create(&router, "alice", 2, false);
    assert_eq!(refused(v.hello(&router)), RefuseReason::Unauthorized);
    let out = router.cli(&["stats", "--socket", router.socket.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));

    // uid 65534 through an opened-up socket: SO_PEERCRED says 65534.
    std::fs::set_permissions(&router.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = router.socket.clone();
    let addr = router.addr(3);
    let code = as_uid(65534, move || {
        let Ok(conn) = transport::connect(&socket) else {
            return 10;
        };
        match transport::call(conn.as_fd(), &hello("nobody", addr), None) {
            Ok(Response::Refused {
                reason: RefuseReason::Unauthorized,
                ..
            }) => 0,
            _ => 11,
        }
    });
    assert_eq!(code, 0);
    assert_eq!(
        router.metric("vassal_attach_refusals_total", "reason=\"unauthorized\""),
        3.0
    );
}

#[test]
fn router_control_socket_is_0660_and_a_silent_client_is_cut_off() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some(OPEN_RULES.into()),
        top: "[limits]\nhello_timeout_ms = 300".into(),
        ..Default::default()
    });
    let mode = std::fs::metadata(&router.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let conn = transport::connect(&router.socket).unwrap();
    // Say nothing: the router closes the connection after the timeout.
    assert!(matches!(
        transport::recv_response(conn.as_fd()),
        Err(transport::TransportError::Closed)
    ));
}

#[test]
fn router_restart_replaces_a_stale_socket_and_vassals_reattach() {
    let mut router = TestRouter::with_rules(OPEN_RULES);
    let mut v = TestVassal::attach(&router, "alice", 2);
    // A crash leaves the socket file behind.
    router.stop(nix::sys::signal::Signal::SIGKILL);
    assert!(router.socket.exists());
    router.spawn();
    // The launcher's reconnect: the same tun fd, a new hello.
    match v.hello(&router) {
        Response::Accepted { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(
        v.ping(&router.gateway().to_string(), 1, 56),
        "{}",
        router.log_text()
    );
}

#[test]
fn router_a_second_router_never_takes_over_a_running_ones_device_or_socket() {
    let router = TestRouter::with_rules(OPEN_RULES);
    let v = TestVassal::attach(&router, "alice", 2);
    let config = std::fs::read_to_string(&router.config_path).unwrap();
    // The harness's config has the router bind /metrics on port 0, so a
    // second router from a copy gets a port of its own and fails only
    // where the test looks.
    assert!(
        config.contains("metrics_listen = \"127.0.0.1:0\""),
        "{config}"
    );
    // Same device, another socket: refused at the device (IFF_TUN_EXCL).
    let same = router.dir.join("same.toml");
    let socket = router.socket.display().to_string();
    std::fs::write(&same, config.replace(&socket, &format!("{socket}.2"))).unwrap();
    let out = router.cli(&["run", "--config", same.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TUNSETIFF") && err.contains("busy"), "{err}");
    // Another device, same control socket: refused at the socket.
    let device = vassal_tests::unique("vr");
    let other = router.dir.join("other.toml");
    std::fs::write(
        &other,
        config.replace(
            &format!("device = \"{}\"", router.device),
            &format!("device = \"{device}\""),
        ),
    )
    .unwrap();
    let out = router.cli(&["run", "--config", other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{out:?}"
    );
    assert!(!std::path::Path::new(&format!("/sys/class/net/{device}")).exists());
    // The running router and its vassal are untouched.
    assert!(
        v.ping(&router.gateway().to_string(), 1, 56),
        "{}",
        router.log_text()
    );
}
