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
# `ip`/`bridge` so the kernel path is measured alone; the router's own
# per-packet cost on one host is measured by bench/run.sh. As root:
#
#   bench/cluster-path.sh              # RUNS=3 repetitions (median), SECS=5
#   RUNS=1 SECS=1 bench/cluster-path.sh    # a smoke run
#
# Prints one tab-separated line per path: path, Gbit/s (median).
# Traffic goes only to addresses inside namespaces this script creates.
set -euo pipefail
RUNS=${RUNS:-3}
SECS=${SECS:-5}
[ "$(id -u)" -eq 0 ] || { echo "bench/cluster-path.sh: run as root" >&2; exit 1; }
for p in iperf3 iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
    }
done

ID=$$
UL=cpu$ID
H1=cph1$ID
H2=cph2$ID
cleanup() {
    for n in "$UL" "$H1" "$H2"; do ip netns del "$n" 2>/dev/null || true; done
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
