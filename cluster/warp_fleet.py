#!/usr/bin/env python3
"""The bench fleet (../shared/bench/targets.py) on a fast clock, to give a node hours of
history in minutes: every sample carries an explicit timestamp (scrapers honour it,
`honor_timestamps: true` is the default), and that clock starts `--history` seconds in
the past and runs `--speed` times faster than the wall clock, in steps of `--step`
seconds, until it has caught up with the wall clock; from then on it is the wall clock.
Values are the fleet's own functions of that clock, so the history looks like a real
fleet's.

Usage: warp_fleet.py --targets 100 --series-per-target 2000 --base-port 20000 \
           --history 3600 --speed 7.5 --step 15 [--fleet ../shared/bench/targets.py]
It prints `caught-up <unix time>` on stderr when the clock meets the wall clock.
"""
import argparse
import importlib.util
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load_fleet(path):
    spec = importlib.util.spec_from_file_location("targets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet", default=os.path.join(HERE, "..", "..", "shared", "bench", "targets.py"))
    ap.add_argument("--history", type=float, default=3600.0)
    ap.add_argument("--speed", type=float, default=7.5)
    ap.add_argument("--step", type=float, default=15.0)
    a, rest = ap.parse_known_args()
    fleet = load_fleet(a.fleet)
    start_real = time.time()
    start_sim = start_real - a.history
    caught = [False]

    def clock(real):
        """The fleet's clock at wall time `real` (whole seconds, on the step grid while
        warping)."""
        sim = start_sim + (real - start_real) * a.speed
        sim = start_sim + int((sim - start_sim) // a.step) * a.step
        if sim >= real - a.step:
            if not caught[0]:
                caught[0] = True
                print(f"caught-up {real:.3f}", file=sys.stderr, flush=True)
            return int(real)
        return int(sim)

    base_init = fleet.Target.__init__
    base_body = fleet.Target.body

    def init(self, idx, S):
        base_init(self, idx, S)
        # Every sample line gets a timestamp slot, filled per body.
        self.template = "\n".join(
            ln if (not ln or ln.startswith("#")) else ln + " @TS@"
            for ln in self.template.split("\n"))

    def body(self, now_sec):
        t = clock(time.time())
        if t == self.cache_sec:
            return self.cache_body
        data = base_body(self, t)
        data = data.replace(b"@TS@", str(t * 1000).encode())
        self.cache_body = data
        return data

    fleet.Target.__init__ = init
    fleet.Target.body = body
    sys.argv = [a.fleet] + rest
    fleet.main()


if __name__ == "__main__":
    main()
