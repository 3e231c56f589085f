# Shared by bench/run.sh and bench/quick.sh (source it; bash).
#
# bench_router WORK DEV GATEWAY RULES METRICS_PORT
#   Writes WORK/router.toml (device DEV with GATEWAY, e.g. 10.251.3.1/24,
#   the rule file RULES, no NAT), starts BIN/vassal-router at nice -10 (as
#   its systemd unit runs it), sets ROUTER to its pid and returns once its
#   control socket accepts; exits the script if it never does.
bench_router() {
    local work=$1 dev=$2 gateway=$3 rules=$4 port=$5
    cat >"$work/router.toml" <<TOML
device = "$dev"
gateway = "$gateway"
control_socket = "$work/router.sock"
metrics_listen = "127.0.0.1:$port"
rules = "$rules"
[nat]
masquerade = false
TOML
    nice -n -10 "$BIN/vassal-router" run --config "$work/router.toml" 2>>"$work/router.log" &
    ROUTER=$!
    for _ in $(seq 100); do
        [ -S "$work/router.sock" ] &&
            python3 -c "import socket;s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET);s.connect('$work/router.sock')" 2>/dev/null &&
            return
        sleep 0.1
    done
    echo "router did not start: $(cat "$work/router.log")" >&2
    exit 1
}
