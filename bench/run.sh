#!/usr/bin/env bash
# The datapath and launch benchmarks, ours beside the peers in one run.
# Writes docs/benchmarks.md (the "Datapath" section, between markers) and
# docs/benchmarks.svg. As root:
#
#   bench/run.sh                 # RUNS=3 repetitions (medians), SECS=5 per iperf3 run
#   RUNS=1 SECS=2 SCALE=100 bench/run.sh   # a quick look
#   PARTS="ours veth" RUNS=1 bench/run.sh  # some parts only: prints the raw
#                                          # figures, writes no docs
#
# Traffic goes only to addresses inside namespaces this script creates.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. bench/lib.sh
RUNS=${RUNS:-3}
SECS=${SECS:-5}
SCALE=${SCALE:-1000}
LAUNCHES=${LAUNCHES:-40}
PEERS=${PEERS:-../shared/bench/peers.sh}

[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: run as root" >&2; exit 1; }
need=(iperf3 iputils-ping iproute2 uwsgi-core slirp4netns passt bubblewrap python3 util-linux)
missing=()
for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -n "${NO_BUILD:-}" ] || cargo build --release --bins --quiet   # NO_BUILD=1: use the binaries already built
BIN=${BIN:-$ROOT/target/release}   # BIN=dir: other binaries (a before/after comparison)
WORK=$(mktemp -d /tmp/vassal-bench.XXXXXX)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
PIDS=()
DEV=vrbench0
GW=10.251.3.1
NET=10.251.3.0/24
A=10.251.3.2
B=10.251.3.3

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    pkill -f "vassal-launch run --name bench" 2>/dev/null
    sleep 0.5
    ip netns del vbench-veth 2>/dev/null
    ip link del vbveth0 2>/dev/null
    ip link del "$DEV" 2>/dev/null
    for l in $(ip -o link show | grep -o 'vbagg[0-9]*' | sort -u); do ip link del "$l" 2>/dev/null; done
    for n in $(ip netns list | grep -o '^vbagg[0-9]*'); do ip netns del "$n"; done
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }   # peer metric value

mbps() { python3 -c 'import json,sys;d=json.load(sys.stdin);print(round(d["end"]["sum_received"]["bits_per_second"]/1e6))' 2>/dev/null || echo fail; }
udp_pps() { python3 -c 'import json,sys;d=json.load(sys.stdin)["end"]["sum"];print(round((d["packets"]-d["lost_packets"])/d["seconds"]))' 2>/dev/null || echo fail; }
rtt_us() { awk -F/ '/^rtt/ {printf "%d", $5*1000}'; }
rtt_us_frac() { awk -F/ '/^rtt/ {printf "%.1f", $5*1000}'; }

# TCP request/response: 1-byte ping-pong on one connection for SECS seconds.
cat >"$WORK/rr.py" <<'PY'
import socket, sys, time
mode, host, port, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(1); c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := c.recv(1)):
        c.sendall(b)
