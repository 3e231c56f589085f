#!/usr/bin/env bash
# Cross-host paths of a cluster (docs/cluster.md), on two hosts
# made of network namespaces joined by a bridge (the underlay,
# 198.51.100.0/24): TCP throughput (iperf3) between the hosts' block
# gateways
#
#   plain   the underlay addresses themselves (veth + bridge only)
#   direct  block to block through `<block> via <peer underlay>`
#   vxlan   block to block through a nolearning VXLAN device, FDB and
#           permanent neighbour entries
#
# The routes and entries are the ones the router's os/routes.rs installs
# (same device settings, MACs derived from the blocks), written here with
# `ip`/`bridge` so the kernel path is measured alone. Then the same two
# modes end to end, vassal to vassal through real routers:
#
#   vassals-direct   a vassal on host 1 to one on host 2, each attached
#   vassals-vxlan    (vassal-launch --address auto) to its host's
#                    vassal-router with [cluster] (a one-member etcd on
#                    host 1); the routers install the routes themselves.
#                    Every MTU at its default (1500): in VXLAN mode the
#                    router makes its device the underlay's less 50 and
#                    the vassals' TCP finds that path MTU.
#
# As root:
#
#   bench/cluster-path.sh              # RUNS=3 repetitions (median), SECS=5
#   RUNS=1 SECS=1 bench/cluster-path.sh    # a smoke run
#   ROUTERS=0 bench/cluster-path.sh    # the kernel paths only (no build)
#
# Prints one tab-separated line per path: path, Gbit/s (median).
# Traffic goes only to addresses inside namespaces this script creates.
set -euo pipefail
RUNS=${RUNS:-3}
SECS=${SECS:-5}
ROUTERS=${ROUTERS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "bench/cluster-path.sh: run as root" >&2; exit 1; }
pkgs=(iperf3 iproute2)
[ "$ROUTERS" = 0 ] || pkgs+=(etcd-server etcd-client nftables)
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
    }
done

if [ "$ROUTERS" != 0 ]; then
    [ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release --bins --quiet)
    BIN=${BIN:-$ROOT/target/release}
fi

ID=$$
UL=cpu$ID
H1=cph1$ID
H2=cph2$ID
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vassal-cpath.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for n in "$UL" "$H1" "$H2"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for n in "$UL" "$H1" "$H2"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$UL" link add br0 type bridge
ip -n "$UL" link set br0 up
for k in 1 2; do
    h=$([ $k = 1 ] && echo "$H1" || echo "$H2")
    ip link add ul0 netns "$h" type veth peer name "h${k}p" netns "$UL"
    ip -n "$UL" link set "h${k}p" master br0 up
    ip -n "$h" addr add "198.51.100.$k/24" dev ul0
    ip -n "$h" link set ul0 up
    # The block's gateway stands where the router's host tun would be.
    ip -n "$h" link add blk0 type veth peer name blk1
    ip -n "$h" link set blk1 up
    ip -n "$h" addr add "10.44.$k.1/24" dev blk0
    ip -n "$h" link set blk0 up
    ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
measure() { # $1 = path name, $2 = source, $3 = destination
    local results=()
    for _ in $(seq "$RUNS"); do
        # A one-shot server, ready once it listens.
        ip netns exec "$H2" iperf3 -s -D -1 >/dev/null 2>&1
        for _ in $(seq 50); do
            ip netns exec "$H2" ss -Hltn 'sport = :5201' | grep -q . && break
            sleep 0.1
        done
        local bps
        bps=$(ip netns exec "$H1" iperf3 -J -t "$SECS" -B "$2" -c "$3" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
        results+=("$(awk -v b="$bps" 'BEGIN {printf "%.2f", b / 1e9}')")
    done
    printf '%s\t%s\n' "$1" "$(printf '%s\n' "${results[@]}" | median)"
}

measure plain 198.51.100.1 198.51.100.2

ip -n "$H1" route add 10.44.2.0/24 via 198.51.100.2 proto 118
ip -n "$H2" route add 10.44.1.0/24 via 198.51.100.1 proto 118
measure direct 10.44.1.1 10.44.2.1
ip -n "$H1" route del 10.44.2.0/24
ip -n "$H2" route del 10.44.1.0/24

mac() { printf '02:76:0a:2c:%02x:00' "$1"; }
for k in 1 2; do
    h=$([ $k = 1 ] && echo "$H1" || echo "$H2")
    o=$((3 - k))
    ip -n "$h" link add vassal-vx address "$(mac $k)" type vxlan id 1 \
        local "198.51.100.$k" dstport 4789 nolearning
    ip -n "$h" link set vassal-vx up
    bridge -n "$h" fdb append "$(mac $o)" dev vassal-vx dst "198.51.100.$o" self permanent
    ip -n "$h" neigh replace "10.44.$o.1" lladdr "$(mac $o)" dev vassal-vx nud permanent
    ip -n "$h" route add "10.44.$o.0/24" via "10.44.$o.1" dev vassal-vx onlink proto 118
done
measure vxlan 10.44.1.1 10.44.2.1

[ "$ROUTERS" != 0 ] || exit 0

# --- vassal to vassal through real routers ------------------------------------
for k in 1 2; do
    h=$([ $k = 1 ] && echo "$H1" || echo "$H2")
    o=$((3 - k))
    ip -n "$h" route del "10.44.$o.0/24"
    ip -n "$h" link del vassal-vx
    ip -n "$h" link del blk0
done
ip netns exec "$H1" etcd --name m1 --data-dir "$WORK/etcd" \
    --listen-client-urls http://198.51.100.1:2379 --advertise-client-urls http://198.51.100.1:2379 \
    --listen-peer-urls http://198.51.100.1:2380 --initial-advertise-peer-urls http://198.51.100.1:2380 \
    --initial-cluster m1=http://198.51.100.1:2380 >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    ip netns exec "$H1" env ETCDCTL_API=3 etcdctl --endpoints=http://198.51.100.1:2379 \
        --dial-timeout=1s put /probe ok >/dev/null 2>&1 && break
    sleep 0.2
done
printf '[default]\nout = "allow"\nin = "allow"\nestablished = true\n' >"$WORK/open.toml"
blocks() { "$BIN/vassal-router" cluster --socket "$WORK/$1/r$2.sock" 2>/dev/null |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["blocks"]))' 2>/dev/null || echo 0; }
vassal_pid() { # $1 name: the vassal's supervisor pid, once it is on record
    for _ in $(seq 100); do
        local pid
        pid=$(python3 -c "import json;print(json.load(open('/run/vassal/launch/$1.json'))['pid'])" 2>/dev/null || echo 0)
        [ "$pid" != 0 ] && { echo "$pid"; return; }
        sleep 0.1
    done
    echo "vassal $1 did not start: $(cat "$WORK/launch.log")" >&2
    exit 1
}
for mode in direct vxlan; do
    mkdir -p "$WORK/$mode"
    routers=()
    for k in 1 2; do
        h=$([ $k = 1 ] && echo "$H1" || echo "$H2")
        cat >"$WORK/$mode/r$k.toml" <<EOF
