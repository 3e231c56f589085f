//! Many hosts on one machine, for the cluster tests: an underlay bridge in
//! a namespace of its own, one namespace per simulated host joined to it by
//! a veth (`198.51.100.1<i>/24`, documentation range, nothing else
//! reachable), a three-member etcd cluster with one member on each of the
//! first three hosts, and a `vassal-router` started inside a given host's
//! namespace with its own host tun, control socket and metrics listener.
//!
//! etcd can be protected as docs/cluster.md ("Protecting etcd") says:
//! client URLs over TLS with certificates of a CA made for the test,
//! client certificates demanded, and role-based authentication with a root
//! user ([`Cluster::new_protected`], [`Cluster::add_user`]).
//!
//! Everything is removed on drop (processes killed, namespaces deleted,
//! the working directory with etcd's data removed).

use crate::pki::{Issued, Pki};
use crate::router_harness::create_tun_in;
use crate::{binary, run, unique, wait_until, KillOnDrop, Netns};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use vassal_attach::{transport, Hello, LeaseRequest, Request, Response, PROTOCOL_VERSION};

/// The cluster prefix the tests' routers share.
pub const PREFIX: &str = "10.240.0.0/16";

impl Drop for Cluster {
    fn drop(&mut self) {
        // Members first (each preallocates a 64 MB WAL segment or two),
        // then their data: a test run must not fill the disk.
        for m in &mut self.etcd {
            m.child = None;
        }
        // The hosts' launcher cgroups (their vassals are gone by now).
        for i in 0..self.hosts.len() {
            let tag = self.launch_tag(i);
            for h in CGROUP_HIERARCHIES {
                let base = PathBuf::from("/sys/fs/cgroup").join(h).join(&tag);
                if let Ok(entries) = std::fs::read_dir(base.join("vassal")) {
                    for e in entries.flatten() {
                        if e.path().is_dir() {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                }
                let _ = std::fs::remove_dir(base.join("vassal"));
                let _ = std::fs::remove_dir(&base);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cgroup v1 hierarchies a simulated host's launcher gets a subtree
/// of (see [`Cluster::launch_command`]).
const CGROUP_HIERARCHIES: [&str; 7] = [
    "cpu", "cpuacct", "memory", "pids", "blkio", "freezer", "devices",
];

/// Runs `vassal-launch` as on a host of its own: in a private mount
/// namespace where `/run/vassal` is the host's directory and each cgroup
/// hierarchy is the host's subtree, so two hosts can run vassals of the
/// same name (the launcher keys its state file and cgroups by name).
const LAUNCH_WRAPPER: &str = r#"set -e
run="$1"; tag="$2"; shift 2
mkdir -p "$run"
mount --bind "$run" /run/vassal
for h in cpu cpuacct memory pids blkio freezer devices; do
  if [ -d /sys/fs/cgroup/$h ] && mountpoint -q /sys/fs/cgroup/$h; then
    mkdir -p /sys/fs/cgroup/$h/$tag
    mount --bind /sys/fs/cgroup/$h/$tag /sys/fs/cgroup/$h
  fi
done
exec "$@"
"#;

/// One simulated host.
pub struct Host {
    /// Its network namespace (underlay interface `eth0`).
    pub ns: Netns,
    /// Its underlay address.
    pub underlay: Ipv4Addr,
}

/// One etcd member.
pub struct Member {
    /// Its name in the etcd cluster.
    pub name: String,
    /// The host it runs on.
    pub host: usize,
    /// The process; `None` while stopped.
    pub child: Option<KillOnDrop>,
    /// Its data directory.
    pub data: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

/// How the test's etcd is protected (all off: plain http, no users).
#[derive(Clone, Copy, Default)]
pub struct EtcdProtection {
    /// Client URLs over TLS, the members' certificates signed by
    /// [`Cluster::pki`]'s CA.
    pub tls: bool,
    /// etcd demands a client certificate signed by that CA
    /// (`--client-cert-auth`; needs `tls`).
    pub client_cert_auth: bool,
    /// Role-based authentication enabled, with a `root` user (password
    /// [`ROOT_PASSWORD`]) that the harness's etcdctl uses.
    pub auth: bool,
}

/// The password of etcd's `root` user with [`EtcdProtection::auth`].
pub const ROOT_PASSWORD: &str = "root-test-password";

/// The test's hosts, underlay and etcd cluster.
pub struct Cluster {
    /// Working directory (etcd data, router dirs).
    pub dir: PathBuf,
    /// Hosts, in order.
    pub hosts: Vec<Host>,
    /// etcd members, on hosts 0, 1, 2.
    pub etcd: Vec<Member>,
    /// How etcd is protected.
    pub protection: EtcdProtection,
    /// With TLS: the CA of the members' (and clients') certificates.
    pub pki: Option<Pki>,
    /// With TLS: etcdctl's client certificate (common name `root`).
    admin: Option<Issued>,
    /// Authentication has been enabled (etcdctl then logs in as root).
    auth_on: bool,
    // Dropped last: holds the bridge.
    _underlay: Netns,
}

fn underlay_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i as u8)
}

impl Cluster {
    /// `hosts` hosts (at least 3) on one bridge, etcd running and healthy.
    pub fn new(hosts: usize) -> Cluster {
        Cluster::new_protected(hosts, EtcdProtection::default())
    }

    /// [`Cluster::new`] with etcd protected as `protection` says.
    pub fn new_protected(hosts: usize, protection: EtcdProtection) -> Cluster {
        crate::require_root();
        assert!(hosts >= 3, "the etcd cluster needs three hosts");
        let dir = std::env::temp_dir().join(format!("vassal-cluster-{}", unique("c")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let underlay = Netns::new("cu");
        underlay.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.exec(&["ip", "link", "set", "br0", "up"]);
        let mut list = Vec::new();
        for i in 0..hosts {
            let ns = Netns::new("ch");
            let port = format!("p{i}");
            run(Command::new("ip").args([
                "link",
                "add",
                "eth0",
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &underlay.name,
            ]));
            underlay.exec(&["ip", "link", "set", &port, "master", "br0"]);
            underlay.exec(&["ip", "link", "set", &port, "up"]);
            let addr = underlay_addr(i);
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.exec(&["ip", "link", "set", "eth0", "up"]);
            list.push(Host { ns, underlay: addr });
        }
        let (pki, admin) = if protection.tls {
            let pki = Pki::new(&dir, "etcd-ca");
            for i in 0..3 {
                pki.issue(
                    &format!("member-{i}"),
                    &format!("m{i}"),
                    &[IpAddr::V4(underlay_addr(i))],
                );
            }
            let admin = pki.issue("admin", "root", &[]);
            (Some(pki), Some(admin))
        } else {
            (None, None)
        };
        let mut cluster = Cluster {
            protection,
            pki,
            admin,
            auth_on: false,
            etcd: (0..3)
                .map(|i| Member {
                    name: format!("m{i}"),
                    host: i,
                    child: None,
                    data: dir.join(format!("etcd-{i}")),
                    log: dir.join(format!("etcd-{i}.log")),
                })
                .collect(),
            dir,
            hosts: list,
            _underlay: underlay,
        };
        for i in 0..3 {
            cluster.start_etcd(i);
        }
        assert!(
            cluster.wait_etcd(Duration::from_secs(30)),
            "etcd did not become healthy; log of m0:\n{}",
            std::fs::read_to_string(&cluster.etcd[0].log).unwrap_or_default()
        );
        if protection.auth {
            // etcd's documented order: a root user with the root role,
            // then authentication on.
            cluster.etcdctl_ok(&["role", "add", "root"], None);
            cluster.etcdctl_ok(
                &["user", "add", "root", "--interactive=false"],
                Some(ROOT_PASSWORD),
            );
            cluster.etcdctl_ok(&["user", "grant-role", "root", "root"], None);
            cluster.etcdctl_ok(&["auth", "enable"], None);
            cluster.auth_on = true;
            assert!(
                cluster.wait_etcd(Duration::from_secs(10)),
                "etcd did not answer root after auth enable"
            );
        }
        cluster
    }

    /// Adds etcd user `name` with `password` and a role of the same name
    /// allowed to read and write every key under `prefix/` (nothing else):
    /// the commands of docs/cluster.md.
    pub fn add_user(&self, name: &str, password: &str, prefix: &str) {
        self.etcdctl_ok(&["role", "add", name], None);
        self.etcdctl_ok(
            &[
                "role",
                "grant-permission",
                name,
                "readwrite",
                &format!("{prefix}/"),
                "--prefix=true",
            ],
            None,
        );
        self.etcdctl_ok(
            &["user", "add", name, "--interactive=false"],
            Some(password),
        );
        self.etcdctl_ok(&["user", "grant-role", name, name], None);
    }

    /// `etcdctl ARGS` with `input` on its standard input, which must succeed.
    pub fn etcdctl_ok(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = self.etcdctl_command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        let mut stdin = child.stdin.take().expect("etcdctl stdin");
        if let Some(text) = input {
            stdin.write_all(text.as_bytes()).expect("write to etcdctl");
            stdin.write_all(b"\n").expect("write to etcdctl");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("etcdctl output");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The `[cluster]` lines a router needs to reach this etcd with TLS:
    /// `etcd_ca`, and with `client` a client certificate of the cluster's
    /// CA named `client`.
    pub fn tls_keys(&self, client: Option<&str>) -> String {
        let pki = self.pki.as_ref().expect("a cluster with TLS");
        let mut keys = format!("etcd_ca = \"{}\"\n", pki.ca.display());
        if let Some(name) = client {
            let c = pki.issue(&format!("client-{name}"), name, &[]);
            keys.push_str(&format!(
                "etcd_cert = \"{}\"\netcd_key = \"{}\"\n",
                c.cert.display(),
                c.key.display()
            ));
        }
        keys
    }

    /// Host `i`'s `/run/vassal` (its launcher's state files).
    pub fn launch_run(&self, i: usize) -> PathBuf {
        self.dir.join(format!("launch-{i}"))
    }

    /// Host `i`'s cgroup subtree name.
    pub fn launch_tag(&self, i: usize) -> String {
        let id = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{id}-h{i}")
    }

    /// The program and arguments that run `vassal-launch ARGS` as on host
    /// `i` (see `LAUNCH_WRAPPER`).
    pub fn launch_command(&self, i: usize, args: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = vec![
            "unshare".into(),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "/bin/sh".into(),
            "-c".into(),
            LAUNCH_WRAPPER.into(),
            "sh".into(),
            self.launch_run(i).display().to_string(),
            self.launch_tag(i),
            binary("vassal-launch").display().to_string(),
        ];
        argv.extend(args.iter().cloned());
        argv
    }

    /// The client endpoints of the three members.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.protection.tls { "https" } else { "http" };
        (0..3)
            .map(|i| format!("{scheme}://{}:2379", underlay_addr(i)))
            .collect()
    }

    /// (Re)starts member `i` (with its data directory as left).
    pub fn start_etcd(&mut self, i: usize) {
        let initial: Vec<String> = (0..3)
            .map(|k| format!("m{k}=http://{}:2380", underlay_addr(k)))
            .collect();
        let addr = underlay_addr(i);
        let client_url = match self.protection.tls {
            true => format!("https://{addr}:2379"),
            false => format!("http://{addr}:2379"),
        };
        let mut tls = Vec::new();
        if let Some(pki) = &self.pki {
            tls.push(format!(
                "--cert-file={}",
                pki.dir.join(format!("member-{i}.pem")).display()
            ));
            tls.push(format!(
                "--key-file={}",
                pki.dir.join(format!("member-{i}.key")).display()
            ));
            if self.protection.client_cert_auth {
                tls.push(format!("--trusted-ca-file={}", pki.ca.display()));
                tls.push("--client-cert-auth".into());
            }
        }
        let m = &mut self.etcd[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let mut cmd = self.hosts[m.host].ns.command("etcd");
        cmd.args([
            "--name",
            &m.name,
            "--data-dir",
            &m.data.display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &format!("http://{addr}:2380"),
            "--initial-advertise-peer-urls",
            &format!("http://{addr}:2380"),
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "vassal-test",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
        ])
        .args(&tls)
        .stdout(Stdio::null())
        .stderr(log);
        m.child = Some(KillOnDrop::spawn(&mut cmd));
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill_etcd(&mut self, i: usize) {
        self.etcd[i].child = None;
    }

    /// Cuts host `i` off the underlay (`true`) or joins it again: its
    /// bridge port goes down or up, nothing else changes.
    pub fn partition(&self, i: usize, cut: bool) {
        self._underlay.exec(&[
            "ip",
            "link",
            "set",
            &format!("p{i}"),
            if cut { "down" } else { "up" },
        ]);
    }

    /// `etcdctl ARGS` against the whole cluster, from host 0.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_command(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn etcdctl")
    }

    /// The etcdctl command line: every endpoint, and as etcd's protection
    /// requires the CA, the admin certificate and the root user.
    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.hosts[0].ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["--command-timeout=3s", "--dial-timeout=2s"]);
        if let (Some(pki), Some(admin)) = (&self.pki, &self.admin) {
            cmd.arg(format!("--cacert={}", pki.ca.display()))
                .arg(format!("--cert={}", admin.cert.display()))
                .arg(format!("--key={}", admin.key.display()));
        }
        if self.auth_on {
            cmd.arg(format!("--user=root:{ROOT_PASSWORD}"));
        }
        cmd.args(args);
        cmd
    }

    /// Waits until a write through the cluster succeeds.
    pub fn wait_etcd(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.etcdctl(&["put", "/health-probe", "ok"])
                .status
                .success()
        })
    }
}

/// How a test wants a cluster router.
#[derive(Clone)]
pub struct ClusterRouterSpec {
    /// Node name.
    pub node: String,
    /// `cluster.lease_ttl`.
    pub lease_ttl: u64,
    /// `cluster.block`.
    pub block: u8,
    /// `cluster.mode`.
    pub mode: &'static str,
    /// Extra TOML inside `[cluster]`.
    pub cluster_extra: String,
    /// Rule file text; `None` = the embedded default rules.
    pub rules: Option<String>,
    /// `nat.masquerade`.
    pub masquerade: bool,
    /// Extra tables (e.g. `[host]`, `[events]`), placed before `[cluster]`.
    pub tables: String,
}

impl ClusterRouterSpec {
    /// Node `node`, TTL 3 s, /24 blocks, direct mode.
    pub fn node(node: &str) -> ClusterRouterSpec {
        ClusterRouterSpec {
            node: node.to_owned(),
            lease_ttl: 3,
            block: 24,
            mode: "direct",
            cluster_extra: String::new(),
            rules: None,
            masquerade: false,
            tables: String::new(),
        }
    }
}

/// A router running inside a host's namespace.
pub struct ClusterRouter {
    /// The host index.
    pub host: usize,
    /// The host's namespace name (for `ip netns exec`).
    pub ns: String,
    /// Node name.
    pub node: String,
    /// Working directory.
    pub dir: PathBuf,
    /// Config file.
    pub config_path: PathBuf,
    /// Control socket (a path: reachable from every namespace).
    pub socket: PathBuf,
    /// The persisted state file.
    pub state_file: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// The process.
    pub child: Option<KillOnDrop>,
}

impl ClusterRouter {
    /// Writes the config and starts the router in host `host`'s namespace;
    /// waits until its control socket answers.
    pub fn start(cluster: &Cluster, host: usize, spec: &ClusterRouterSpec) -> ClusterRouter {
        let r = ClusterRouter::configure(cluster, host, spec);
        let mut r = r;
        r.spawn();
        r
    }

    /// Writes the config without starting (see [`ClusterRouter::spawn`]).
    pub fn configure(cluster: &Cluster, host: usize, spec: &ClusterRouterSpec) -> ClusterRouter {
        let dir = cluster.dir.join(format!("router-{}", spec.node));
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let endpoints: Vec<String> = cluster
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let socket = dir.join("run/router.sock");
        let state_file = dir.join("cluster-state.json");
        // Each router its own flow state file (the device is vr0 on
        // every host).
        let mut top = format!("state_dir = \"{}\"\n", dir.join("state").display());
        if let Some(rules) = &spec.rules {
            let path = dir.join("rules.toml");
            std::fs::write(&path, rules).unwrap();
            top.push_str(&format!("rules = \"{}\"\n", path.display()));
        }
        let config = format!(
            "device = \"vr0\"\ncontrol_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:9810\"\n{top}[nat]\nmasquerade = {}\n{}\n[cluster]\netcd = [{}]\nnode = \"{}\"\nunderlay = \"{}\"\nprefix = \"{PREFIX}\"\nblock = {}\nmode = \"{}\"\nlease_ttl = {}\nkey_prefix = \"/vassal\"\nstate_file = \"{}\"\n{}\n",
            socket.display(),
            spec.masquerade,
            spec.tables,
            endpoints.join(", "),
            spec.node,
            cluster.hosts[host].underlay,
            spec.block,
            spec.mode,
            spec.lease_ttl,
            state_file.display(),
            spec.cluster_extra,
        );
        let config_path = dir.join("router.toml");
        std::fs::write(&config_path, config).unwrap();
        ClusterRouter {
            host,
            ns: cluster.hosts[host].ns.name.clone(),
            node: spec.node.clone(),
            log: dir.join("router.log"),
            dir,
            config_path,
            socket,
            state_file,
            child: None,
        }
    }

    /// Starts the process without waiting.
    pub fn spawn_nowait(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = KillOnDrop::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .arg(binary("vassal-router"))
                .args(["run", "--config"])
                .arg(&self.config_path)
                .env("RUST_LOG", "debug,h2=info,tonic=info,tower=info,hyper=info")
                .stdout(Stdio::null())
                .stderr(log),
        );
        self.child = Some(child);
    }

    /// Waits until the control socket answers.
    pub fn wait_ready(&self) {
        let ready = wait_until(Duration::from_secs(20), || {
            transport::connect(&self.socket).is_ok()
        });
        assert!(
            ready,
            "router {} did not become ready; log:\n{}",
            self.node,
            self.log_text()
        );
    }

    /// Starts the process and waits until ready.
    pub fn spawn(&mut self) {
        self.spawn_nowait();
        self.wait_ready();
    }

    /// Kills the process with SIGKILL (no cleanup: a dead host).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }

    /// The process's exit status, waiting up to `timeout` for it to exit;
    /// `None` if it still runs then (or was never started).
    pub fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.child.as_mut()?.0;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Stops the process with SIGTERM (a clean exit) and waits for it;
    /// whether it exited successfully within 10 s. It is killed if not.
    pub fn stop(&mut self) -> bool {
        let Some(c) = self.child.as_ref() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(c.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.exit_within(Duration::from_secs(10));
        self.child = None;
        status.is_some_and(|s| s.success())
    }

    /// `ip route show proto 118` in its host's namespace: the routes the
    /// router installed to the other blocks.
    pub fn routes(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "route", "show", "proto", "118"])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cmd ARGS` run in its host's namespace; stdout.
    pub fn host_out(&self, argv: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(argv)
            .output()
            .expect("run in the host namespace");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A dropped-packets counter of `project` for `reason` (0 when absent).
    pub fn dropped(&self, project: &str, reason: &str) -> f64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, crate::router_harness::PYTHON, "-c"])
            .arg("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9810/metrics',timeout=2).read().decode())")
            .output()
            .expect("scrape");
        crate::metric(
            &String::from_utf8_lossy(&out.stdout),
            "vassal_dropped_packets_total",
            &format!("project=\"{project}\",reason=\"{reason}\""),
        )
        .unwrap_or(0.0)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `vassal-router cluster` as JSON.
    pub fn view(&self) -> serde_json::Value {
        let out = Command::new(binary("vassal-router"))
            .args(["cluster", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("spawn vassal-router cluster");
        assert!(
            out.status.success(),
            "vassal-router cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cluster view JSON")
    }

    /// This router's block (`10.240.N.0/24`).
    pub fn block(&self) -> String {
        self.view()["block"].as_str().unwrap_or_default().to_owned()
    }

    /// The identity cache: (address, project, node), sorted.
    pub fn identities(&self) -> Vec<(String, String, String)> {
        let v = self.view();
        let mut out: Vec<(String, String, String)> = v["identities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["address"].as_str().unwrap_or_default().to_owned(),
                            i["project"].as_str().unwrap_or_default().to_owned(),
                            i["node"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The nodes with a block in this router's cache: (node, block), sorted.
    pub fn nodes(&self) -> Vec<(String, String)> {
        let v = self.view();
        let mut out: Vec<(String, String)> = v["blocks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|b| {
                        (
                            b["node"].as_str().unwrap_or_default().to_owned(),
                            b["ipv4"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// A metric of the router's /metrics (read inside its namespace).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, crate::router_harness::PYTHON, "-c"])
            .arg("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9810/metrics',timeout=2).read().decode())")
            .output()
            .ok()?;
        crate::metric(&String::from_utf8_lossy(&out.stdout), name, "")
    }

    /// Asks for an automatic address for `project`/`name` (protocol 2).
    pub fn lease(&self, project: &str, name: &str) -> Response {
        self.lease_with(project, name, false)
    }

    /// [`ClusterRouter::lease`], asking for an IPv6 address too with `ipv6`.
    pub fn lease_with(&self, project: &str, name: &str, ipv6: bool) -> Response {
        let conn = transport::connect(&self.socket).expect("connect to the control socket");
        let req = Request::Lease(LeaseRequest {
            version: PROTOCOL_VERSION,
            project: project.to_owned(),
            name: name.to_owned(),
            ipv6,
        });
        transport::call(conn.as_fd(), &req, None).expect("lease exchange")
    }
}

/// A test vassal attached to a cluster router: a namespace with a tun
/// whose fd was handed over in the hello (the connection is kept).
pub struct ClusterVassal {
    /// Its namespace.
    pub ns: Netns,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The router's answer to the hello.
    pub answer: Response,
    _control: Option<std::os::fd::OwnedFd>,
}

impl ClusterVassal {
    /// Leases an address for `project`/`name`, configures a vassal with it
    /// and attaches it: the order `vassal-launch` follows.
    pub fn launch(router: &ClusterRouter, project: &str, name: &str) -> ClusterVassal {
        let (addr, prefix_len) = match router.lease(project, name) {
            Response::Leased {
                ipv4, prefix_len, ..
            } => (ipv4, prefix_len),
            other => panic!("lease refused: {other:?}"),
        };
        let ns = Netns::new("cv");
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        let tun = create_tun_in(&ns, "vt0", libc::IFF_VNET_HDR);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/{prefix_len}"),
            "dev",
            "vt0",
        ]);
        ns.exec(&["ip", "link", "set", "vt0", "up"]);
        ns.exec(&["ip", "route", "add", "default", "dev", "vt0"]);
        let conn = transport::connect(&router.socket).expect("connect to the control socket");
        let hello = Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            project: project.to_owned(),
            ipv4: addr,
            ipv6: None,
            net_out: None,
            net_in: None,
        });
        let answer = transport::call(conn.as_fd(), &hello, Some(tun.as_fd())).expect("hello");
        drop(tun);
        ClusterVassal {
            ns,
            addr,
            answer,
            _control: Some(conn),
        }
    }

    /// Whether the router accepted it.
    pub fn accepted(&self) -> bool {
        matches!(self.answer, Response::Accepted { .. })
    }
}

/// A real vassal: `vassal-launch run --address auto --router <socket>`
/// (its address leased from the router's block), running `command` as
/// the project's uid, launched as on the router's host (its own
/// `/run/vassal` and cgroups: [`Cluster::launch_command`]). Its project
/// is its name. Stopped on drop.
pub struct LaunchedVassal {
    /// Its name (and project).
    pub name: String,
    /// The address the router leased it.
    pub addr: Ipv4Addr,
    /// Its host's `/run/vassal`.
    run: PathBuf,
    /// The launcher.
    pub launched: Child,
    /// Where its stderr goes.
    stderr: PathBuf,
}

impl Drop for LaunchedVassal {
    fn drop(&mut self) {
        // SIGTERM, as an operator stops it (the launcher cleans up), then
        // SIGKILL after 5 s.
        let pid = nix::unistd::Pid::from_raw(self.launched.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let ended = wait_until(Duration::from_secs(5), || {
            self.launched.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = self.launched.kill();
            let _ = self.launched.wait();
        }
    }
}

impl LaunchedVassal {
    /// Launches `name` on `router` (host `router.host` of `cluster`)
    /// running `command`, and waits until it is attached (its supervisor
    /// runs, its address is configured and the router counts it).
    pub fn start(
        cluster: &Cluster,
        router: &ClusterRouter,
        name: &str,
        command: &[&str],
    ) -> LaunchedVassal {
        let mut args: Vec<String> = [
            "run",
            "--name",
            name,
            "--uid",
            &crate::launcher_harness::PROJECT_UID.to_string(),
            "--address",
            "auto",
            "--router",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(router.socket.display().to_string());
        args.push("--".into());
        args.extend(command.iter().map(|s| s.to_string()));
        let argv = cluster.launch_command(router.host, &args);
        let stderr = router.dir.join(format!("{name}.stderr"));
        let launched = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning vassal-launch");
        let mut v = LaunchedVassal {
            name: name.to_owned(),
            addr: Ipv4Addr::UNSPECIFIED,
            run: cluster.launch_run(router.host),
            launched,
            stderr,
        };
        let attached = format!("project=\"{name}\"");
        let mut addr = None;
        let up = wait_until(Duration::from_secs(15), || {
            if v.supervisor().is_none()
                || router.metric(&format!("vassal_attached{{{attached}}}")) != Some(1.0)
            {
                return false;
            }
            let (_, out) = v.exec(&["ip", "-4", "-o", "addr", "show", "dev", "vx0"]);
            addr = out
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok());
            addr.is_some()
        });
        assert!(
            up,
            "vassal {name} not attached: {}\n{}",
            std::fs::read_to_string(&v.stderr).unwrap_or_default(),
            router.log_text()
        );
        v.addr = addr.unwrap_or(Ipv4Addr::UNSPECIFIED);
        v
    }

    fn supervisor(&self) -> Option<u32> {
        let text =
            std::fs::read_to_string(self.run.join(format!("launch/{}.json", self.name))).ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).ok()?;
        state["pid"].as_u64().filter(|&p| p > 0).map(|p| p as u32)
    }

    /// Its supervisor's pid (pid 1 inside).
    pub fn pid(&self) -> u32 {
        self.supervisor().expect("the vassal's supervisor pid")
    }

    /// Runs `argv` inside its network namespace (as root: an attacker that
    /// took the vassal's namespace over); its exit status and stdout.
    pub fn exec(&self, argv: &[&str]) -> (bool, String) {
        let Some(pid) = self.supervisor() else {
            return (false, String::new());
        };
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Runs python `script` inside its network namespace.
    pub fn python(&self, script: &str) -> (bool, String) {
        self.exec(&[crate::router_harness::PYTHON, "-c", script])
    }
}
