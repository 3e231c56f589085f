//! Live accounting: launched vassals' CPU, memory, IO and pids reach the
//! router's per-project series within seconds, with the limits of their
//! files; the counters survive relaunches and router restarts as
//! documented; and a launcher's reports count only to the project its
//! connection attached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vassal_attach::transport;
use vassal_attach::{RefuseReason, Response};
use vassal_tests::launcher_harness::{
    name, network_table, vassal_file, Launched, TempDir, PROJECT_UID,
};
use vassal_tests::router_harness::{RouterSpec, TestRouter, TestVassal};
use vassal_tests::wait_until;

const MIB: f64 = 1048576.0;

/// A directory on the host's real filesystem (not tmpfs: IO must reach a
/// block device) that the vassal's uid may write, for a writable mount.
fn data_dir() -> TempDir {
    let d = TempDir::new();
    std::os::unix::fs::chown(&d.0, Some(PROJECT_UID), Some(PROJECT_UID)).unwrap();
    d
}

/// The vassal file of `vassal` attached to `router` at `host`, running the
/// shell `script`, with `rest` appended (tables).
fn file(
    dir: &TempDir,
    router: &TestRouter,
    vassal: &str,
    host: u8,
    script: &str,
    rest: &str,
) -> PathBuf {
    vassal_file(
        dir,
        vassal,
        &["/bin/sh", "-c", script],
        &format!("{}{rest}", network_table(&router.socket, router.addr(host))),
    )
}

fn launch(dir: &TempDir, vassal: &str, file: &Path) -> Launched {
    Launched::spawn(
        vassal,
        &["run".into(), "--config".into(), file.display().to_string()],
        dir.0.join("stderr"),
    )
}

fn m(router: &TestRouter, metric: &str, project: &str) -> f64 {
    router.metric(metric, &format!("project=\"{project}\""))
}

/// A number from one of the vassal's cgroup v1 files, read on the host.
fn cgroup_value(controller: &str, vassal: &str, file: &str) -> f64 {
    let path = format!("/sys/fs/cgroup/{controller}/vassal/{vassal}/{file}");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// Burns CPU forever (one core), after `prelude`.
const BURN: &str = "while True: pass";

#[test]
fn accounting_a_vassals_cpu_memory_pids_io_and_limits_reach_the_router() {
    let router = TestRouter::start(&RouterSpec::default());
    let n = name("ac");
    let dir = TempDir::new();
    let data = data_dir();
    // 8 MiB written with O_DIRECT (it reaches the disk now, charged to the
    // writer on cgroup v1 too), two sleepers, then two pythons burning CPU
    // (two, so that the vassal gets its share on a busy host), one holding
    // 64 MiB it has touched.
    let script = format!(
        "dd if=/dev/zero of=/srv/f bs=1M count=8 oflag=direct 2>/dev/null || exit 3; \
         sleep 1000 & sleep 1000 & python3 -c '{BURN}' & \
         exec python3 -c 'b = bytearray(b\"\\x01\") * (64 << 20)\n{BURN}'"
    );
    let f = file(
        &dir,
        &router,
        &n,
        2,
        &script,
        &format!(
            "[limits]\nmemory = \"256M\"\ncpu = 1.5\npids = 64\nnet_out = \"50M\"\n\
             [[mount]]\nsource = \"{}\"\ntarget = \"/srv\"\nwritable = true\n",
            data.0.display()
        ),
    );
    let mut vassal = launch(&dir, &n, &f);

    // The limits of the file, as soon as the first report is in.
    assert!(
        wait_until(Duration::from_secs(10), || m(
            &router,
            "vassal_limit_pids",
            &n
        ) == 64.0),
        "no usage report: {}\n{}",
        vassal.stderr(),
        router.log_text()
    );
    assert_eq!(m(&router, "vassal_limit_memory_bytes", &n), 256.0 * MIB);
    assert_eq!(m(&router, "vassal_limit_cpu_cores", &n), 1.5);
    // The network limits, as the router enforces them: net_out from the
    // file, no net_in (0: nothing to compare with).
    assert_eq!(
        m(&router, "vassal_limit_net_out_bytes_per_second", &n),
        50e6 / 8.0
    );
    assert_eq!(m(&router, "vassal_limit_net_in_bytes_per_second", &n), 0.0);

    // The IO of the known write: 8 MiB, give or take the metadata the
    // filesystem writes in the vassal's name.
    assert!(wait_until(Duration::from_secs(10), || m(
        &router,
        "vassal_io_write_bytes_total",
        &n
    ) >= 8.0 * MIB));
    let written = m(&router, "vassal_io_write_bytes_total", &n);
    assert!(written <= 9.0 * MIB, "{written} bytes written for 8 MiB");

    // Memory: the 64 MiB python holds, and no more than the limit.
    assert!(
        wait_until(Duration::from_secs(10), || m(
            &router,
            "vassal_memory_bytes",
            &n
        ) >= 64.0 * MIB),
        "memory gauge {}",
        m(&router, "vassal_memory_bytes", &n)
    );
    let memory = m(&router, "vassal_memory_bytes", &n);
    assert!(memory < 160.0 * MIB, "memory gauge {memory}");
    assert!(m(&router, "vassal_memory_peak_bytes", &n) >= memory);
    let host_view = cgroup_value("memory", &n, "memory.usage_in_bytes");
    assert!(
        (memory - host_view).abs() < 16.0 * MIB,
        "gauge {memory}, cgroup {host_view}"
    );

    // Pids: what the cgroup holds (supervisor, two sleepers, two pythons),
    // as the host sees it.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let held = cgroup_value("pids", &n, "pids.current");
            held >= 5.0 && m(&router, "vassal_pids", &n) == held
        }),
        "pids gauge {}, cgroup {}",
        m(&router, "vassal_pids", &n),
        cgroup_value("pids", &n, "pids.current")
    );

    // CPU rises within 5 s while it burns, and keeps rising.
    let before = m(&router, "vassal_cpu_seconds_total", &n);
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || m(
            &router,
            "vassal_cpu_seconds_total",
            &n
        ) > before),
        "cpu stayed at {before} for 5 s"
    );
    let risen = m(&router, "vassal_cpu_seconds_total", &n);
    assert!(wait_until(Duration::from_secs(15), || m(
        &router,
        "vassal_cpu_seconds_total",
        &n
    ) > risen));
    eprintln!("cpu rose in {:?}", start.elapsed());

    // `vassal-router stats --json` has the exact totals.
    let entry = router.stats_of(&n);
    assert!(
        entry["cpu_usec"].as_f64().unwrap() >= risen * 1e6,
        "{entry}"
    );
    assert!(
        entry["io_write_bytes"].as_f64().unwrap() >= 8.0 * MIB,
        "{entry}"
    );

    vassal
        .stop(Duration::from_secs(5))
        .expect("the launcher ends");
    // Detached: the vassal holds nothing any more; the counters stay.
    assert!(wait_until(Duration::from_secs(5), || m(
        &router,
        "vassal_pids",
        &n
    ) == 0.0));
    assert_eq!(m(&router, "vassal_memory_bytes", &n), 0.0);
    assert_eq!(m(&router, "vassal_limit_memory_bytes", &n), 0.0);
    assert!(m(&router, "vassal_cpu_seconds_total", &n) > risen - 1.0);
    assert!(m(&router, "vassal_io_write_bytes_total", &n) >= 8.0 * MIB);
}

