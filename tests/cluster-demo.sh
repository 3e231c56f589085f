#!/usr/bin/env bash
# Many hosts, one network (docs/cluster.md, "The demo": this script runs the
# commands and configuration of that section, in the same order; change
# both together). On one machine: three hosts made of network namespaces
# on a bridge (the underlay, 198.51.100.0/24, a documentation range), a
# three-member etcd cluster, a vassal-router per host with a [cluster]
# table, and vassals of two projects with `address = "auto"`:
#
#   1. shop on host b serves HTTP; shop on host a fetches from it across
#      hosts (passes: the same project);
#   2. rival on host c tries the same server (refused by host b's router:
#      its `peer = "same"` rule sees rival's project in its cache);
#   3. host c's router is killed: its block leaves the other routers'
#      views within the lease TTL;
#   4. etcd is stopped entirely: shop on host a still reaches shop on
#      host b (fail static).
#
# Ends with one line "cluster demo: PASS — ..." (exit 0) or
# "cluster demo: FAIL — ..." (exit 1). Cleans up after itself. Traffic goes
# only to addresses inside the namespaces it creates.
#
#   tests/cluster-demo.sh          (as root)
#   KEEP_WORK=1 tests/cluster-demo.sh    # keep the logs (routers, etcd, vassals)
#   BIN=target/debug tests/cluster-demo.sh   # binaries already built, no build
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/cluster-demo.sh: run as root (namespaces, tun devices, nftables, cgroups)" >&2
    exit 1
fi
for tool in ip nft python3 etcd etcdctl unshare nsenter protoc; do
    if ! command -v "$tool" >/dev/null; then
        echo "installing the tools the demo drives (iproute2 nftables python3 etcd-server etcd-client util-linux protobuf-compiler)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq iproute2 nftables python3 etcd-server etcd-client util-linux protobuf-compiler >/dev/null
        break
    fi
done

if [ -n "${BIN:-}" ]; then
    echo "== using the binaries in $BIN"   # tests/run-all.sh: its debug build
else
    echo "== building"
    cargo build --release --bins --quiet
    BIN=$PWD/target/release
fi
WORK=$(mktemp -d /tmp/vassal-cluster-demo.XXXXXX)
chmod 755 "$WORK"
TTL=5
UNDERLAY=vcd-underlay
HOSTS=(a b c)
PIDS=()     # every process started, killed in reverse order on exit
FAILED=()   # what did not hold
took=-      # seconds until a dead host left the other views

