#!/usr/bin/env python3
"""Cluster failover and join figures for docs/benchmarks.md ("Cluster").

Starts real `shoal run` processes on loopback with the default cluster settings
(heartbeat 500 ms, election timeout 1.5-3 s, down-after 10 s) and measures, per run:
  - kill -9 of the leader -> every survivor reports the same new leader;
  - kill -9 of the leader -> every survivor reports the dead node "down";
  - start of a fresh 4th process -> every node lists it as an up member.
Prints each run and the medians. Only the standard library is used.

Usage: cluster/failover_bench.py [--bin target/release/shoal] [--runs 5]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

from benchutil import wait as poll


def wait(what, timeout, f, step=0.02):
    """Fine-grained polling: the figures are times to a condition."""
    return poll(what, timeout, f, step)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def view(addr):
    try:
        with urllib.request.urlopen(f"http://{addr}/api/v1/cluster", timeout=2) as r:
            return json.load(r)["data"]
    except Exception:
        return None



class Cluster:
    def __init__(self, binary, n):
        self.bin = binary
        self.dir = tempfile.mkdtemp(prefix="shoal-bench-")
        self.cfg = os.path.join(self.dir, "prometheus.yml")
        with open(self.cfg, "w") as f:
            f.write("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        self.addrs = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        self.seeds = ",".join(self.addrs)
        self.procs = {}
        for a in self.addrs:
            self.spawn(a)

    def spawn(self, addr):
        log = open(os.path.join(self.dir, addr.replace(":", "_") + ".log"), "w")
        self.procs[addr] = subprocess.Popen(
            [self.bin, "run", "--config", self.cfg,
             "--data-dir", os.path.join(self.dir, addr.replace(":", "_")),
             "--listen", addr, "--cluster.seeds", self.seeds],
            stdout=subprocess.DEVNULL, stderr=log)

    def agreed(self, addrs, n_up, n_voters):
        vs = [view(a) for a in addrs]
        if any(v is None or v["leaderId"] is None for v in vs):
            return None
        key = lambda v: (v["leaderId"], v["viewIndex"],
                         sorted((m["id"], m["role"], m["state"]) for m in v["members"]))
        if any(key(v) != key(vs[0]) for v in vs):
            return None
        ms = vs[0]["members"]
        if sum(m["state"] == "up" for m in ms) != n_up or \
                sum(m["role"] == "voter" for m in ms) != n_voters:
            return None
        return vs[0]

    def stop(self):
        for p in self.procs.values():
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_run(binary):
    c = Cluster(binary, 3)
    try:
        v = wait("3 voters", 60, lambda: c.agreed(c.addrs, 3, 3), step=0.1)
        # Join: a fresh node started now, until every node lists it as up.
        new = f"127.0.0.1:{free_port()}"
        t0 = time.monotonic()
        c.spawn(new)
        wait("join", 30, lambda: c.agreed(c.addrs + [new], 4, 3))
        join = time.monotonic() - t0
        # Failover: kill -9 the leader.
        v = wait("agreement", 30, lambda: c.agreed(c.addrs + [new], 4, 3))
        leader_id, leader = v["leaderId"], v["leaderAddress"]
        rest = [a for a in c.addrs + [new] if a != leader]
        c.procs[leader].send_signal(signal.SIGKILL)
        c.procs[leader].wait()
        t0 = time.monotonic()

        def new_leader():
            vs = [view(a) for a in rest]
            ls = {v and v["leaderId"] for v in vs}
            return True if len(ls) == 1 and None not in ls and leader_id not in ls else None

        wait("new leader", 30, new_leader)
        to_leader = time.monotonic() - t0

        def down():
            vs = [view(a) for a in rest]
            ok = all(v and any(m["id"] == leader_id and m["state"] == "down"
                               for m in v["members"]) for v in vs)
            return True if ok else None

        wait("down", 60, down)
        to_down = time.monotonic() - t0
        return to_leader, to_down, join
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/shoal")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    rows = []
    for i in range(a.runs):
        r = one_run(a.bin)
        rows.append(r)
        print(f"run {i + 1}: new leader {r[0]:.2f} s, down committed {r[1]:.2f} s, "
              f"join {r[2]:.2f} s", flush=True)
    med = [statistics.median(x) for x in zip(*rows)]
    print(f"median of {a.runs}: new leader {med[0]:.2f} s, down committed {med[1]:.2f} s, "
          f"join {med[2]:.2f} s")


if __name__ == "__main__":
    main()
