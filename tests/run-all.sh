#!/usr/bin/env bash
# Runs every test of the project: unit tests (unprivileged logic) and the
# root integration suite (real network namespaces, tun devices, nftables,
# uWSGI peers and vassals). Installs what the tests use on a fresh Debian
# machine first. Must run as root.
#
#   tests/run-all.sh            # everything (as root)
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
# protobuf-compiler: the etcd-client crate's build.
packages=(iproute2 nftables iperf3 iputils-ping uwsgi-core tmux python3 procps psmisc util-linux prometheus systemd etcd-server etcd-client protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The tun plugin ships with uwsgi-core but only loads with the module present.
modprobe tun 2>/dev/null || true

# The integration tests start the binaries; build them in the same profile.
cargo build --workspace --bins
cargo test --workspace -- "$@"
# Every parser that sees untrusted bytes, fuzzed for a bounded time
# (FUZZ_SECONDS each, default 20; longer runs: docs/fuzzing.md).
if [ $# -eq 0 ]; then
    tests/fuzz.sh
fi
