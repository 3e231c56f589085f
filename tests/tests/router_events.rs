//! Events reach the operator's sink promptly: spoofed packets, floods of
//! denied packets and refused attaches, as JSON lines, and are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use vassal_tests::router_harness::{wait_event, RouterSpec, TestRouter, TestVassal};

#[test]
fn router_events_spoofing_floods_and_refusals_reach_the_sink() {
    let dir = std::env::temp_dir().join(format!("vassal-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.sock");
    let _ = std::fs::remove_file(&path);
    let sink = UnixDatagram::bind(&path).unwrap();
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\n[[out]]\naction = \"deny\"\ndst = \"10.0.0.0/8\"\n".into()),
        extra: format!("[events]\nsink = \"unix:{}\"\ndenied_per_second = 20\n", path.display()),
        ..Default::default()
    });

    // Spoofing: a forged source address.
    let v = TestVassal::attach(&router, "mallory", 2);
    let forged = router.addr(99);
    v.ns.exec(&["ip", "addr", "add", &format!("{forged}/32"), "dev", "vt0"]);
    let gw = router.gateway().to_string();
    v.ns.try_exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        &forged.to_string(),
        &gw,
    ]);
    let e = wait_event(&sink, Duration::from_secs(5), |e| e["event"] == "spoofed")
        .expect("a spoofed event");
    assert_eq!(e["project"], "mallory");
    assert_eq!(e["packets"], 2);
    assert!(e["ts"].as_f64().unwrap() > 1.7e9);

    // A flood of denied packets (the gateway is in 10/8): 100 pings in 1 s.
    v.ns.try_exec(&[
        "ping", "-n", "-q", "-c", "100", "-i", "0.01", "-W", "1", &gw,
    ]);
    let e = wait_event(&sink, Duration::from_secs(5), |e| {
        e["event"] == "denied_flood"
    })
    .expect("a denied_flood event");
    assert_eq!(e["project"], "mallory");
    assert!(e["packets"].as_u64().unwrap() > 20, "{e}");

    // A refused attach: the same address again.
    let mut dup = TestVassal::create(&router, "other", 2, false);
    assert!(matches!(
        dup.hello(&router),
        vassal_attach::Response::Refused { .. }
    ));
    let e = wait_event(&sink, Duration::from_secs(5), |e| {
        e["event"] == "attach_refused"
    })
    .expect("an attach_refused event");
    assert_eq!(e["reason"], "address_in_use");

    let m = router.scrape();
    for kind in ["spoofed", "denied_flood", "attach_refused"] {
        assert!(
            vassal_tests::metric(&m, "vassal_events_total", &format!("event=\"{kind}\""))
                .unwrap_or(0.0)
                >= 1.0,
            "{kind} not counted:\n{m}"
        );
    }
    // A quiet vassal causes no events.
    let quiet = wait_event(&sink, Duration::from_secs(2), |e| {
        e["event"] == "spoofed" || e["event"] == "denied_flood"
    });
    assert!(quiet.is_none(), "{quiet:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn router_events_scans_and_logged_denials_reach_the_sink() {
    let dir = std::env::temp_dir().join(format!("vassal-events-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.sock");
    let _ = std::fs::remove_file(&path);
    let sink = UnixDatagram::bind(&path).unwrap();
    // Port 25 (mail) is denied with log = true by the rule of line 4; the rest of the
    // gateway is allowed out (nothing listens, the host answers RST).
    let rules = "[default]\nout = \"allow\"\nin = \"deny\"\n[[out]]\naction = \"deny\"\nproto = \"tcp\"\ndst_port = \"25\"\nlog = true\n";
    let router = TestRouter::start(&RouterSpec {
        rules: Some(rules.into()),
        extra: format!(
            "[events]\nsink = \"unix:{}\"\ndistinct_ports_per_second = 50\n",
            path.display()
        ),
        ..Default::default()
    });
    let v = TestVassal::attach(&router, "scanner", 2);
    let gw = router.gateway().to_string();
    let connect = |ports: &str| {
        let script = format!(
            "import socket\nfor p in {ports}:\n    s = socket.socket(); s.settimeout(0.05)\n    try: s.connect(({gw:?}, p))\n    except OSError: pass\n    s.close()\n"
        );
        v.ns.command(vassal_tests::router_harness::PYTHON)
            .args(["-c", &script])
            .status()
            .unwrap();
    };

    // A few connections to a few ports: no scan.
    connect("[8080, 8081, 8080, 8082]");
    assert!(
        wait_event(&sink, Duration::from_secs(2), |e| e["event"] == "port_scan").is_none(),
        "four ports are not a scan"
    );
    // 400 distinct ports at once: a scan.
    connect("range(2000, 2400)");
    let e = wait_event(&sink, Duration::from_secs(5), |e| e["event"] == "port_scan")
        .expect("a port_scan event");
    assert_eq!(e["project"], "scanner");
    let seen = e["distinct_ports"].as_u64().unwrap();
    assert!((150..=500).contains(&seen), "{e}");

    // The logged rule: the event names the rule's line and the packet.
    connect("[25]");
    let e = wait_event(&sink, Duration::from_secs(5), |e| {
        e["event"] == "denied_logged"
    })
    .expect("a denied_logged event");
    assert_eq!(e["project"], "scanner");
    assert_eq!(e["last"]["rule_line"], 4, "{e}");
    assert_eq!(e["last"]["dst_port"], 25);
    assert_eq!(e["last"]["chain"], "out");
    assert_eq!(e["last"]["src"], v.addr.to_string());
    for kind in ["port_scan", "denied_logged"] {
        assert!(router.metric("vassal_events_total", &format!("event=\"{kind}\"")) >= 1.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
