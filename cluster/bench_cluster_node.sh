#!/bin/sh
# One measured node of an N-node local cluster, for ../shared/bench/run_anchor.py's
# custom system (scale-out and distributed-query figures in docs/benchmarks.md):
#
#   run_anchor.py --system custom --name shoal-3nodes \
#     --start-cmd "cluster/bench_cluster_node.sh 3 {config} {datadir} {host} {port}" \
#     --samples-metric shoal_tsdb_samples_appended_total --series-metric shoal_tsdb_head_series ...
#
# Starts N-1 peers on PORT+1..PORT+N-1 (data dirs DATADIR-peerK, logs beside them), then
# execs the measured node on PORT, so the harness measures that process alone; the peers
# are killed when it exits. All nodes seed from all addresses. Binary: $SHOAL_BIN.
set -eu
n=$1 config=$2 datadir=$3 host=$4 port=$5
bin=${SHOAL_BIN:-shoal}
seeds="$host:$port"
i=1
while [ "$i" -lt "$n" ]; do seeds="$seeds,$host:$((port + i))"; i=$((i + 1)); done
peers=""
i=1
while [ "$i" -lt "$n" ]; do
  "$bin" run --config "$config" --data-dir "$datadir-peer$i" --listen "$host:$((port + i))" \
    --cluster.seeds "$seeds" 2>"$datadir-peer$i.log" &
  peers="$peers $!"
  i=$((i + 1))
done
me=$$
# The watcher outlives the exec below: it kills the peers once the measured node is gone.
( while kill -0 "$me" 2>/dev/null; do sleep 1; done; kill -9 $peers 2>/dev/null ) &
exec "$bin" run --config "$config" --data-dir "$datadir" --listen "$host:$port" --cluster.seeds "$seeds"
