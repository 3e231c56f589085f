#!/usr/bin/env python3
"""Attach N vassals across a cluster's routers and time how long each takes
to reach every router's identity cache. Used by bench/cluster-churn.sh.

Each vassal is one real attach, as vassal-launch makes it with
`address = "auto"`: a `lease` request (protocol version 2) for its project
and name, then a `hello` carrying a tun descriptor (vnet header, up), on a
connection kept open (the attachment). Vassal i goes to router i mod R; the
routers are attached to at once (one thread each), every vassal as fast as
the previous one was accepted: a burst of N attaches; or, with RATE=R in
the environment, vassal i at i/R seconds (R attaches a second in all).

One poller process per router asks it for its cluster view (`cluster`
request) in a loop and notes when each address first appears; an address
seen in poll k appeared between poll k-1 and poll k, and the time noted is
the end of poll k (an upper bound; the mean poll period is printed as the
resolution). Per vassal, the time to "known everywhere" runs from the
moment its hello was sent to the last router's first sighting.

The tun devices live in a network namespace of this process's own
(unshared after the pollers are forked), gone when it exits.

usage: [RATE=R] cluster_churn.py N SOCKET [SOCKET...]
Prints one JSON object.
"""
import ctypes
import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
PROJECTS = 10
TIMEOUT_S = 300
# Between two polls of one router: leaves the two cores to the routers and
# etcd; the resolution is this plus one poll (printed as poll_ms).
POLL_PAUSE_S = 0.01


def request(s, msg):
    """One request, every answer datagram until `more` is false."""
    s.send(json.dumps(msg).encode())
    out = []
    while True:
        d = json.loads(s.recv(65536))
        out.append(d)
        if not d.get("more"):
            return out


def poller(sock_path, n, out_path):
    seen = {}
    polls, t_start = 0, time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sock_path)
    target_file = os.path.join(os.path.dirname(out_path), "attached")
    while len(seen) < n and time.monotonic() - t_start < TIMEOUT_S:
        if os.path.exists(target_file):
            # Some attaches were refused: wait for the ones that were not.
            with open(target_file) as f:
                n = int(f.read() or n)
        try:
            parts = request(s, {"type": "cluster"})
        except (OSError, ValueError):
            # The router closes a connection after a while; open another.
            s.close()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(sock_path)
            continue
        now = time.monotonic()
        polls += 1
        time.sleep(POLL_PAUSE_S)
        for part in parts:
            for ident in part.get("identities", []):
                if ident.get("project", "").startswith("churn") and ident["address"] not in seen:
                    seen[ident["address"]] = now
    with open(out_path, "w") as f:
        json.dump({"seen": seen, "polls": polls, "span": time.monotonic() - t_start}, f)


def make_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
    return fd


def attacher(sock_path, indices, sent, refused, keep, t_begin, rate):
    for i in indices:
        if rate:
            # Paced: vassal i attaches i/rate seconds after the start.
            delay = t_begin + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        project, name = f"churn{i % PROJECTS}", f"v{i}"
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(sock_path)
        t0 = time.monotonic()
        leased = request(c, {"type": "lease", "version": 2, "project": project, "name": name})[0]
        c.close()
        if leased.get("type") != "leased":
            refused.append((i, leased))
            continue
        fd = make_tun(f"vt{i}")
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(sock_path)
        hello = {"type": "hello", "version": 2, "project": project, "ipv4": leased["ipv4"]}
        t_hello = time.monotonic()
        c.sendmsg([json.dumps(hello).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        answer = json.loads(c.recv(65536))
        os.close(fd)
        t1 = time.monotonic()
        if answer.get("type") != "accepted":
            refused.append((i, answer))
            c.close()
            continue
        sent[leased["ipv4"]] = (t_hello, t1 - t0)
        keep.append(c)


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else None


def main():
    n, sockets = int(sys.argv[1]), sys.argv[2:]
    rate = float(os.environ.get("RATE", "0"))
    work = os.environ.get("WORK", "/tmp")
    pids, outs = [], []
    for k, sock_path in enumerate(sockets):
        out = os.path.join(work, f"poll{k}.json")
        outs.append(out)
        pid = os.fork()
        if pid == 0:
            try:
                poller(sock_path, n, out)
            finally:
                os._exit(0)
        pids.append(pid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        sys.exit("unshare(CLONE_NEWNET) failed")
    sent, refused, keep = {}, [], []
    threads = []
    t_begin = time.monotonic()
    for k, sock_path in enumerate(sockets):
        idx = [i for i in range(n) if i % len(sockets) == k]
        t = threading.Thread(target=attacher, args=(sock_path, idx, sent, refused, keep, t_begin, rate))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    t_attached = time.monotonic()
    with open(os.path.join(work, "attached.tmp"), "w") as f:
        f.write(str(len(sent)))
    os.rename(os.path.join(work, "attached.tmp"), os.path.join(work, "attached"))
    for pid in pids:
        os.waitpid(pid, 0)
    views = []
    for out in outs:
        with open(out) as f:
            views.append(json.load(f))
    known, missing = [], 0
    for addr, (t_hello, _) in sent.items():
        times = [v["seen"].get(addr) for v in views]
        if None in times:
            missing += 1
            continue
        known.append(max(times) - t_hello)
    last = max((max(v["seen"].values()) for v in views if v["seen"]), default=t_begin)
    attach = [a for (_, a) in sent.values()]
    poll_ms = [1000 * v["span"] / max(1, v["polls"]) for v in views]
    print(json.dumps({
        "vassals": n,
        "routers": len(sockets),
        "rate_per_s": rate or "burst",
        "attached": len(sent),
        "refused": len(refused),
        "first_refusal": refused[0] if refused else None,
        "not_known_everywhere": missing,
        "attach_ms_median": 1000 * pct(attach, 0.5) if attach else None,
        "attach_ms_worst": 1000 * max(attach) if attach else None,
        "burst_s": t_attached - t_begin,
        "known_everywhere_ms_median": 1000 * pct(known, 0.5) if known else None,
        "known_everywhere_ms_p99": 1000 * pct(known, 0.99) if known else None,
        "known_everywhere_ms_worst": 1000 * max(known) if known else None,
        "all_known_s": last - t_begin,
        "poll_ms": [round(p, 1) for p in poll_ms],
    }))
    for c in keep:
        c.close()


if __name__ == "__main__":
    main()
