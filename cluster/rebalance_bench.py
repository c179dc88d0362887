#!/usr/bin/env python3
"""Rebalancing figures for docs/benchmarks.md ("Sharding"): how many targets move and
the longest hole any target's graph gets, per event type.

Starts a synthetic fleet (../shared/bench/targets.py, or --fleet-cmd) and 3 real
`shoal run` processes on loopback with the default cluster settings, then per run:
  - join:  a 4th node starts; waits until the assignment settles (every target owned
           once, nothing handing off);
  - leave: the 4th node leaves gracefully (`shoal cluster leave`);
  - kill:  kill -9 of one of the first three nodes; waits until its targets are
           scraped by the survivors, then restarts it (same data dir) so that the
           samples it stored before the kill count.
For each event it reports the fraction of targets whose owner changed and the longest
gap between consecutive `up` samples of any target, read from every node's own store
(`local=1`) and united, over a window from two intervals before the event to the end;
after the leave also over the whole history since the join (the leaver's share of it
must have moved to the three that stay).
Only the standard library is used.

Usage: cluster/rebalance_bench.py [--bin target/release/shoal] [--runs 3]
       [--targets 60] [--series-per-target 50] [--interval 5]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from benchutil import get, wait

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port_range(n):
    """First of n consecutive free loopback ports."""
    base = 30000 + (os.getpid() % 500) * 40
    while True:
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            base += n + 1
        finally:
            for s in socks:
                s.close()




class Bench:
    def __init__(self, a):
        self.a = a
        self.dir = tempfile.mkdtemp(prefix="shoal-rebalance-")
        ports = free_port_range(a.targets + 8)
        self.fleet_base = ports + 8
        self.addrs = [f"127.0.0.1:{ports + i}" for i in range(4)]
        cmd = a.fleet_cmd or [sys.executable, a.fleet, "--targets", str(a.targets),
                              "--series-per-target", str(a.series_per_target),
                              "--base-port", str(self.fleet_base)]
        self.fleet = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.cfg = os.path.join(self.dir, "prometheus.yml")
        targets = ", ".join(f"'127.0.0.1:{self.fleet_base + i}'" for i in range(a.targets))
        with open(self.cfg, "w") as f:
            f.write(f"global:\n  scrape_interval: {a.interval}s\n"
                    f"scrape_configs:\n  - job_name: fleet\n"
                    f"    static_configs:\n      - targets: [{targets}]\n")
        self.procs = {}

    def spawn(self, addr):
        log = open(os.path.join(self.dir, addr.replace(":", "_") + ".log"), "w")
        self.procs[addr] = subprocess.Popen(
            [self.a.bin, "run", "--config", self.cfg,
             "--data-dir", os.path.join(self.dir, addr.replace(":", "_")),
             "--listen", addr, "--cluster.seeds", ",".join(self.addrs[:3])],
            stdout=subprocess.DEVNULL, stderr=log)

    def owners(self, live):
        """instance -> owning node, when every target is owned exactly once and nothing
        is being handed off; else None."""
        owner = {}
        for addr in live:
            d = get(addr, "/api/v1/targets")
            if d is None:
                return None
            for t in d["activeTargets"]:
                if t.get("handingOff"):
                    return None
                inst = t["labels"]["instance"]
                if inst in owner:
                    return None
                owner[inst] = addr
        return owner if len(owner) == self.a.targets else None

    def settled(self, live, n_up):
        def f():
            vs = [get(a, "/api/v1/cluster") for a in live]
            if any(v is None or sum(m["state"] == "up" for m in v["members"]) != n_up
                   or v["assignmentViewIndex"] != v["viewIndex"]
                   or v["viewIndex"] != vs[0]["viewIndex"] for v in vs):
                return None
            return self.owners(live)
        return wait(f"{n_up} nodes settled", 120, f)

    def longest_gap(self, live, since):
        """Longest gap between consecutive `up` samples of any target since `since`,
        united over the nodes' own stores."""
        span = int(time.time() - since) + 1
        q = urllib.parse.quote(f"up[{span}s]")
        times = {}
        for addr in live:
            d = get(addr, f"/api/v1/query?local=1&query={q}", timeout=30)
            for s in (d or {}).get("result", []):
                inst = s["metric"]["instance"]
                times.setdefault(inst, set()).update(float(t) for t, _ in s["values"])
        worst = 0.0
        for inst, ts in times.items():
            ts = sorted(t for t in ts if t >= since)
            worst = max([worst] + [b - a for a, b in zip(ts, ts[1:])])
        return worst, len(times)

    def stop(self):
        for p in list(self.procs.values()) + [self.fleet]:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def moved(before, after):
    return sum(before[i] != after[i] for i in before) / len(before)


