#!/usr/bin/env bash
# The classic scaling recipe, end to end, on one machine:
#   - a synthetic fleet of 6 targets (`shoal demo`, ports 19100-19105; its own demo
#     node listens on 127.0.0.1:9090);
#   - datacenter "eu": a 2-node cluster on 127.0.0.1:9101-9102 scraping 3 targets;
#   - datacenter "us": a 2-node cluster on 127.0.0.1:9201-9202 scraping the other 3;
#   - the global tier: a 2-node cluster on 127.0.0.1:9301-9302 federating the job-level
#     series of both datacenters.
# Every process logs to $WORK/*.log. Ctrl-C stops everything.
#
# Usage: cluster/federation/run.sh [path/to/shoal]   (default: shoal on PATH)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shoal="${1:-shoal}"
WORK="$(mktemp -d -t shoal-federation-XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs and data kept in $WORK"
}
trap cleanup EXIT INT TERM

"$shoal" demo --listen 127.0.0.1:9090 --targets 6 --series-per-target 50 \
  --fleet-port 19100 >"$WORK/demo.log" 2>&1 &
pids+=($!)

start_cluster() { # name config port...
  local name=$1 config=$2; shift 2
  local seeds
  seeds=$(printf '127.0.0.1:%s,' "$@"); seeds=${seeds%,}
  for port in "$@"; do
    "$shoal" run --config "$config" --data-dir "$WORK/$name-$port" \
      --listen "127.0.0.1:$port" --cluster.seeds "$seeds" >"$WORK/$name-$port.log" 2>&1 &
    pids+=($!)
  done
}
start_cluster eu "$here/dc-eu.yml" 9101 9102
start_cluster us "$here/dc-us.yml" 9201 9202
start_cluster global "$here/global.yml" 9301 9302

q='job:http_requests:rate1m'
echo "waiting for the global tier to hold job-level series of both datacenters..."
for _ in $(seq 1 60); do
  sleep 5
  # Each federation target is scraped by one global node; look at both nodes' own data.
  got=$(for port in 9301 9302; do
    curl -fsS "http://127.0.0.1:$port/api/v1/query" --data-urlencode "query=count by (dc) ($q)" \
      --data-urlencode local=1 2>/dev/null || true
  done)
  if grep -q '"dc":"eu"' <<<"$got" && grep -q '"dc":"us"' <<<"$got"; then
    echo "global tier: series per datacenter of $q:"
    echo "$got"
    echo "running; try http://127.0.0.1:9101/api/v1/rules, http://127.0.0.1:9301/api/v1/targets; Ctrl-C stops"
    wait
    exit 0
  fi
done
echo "timed out; see the logs in $WORK" >&2
exit 1
