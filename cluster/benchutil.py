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
