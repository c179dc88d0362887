#!/usr/bin/env python3
"""Drain figures for docs/benchmarks.md ("Scaling down: the drain"): what a graceful
leave of a node holding hours of history costs.

1. A node L starts alone and scrapes the fleet (--targets x --series-per-target, every
   --interval s) from cluster/warp_fleet.py, whose samples carry timestamps on a fast
   clock: L gets --history seconds of history at one sample per --step s per series in
   about history/speed seconds. The samples are the ordinary scrape path's.
2. Two nodes join; the targets spread over the three (the history stays on L).
3. A baseline window of --baseline s; then L gets SIGTERM: it drains its history to the
   new owners and leaves. The script polls the drain's progress.
4. It reports: the drain's bytes, series and time (from L's log), GB moved per minute,
   the time from SIGTERM to exit, the receivers' per-scrape ingest latency
   (`scrape_duration_seconds`: fetch, parse and append of one scrape) in the baseline and
   during the drain, the longest gap of any target's `up` over the whole leave, and the
   history check: the same count of raw samples of one metric over the history, answered
   by the cluster before the leave (L holds it) and after (the receivers hold it).

Usage: cluster/drain_bench.py [--bin target/release/shoal] [--targets 100]
       [--series-per-target 2000] [--history 3600] [--step 15] [--interval 2]
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

from benchutil import get, wait
from rebalance_bench import free_port_range

HERE = os.path.dirname(os.path.abspath(__file__))


def q(addr, expr, at=None, local=False, timeout=120):
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    if local:
        params["local"] = "1"
    return get(addr, "/api/v1/query?" + urllib.parse.urlencode(params), timeout=timeout)


def scalar(addr, expr, at=None):
    d = q(addr, expr, at)
    if not d or not d["result"]:
        return None
    return float(d["result"][0]["value"][1])


def raw(addr, expr_range, at):
    """series (sorted label pairs) -> [(t, v)] of a range selector, cluster-wide."""
    d = q(addr, expr_range, at) or {"result": []}
    return {tuple(sorted(s["metric"].items())): [(float(t), v) for t, v in s["values"]]
            for s in d["result"]}


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Bench:
    def __init__(self, a):
        self.a = a
        self.dir = tempfile.mkdtemp(prefix="shoal-drain-")
        ports = free_port_range(a.targets + 8)
        self.fleet_base = ports + 8
        self.addrs = [f"127.0.0.1:{ports + i}" for i in range(3)]
        self.fleet_err = os.path.join(self.dir, "fleet.err")
        speed = a.step / a.interval
        self.fleet = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "warp_fleet.py"), "--targets", str(a.targets),
             "--series-per-target", str(a.series_per_target), "--base-port",
             str(self.fleet_base), "--history", str(a.history), "--speed", str(speed),
             "--step", str(a.step)],
            stdout=subprocess.DEVNULL, stderr=open(self.fleet_err, "w"))
        self.cfg = os.path.join(self.dir, "prometheus.yml")
        tg = ", ".join(f"'127.0.0.1:{self.fleet_base + i}'" for i in range(a.targets))
        with open(self.cfg, "w") as f:
            iv = f"{int(a.interval * 1000)}ms"
            f.write(f"global:\n  scrape_interval: {iv}\n  scrape_timeout: {iv}\n"
                    f"scrape_configs:\n  - job_name: fleet\n"
                    f"    static_configs:\n      - targets: [{tg}]\n")
        self.procs = {}
        self.logs = {}

    def spawn(self, addr, seeds):
        log = os.path.join(self.dir, addr.replace(":", "_") + ".log")
        self.logs[addr] = log
        args = [self.a.bin, "run", "--config", self.cfg,
                "--data-dir", os.path.join(self.dir, addr.replace(":", "_")),
                "--listen", addr, "--cluster.seeds", ",".join(seeds)]
        if self.a.drain_rate:
            args += ["--cluster.drain-rate", self.a.drain_rate]
        self.procs[addr] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                            stderr=open(log, "w"))

    def settled(self, live, timeout=300):
        def f():
            vs = [get(a, "/api/v1/cluster") for a in live]
            if any(v is None or sum(m["state"] == "up" for m in v["members"]) != len(live)
                   or len(v["members"]) != len(live)
                   or v["assignmentViewIndex"] != v["viewIndex"]
                   or v["viewIndex"] != vs[0]["viewIndex"] for v in vs):
                return None
            owners = {}
            for a in live:
                d = get(a, "/api/v1/targets?state=active")
                if d is None:
                    return None
                for t in d["activeTargets"]:
                    if t.get("handingOff") or t["labels"]["instance"] in owners:
                        return None
                    owners[t["labels"]["instance"]] = a
            return owners if len(owners) == self.a.targets else None
        return wait(f"{len(live)} nodes settled", timeout, f, step=1)

    def caught_up(self):
        try:
            m = re.search(r"caught-up ([0-9.]+)", open(self.fleet_err).read())
        except OSError:
            return None
        return float(m.group(1)) if m else None

    def stop(self):
        for p in list(self.procs.values()) + [self.fleet]:
            if p.poll() is None:
                p.kill()
                p.wait()
        if not self.a.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def drain_line(log):
    """Fields of the leaver's `drain: done` log line."""
    for line in open(log):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "drain: done" in line:
            return {k: v for k, v in re.findall(r"(\w+)=([^\s]+)", line)}
    return None