fail() { echo "   FAIL: $*"; FAILED+=("$*"); }
cleanup() {
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for h in "${HOSTS[@]}"; do ip netns del "vcd-$h" 2>/dev/null; done
    ip netns del "$UNDERLAY" 2>/dev/null
    for mp in $(cgroup_mounts); do
        for h in "${HOSTS[@]}"; do
            [ -d "$mp/vassal-demo-$h" ] && find "$mp/vassal-demo-$h" -depth -type d -exec rmdir {} + 2>/dev/null
        done
    done
    if [ -n "${KEEP_WORK:-}" ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# Every cgroup hierarchy's mount point (v1 and v2), from mountinfo.
cgroup_mounts() {
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^cgroup2?$/ && $4 == "/") print $5; break } }' \
        /proc/self/mountinfo
}
# `vassal-router cluster` of host $1, one field: $2 is a python expression on v.
view() {
    "$BIN/vassal-router" cluster --socket "$WORK/host-$1/router.sock" 2>/dev/null |
        python3 -c "import json,sys; v=json.load(sys.stdin); print($2)" 2>/dev/null || true
}
# Waits up to $1 seconds for the condition $2 (a shell expression) to hold.
wait_for() {
    local deadline=$((SECONDS + $1))
    until eval "$2"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

echo "== 1. the underlay: bridge br0 in $UNDERLAY; hosts a, b, c at 198.51.100.1-3"
ip netns add "$UNDERLAY"
ip -n "$UNDERLAY" link add br0 type bridge
ip -n "$UNDERLAY" link set br0 up
for k in 1 2 3; do
    h=${HOSTS[k - 1]}
    ip netns add "vcd-$h"
    ip -n "vcd-$h" link set lo up
    ip link add eth0 netns "vcd-$h" type veth peer name "port-$h" netns "$UNDERLAY"
    ip -n "$UNDERLAY" link set "port-$h" master br0 up
    ip -n "vcd-$h" addr add "198.51.100.$k/24" dev eth0
    ip -n "vcd-$h" link set eth0 up
done

echo "== 2. etcd: one member per host, client port 2379, peer port 2380"
ENDPOINTS=http://198.51.100.1:2379,http://198.51.100.2:2379,http://198.51.100.3:2379
INITIAL=a=http://198.51.100.1:2380,b=http://198.51.100.2:2380,c=http://198.51.100.3:2380
ETCD_PIDS=()
for k in 1 2 3; do
    h=${HOSTS[k - 1]}
    ip netns exec "vcd-$h" etcd --name "$h" --data-dir "$WORK/etcd-$h" \
        --listen-client-urls "http://198.51.100.$k:2379" \
        --advertise-client-urls "http://198.51.100.$k:2379" \
        --listen-peer-urls "http://198.51.100.$k:2380" \
        --initial-advertise-peer-urls "http://198.51.100.$k:2380" \
        --initial-cluster "$INITIAL" --initial-cluster-state new \
        --initial-cluster-token vassal-demo >"$WORK/etcd-$h.log" 2>&1 &
    PIDS+=($!)
    ETCD_PIDS+=($!)
done
etcd_healthy() {
    ip netns exec vcd-a env ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" \
        --dial-timeout=2s endpoint health >/dev/null 2>&1
}
wait_for 30 etcd_healthy || { echo "etcd did not start:"; tail -5 "$WORK/etcd-a.log"; exit 1; }
ip netns exec vcd-a env ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" endpoint health 2>&1 | sed 's/^/   /'

echo "== 3. the rules (the same file on every host)"
cat >"$WORK/rules.toml" <<'EOF'
[default]
out = "allow"
in = "deny"
established = true

[[out]]              # no underlay address (the router itself drops etcd's and the nodes')
action = "deny"
dst = "198.51.100.0/24"

[[out]]              # a vassal may try any known vassal, on any host ...
action = "allow"
peer = "vassal"

[[out]]              # ... and nothing else of the private ranges
action = "deny"
dst = "10.0.0.0/8"

[[in]]               # only its own project gets in, whichever host it is on
action = "allow"
peer = "same"
EOF
"$BIN/vassal-router" check-rules "$WORK/rules.toml" | sed 's/^/   /'

echo "== 4. a router per host: [cluster] with direct routes, lease TTL ${TTL} s"
for k in 1 2 3; do
    h=${HOSTS[k - 1]}
    mkdir -p "$WORK/host-$h/state"
    cat >"$WORK/host-$h/router.toml" <<EOF
device = "vr0"
control_socket = "$WORK/host-$h/router.sock"
state_dir = "$WORK/host-$h/state"
rules = "$WORK/rules.toml"
[nat]
masquerade = false
[cluster]
etcd = ["http://198.51.100.1:2379", "http://198.51.100.2:2379", "http://198.51.100.3:2379"]
node = "host-$h"
underlay = "198.51.100.$k"
prefix = "10.240.0.0/16"
block = 24
mode = "direct"
lease_ttl = $TTL
state_file = "$WORK/host-$h/cluster-state.json"
EOF
    "$BIN/vassal-router" check-config "$WORK/host-$h/router.toml" >/dev/null
    ip netns exec "vcd-$h" "$BIN/vassal-router" run --config "$WORK/host-$h/router.toml" \
        2>"$WORK/host-$h/router.log" &
    PIDS+=($!)
    eval "ROUTER_$h=$!"
done
for h in "${HOSTS[@]}"; do
    wait_for 20 '[ "$(view "$h" "len(v[\"blocks\"])")" = 3 ]' ||
        { echo "router on host $h did not join:"; tail -5 "$WORK/host-$h/router.log"; exit 1; }
    echo "   host $h: node $(view "$h" 'v["node"]'), block $(view "$h" 'v["block"]'), sees $(view "$h" 'len(v["blocks"])') blocks"
done
echo "   host a's kernel routes to the other blocks:"
ip -n vcd-a route show proto 118 | sed 's/^/     /'

# vassal-launch runs on a host too: in its network namespace and, as one
# machine plays three hosts, with a /run/vassal and a cgroup subtree of the
# host's own (vassal names are unique per machine, and shop runs on two).
cat >"$WORK/on-host" <<'EOF'
#!/usr/bin/env bash
# on-host HOST CMD...: runs CMD as if on HOST.
set -euo pipefail
h=$1
shift
if [ -z "${ON_HOST:-}" ]; then
    exec env ON_HOST=1 nsenter --net="/run/netns/vcd-$h" \
        unshare --mount --propagation private -- "$0" "$h" "$@"
fi
mount -t tmpfs -o mode=0755 "vassal-$h" /run/vassal
for mp in $(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^cgroup2?$/ && $4 == "/") print $5; break } }' /proc/self/mountinfo); do
    mkdir -p "$mp/vassal-demo-$h"
    mount --bind "$mp/vassal-demo-$h" "$mp"
done
exec "$@"
EOF
chmod 755 "$WORK/on-host"
mkdir -p /run/vassal
launch_on() { # always in a subshell (&, $(...)): becomes vassal-launch
    local h=$1
    shift
    exec "$WORK/on-host" "$h" "$BIN/vassal-launch" run --uid 65534 --gid 65534 \
        --router "$WORK/host-$h/router.sock" --address auto "$@"
}

