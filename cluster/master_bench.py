#!/usr/bin/env python3
"""Master-loop cost for docs/benchmarks.md ("Leader as master"): a 3-node cluster on
loopback scraping the bench fleet (../shared/bench/targets.py, default 100 targets x
2000 series = 200k series) with the classic recipe: a shard group on every node
(`shard:http_requests:rate1m = sum without (instance) (rate(http_requests_total[1m]))`)
and a global group on the leader (`job:... = sum without (shard) (shard:...)`).

After a warm-up it reads `/api/v1/rules` of the leader once per global interval and
reports the master loop's figures per round (members federated, bytes and samples
federated, fetch time, fetch + evaluation + Raft commit time) and every node's shard
group evaluation time, as medians and maxima. Only the standard library is used.

Usage: cluster/master_bench.py [--bin target/release/shoal] [--targets 100]
       [--series-per-target 2000] [--interval 5] [--global-interval 15] [--rounds 10]
"""
import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.request

from benchutil import fleet_config, get, start_fleet, start_nodes, wait

HERE = os.path.dirname(os.path.abspath(__file__))




def groups(addr):
    d = get(addr, "/api/v1/rules")
    return {g["name"]: g for g in d["groups"]} if d else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/shoal")
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--series-per-target", type=int, default=2000)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--global-interval", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--base-port", type=int, default=21000)
    ap.add_argument("--fleet", default=os.path.join(HERE, "..", "..", "shared", "bench", "targets.py"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="shoal-master-")
    procs = []
    try:
        procs.append(start_fleet(a.fleet, a.targets, a.series_per_target, a.base_port))
        with open(os.path.join(d, "rules.yml"), "w") as f:
            f.write(f"""groups:
  - name: shard
    interval: {a.interval}s
    rules:
      - record: shard:http_requests:rate1m
        expr: sum without (instance) (rate(http_requests_total[1m]))
  - name: job
    interval: {a.global_interval}s
    scope: global
    rules:
      - record: job:http_requests:rate1m
        expr: sum without (shard) (shard:http_requests:rate1m)
""")
        config = os.path.join(d, "prometheus.yml")
        with open(config, "w") as f:
            f.write(fleet_config(a.targets, a.base_port, a.interval, "rule_files: ['rules.yml']\n"))
        addrs = [f"127.0.0.1:{a.base_port - 10 + i}" for i in range(3)]
        procs += start_nodes(a.bin, config, d, addrs)
        leader = wait("a leader", 60, lambda: (get(addrs[0], "/api/v1/cluster") or {}).get("leaderAddress"))
        # Warm-up: two rate windows, so shard series cover every target.
        time.sleep(120)
        rounds, seen = [], set()
        end = time.monotonic() + (a.rounds + 3) * a.global_interval
        while len(rounds) < a.rounds and time.monotonic() < end:
            g = (groups(leader) or {}).get("job")
            f = g and g.get("federation")
            if f and g["lastEvaluation"] not in seen:
                seen.add(g["lastEvaluation"])
                rounds.append(f)
            time.sleep(1)
        shard_eval = [groups(x)["shard"]["evaluationTime"] for x in addrs]
        series = [(get(x, "/api/v1/query?local=1&query=count(%7B__name__%3D~%22.%2B%22%7D)") or {})
                  .get("result", [{}])[0].get("value", [0, "0"])[1] for x in addrs]

        def stat(k):
            v = [r[k] for r in rounds]
            return statistics.median(v), max(v)

        print(f"3 nodes, {a.targets} x {a.series_per_target} series, scrape {a.interval}s, "
              f"global interval {a.global_interval}s, {len(rounds)} rounds on leader {leader}")
        print(f"  series per node (local): {series}")
        for k in ("members", "failedMembers", "bytes", "samples", "committedSamples"):
            m, x = stat(k)
            print(f"  {k:16}: median {m}, max {x}")
        for k in ("fetchTime", "totalTime"):
            m, x = stat(k)
            print(f"  {k:16}: median {m * 1000:.1f} ms, max {x * 1000:.1f} ms "
                  f"({100 * m / a.global_interval:.2f}% of the interval)")
        print("  shard group evaluation time per node: " +
              ", ".join(f"{t * 1000:.1f} ms" for t in shard_eval))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
