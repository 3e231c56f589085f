#!/usr/bin/env python3
"""Attach N vassals to a running vassal-router and prove each passes traffic.

Each vassal is a forked child in a network namespace of its own (unshare),
holding a tun device (with a vnet header, as vassal-launch opens it)
attached with the attach protocol (v1) and one ping to the gateway. Prints
one JSON object: attach times, how many pinged, the router's RSS before and
after. Used by bench/run.sh (scale and aggregate figures).

With --iperf SECS every vassal then sends to the host at once (iperf3, one
server per vassal on the gateway) and the sum of what the servers received
is reported as aggregate_mbps. With --veth the vassals are plain network
namespaces joined to the host by a veth pair each (the kernel's ceiling for
the same figure; ROUTER_SOCKET and ROUTER_PID are then ignored).

usage: attach_many.py N ROUTER_SOCKET ROUTER_PID GATEWAY(/16 net a.b.0.1) [--iperf SECS] [--veth]
"""
import ctypes
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
IPERF_PORT = 15201


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(*cmd):
    subprocess.check_call(cmd, stdout=subprocess.DEVNULL)


def veth_gateway(i):
    """The host end of vassal i's veth pair: one /30 each in 10.253.0.0/16."""
    return f"10.253.{i // 64}.{(i % 64) * 4 + 1}"


def veth_pairs(n):
    """Namespaces vbagg0.. each joined to the host by a veth pair."""
    for i in range(n):
        gw = veth_gateway(i)
        addr = gw[: gw.rindex(".") + 1] + str(int(gw.rsplit(".", 1)[1]) + 1)
        ns = f"vbagg{i}"
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", ns, "type", "veth", "peer", "name", "vt0", "netns", ns)
        run("ip", "addr", "add", gw + "/30", "dev", ns)
        run("ip", "link", "set", ns, "up")
        for c in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", addr + "/30", "dev", "vt0"],
                  ["ip", "link", "set", "vt0", "up"], ["ip", "route", "add", "default", "via", gw]):
            run("ip", "netns", "exec", ns, *c)


def vassal(i, sock_path, gateway, report_w, go_r, iperf_secs, veth):
    libc = ctypes.CDLL(None, use_errno=True)
    start = time.perf_counter()
    if veth:
        # The parent built this namespace and its veth pair (veth_pairs).
        with open(f"/run/netns/vbagg{i}") as ns:
            if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                os._exit(2)
        gateway = veth_gateway(i)
        ok = True
    else:
        if libc.unshare(CLONE_NEWNET) != 0:
            os._exit(2)
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6", "w") as f:
            f.write("1")
        run("ip", "link", "set", "lo", "up")
        a, b = gateway.split(".")[:2]
        addr = f"{a}.{b}.{(i + 2) // 256}.{(i + 2) % 256}"
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"vt0", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        for c in (["ip", "addr", "add", addr + "/16", "dev", "vt0"],
                  ["ip", "link", "set", "vt0", "up"], ["ip", "route", "add", "default", "dev", "vt0"]):
            run(*c)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(sock_path)
        hello = json.dumps({"type": "hello", "version": 1, "project": f"scale{i}", "ipv4": addr}).encode()
        start = time.perf_counter()
        s.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        answer = s.recv(4096)
        ok = b"accepted" in answer
    took = time.perf_counter() - start
    pinged = ok and subprocess.call(["ping", "-n", "-q", "-c", "1", "-W", "2", gateway],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    os.write(report_w, json.dumps({"i": i, "ok": ok, "attach_s": took, "ping": pinged}).encode() + b"\n")
    if iperf_secs:
        os.read(go_r, 1)  # all start together
        out = subprocess.run(["iperf3", "-c", gateway, "-p", str(IPERF_PORT + i), "-t", str(iperf_secs), "-J"],
                             capture_output=True, text=True).stdout
        try:
            bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            bps = 0
        os.write(report_w, json.dumps({"i": i, "bps": bps}).encode() + b"\n")
    os.read(go_r, 1)  # hold the attachment until the parent is done measuring
    os._exit(0)


def main():
    n, sock_path, router_pid, gateway = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    iperf_secs = int(sys.argv[sys.argv.index("--iperf") + 1]) if "--iperf" in sys.argv else 0
    veth = "--veth" in sys.argv
    rss_before = 0 if veth else rss_kib(router_pid)
    if veth:
        veth_pairs(n)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    children = []
    t0 = time.perf_counter()
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            os.close(go_w)
            try:
                vassal(i, sock_path, gateway, report_w, go_r, iperf_secs, veth)
            finally:
                os._exit(1)
        children.append(pid)
    os.close(report_w)
    os.close(go_r)
    results = []
    with os.fdopen(report_r) as reports:
        for line in reports:
            results.append(json.loads(line))
            if len(results) == n:
                break
        elapsed = time.perf_counter() - t0
        time.sleep(1)
        rss_after = 0 if veth else rss_kib(router_pid)
        aggregate = None
        if iperf_secs:
            servers = []
            for i in range(n):
                bind = veth_gateway(i) if veth else gateway
                servers.append(subprocess.Popen(["iperf3", "-s", "-1", "-B", bind, "-p", str(IPERF_PORT + i)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1)
            os.write(go_w, b"g" * n)
            done = []
            for line in reports:
                done.append(json.loads(line))
                if len(done) == n:
                    break
            for p in servers:
                p.kill()
                p.wait()
            aggregate = sum(d["bps"] for d in done) / 1e6
    os.close(go_w)  # children exit: every vassal detaches
    for pid in children:
        os.waitpid(pid, 0)
    if veth:
        for i in range(n):
            subprocess.call(["ip", "link", "del", f"vbagg{i}"], stderr=subprocess.DEVNULL)
            subprocess.call(["ip", "netns", "del", f"vbagg{i}"], stderr=subprocess.DEVNULL)
    attach = sorted(r["attach_s"] for r in results if r["ok"])
    print(json.dumps({
        "vassals": n,
        "attached": sum(r["ok"] for r in results),
        "pinged": sum(r["ping"] for r in results),
        "attach_ms_median": 1000 * attach[len(attach) // 2] if attach else None,
        "attach_ms_p99": 1000 * attach[min(len(attach) - 1, int(len(attach) * 0.99))] if attach else None,
        "setup_s": elapsed,
        "router_rss_kib_before": rss_before,
        "router_rss_kib_after": rss_after,
        "router_kib_per_vassal": (rss_after - rss_before) / n,
        "aggregate_mbps": aggregate,
    }))


if __name__ == "__main__":
    main()