#[test]
fn accounting_counters_survive_a_relaunch_and_a_router_restart_counts_nothing_twice() {
    let mut router = TestRouter::start(&RouterSpec::default());
    let n = name("ac");
    let dir = TempDir::new();
    let data = data_dir();
    let mount = format!(
        "[[mount]]\nsource = \"{}\"\ntarget = \"/srv\"\nwritable = true\n",
        data.0.display()
    );
    // Each run writes 4 MiB to disk, then burns CPU (two burners: the
    // vassal gets its share on a busy host).
    let script = format!(
        "dd if=/dev/zero of=/srv/f bs=1M count=4 oflag=direct 2>/dev/null || exit 3; \
         python3 -c '{BURN}' & exec python3 -c '{BURN}'"
    );
    let f = file(&dir, &router, &n, 3, &script, &mount);
    let cpu = |r: &TestRouter| m(r, "vassal_cpu_seconds_total", &n);
    let io = |r: &TestRouter| m(r, "vassal_io_write_bytes_total", &n);

    let mut first = launch(&dir, &n, &f);
    assert!(
        wait_until(Duration::from_secs(20), || cpu(&router) >= 2.0
            && io(&router) >= 4.0 * MIB),
        "{}\n{}",
        first.stderr(),
        router.log_text()
    );
    first
        .stop(Duration::from_secs(5))
        .expect("the launcher ends");
    let (cpu1, io1) = (cpu(&router), io(&router));

    // The same name again: its cgroup counts from 0; the project's series
    // go on from where they were, never back.
    let mut second = launch(&dir, &n, &f);
    let mut last = cpu1;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = cpu(&router);
            assert!(now >= last, "cpu went back from {last} to {now}");
            last = now;
            now >= cpu1 + 2.0 && io(&router) >= io1 + 4.0 * MIB
        }),
        "cpu {} (was {cpu1}), io {} (was {io1})\n{}",
        cpu(&router),
        io(&router),
        second.stderr()
    );

    // A router killed and restarted has lost its totals: its counters start
    // again at 0 (Prometheus' increase() reads that as a reset), and the
    // re-attached launcher's first report is only a baseline: the 4 MiB this
    // run wrote before are not counted again, nor is its CPU so far.
    let cpu_before = cpu(&router);
    router.stop(Signal::SIGKILL);
    router.spawn();
    assert!(
        wait_until(Duration::from_secs(10), || m(
            &router,
            "vassal_attached",
            &n
        ) == 1.0
            && m(&router, "vassal_pids", &n) > 0.0),
        "not re-attached and reporting: {}",
        second.stderr()
    );
    assert_eq!(io(&router), 0.0, "the past IO was counted again");
    assert!(
        cpu(&router) < cpu_before,
        "the past CPU was counted again: {} after a restart at {cpu_before}",
        cpu(&router)
    );
    // Counting goes on from the baseline.
    let mut last = cpu(&router);
    assert!(wait_until(Duration::from_secs(20), || {
        let now = cpu(&router);
        assert!(now >= last, "cpu went back from {last} to {now}");
        last = now;
        now >= 2.0
    }));
    second.stop(Duration::from_secs(5));
}