else:
    c = socket.create_connection((host, port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n, end = 0, time.time() + secs
    while time.time() < end:
        c.sendall(b"x"); c.recv(1); n += 1
    print(round(n / secs))
PY

# measure PEER SERVER_ADDR PREFIX...: every figure of one path, the client
# side run under PREFIX (entering the client's namespace).
# The servers listen on BIND (default: SERVER_ADDR itself; the userspace
# peers map the address their namespace sees to the host's loopback).
measure() {
    local peer=$1 srv=$2; shift 2
    local bind=${BIND:-$srv}
    iperf3 -s -B "$bind" -1 >/dev/null 2>&1 & sleep 0.3
    record "$peer" tcp_up_mbps "$(timeout $((SECS + 20)) "$@" iperf3 -c "$srv" -t "$SECS" -J 2>/dev/null | mbps)"
    iperf3 -s -B "$bind" -1 >/dev/null 2>&1 & sleep 0.3
    record "$peer" tcp_down_mbps "$(timeout $((SECS + 20)) "$@" iperf3 -c "$srv" -R -t "$SECS" -J 2>/dev/null | mbps)"
    iperf3 -s -B "$bind" -1 >/dev/null 2>&1 & sleep 0.3
    record "$peer" udp64_up_pps "$(timeout $((SECS + 20)) "$@" iperf3 -c "$srv" -u -l 64 -b 0 -t "$SECS" -J 2>/dev/null | udp_pps)"
    pkill -f "iperf3 -s -B $bind -1" 2>/dev/null || true   # the server of a failed run
    record "$peer" rtt_us "$(timeout 30 "$@" ping -q -c 200 -i 0.005 "$srv" 2>/dev/null | rtt_us)"
    # The same back to back: no thread of the path ever sleeps (see
    # docs/benchmarks.md on what the 5 ms figure measures on a VM).
    record "$peer" rtt_busy_us "$(timeout 60 "$@" ping -q -f -c 5000 "$srv" 2>/dev/null | rtt_us_frac)"
    python3 "$WORK/rr.py" server "$bind" 5301 0 & local s=$!; sleep 0.3
    record "$peer" tcp_rr_per_s "$(timeout $((SECS + 20)) "$@" python3 "$WORK/rr.py" client "$srv" 5301 "$SECS" 2>/dev/null || echo fail)"
    kill $s 2>/dev/null || true; wait $s 2>/dev/null || true
}

# --- ours -------------------------------------------------------------------
start_router() { # $1: rules file
    bench_router "$WORK" "$DEV" "$GW/24" "$1" 19899
}
launch_vassal() { # $1 name $2 address -> prints the supervisor's pid
    "$BIN/vassal-launch" run --name "$1" --uid 65534 --address "$2" --router "$WORK/router.sock" -- /bin/sleep 100000 \
        >/dev/null 2>>"$WORK/launch.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        local pid
        pid=$(python3 -c "import json;print(json.load(open('/run/vassal/launch/$1.json'))['pid'])" 2>/dev/null || echo 0)
        [ "$pid" != 0 ] && { sleep 0.3; echo "$pid"; return; }
        sleep 0.05
    done
    echo "vassal $1 did not start: $(cat "$WORK/launch.log")" >&2; exit 1
}

printf '[default]\nout = "allow"\nin = "allow"\nestablished = true\n' >"$WORK/open.toml"
[ ! -x "$BIN/gen-rules" ] || "$BIN/gen-rules" 10000 "$GW" "$NET" >"$WORK/rules10k.toml"

ours() {
    start_router "$WORK/open.toml"
    local va vb
    va=$(launch_vassal bencha "$A"); vb=$(launch_vassal benchb "$B")
    measure vassal-router "$GW" nsenter -t "$va" -n
    # vassal to vassal, switched inside the router
    nsenter -t "$vb" -n iperf3 -s -B "$B" -1 >/dev/null 2>&1 & sleep 0.3
    record vassal-router v2v_tcp_mbps "$(nsenter -t "$va" -n iperf3 -c "$B" -t "$SECS" -J 2>/dev/null | mbps)"
    # the same with 10 000 rules: restart the router; the launchers re-attach
    # (skipped when gen-rules was not built: a NO_BUILD look)
    kill "$ROUTER"; wait "$ROUTER" 2>/dev/null || true
    if [ ! -s "$WORK/rules10k.toml" ]; then pkill -f "vassal-launch run --name bench" || true; return; fi
    start_router "$WORK/rules10k.toml"
    for _ in $(seq 100); do nsenter -t "$va" -n ping -q -c 1 -W 1 "$GW" >/dev/null 2>&1 && break; sleep 0.1; done
    iperf3 -s -B "$GW" -1 >/dev/null 2>&1 & sleep 0.3
    record vassal-router-10k tcp_up_mbps "$(nsenter -t "$va" -n iperf3 -c "$GW" -t "$SECS" -J 2>/dev/null | mbps)"
    iperf3 -s -B "$GW" -1 >/dev/null 2>&1 & sleep 0.3
    record vassal-router-10k tcp_down_mbps "$(nsenter -t "$va" -n iperf3 -c "$GW" -R -t "$SECS" -J 2>/dev/null | mbps)"
    pkill -f "vassal-launch run --name bench" || true
    sleep 0.5
    kill "$ROUTER"; wait "$ROUTER" 2>/dev/null || true
}

# --- kernel veth, for the figures peers.sh does not take ----------------------
veth() {
    ip netns add vbench-veth
    ip link add vbveth0 type veth peer name vbveth1 netns vbench-veth
    ip addr add 10.251.9.1/24 dev vbveth0; ip link set vbveth0 up
    ip netns exec vbench-veth ip addr add 10.251.9.2/24 dev vbveth1
    ip netns exec vbench-veth ip link set vbveth1 up
    ip netns exec vbench-veth ip link set lo up
    measure veth 10.251.9.1 ip netns exec vbench-veth
    ip netns del vbench-veth 2>/dev/null || true
    ip link del vbveth0 2>/dev/null || true
}

# --- slirp4netns and pasta, every figure through run.sh's own measure -------
# Set up as peers.sh does; both present the host's loopback at an address of
# their namespace (slirp4netns 10.0.2.2, pasta the namespace's gateway), so
# the servers listen on 127.0.0.1. Their ICMP goes out through ping sockets:
# the group range is opened for the run (pasta runs as nobody) and restored.
slirp4netns_peer() {
    unshare --net --fork sleep 600 & local u=$!; sleep 0.3
    local child; child=$(pgrep -P $u sleep || echo $u)
    slirp4netns --configure --mtu=65520 "$child" tap0 >"$WORK/slirp.log" 2>&1 & local s=$!; sleep 1
    BIND=127.0.0.1 measure slirp4netns 10.0.2.2 nsenter -t "$child" -n
    kill -9 "$s" "$u" "$child" 2>/dev/null || true
}
pasta_peer() {
    local mode; mode=$(stat -c %a /dev/net/tun); chmod 666 /dev/net/tun
    setpriv --reuid 65534 --regid 65534 --clear-groups \
        pasta --config-net -T none -U none -f -- sleep 600 >"$WORK/pasta.log" 2>&1 & local p=$!; sleep 2
    local child; child=$(pgrep -P "$p" -x sleep || pgrep -u 65534 -x sleep | head -1)
    local gw; gw=$(nsenter -t "$child" -n ip route | awk '/default/ {print $3; exit}')
    if [ -n "$gw" ]; then BIND=127.0.0.1 measure pasta "$gw" nsenter -t "$child" -n; fi
    kill -9 "$p" "$child" 2>/dev/null || true
    chmod "$mode" /dev/net/tun
}
userspace_peers() {
    local range; range=$(cat /proc/sys/net/ipv4/ping_group_range)
    echo "0 65534" >/proc/sys/net/ipv4/ping_group_range
    for peer in ${USERSPACE_PEERS:-slirp4netns pasta}; do
        local marker="VASSAL_BENCH_PEER=$$-$peer"
        ( export "${marker%%=*}=${marker#*=}"; "${peer}_peer" ) || true
        kill_marked "$marker"
    done
    echo "$range" >/proc/sys/net/ipv4/ping_group_range
}

peers() {
    # One peer at a time, each bounded: pasta was seen to hang on this kind
    # of machine; a hung peer costs its timeout and a "n/a", not the run.
    # peers.sh leaves processes behind (uWSGI's `exec-as-root = sleep`, the
    # namespaces' `sleep 600`): they are found by a marker in their
    # environment and killed, and its output goes to a file, not a pipe a
    # leftover could hold open forever.
    for peer in ${PEER_LIST:-uwsgi}; do
        local marker="VASSAL_BENCH_PEER=$$-$peer" out="$WORK/peer-$peer.out"
        env "$marker" SECS="$SECS" timeout -k 5 $((SECS * 4 + 60)) bash "$PEERS" "$peer" >"$out" 2>/dev/null || true
        while read -r name rest; do
            for kv in $rest; do record "$name" "$(echo "${kv%%=*}" | sed 's/up_mbps/tcp_up_mbps/;s/down_mbps/tcp_down_mbps/')" "${kv#*=}"; done
        done <"$out"
        kill_marked "$marker"
    done
}

# Kills every process whose environment holds $1 (NAME=VALUE).
kill_marked() {
    local p
    for p in $(grep -lsxF "$1" --null-data /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
        kill -9 "$p" 2>/dev/null || true
    done
}

launch_times() {
    python3 - "$BIN/vassal-launch" "$LAUNCHES" >>"$RESULTS" <<'PY'
import statistics, subprocess, sys, time
launch, n = sys.argv[1], int(sys.argv[2])
cmds = {
    "vassal-launch": [launch, "run", "--name", "benchlaunch", "--uid", "65534", "--", "/bin/true"],
    "unshare": ["unshare", "--mount", "--pid", "--ipc", "--uts", "--net", "--fork", "--mount-proc", "/bin/true"],
    "bwrap": ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true"],
}
for name, cmd in cmds.items():
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{name}\tlaunch_ms_median\t{statistics.median(times):.1f}")
    print(f"{name}\tlaunch_ms_p99\t{times[min(n - 1, int(n * 0.99))]:.1f}")
PY
}

# A router on a /16 (room for SCALE vassals), open rules, at nice -10.
start_wide_router() {
    bench_router "$WORK" "$DEV" 10.252.0.1/16 "$WORK/open.toml" 19899
}

scale() {
    start_wide_router
    python3 bench/attach_many.py "$SCALE" "$WORK/router.sock" "$ROUTER" 10.252.0.1 >"$WORK/scale.json"
    kill "$ROUTER"; wait "$ROUTER" 2>/dev/null || true
    python3 - "$WORK/scale.json" >>"$RESULTS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k in ("vassals", "attached", "pinged", "attach_ms_median", "attach_ms_p99", "router_kib_per_vassal"):
    print(f"scale\t{k}\t{d[k]:.2f}" if isinstance(d[k], float) else f"scale\t{k}\t{d[k]}")
PY
}

ALL="ours veth peers aggregate launch scale"
PARTS=${PARTS:-$ALL}
part() { [[ " $PARTS " == *" $1 "* ]]; }
# N vassals sending to the host at once, ours and over veth pairs.
AGGREGATE=${AGGREGATE:-100}
aggregate() {
    start_wide_router
    record aggregate vassals "$AGGREGATE"
    timeout $((SECS * 4 + 300)) python3 bench/attach_many.py "$AGGREGATE" "$WORK/router.sock" "$ROUTER" 10.252.0.1 --iperf "$SECS" >"$WORK/agg.json" || true
    kill "$ROUTER"; wait "$ROUTER" 2>/dev/null || true
    timeout $((SECS * 4 + 300)) python3 bench/attach_many.py "$AGGREGATE" - 0 - --veth --iperf "$SECS" >"$WORK/agg-veth.json" || true
    for f in agg:vassal-router agg-veth:veth; do
        record "${f#*:}" aggregate_mbps "$(python3 -c "import json,sys;print(round(json.load(open(sys.argv[1]))['aggregate_mbps']))" "$WORK/${f%%:*}.json" 2>/dev/null || echo fail)"
    done
}

for run in $(seq "$RUNS"); do
    if part ours; then echo "== run $run/$RUNS: vassal-router"; ours; fi
    if part veth; then echo "== run $run/$RUNS: veth"; veth; fi
    if part peers; then
        echo "== run $run/$RUNS: peers (uWSGI tuntap through peers.sh; slirp4netns, pasta)"
        peers; userspace_peers
    fi
    if part aggregate; then echo "== run $run/$RUNS: $AGGREGATE vassals at once, ours and veth"; aggregate; fi
done
if part launch; then echo "== launch time ($LAUNCHES each)"; launch_times; fi
if part scale; then echo "== scale: $SCALE vassals on one router"; scale; fi
if [ "$PARTS" != "$ALL" ]; then
    echo "== raw figures (peer, metric, value); docs not written for a partial run"
    cat "$RESULTS"
    exit 0
fi
cp "$RESULTS" docs/benchmarks.tsv   # the raw figures, to re-render or compare
python3 bench/report.py docs/benchmarks.tsv docs/benchmarks.md docs/benchmarks.svg "RUNS=$RUNS SECS=$SECS SCALE=$SCALE"
echo "== written: docs/benchmarks.md (Datapath section), docs/benchmarks.svg, docs/benchmarks.tsv"