def one_run(a):
    b = Bench(a)
    iv = a.interval
    try:
        first3 = b.addrs[:3]
        for addr in first3:
            b.spawn(addr)
        before = b.settled(first3, 3)
        time.sleep(3 * iv)  # some history before the first event

        t0 = t_join = time.time()
        b.spawn(b.addrs[3])
        after_join = b.settled(b.addrs, 4)
        time.sleep(2 * iv)
        join_gap, n = b.longest_gap(b.addrs, t0 - 2 * iv)
        join_moved = moved(before, after_join)
        join_to_new = all(after_join[i] == b.addrs[3] for i in before if before[i] != after_join[i])

        t0 = time.time()
        subprocess.run([a.bin, "cluster", "leave", "--node", b.addrs[3]], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b.procs[b.addrs[3]].wait(60)
        after_leave = b.settled(first3, 3)
        time.sleep(2 * iv)
        leave_gap, _ = b.longest_gap(first3, t0 - 2 * iv)
        # The whole history since the join, from the three that stay: what the leaver
        # scraped must be on them (its drain), or this is as long as it owned targets.
        history_gap, _ = b.longest_gap(first3, t_join - 2 * iv)
        leave_moved = moved(after_join, after_leave)
        leave_from_leaver = all(after_join[i] == b.addrs[3]
                                for i in after_join if after_join[i] != after_leave[i])

        victim = first3[1]
        t0 = time.time()
        b.procs[victim].send_signal(signal.SIGKILL)
        b.procs[victim].wait()
        survivors = [first3[0], first3[2]]
        after_kill = b.settled(survivors, 2)
        time.sleep(2 * iv)
        # The victim's samples from before the kill are in its own store: restart it
        # (same data dir, same id) so they count, then measure.
        b.spawn(victim)
        b.settled(first3, 3)
        kill_gap, _ = b.longest_gap(first3, t0 - 2 * iv)
        kill_moved = moved(after_leave, after_kill)
        return {
            "targets_seen": n,
            "join_moved": join_moved, "join_only_to_newcomer": join_to_new, "join_gap": join_gap,
            "leave_moved": leave_moved, "leave_only_from_leaver": leave_from_leaver,
            "leave_gap": leave_gap, "history_gap": history_gap,
            "kill_moved": kill_moved, "kill_gap": kill_gap,
        }
    finally:
        b.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/shoal")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", type=int, default=60)
    ap.add_argument("--series-per-target", type=int, default=50)
    ap.add_argument("--interval", type=int, default=5, help="scrape interval, seconds")
    ap.add_argument("--fleet", default=os.path.join(HERE, "..", "..", "shared", "bench", "targets.py"))
    ap.add_argument("--fleet-cmd", nargs="+", help="a fleet command instead of targets.py")
    a = ap.parse_args()
    rows = []
    for i in range(a.runs):
        r = one_run(a)
        rows.append(r)
        print(f"run {i + 1}: " + json.dumps(r), flush=True)
    iv = a.interval
    print(f"{a.runs} runs, {a.targets} targets, interval {iv}s, 3 nodes (+1 joining):")
    for ev in ("join", "leave", "kill"):
        m = statistics.median(r[f"{ev}_moved"] for r in rows)
        g = max(r[f"{ev}_gap"] for r in rows)
        print(f"  {ev:5}: moved fraction median {m:.3f}; longest gap {g:.2f} s = "
              f"{g / iv:.2f} intervals (max over runs)")
    g = max(r["history_gap"] for r in rows)
    print(f"  history since the join, after the leave: longest gap {g:.2f} s = "
          f"{g / iv:.2f} intervals (max over runs)")
    print("  join moved only to the newcomer in every run:",
          all(r["join_only_to_newcomer"] for r in rows))
    print("  leave moved only the leaver's targets in every run:",
          all(r["leave_only_from_leaver"] for r in rows))


if __name__ == "__main__":
    main()
