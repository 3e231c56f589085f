//! The operator's Prometheus side: the alerting rules are valid, and a
//! live router's /metrics passes promtool's lint (HELP and TYPE for every
//! metric, counters ending in _total).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
use std::io::Write;
use std::process::{Command, Stdio};
use vassal_tests::router_harness::{RouterSpec, TestRouter, TestVassal};

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; tests/run-all.sh installs it)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn ops_alert_rules_are_valid() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations/alerts.yml");
    let (ok, text) = promtool(&["check", "rules", rules], None);
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS: 19 rules found"), "{text}");
}

#[test]
fn ops_live_metrics_pass_promtool_lint() {
    let router = TestRouter::start(&RouterSpec::default());
    let a = TestVassal::attach(&router, "alpha", 2);
    // Traffic and a refusal, so that drop and refusal series exist too.
    assert!(a.ping_fails(&router.gateway().to_string()));
    let mut dup = TestVassal::create(&router, "beta", 2, false);
    assert!(matches!(
        dup.hello(&router),
        vassal_attach::Response::Refused { .. }
    ));
    let metrics = router.scrape();
    let body = metrics.split("\r\n\r\n").nth(1).unwrap_or(&metrics);
    for name in [
        "vassal_tx_packets_total",
        "vassal_dropped_packets_total",
        "vassal_attach_refusals_total",
        "vassal_attached",
        "vassal_cpu_seconds_total",
        "vassal_memory_bytes",
        "vassal_io_write_bytes_total",
        "vassal_limit_memory_bytes",
        "vassal_flows_restored_total",
    ] {
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no HELP:\n{body}"
        );
    }
    let (ok, text) = promtool(&["check", "metrics"], Some(body));
    assert!(ok, "{text}\n{body}");
}
