#!/usr/bin/env bash
# Runs every test of the project: unit tests (unprivileged logic) and the
# root integration suite (real network namespaces, tun devices, nftables,
# uWSGI peers and vassals). Installs what the tests use on a fresh Debian
# machine first. Must run as root.
#
#   tests/run-all.sh            # everything (as root), cgroup v2 guest included
#   tests/run-all.sh router_    # only tests whose name matches
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run-all.sh: the integration tests need root (network namespaces, tun, nftables, cgroups)" >&2
    exit 1
fi

# System tools the tests drive. Installed only when missing, so a second
# run starts at once and needs no network.
# etcd-server and etcd-client: the cluster tests start their own members
# inside test namespaces (the package's own service plays no part);
# protobuf-compiler: the etcd-client crate's build; openssl: the certificates
# of the etcd TLS tests.
packages=(iproute2 openssl nftables iperf3 iputils-ping uwsgi-core tmux python3 procps psmisc util-linux prometheus systemd etcd-server etcd-client protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# The cgroup v2 guest (tests/vm/run.sh): qemu, its initramfs's busybox, and
# kmod for the kernel's modules; without the recommended GUI and firmware.
vm_packages=(qemu-system-x86 busybox-static kmod)
vm_missing=()
for p in "${vm_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || vm_missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#vm_missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]} ${vm_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    [ ${#missing[@]} -eq 0 ] || apt-get install -y -qq "${missing[@]}" >/dev/null
    [ ${#vm_missing[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${vm_missing[@]}" >/dev/null
fi
# The tun plugin ships with uwsgi-core but only loads with the module present.
modprobe tun 2>/dev/null || true

# The integration tests start the binaries; build them in the same profile.
cargo build --workspace --bins
# No file of a crate's src/ may import, through others, itself (issue 12;
# what counts as an import: tools/import-cycles/src/graph.rs). It prints
# every cycle with its lines and ends with one PASS or FAIL line.
if ! cargo run -q -p vassal-import-cycles; then
    echo "tests/run-all.sh: FAIL: import cycles (see above)" >&2
    exit 1
fi
cargo test --workspace -- "$@"
# The launcher's cgroup tests again on a cgroup v2 only kernel, in a qemu
# guest (docs/design.md, "Testing on cgroup v2"; about 1.5 minutes).
if [ $# -eq 0 ]; then
    tests/vm/run.sh
fi
# Every parser that sees untrusted bytes, fuzzed for a bounded time
# (FUZZ_SECONDS each, default 20; longer runs: docs/fuzzing.md).
if [ $# -eq 0 ]; then
    tests/fuzz.sh
fi
# The cluster demo (docs/cluster.md, "The demo"): three namespace hosts,
# etcd, a router each, vassals of two projects across hosts; about 25 s on
# the debug binaries built above. Ends with its PASS or FAIL line.
if [ $# -eq 0 ]; then
    BIN=$PWD/target/debug tests/cluster-demo.sh
fi
