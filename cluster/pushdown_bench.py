#!/usr/bin/env python3
"""Aggregation pushdown, bytes moved and latency, for docs/benchmarks.md ("Query any
node"): a 3-node cluster on loopback scraping the bench fleet
(../shared/bench/targets.py, default 100 targets x 2000 series = 200k series), node 0
with pushdown (the default) and node 1 with `--query.pushdown=false`. After the
ingest window it runs the three reference queries of ../shared/bench on both nodes
(`--reps` times each) and reports, per query and node, the median latency and the
median increase of `shoal_query_member_response_bytes_total` (the bytes of the other
members' answers), plus the answers' last values (they must agree). Only the
standard library is used.

Usage: cluster/pushdown_bench.py [--bin target/release/shoal] [--targets 100]
       [--series-per-target 2000] [--interval 5] [--duration 180] [--reps 5]
"""
import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse
import urllib.request

from benchutil import fleet_config, get, start_fleet, start_nodes, wait

HERE = os.path.dirname(os.path.abspath(__file__))

QUERIES = [
    ("instant sum-rate", "/api/v1/query", "sum by (job) (rate(http_requests_total[1m]))"),
    ("range sum-rate", "/api/v1/query_range", "sum by (job) (rate(http_requests_total[1m]))"),
    ("range hist-quantile", "/api/v1/query_range",
     "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))"),
]


def counter(addr, name):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise SystemExit(f"{addr} has no {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/shoal")
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--series-per-target", type=int, default=2000)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--duration", type=int, default=180)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--base-port", type=int, default=22000)
    ap.add_argument("--fleet", default=os.path.join(HERE, "..", "..", "shared", "bench", "targets.py"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="shoal-pushdown-")
    procs = []
    try:
        procs.append(start_fleet(a.fleet, a.targets, a.series_per_target, a.base_port))
        config = os.path.join(d, "prometheus.yml")
        with open(config, "w") as f:
            f.write(fleet_config(a.targets, a.base_port, a.interval))
        addrs = [f"127.0.0.1:{a.base_port - 10 + i}" for i in range(3)]
        procs += start_nodes(a.bin, config, d, addrs,
                             lambda i: ["--query.pushdown=false"] if i == 1 else [])
        wait("a leader", 60, lambda: (get(addrs[0], "/api/v1/cluster") or {}).get("leaderAddress"))
        start = time.time()
        time.sleep(a.duration + 35)
        qt = time.time() - 35  # every scrape up to here is in
        print(f"3 nodes, {a.targets} x {a.series_per_target} series, scrape {a.interval}s, "
              f"{a.duration}s of data, {a.reps} reps; node 0 pushes down, node 1 does not")
        for name, path, expr in QUERIES:
            for node, label in ((0, "pushdown"), (1, "raw")):
                addr = addrs[node]
                p = {"query": expr}
                if path.endswith("range"):
                    p.update(start=int(start) + 1, end=qt, step="15s")
                else:
                    p["time"] = qt
                url = f"http://{addr}{path}?{urllib.parse.urlencode(p)}"
                times, moved, last = [], [], None
                for _ in range(a.reps):
                    b0 = counter(addr, "shoal_query_member_response_bytes_total")
                    t0 = time.monotonic()
                    with urllib.request.urlopen(url, timeout=120) as r:
                        body = json.load(r)
                    times.append((time.monotonic() - t0) * 1e3)
                    moved.append(counter(addr, "shoal_query_member_response_bytes_total") - b0)
                    res = body["data"]["result"]
                    last = (res[0].get("value") or res[0]["values"][-1])[1] if res else None
                print(f"  {name:20} {label:8}: {statistics.median(times):7.1f} ms, "
                      f"{statistics.median(moved) / 1e3:8.1f} KB from members, last value {last}")
        for addr in addrs:
            print(f"  {addr}: pushdowns {counter(addr, 'shoal_query_pushdowns_total'):.0f}, "
                  f"fallbacks {counter(addr, 'shoal_query_pushdown_fallbacks_total'):.0f}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
