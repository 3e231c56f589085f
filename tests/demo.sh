#!/usr/bin/env bash
# The main job, on embedded defaults: builds, starts vassal-router with no
# configuration at all, launches two vassals (alice and bob) on the host's
# root filesystem read-only, shows alice reaching "the internet" through the
# router and kernel NAT, shows alice refused when she tries bob, and prints
# the per-project counters from /metrics. Cleans up after itself.
#
# "The internet" is a network namespace this script creates, joined to the
# host by a veth pair and holding 203.0.113.1 (a documentation address):
# no traffic leaves the machine.
#
#   tests/demo.sh          (as root)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/demo.sh: run as root (namespaces, tun devices, nftables)" >&2
    exit 1
fi
for tool in ip nft python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "installing the tools the demo drives (iproute2 nftables python3)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq iproute2 nftables python3 >/dev/null
        break
    fi
done
if ip link show vr0 >/dev/null 2>&1; then
    echo "tests/demo.sh: a vr0 device exists already (is a vassal-router running?); stop it first" >&2
    exit 1
fi

echo "== building"
cargo build --release --bins --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/vassal-demo.XXXXXX)
chmod 755 "$WORK"
INET=vassal-demo-inet
PIDS=()

cleanup() {
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    ip netns del "$INET" 2>/dev/null
    ip link del vdemo-host 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== the internet: namespace $INET holding 203.0.113.1, a web server on :8080"
ip netns add "$INET"
ip link add vdemo-host type veth peer name vdemo-inet netns "$INET"
ip addr add 203.0.113.254/24 dev vdemo-host
ip link set vdemo-host up
ip netns exec "$INET" ip addr add 203.0.113.1/24 dev vdemo-inet
ip netns exec "$INET" ip link set vdemo-inet up
ip netns exec "$INET" ip link set lo up
mkdir "$WORK/www" && echo "hello from the internet" >"$WORK/www/index.html"
ip netns exec "$INET" python3 -m http.server --bind 203.0.113.1 --directory "$WORK/www" 8080 \
    >"$WORK/internet.log" 2>&1 &
PIDS+=($!)

echo "== vassal-router run   (embedded defaults: vr0, 10.200.0.1/16, NAT on, default rules)"
"$BIN/vassal-router" run >"$WORK/router.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [ -S /run/vassal/router.sock ] && python3 - <<'PY' 2>/dev/null && break
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("/run/vassal/router.sock")
PY
    sleep 0.1
done

echo "== vassal bob (10.200.0.3): a web server on :8000"
"$BIN/vassal-launch" run --name bob --address 10.200.0.3 --uid 65534 --gid 65534 \
    -- /usr/bin/python3 -m http.server --bind 10.200.0.3 8000 >"$WORK/bob.log" 2>&1 &
PIDS+=($!)
sleep 1

echo "== vassal alice (10.200.0.2): fetch the internet, then try bob"
"$BIN/vassal-launch" run --name alice --address 10.200.0.2 --uid 65534 --gid 65534 -- /usr/bin/python3 -c '
import socket, urllib.request
print("alice: hostname", socket.gethostname())
body = urllib.request.urlopen("http://203.0.113.1:8080/", timeout=5).read().decode().strip()
print("alice: GET http://203.0.113.1:8080/ ->", repr(body))
try:
    urllib.request.urlopen("http://10.200.0.3:8000/", timeout=2)
    print("alice: reached bob (unexpected!)")
except Exception as e:
    print("alice: GET http://10.200.0.3:8000/ (bob) -> refused by the firewall:", type(e).__name__)
'
echo "== what the internet saw (the host address, not alice's: NAT)"
sed -n 's/^\([0-9.]*\) .*"\(GET [^"]*\)".*/  \1 \2/p' "$WORK/internet.log"

echo "== per-project counters from http://127.0.0.1:9810/metrics"
python3 - <<'PY'
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9810/metrics", timeout=5).read().decode()
lines = [l for l in text.splitlines()
         if l.startswith("vassal_") and ('project="alice"' in l or 'project="bob"' in l)]
for line in sorted(lines):
    # Zero drop counters are noise here; /metrics has them all.
    if "_dropped_" in line and line.endswith(" 0") or "compat_" in line:
        continue
    print("  " + line)
PY
echo "== done; cleaning up"
