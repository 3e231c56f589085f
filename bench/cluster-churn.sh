#!/usr/bin/env bash
# Churn of a cluster (issue 14, docs/cluster.md): N vassals attach across
# three hosts at once; how long until every router knows every vassal's
# identity (median and worst).
#
# Three hosts made of network namespaces on one bridge (the underlay,
# 198.51.100.0/24, as in tests/src/cluster_harness.rs), a three-member etcd
# (one member per host), one vassal-router per host with `[cluster]`
# (direct mode, /22 blocks of 10.240.0.0/16). bench/cluster_churn.py then
# makes N real attaches (lease + hello with a tun descriptor, vassal i on
# host i mod 3) and polls each router's cluster view. As root:
#
#   bench/cluster-churn.sh              # N=1000
#   N=60 bench/cluster-churn.sh         # a smoke run
#   RATE=100 bench/cluster-churn.sh     # paced: 100 attaches a second in all
#                                       # (default: a burst, each as fast as it is accepted)
#
# Prints the JSON of bench/cluster_churn.py and a summary line. etcd's data
# lives in $WORK (TMPDIR, default /tmp; on disk, fsync as etcd does it).
# Traffic goes only to addresses inside namespaces this script creates.
set -euo pipefail
N=${N:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "bench/cluster-churn.sh: run as root" >&2; exit 1; }
for p in etcd-server etcd-client iproute2 python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
    }
done
[ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release --bins --quiet)
BIN=${BIN:-$ROOT/target/release}
# Per host: a /22 block holds 1021 vassals.
[ "$N" -le 3000 ] || { echo "bench/cluster-churn.sh: N at most 3000" >&2; exit 1; }

ID=$$
UL=ccu$ID
HOSTS=(cch1$ID cch2$ID cch3$ID)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vassal-churn.XXXXXX")
PIDS=()
cleanup() {
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for n in "${HOSTS[@]}" "$UL"; do ip netns del "$n" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$UL"
ip -n "$UL" link add br0 type bridge
ip -n "$UL" link set br0 up
ENDPOINTS=() INITIAL=()
for k in 0 1 2; do
    ENDPOINTS+=("http://198.51.100.1$k:2379")
    INITIAL+=("m$k=http://198.51.100.1$k:2380")
done
for k in 0 1 2; do
    h=${HOSTS[k]}
    ip netns add "$h"
    ip -n "$h" link set lo up
    ip link add eth0 netns "$h" type veth peer name "p$k" netns "$UL"
    ip -n "$UL" link set "p$k" master br0 up
    ip -n "$h" addr add "198.51.100.1$k/24" dev eth0
    ip -n "$h" link set eth0 up
    a=198.51.100.1$k
    ip netns exec "$h" etcd --name "m$k" --data-dir "$WORK/etcd-$k" \
        --listen-client-urls "http://$a:2379" --advertise-client-urls "http://$a:2379" \
        --listen-peer-urls "http://$a:2380" --initial-advertise-peer-urls "http://$a:2380" \
        --initial-cluster "$(IFS=,; echo "${INITIAL[*]}")" --initial-cluster-state new \
        --initial-cluster-token vassal-churn >"$WORK/etcd-$k.log" 2>&1 &
    PIDS+=($!)
done
etcdctl() { ip netns exec "${HOSTS[0]}" env ETCDCTL_API=3 etcdctl \
    --endpoints="$(IFS=,; echo "${ENDPOINTS[*]}")" --dial-timeout=2s --command-timeout=3s "$@"; }
for _ in $(seq 300); do etcdctl put /health-probe ok >/dev/null 2>&1 && break; sleep 0.1; done
etcdctl put /health-probe ok >/dev/null || { echo "etcd did not start; see $WORK" >&2; exit 1; }

for k in 0 1 2; do
    h=${HOSTS[k]}
    mkdir -p "$WORK/r$k"
    cat >"$WORK/r$k/router.toml" <<EOF
device = "vr0"
control_socket = "$WORK/r$k/router.sock"
metrics_listen = "127.0.0.1:9810"
[nat]
masquerade = false
[cluster]
etcd = [$(printf '"%s", ' "${ENDPOINTS[@]}" | sed 's/, $//')]
node = "host-$k"
underlay = "198.51.100.1$k"
prefix = "10.240.0.0/16"
block = 22
mode = "direct"
lease_ttl = 15
state_file = "$WORK/r$k/cluster-state.json"
EOF
    ip netns exec "$h" "$BIN/vassal-router" run --config "$WORK/r$k/router.toml" \
        2>"$WORK/r$k/router.log" &
    PIDS+=($!)
done
# Ready: every router answers and sees the three blocks.
blocks() { "$BIN/vassal-router" cluster --socket "$WORK/r$1/router.sock" 2>/dev/null |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["blocks"]))' 2>/dev/null || echo 0; }
for k in 0 1 2; do
    for _ in $(seq 300); do [ "$(blocks $k)" = 3 ] && break; sleep 0.1; done
    [ "$(blocks $k)" = 3 ] || { echo "router $k not ready:"; tail -20 "$WORK/r$k/router.log"; exit 1; } >&2
done

export WORK
result=$(python3 "$ROOT/bench/cluster_churn.py" "$N" "$WORK"/r{0,1,2}/router.sock)
echo "$result"
python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
ok = r["attached"] == r["vassals"] and r["not_known_everywhere"] == 0
print(f"cluster churn: {'PASS' if ok else 'FAIL'} — {r['attached']}/{r['vassals']} vassals attached ({r['rate_per_s']}/s) "
      f"across {r['routers']} hosts in {r['burst_s']:.1f} s; known by every router: median "
      f"{r['known_everywhere_ms_median'] or 0:.0f} ms, worst {r['known_everywhere_ms_worst'] or 0:.0f} ms; "
      f"all known {r['all_known_s']:.1f} s after the first attach (poll every ~{max(r['poll_ms']):.0f} ms)")
sys.exit(0 if ok else 1)
PY