/// The router's answer on `conn`, `None` when none comes within 5 s (the
/// router does not answer a usage it takes).
fn answer(conn: std::os::fd::BorrowedFd<'_>) -> Option<Response> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(conn, PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
    (ready > 0).then(|| transport::recv_response(conn).unwrap())
}

/// The control connection of a test launcher.
fn control(v: &TestVassal) -> std::os::fd::BorrowedFd<'_> {
    v.control.as_ref().expect("attached").as_fd()
}

fn usage_json(cpu_usec: u64, bytes: u64, extra: &str) -> String {
    format!(
        r#"{{"type":"usage","cpu_usec":{cpu_usec},"memory_bytes":{bytes},"memory_peak_bytes":{bytes},"io_read_bytes":{bytes},"io_write_bytes":{bytes},"pids":1000{extra}}}"#
    )
}

#[test]
fn hostile_launcher_usage_counts_to_its_own_connection_never_another_project() {
    let router = TestRouter::start(&RouterSpec::default());
    // The victim: a real launched vassal of project `bob`, idle.
    let bob = name("ab");
    let dir = TempDir::new();
    let f = file(
        &dir,
        &router,
        &bob,
        4,
        "exec sleep 1000",
        "[limits]\npids = 16\n",
    );
    let mut victim = launch(&dir, &bob, &f);
    assert!(
        wait_until(Duration::from_secs(10), || m(
            &router,
            "vassal_limit_pids",
            &bob
        ) == 16.0),
        "{}",
        victim.stderr()
    );
    let bob_bill = || {
        (
            m(&router, "vassal_cpu_seconds_total", &bob),
            m(&router, "vassal_io_write_bytes_total", &bob),
            m(&router, "vassal_io_read_bytes_total", &bob),
        )
    };
    let bob_before = bob_bill();

    // A launcher attached for `mallory` reports huge usage: counted to
    // mallory, the project of its connection.
    let mut mallory = TestVassal::attach(&router, "mallory", 5);
    let huge = 1u64 << 50;
    transport::send_datagram(
        control(&mallory),
        usage_json(huge, huge, "").as_bytes(),
        None,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || m(
        &router,
        "vassal_io_write_bytes_total",
        "mallory"
    ) == huge as f64));
    assert_eq!(
        m(&router, "vassal_cpu_seconds_total", "mallory"),
        (huge / 1_000_000) as f64
    );

    // Naming bob in the message is malformed: refused, the connection
    // closed (mallory detached), nothing counted anywhere.
    transport::send_datagram(
        control(&mallory),
        usage_json(2 * huge, 2 * huge, r#","project":"BOB""#)
            .replace("BOB", &bob)
            .as_bytes(),
        None,
    )
    .unwrap();
    match answer(control(&mallory)) {
        Some(Response::Refused { reason, .. }) => assert_eq!(reason, RefuseReason::Malformed),
        other => panic!("a usage naming a project was not refused: {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(5), || m(
        &router,
        "vassal_attached",
        "mallory"
    ) == 0.0));
    assert_eq!(
        m(&router, "vassal_io_write_bytes_total", "mallory"),
        huge as f64
    );
    // Values past 2^53 (which would wrap a sum) are refused too.
    mallory.hello(&router);
    transport::send_datagram(
        control(&mallory),
        usage_json(u64::MAX, 0, "").as_bytes(),
        None,
    )
    .unwrap();
    assert!(matches!(
        answer(control(&mallory)),
        Some(Response::Refused {
            reason: RefuseReason::Malformed,
            ..
        })
    ));

    // A usage on a connection that attached nothing: refused, counted to
    // no project.
    let conn = transport::connect(&router.socket).unwrap();
    transport::send_datagram(conn.as_fd(), usage_json(huge, huge, "").as_bytes(), None).unwrap();
    match answer(conn.as_fd()) {
        Some(Response::Refused { reason, .. }) => assert_eq!(reason, RefuseReason::Malformed),
        other => panic!("a usage without an attachment was not refused: {other:?}"),
    }
    let total: f64 = router
        .scrape()
        .lines()
        .filter(|l| l.starts_with("vassal_io_write_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, huge as f64, "only mallory's own report is counted");

    // Bob's bill moved only by what bob did (sleep: under a CPU second,
    // no IO), and bob's gauges are bob's.
    let bob_after = bob_bill();
    assert!(
        bob_after.0 <= bob_before.0 + 1.0,
        "{bob_before:?} -> {bob_after:?}"
    );
    assert_eq!((bob_after.1, bob_after.2), (bob_before.1, bob_before.2));
    assert!(m(&router, "vassal_pids", &bob) < 16.0);
    assert!(m(&router, "vassal_memory_bytes", &bob) < huge as f64);
    victim.stop(Duration::from_secs(5));
}
