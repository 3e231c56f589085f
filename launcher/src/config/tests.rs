//! The vassal file: validation end to end, and its units.

use super::*;

fn parse(text: &str) -> Result<VassalConfig, ConfigError> {
    VassalConfig::parse(text, "v.toml", &Overrides::default())
}

fn errors(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const FULL: &str = r#"
name = "alice"
command = ["/usr/bin/python3", "-m", "http.server", "8000"]
uid = 10001
gid = 10001
rootfs = "/"
hostname = "alice"
workdir = "/"
env = { LANG = "C.UTF-8" }
[network]
router = "/run/vassal/router.sock"
address = "10.200.0.2"
address6 = "fd00:200::2"
gateway = "10.200.0.1"
mtu = 1500
[[mount]]
source = "/cust/alice"
target = "/app"
writable = false
[limits]
memory = "256M"
cpu = 0.5
pids = 128
nofile = 1024
tmp_size = "64M"
wall_clock = "1h"
[seccomp]
profile = "default"
"#;

#[test]
fn the_issue_example_parses_with_its_values() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.name, "alice");
    assert_eq!(c.uid, 10001);
    assert_eq!(c.limits.memory, Some(256 << 20));
    assert_eq!(c.limits.cpu, Some(0.5));
    assert_eq!(c.limits.wall_clock, Some(Duration::from_secs(3600)));
    let n = c.network.unwrap();
    assert_eq!(n.address, Ipv4Addr::new(10, 200, 0, 2));
    assert_eq!(n.address6, Some("fd00:200::2".parse().unwrap()));
    assert_eq!(c.mounts[0].target, PathBuf::from("/app"));
    assert_eq!(c.env["LANG"], "C.UTF-8");
    assert_eq!(c.seccomp, SeccompProfile::Default);
}

#[test]
fn defaults_fill_what_is_absent() {
    let c = parse("name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n").unwrap();
    assert_eq!(c.gid, 5000);
    assert_eq!(c.hostname, "bob");
    assert_eq!(c.rootfs, PathBuf::from("/"));
    assert_eq!(c.network, None);
    assert_eq!(c.limits.nofile, 1024);
    assert_eq!(c.limits.tmp_size, 64 << 20);
    assert_eq!(c.limits.memory, Some(DEFAULT_MEMORY));
    assert_eq!(c.limits.pids, Some(DEFAULT_PIDS));
    assert_eq!(c.limits.cpu, None);
    assert_eq!(c.limits.wall_clock, None);
    assert_eq!(c.mask, vec![PathBuf::from("/root")]);
    assert!(c.env.is_empty());
}

#[test]
fn automatic_addresses() {
    let base =
        "name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"auto\"\n";
    let n = parse(base).unwrap().network.unwrap();
    assert!(n.auto && !n.auto6);
    assert_eq!(n.address, Ipv4Addr::UNSPECIFIED);
    let n = parse(&format!("{base}address6 = \"auto\"\n"))
        .unwrap()
        .network
        .unwrap();
    assert!(n.auto && n.auto6 && n.address6.is_none());
    let e = errors(&format!("{base}address6 = \"fd00::2\"\n"));
    assert!(
        e.contains("network.address6") && e.contains("automatic"),
        "{e}"
    );
    let e = errors("name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"10.0.0.2\"\naddress6 = \"auto\"\n");
    assert!(e.contains("network.address6"), "{e}");
    let e = errors("name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"automatic\"\n");
    assert!(e.contains("network.address") && e.contains("auto"), "{e}");
    assert_eq!("auto".parse(), Ok(AddressChoice::Auto));
    assert_eq!(
        "10.0.0.2".parse(),
        Ok(AddressChoice::Fixed(Ipv4Addr::new(10, 0, 0, 2)))
    );
    assert!("10.0.0.300".parse::<AddressChoice>().is_err());
    let o = Overrides {
        name: Some("carol".into()),
        address: Some(AddressChoice::Auto),
        uid: Some(7),
        command: vec!["/bin/true".into()],
        ..Overrides::default()
    };
    assert!(
        VassalConfig::from_overrides(&o)
            .unwrap()
            .network
            .unwrap()
            .auto
    );
}

#[test]
fn flags_override_the_file() {
    let o = Overrides {
        name: Some("carol".into()),
        address: Some(AddressChoice::Fixed(Ipv4Addr::new(10, 200, 0, 9))),
        uid: Some(7),
        command: vec!["/bin/echo".into(), "hi".into()],
        ..Default::default()
    };
    let c = VassalConfig::parse(FULL, "v.toml", &o).unwrap();
    assert_eq!(c.name, "carol");
    assert_eq!(c.uid, 7);
    assert_eq!(c.command, ["/bin/echo", "hi"]);
    assert_eq!(c.network.unwrap().address, Ipv4Addr::new(10, 200, 0, 9));
}