device = "vr0"
control_socket = "$WORK/$mode/r$k.sock"
metrics_listen = "127.0.0.1:9810"
state_dir = "$WORK/$mode/state$k"
rules = "$WORK/open.toml"
[nat]
masquerade = false
[cluster]
etcd = ["http://198.51.100.1:2379"]
node = "h$k"
underlay = "198.51.100.$k"
prefix = "10.240.0.0/16"
block = 24
mode = "$mode"
lease_ttl = 5
key_prefix = "/bench-$mode"
state_file = "$WORK/$mode/cluster-state$k.json"
EOF
        mkdir -p "$WORK/$mode/state$k"
        ip netns exec "$h" nice -n -10 "$BIN/vassal-router" run --config "$WORK/$mode/r$k.toml" \
            2>>"$WORK/$mode/r$k.log" &
        routers+=($!)
        PIDS+=($!)
    done
    for k in 1 2; do
        for _ in $(seq 100); do [ "$(blocks "$mode" $k)" = 2 ] && break; sleep 0.2; done
        [ "$(blocks "$mode" $k)" = 2 ] || { echo "router $k ($mode) did not join: $(tail -5 "$WORK/$mode/r$k.log")" >&2; exit 1; }
    done
    launchers=()
    for k in 1 2; do
        "$BIN/vassal-launch" run --name "cpv$k-$ID" --uid 65534 --address auto \
            --router "$WORK/$mode/r$k.sock" -- /bin/sleep 100000 >/dev/null 2>>"$WORK/launch.log" &
        launchers+=($!)
        PIDS+=($!)
    done
    pa=$(vassal_pid "cpv1-$ID")
    pb=$(vassal_pid "cpv2-$ID")
    addr() { nsenter -t "$1" -n ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1; }
    for _ in $(seq 50); do [ -n "$(addr "$pb")" ] && [ -n "$(addr "$pa")" ] && break; sleep 0.1; done
    src=$(addr "$pa")
    dst=$(addr "$pb")
    results=()
    for _ in $(seq "$RUNS"); do
        nsenter -t "$pb" -n iperf3 -s -D -1 -B "$dst" -I "$WORK/iperf.pid" >/dev/null 2>&1
        for _ in $(seq 50); do
            nsenter -t "$pb" -n ss -Hltn 'sport = :5201' | grep -q . && break
            sleep 0.1
        done
        bps=$(timeout $((SECS + 20)) nsenter -t "$pa" -n iperf3 -J -t "$SECS" -B "$src" -c "$dst" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' ||
            echo 0)
        results+=("$(awk -v b="$bps" 'BEGIN {printf "%.2f", b / 1e9}')")
        # The server of a failed run.
        [ ! -s "$WORK/iperf.pid" ] || kill "$(cat "$WORK/iperf.pid")" 2>/dev/null || true
    done
    printf '%s\t%s\n' "vassals-$mode" "$(printf '%s\n' "${results[@]}" | median)"
    for p in "${launchers[@]}" "${routers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${launchers[@]}" "${routers[@]}"; do wait "$p" 2>/dev/null || true; done
done
