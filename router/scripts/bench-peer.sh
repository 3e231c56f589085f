#!/usr/bin/env bash
# vassal-router as a peer of /work/shared/bench/peers.sh: one vassal network
# namespace attached to a release vassal-router, iperf3 TCP both ways and
# ping against the gateway. Prints: vassal-router up_mbps=.. down_mbps=.. rtt_us=..
# Usage (root): [SECS=5] [HOST_QUEUES=0] router/scripts/bench-peer.sh [path/to/vassal-router]
set -u
SECS=${SECS:-5}
ROUTER=${1:-target/release/vassal-router}
WORK=$(mktemp -d)
NS=vrbench$$
DEV=vrb$$
GW=10.252.$(( $$ % 200 )).1
VASSAL=${GW%.1}.2
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  sleep 0.3
  ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/router.toml" <<TOML
device = "$DEV"
gateway = "$GW/24"
control_socket = "$WORK/router.sock"
metrics_listen = "127.0.0.1:0"
rules = "$WORK/rules.toml"
[nat]
masquerade = false
[limits]
host_queues = ${HOST_QUEUES:-0}
TOML
printf '[default]\nout = "allow"\nin = "allow"\n' >"$WORK/rules.toml"
"$ROUTER" run --config "$WORK/router.toml" 2>"$WORK/router.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$WORK/router.sock" ] && break; sleep 0.1; done

# The vassal: a namespace whose tun is handed to the router (attach protocol v1).
ip netns add "$NS"
cat >"$WORK/attach.py" <<'PY'
import socket, fcntl, struct, os, sys, subprocess, json, time
sock, addr = sys.argv[1], sys.argv[2]
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", b"vt0", 0x0001 | 0x1000))
for c in (["ip", "link", "set", "lo", "up"], ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
          ["ip", "addr", "add", addr + "/24", "dev", "vt0"], ["ip", "link", "set", "vt0", "up"],
          ["ip", "route", "add", "default", "dev", "vt0"]):
    subprocess.check_call(c)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sock)
hello = json.dumps({"type": "hello", "version": 1, "project": "bench", "ipv4": addr}).encode()
s.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
print(s.recv(4096).decode(), flush=True)
time.sleep(86400)
PY
ip netns exec "$NS" python3 "$WORK/attach.py" "$WORK/router.sock" "$VASSAL" >"$WORK/attach.log" 2>&1 &
PIDS+=($!)
sleep 1
grep -q accepted "$WORK/attach.log" || { echo "attach failed: $(cat "$WORK/attach.log" "$WORK/router.log")"; exit 1; }

mbps() { python3 -c 'import json,sys;d=json.load(sys.stdin);print(round(d["end"]["sum_received"]["bits_per_second"]/1e6))' 2>/dev/null || echo fail; }
iperf3 -s -B "$GW" -1 >/dev/null 2>&1 & sleep 0.3
up=$(ip netns exec "$NS" iperf3 -c "$GW" -t "$SECS" -J 2>/dev/null | mbps)
iperf3 -s -B "$GW" -1 >/dev/null 2>&1 & sleep 0.3
down=$(ip netns exec "$NS" iperf3 -c "$GW" -R -t "$SECS" -J 2>/dev/null | mbps)
rtt=$(ip netns exec "$NS" ping -q -c 200 -i 0.005 "$GW" 2>/dev/null | awk -F/ '/^rtt/ {printf "%d", $5*1000}')
echo "vassal-router up_mbps=${up} down_mbps=${down} rtt_us=${rtt:-fail}"
