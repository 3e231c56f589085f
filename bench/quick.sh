#!/usr/bin/env bash
# A quick before/after look at the per-packet figures, for one change:
# a release router, one vassal started by vassal-launch, and per repetition
# the 64-byte UDP packet rate vassal → host, the router's CPU time per
# packet forwarded (utime + stime over the UDP run, the kernel's delivery
# in its writes included), the 5 ms and the flood ping round trips, and
# with TCP=1 TCP both ways. As root; interleave two builds and take medians:
#
#   for i in 1 2 3 4 5; do BIN=/tmp/before LABEL=before bench/quick.sh
#                          BIN=/tmp/after  LABEL=after  bench/quick.sh; done
#
# Traffic goes only to addresses inside the namespace this script creates.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release}
SECS=${SECS:-3}
REP=${REP:-1}
W=$(mktemp -d /tmp/vassal-quick.XXXXXX)
DEV=vrquick0 GW=10.251.7.1 A=10.251.7.2 NAME=benchquick
printf '[default]\nout = "allow"\nin = "allow"\nestablished = true\n' >"$W/open.toml"
. bench/lib.sh
bench_router "$W" "$DEV" "$GW/24" "$W/open.toml" 19898
R=$ROUTER
"$BIN/vassal-launch" run --name "$NAME" --uid 65534 --address "$A" --router "$W/router.sock" -- /bin/sleep 100000 \
    >/dev/null 2>>"$W/launch.log" &
L=$!
cleanup() { kill "$L" 2>/dev/null; sleep 0.3; kill "$R" 2>/dev/null; wait "$R" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
pid=0
for _ in $(seq 100); do
    pid=$(python3 -c "import json;print(json.load(open('/run/vassal/launch/$NAME.json'))['pid'])" 2>/dev/null || echo 0)
    [ "$pid" != 0 ] && break
    sleep 0.05
done
[ "$pid" != 0 ] || { echo "vassal did not start: $(cat "$W/launch.log")" >&2; exit 1; }
for _ in $(seq 100); do nsenter -t "$pid" -n ping -q -c 1 -W 1 "$GW" >/dev/null 2>&1 && break; sleep 0.1; done
N=(nsenter -t "$pid" -n)
mbps() { python3 -c 'import json,sys;print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))' 2>/dev/null || echo fail; }
cpu() { awk '{print $14 + $15}' "/proc/$R/stat"; }   # clock ticks
for _ in $(seq "$REP"); do
    iperf3 -s -B "$GW" -1 >/dev/null 2>&1 & sleep 0.3
    c0=$(cpu)
    read -r pps got < <("${N[@]}" iperf3 -c "$GW" -u -l 64 -b 0 -t "$SECS" -J 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)["end"]["sum"]; n = d["packets"] - d["lost_packets"]
print(round(n / d["seconds"]), n)' 2>/dev/null || echo "fail 0")
    c1=$(cpu)
    per=$(python3 -c "print(round(($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / max($got, 1), 2))")
    rtt=$("${N[@]}" ping -q -c 200 -i 0.005 "$GW" | awk -F/ '/^rtt/ {printf "%.1f", $5 * 1000}')
    flood=$("${N[@]}" ping -q -f -c 5000 "$GW" | awk -F/ '/^rtt/ {printf "%.1f", $5 * 1000}')
    tcp=""
    if [ -n "${TCP:-}" ]; then
        iperf3 -s -B "$GW" -1 >/dev/null 2>&1 & sleep 0.3
        up=$("${N[@]}" iperf3 -c "$GW" -t "$SECS" -J 2>/dev/null | mbps)
        iperf3 -s -B "$GW" -1 >/dev/null 2>&1 & sleep 0.3
        down=$("${N[@]}" iperf3 -c "$GW" -R -t "$SECS" -J 2>/dev/null | mbps)
        tcp=" tcp_up_mbps=$up tcp_down_mbps=$down"
    fi
    echo "${LABEL:-run} udp64_pps=$pps router_cpu_us_per_pkt=$per rtt_us=$rtt flood_us=$flood$tcp load=$(cut -d' ' -f1 /proc/loadavg)"
done
