"""Helpers shared by the benchmark scripts in cluster/ (standard library only)."""
import json
import time
import urllib.request


def get(addr, path, timeout=5):
    """`data` of a shoal API answer from http://addr/path, or None on any failure."""
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return json.load(r)["data"]
    except Exception:
        return None


def wait(what, timeout, f, step=0.2):
    """Polls f() every `step` s until it returns something other than None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = f()
        if v is not None:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


def start_fleet(script, targets, series_per_target, base_port):
    """The bench fleet (../shared/bench/targets.py) on base_port..base_port+targets-1."""
    import subprocess
    import sys
    return subprocess.Popen(
        [sys.executable, script, "--targets", str(targets), "--series-per-target",
         str(series_per_target), "--base-port", str(base_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fleet_config(targets, base_port, interval, head=""):
    """A prometheus.yml scraping the fleet as job `fleet`; `head` goes after `global`."""
    tg = ", ".join(f"'127.0.0.1:{base_port + i}'" for i in range(targets))
    return (f"global:\n  scrape_interval: {interval}s\n{head}"
            f"scrape_configs:\n  - job_name: fleet\n    static_configs:\n"
            f"      - targets: [{tg}]\n")


def start_nodes(binary, config, workdir, addrs, extra=lambda i: []):
    """`shoal run` on every address, all seeding from all; logs in workdir/nodeN.log."""
    import os
    import subprocess
    procs = []
    for i, addr in enumerate(addrs):
        log = open(os.path.join(workdir, f"node{i}.log"), "w")
        procs.append(subprocess.Popen(
            [binary, "run", "--config", config, "--data-dir", os.path.join(workdir, f"node{i}"),
             "--listen", addr, "--cluster.seeds", ",".join(addrs)] + extra(i),
            stdout=subprocess.DEVNULL, stderr=log))
    return procs