def window(addrs, expr_range, at):
    """Raw samples (t, v) of a range selector, from each address's own store."""
    out = []
    for addr in addrs:
        d = q(addr, expr_range, at, local=True) or {"result": []}
        for s in d["result"]:
            out.extend((float(t), float(v)) for t, v in s["values"])
    return out


def run(a):
    b = Bench(a)
    L, B, C = b.addrs
    try:
        b.spawn(L, [L])
        wait("L ready", 60, lambda: get(L, "/api/v1/cluster"))
        t_start = time.time()
        t_caught = wait("the fleet's clock to catch up", a.history * 2 + 600, b.caught_up, step=2)
        # A few scrapes on the wall clock, so every series has its newest samples.
        time.sleep(3 * a.interval)
        prefill_s = time.time() - t_start
        metric = "app_cpu_utilization_ratio"
        span = int(a.history + 600)
        at = t_caught
        before = scalar(L, f"sum(count_over_time({metric}[{span}s]))", at)
        raw_before = raw(L, f"{metric}[{span}s]", at)
        series = scalar(L, "count({job=\"fleet\"})")
        print(f"prefill: {prefill_s:.0f} s; L holds {series:.0f} series; "
              f"{metric}: {before:.0f} raw samples in the history", flush=True)

        b.spawn(B, [L])
        b.spawn(C, [L])
        b.settled(b.addrs)
        # The newcomers' first scrapes create their series (slow scrapes): let them
        # settle before the baseline.
        time.sleep(a.warmup)
        t_b0 = time.time()
        time.sleep(a.baseline)
        t_b1 = time.time()

        progress = []
        t_leave = time.time()
        b.procs[L].send_signal(signal.SIGTERM)
        while b.procs[L].poll() is None:
            v = get(B, "/api/v1/cluster")
            for m in (v or {}).get("members", []):
                if m.get("address") == L and m.get("drain"):
                    progress.append((time.time() - t_leave, m["drain"]["bytesLeft"],
                                     m["drain"]["seriesLeft"]))
            time.sleep(1)
        t_exit = time.time()
        leave_s = t_exit - t_leave
        done = drain_line(b.logs[L])
        if done is None:
            raise SystemExit("the leaver did not drain; its log: " + b.logs[L])
        b.settled([B, C])
        time.sleep(2 * a.interval)
        t_end = time.time()

        after = scalar(B, f"sum(count_over_time({metric}[{span}s]))", at)
        raw_after = raw(B, f"{metric}[{span}s]", at)
        missing = {k: sorted(set(v) - set(raw_after.get(k, [])))
                   for k, v in raw_before.items()}
        missing = {k: v for k, v in missing.items() if v}
        extra = {k: sorted(set(v) - set(raw_before.get(k, [])))
                 for k, v in raw_after.items()}
        extra = {k: v for k, v in extra.items() if v}
        if missing or extra:
            print("history differs: missing", list(missing.items())[:3], "extra",
                  list(extra.items())[:3], flush=True)
        # Receivers' per-scrape ingest latency, baseline vs drain.
        def lat(t0, t1):
            xs = [v for t, v in window([B, C], f"scrape_duration_seconds[{int(t1 - t0) + 1}s]", t1)
                  if t >= t0]
            return xs
        base = lat(t_b0, t_b1)
        during = lat(t_leave, t_exit)
        # Longest hole of any target's `up`, united over every node's own store (the
        # leaver's too, read before it left: its part is in the receivers' stores now),
        # in the baseline and from the leave on.
        def longest_gap(t0, t1):
            times = {}
            for addr in (B, C):
                d = q(addr, f"up[{int(t1 - t0) + 1}s]", t1, local=True) or {"result": []}
                for s in d["result"]:
                    times.setdefault(s["metric"]["instance"], set()).update(
                        float(t) for t, _ in s["values"] if float(t) >= t0)
            return max(max([0.0] + [b2 - a2 for a2, b2 in zip(ts, ts[1:])]) for ts in
                       (sorted(x) for x in times.values()))
        gap_base = longest_gap(t_b0, t_b1)
        gap = longest_gap(t_leave - 2 * a.interval, t_end)
        elapsed = float(re.sub(r"[^0-9.]", "", done.get("elapsed", "0")) or 0)
        unit = re.sub(r"[0-9.]", "", done.get("elapsed", "s"))
        elapsed = elapsed / 1000 if unit == "ms" else elapsed
        moved = int(done["bytes"])
        r = {
            "series_on_leaver": series, "history_s": a.history, "step_s": a.step,
            "prefill_s": prefill_s,
            "drain_series": int(done["series"]), "drain_chunks": int(done["chunks"]),
            "drain_bytes": moved, "drain_elapsed_s": elapsed,
            "drain_gb_per_min": moved / 1e9 / (elapsed / 60) if elapsed else None,
            "stored": int(done["stored"]), "duplicate": int(done["duplicate"]),
            "sigterm_to_exit_s": leave_s,
            "history_samples_before": before, "history_samples_after": after,
            "history_series_missing_samples": len(missing),
            "history_series_extra_samples": len(extra),
            "ingest_latency_baseline": {"n": len(base), "p50": pct(base, 50),
                                        "p99": pct(base, 99), "max": max(base or [0])},
            "ingest_latency_drain": {"n": len(during), "p50": pct(during, 50),
                                     "p99": pct(during, 99), "max": max(during or [0])},
            "longest_up_gap_s": gap, "longest_up_gap_baseline_s": gap_base,
            "interval_s": a.interval,
            "progress": progress[:: max(1, len(progress) // 20)],
        }
        return r
    finally:
        b.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/shoal")
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--series-per-target", type=int, default=2000)
    ap.add_argument("--history", type=float, default=3600, help="seconds of history on the leaver")
    ap.add_argument("--step", type=float, default=15, help="seconds between samples of the history")
    ap.add_argument("--interval", type=float, default=2, help="scrape interval, seconds")
    ap.add_argument("--warmup", type=float, default=30, help="seconds after the join before the baseline")
    ap.add_argument("--baseline", type=float, default=60, help="seconds measured before the leave")
    ap.add_argument("--drain-rate", default="", help="--cluster.drain-rate (default: the node's)")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    a = ap.parse_args()
    r = run(a)
    print(json.dumps(r, indent=1))
    lb, ld = r["ingest_latency_baseline"], r["ingest_latency_drain"]
    print(f"drain of {r['series_on_leaver']:.0f} series x {a.history:.0f} s "
          f"(one sample per {a.step:.0f} s): {r['drain_bytes'] / 1e6:.1f} MB in "
          f"{r['drain_elapsed_s']:.1f} s = {r['drain_gb_per_min']:.2f} GB/min; "
          f"SIGTERM to exit {r['sigterm_to_exit_s']:.1f} s")
    print(f"receivers' ingest latency per scrape: p50 {lb['p50'] * 1000:.1f} -> "
          f"{ld['p50'] * 1000:.1f} ms, p99 {lb['p99'] * 1000:.1f} -> {ld['p99'] * 1000:.1f} ms "
          f"(baseline -> drain; ratio p99 {ld['p99'] / lb['p99']:.2f})")
    print(f"longest up gap from the leave on {r['longest_up_gap_s']:.2f} s, in the baseline "
          f"{r['longest_up_gap_baseline_s']:.2f} s (interval {a.interval:.0f} s); "
          f"history samples of the check metric {r['history_samples_before']:.0f} before, "
          f"{r['history_samples_after']:.0f} after")


if __name__ == "__main__":
    main()