echo "== 5. vassal shop on host b (address auto): a web server on :8000"
launch_on b --name shop -- /usr/bin/python3 -u -c "
import http.server, socketserver
class Shop(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'hello from shop on host b'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = socketserver.ThreadingTCPServer(('', 8000), Shop)
print('listening on :8000')
server.serve_forever()
" >"$WORK/shop-b.log" 2>&1 &
PIDS+=($!)
# Its address, as host a's cache knows it (registered in etcd by host b).
shop_b_addr() { view a '" ".join(i["address"] for i in v["identities"] if i["node"] == "host-b")'; }
wait_for 20 '[ -n "$(shop_b_addr)" ] && grep -q listening "$WORK/shop-b.log"' ||
    { echo "shop on host b did not attach:"; tail -5 "$WORK/shop-b.log"; exit 1; }
SHOP_B=$(shop_b_addr)
echo "   shop on host b got $SHOP_B; host a's cache: $(view a 'v["identities"]')"

echo "== 6. vassal shop on host a (address auto): fetch http://$SHOP_B:8000/ every half second"
launch_on a --name shop -- /usr/bin/python3 -u -c "
import time, urllib.request
while True:
    try:
        urllib.request.urlopen('http://$SHOP_B:8000/', timeout=2).read()
        print(time.time(), 'ok', flush=True)
    except Exception as e:
        print(time.time(), 'fail', type(e).__name__, flush=True)
    time.sleep(0.5)
" >"$WORK/shop-a.log" 2>&1 &
PIDS+=($!)
oks() { grep -c ' ok$' "$WORK/shop-a.log" 2>/dev/null || true; }
if wait_for 20 '[ "$(oks)" -ge 2 ]'; then
    echo "   shop@a -> shop@b: $(oks) requests answered, $(grep -c ' fail ' "$WORK/shop-a.log" || true) failed; shop@b's server saw:"
    grep -o '^[0-9.]* .*"GET [^"]*"' "$WORK/shop-b.log" | head -2 | sed 's/^/     /'
else
    fail "shop on host a could not reach shop on host b"
    tail -3 "$WORK/shop-a.log"
fi

echo "== 7. vassal rival on host c (address auto): try shop@b"
drops() { ip netns exec vcd-b python3 -c "
import urllib.request
for l in urllib.request.urlopen('http://127.0.0.1:9810/metrics', timeout=2).read().decode().splitlines():
    if l.startswith('vassal_dropped_packets_total') and 'reason=\"firewall\"' in l and 'project=\"shop\"' in l:
        print(l.rsplit(' ', 1)[1]); break
else:
    print(0)"; }
before=$(drops)
rival=$(launch_on c --name rival -- /usr/bin/python3 -c "
import urllib.request
try:
    urllib.request.urlopen('http://$SHOP_B:8000/', timeout=3)
    print('reached')
except Exception as e:
    print('refused:', getattr(e, 'reason', e))
" 2>"$WORK/rival.log" || true)
after=$(drops)
echo "   rival@c -> shop@b: $rival; host b's router dropped $((${after%.*} - ${before%.*})) of its packets to shop (firewall)"
[[ $rival == refused* ]] || fail "rival on host c reached shop on host b"
[ "${after%.*}" -gt "${before%.*}" ] || fail "host b's router did not count rival's packets as firewall drops"

echo "== 8. host c dies (its router killed with SIGKILL): gone from a and b once its lease expires (TTL ${TTL} s)"
kill -KILL "$ROUTER_c"
t0=$(date +%s.%N)
wait "$ROUTER_c" 2>/dev/null || true
gone() { [ "$(view a 'len(v["blocks"])')" = 2 ] && [ "$(view b 'len(v["blocks"])')" = 2 ]; }
if wait_for $((TTL + 5)) gone; then
    took=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
    echo "   host c left the views of a and b after $took s; host a's routes now:"
    ip -n vcd-a route show proto 118 | sed 's/^/     /'
    # etcd checks lease expiry every 500 ms, the watch delivers, the demo
    # polls (and CI machines are loaded): 2 s of slack.
    python3 -c "import sys; sys.exit(0 if $took <= $TTL + 2 else 1)" || fail "host c left after $took s, lease TTL $TTL s"
else
    fail "host c still in the views $((TTL + 5)) s after its router died"
fi

echo "== 9. etcd stops entirely: what runs keeps running (fail static)"
for p in "${ETCD_PIDS[@]}"; do kill -TERM "$p"; done
for p in "${ETCD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
if wait_for 20 '[ "$(view a "v[\"etcd_up\"]")" = False ]'; then
    n=$(oks)
    if wait_for 10 '[ "$(oks)" -ge $((n + 3)) ]'; then
        echo "   etcd is down (host a: etcd_up $(view a 'v["etcd_up"]')); shop@a -> shop@b still answered: $(($(oks) - n)) new requests (new connections each)"
    else
        fail "shop@a could not reach shop@b with etcd down"
    fi
else
    fail "host a's router did not notice etcd went away"
fi

echo "== done; cleaning up"
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "cluster demo: PASS — 3 hosts, 3 etcd members: shop reached shop across hosts, rival was refused by host b's peer rule, a dead host left every view ${took} s after its death (lease TTL ${TTL} s), traffic kept flowing with etcd stopped"
else
    echo "cluster demo: FAIL — $(IFS=';'; echo "${FAILED[*]}")"
    exit 1
fi