#[test]
fn unknown_keys_are_refused_with_their_position() {
    let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[limits]\nmemroy = \"1G\"\n");
    assert!(
        e.starts_with("v.toml:5:1: syntax: unknown field `memroy`"),
        "{e}"
    );
}

#[test]
fn every_problem_is_named_with_line_column_and_field() {
    let e = errors(
        "name = \"Alice\"\ncommand = [\"/bin/true\"]\nuid = 1\n[limits]\nmemory = \"12Q\"\ncpu = 0.0\nwall_clock = \"5\"\n[network]\naddress = \"10.0.0.300\"\n",
    );
    assert!(
        e.contains("v.toml:1:8: name: \"Alice\" must start with a lowercase letter or a digit"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:5:10: limits.memory: \"12Q\" has an unknown unit"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:6:7: limits.cpu: 0 cores is out of range"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:7:14: limits.wall_clock: \"5\" has no unit"),
        "{e}"
    );
    assert!(
        e.contains(
            "v.toml:9:11: network.address: \"10.0.0.300\" is neither an IPv4 address nor \"auto\""
        ),
        "{e}"
    );
    assert_eq!(e.lines().count(), 5, "{e}");
}

#[test]
fn a_seccomp_profile_is_read_and_compiled_with_the_file() {
    let e = errors(
        "name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[seccomp]\nprofile = \"/no/such/profile.json\"\n",
    );
    assert!(
        e.contains(
            "v.toml:5:11: seccomp.profile: reading the seccomp profile /no/such/profile.json"
        ),
        "{e}"
    );
    let c = parse("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n").unwrap();
    assert!(c.filter.is_some_and(|f| !f.is_empty()));
    let c =
        parse("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[seccomp]\nprofile = \"none\"\n")
            .unwrap();
    assert!(c.filter.is_none());
}

#[test]
fn root_without_a_user_namespace_is_refused() {
    let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 0\n");
    assert!(e.contains("v.toml:3:7: uid: 0 is the host's root"), "{e}");
    let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\n");
    assert!(e.contains("v.toml: uid: required"), "{e}");
}

#[test]
fn user_namespace_maps_are_checked() {
    let ok = parse(
        "name = \"a\"\ncommand = [\"/bin/true\"]\n[user_namespace]\nuid_map = \"0:100000:65536\"\ngid_map = \"0:100000:65536\"\n",
    )
    .unwrap();
    assert_eq!(ok.uid, 0);
    assert_eq!(
        ok.uid_map.as_deref(),
        Some(
            &[IdRange {
                inside: 0,
                outside: 100000,
                count: 65536
            }][..]
        )
    );
    let e = errors(
        "name = \"a\"\ncommand = [\"/bin/true\"]\n[user_namespace]\nuid_map = \"0:100000\"\ngid_map = \"0:1:1,0:5:1\"\n",
    );
    assert!(
        e.contains("v.toml:4:11: user_namespace.uid_map: \"0:100000\" is not guest:host:count"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:5:11: user_namespace.gid_map: ranges overlap"),
        "{e}"
    );
    assert!(parse_id_map("0:1:1,1:2:1,2:3:1,3:4:1,4:5:1,5:6:1")
        .unwrap_err()
        .contains("at most 5"));
    assert!(parse_id_map("0:4294967295:2").is_err());
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("64M"), Ok(64 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("2Gi"), Ok(2 << 30));
    assert!(parse_size("99999999999T").is_err());
    assert!(parse_size("-1").is_err());
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("1y").is_err());
}

#[test]
fn masks_must_exist_in_the_root_filesystem_without_symlinks() {
    let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\nmask = [\"/etc/passwd\", \"/no/such/path\",\n  \"rel\", \"/proc/self\", \"/tmp/x\", \"/proc/sys\"]\n");
    assert!(
        e.contains("v.toml:4:24: mask[1]: /no/such/path does not exist in the root filesystem /"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:5:3: mask[2]: rel must be an absolute path"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:5:10: mask[3]: /proc/self passes through the symlink /proc/self"),
        "{e}"
    );
    assert!(
        e.contains("mask[4]: /tmp/x is in the vassal's own /tmp"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 4, "{e}");
    let c =
        parse("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\nrootfs = \"/proc\"\n").unwrap();
    assert!(
        c.mask.is_empty(),
        "no /root in this root filesystem: {:?}",
        c.mask
    );
}

#[test]
fn mounts_must_be_absolute_without_dotdot() {
    let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[[mount]]\nsource = \"rel\"\ntarget = \"/x/../etc\"\n");
    assert!(e.contains("v.toml:5:10: mount[0].source"), "{e}");
    assert!(e.contains("v.toml:6:10: mount[0].target"), "{e}");
}

