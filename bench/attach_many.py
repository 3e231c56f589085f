#!/usr/bin/env python3
"""Attach N vassals to a running vassal-router and prove each passes traffic.

Each vassal is a forked child in a network namespace of its own (unshare),
holding a tun device attached with the attach protocol (v1) and one ping to
the gateway. Prints one JSON object: attach times, how many pinged, the
router's RSS before and after. Used by bench/run.sh (scale figures).

usage: attach_many.py N ROUTER_SOCKET ROUTER_PID GATEWAY(/16 net a.b.0.1)
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
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def vassal(i, sock_path, gateway, report_w, go_r):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        os._exit(2)
    a, b = gateway.split(".")[:2]
    addr = f"{a}.{b}.{(i + 2) // 256}.{(i + 2) % 256}"
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"vt0", IFF_TUN | IFF_NO_PI))
    with open("/proc/sys/net/ipv6/conf/all/disable_ipv6", "w") as f:
        f.write("1")
    for c in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", addr + "/16", "dev", "vt0"],
              ["ip", "link", "set", "vt0", "up"], ["ip", "route", "add", "default", "dev", "vt0"]):
        subprocess.check_call(c)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sock_path)
    hello = json.dumps({"type": "hello", "version": 1, "project": f"scale{i}", "ipv4": addr}).encode()
    start = time.perf_counter()
    s.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    answer = s.recv(4096)
    took = time.perf_counter() - start
    ok = b"accepted" in answer
    pinged = ok and subprocess.call(["ping", "-n", "-q", "-c", "1", "-W", "2", gateway],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    os.write(report_w, json.dumps({"i": i, "ok": ok, "attach_s": took, "ping": pinged}).encode() + b"\n")
    os.read(go_r, 1)  # hold the attachment until the parent is done measuring
    os._exit(0)


def main():
    n, sock_path, router_pid, gateway = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rss_before = rss_kib(router_pid)
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
                vassal(i, sock_path, gateway, report_w, go_r)
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
    rss_after = rss_kib(router_pid)
    os.close(go_w)  # children exit: every vassal detaches
    for pid in children:
        os.waitpid(pid, 0)
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
    }))


if __name__ == "__main__":
    main()