#[test]
fn network_limits_parse_with_default_bursts() {
    let net = "name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"10.200.0.2\"\n";
    let c = parse(&format!(
        "{net}[limits]\nnet_out = \"50M\"\nnet_in = \"1G\"\nnet_in_burst = \"4M\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.limits.net_out,
        Some(RateLimit {
            rate: 50_000_000,
            burst: 1_562_500
        })
    );
    assert_eq!(
        c.limits.net_in,
        Some(RateLimit {
            rate: 1_000_000_000,
            burst: 4 << 20
        })
    );
    // Slow rates still get room for two super-packets.
    assert_eq!(default_burst(1_000_000), 128 << 10);
    let c = parse(&format!("{net}[limits]\nnet_out = 8000\n")).unwrap();
    assert_eq!(c.limits.net_out.map(|l| l.rate), Some(8000));
    assert_eq!(c.limits.net_in, None);
    assert_eq!(parse(net).unwrap().limits.net_out, None);
}

#[test]
fn network_limits_are_checked_with_line_and_field() {
    let net = "name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"10.200.0.2\"\n";
    for (limits, expected) in [
        (
            "net_out = \"50X\"",
            "v.toml:7:11: limits.net_out: \"50X\" has an unknown unit",
        ),
        (
            "net_out = \"7K\"",
            "v.toml:7:11: limits.net_out: 7000 bit/s is out of range",
        ),
        (
            "net_in = \"2T\"",
            "v.toml:7:10: limits.net_in: 2000000000000 bit/s is out of range",
        ),
        (
            "net_in = \"fast\"",
            "v.toml:7:10: limits.net_in: \"fast\" is not a rate",
        ),
        (
            "net_out = \"50M\"\nnet_out_burst = 100",
            "v.toml:8:17: limits.net_out_burst: 100 bytes is out of range",
        ),
        (
            "net_in_burst = \"1M\"",
            "v.toml:7:16: limits.net_in_burst: a burst without limits.net_in",
        ),
    ] {
        let e = errors(&format!("{net}[limits]\n{limits}\n"));
        assert!(e.starts_with(expected), "{limits}: {e}");
    }
    let e = errors(
        "name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[limits]\nnet_out = \"50M\"\n",
    );
    assert!(
        e.contains("v.toml:5:11: limits.net_out: the vassal has no [network]"),
        "{e}"
    );
}

#[test]
fn rates_are_in_powers_of_1000() {
    assert_eq!(parse_rate("50M"), Ok(50_000_000));
    assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
    assert_eq!(parse_rate("1500k"), Ok(1_500_000));
    assert_eq!(parse_rate("10Mbit"), Ok(10_000_000));
    assert_eq!(parse_rate("64000"), Ok(64_000));
    assert!(parse_rate("M").is_err());
    assert!(parse_rate("99999999999T").is_err());
}

#[test]
fn disk_keys_are_parsed_and_checked_with_their_position() {
    let c = parse("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[[mount]]\nsource = \"/srv/a\"\ntarget = \"/srv\"\nwritable = true\nquota = \"1G\"\n[limits]\nfile_size = \"100M\"\nio_read = \"20M\"\nio_write = 1048576\nio_read_iops = 500\nio_write_iops = 200\n").unwrap();
    assert_eq!(c.mounts[0].quota, Some(1 << 30));
    assert_eq!(c.limits.file_size, Some(100 << 20));
    assert_eq!(
        c.limits.io,
        IoLimits {
            read_bps: Some(20 << 20),
            write_bps: Some(1 << 20),
            read_iops: Some(500),
            write_iops: Some(200),
        }
    );
    let d = parse("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n").unwrap();
    assert_eq!((d.limits.file_size, d.limits.io.any()), (None, false));
    assert_eq!(d.mounts.len(), 0);
    let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[[mount]]\nsource = \"/srv/a\"\ntarget = \"/srv\"\nquota = \"1G\"\n[[mount]]\nsource = \"/srv/b\"\ntarget = \"/mnt\"\nwritable = true\nquota = \"10K\"\n[limits]\nfile_size = \"0\"\nio_read = \"1K\"\nio_write = \"fast\"\nio_read_iops = 1\n");
    assert!(
        e.contains("v.toml:7:9: mount[0].quota: a quota limits what the vassal writes: only a writable mount can have one"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:12:9: mount[1].quota: 10240 bytes is below the smallest quota"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:14:13: limits.file_size: must be larger than zero"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:15:11: limits.io_read: 1024 bytes per second is too slow"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:16:12: limits.io_write: \"fast\" is not a size"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:17:16: limits.io_read_iops: 1 operations per second is too few"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 6, "{e}");
}
