#!/usr/bin/env bash
# Runs shoal's whole test suite on a fresh machine: installs what the tests need
# (promtool from Debian's `prometheus` package, iptables, openssl, curl, the Python
# prometheus_client library, cargo-nextest),
# checks formatting and lints, then runs every test, and the multi-node tests a second
# time with every cluster over mutual TLS (SHOAL_TEST_CLUSTER_TLS=1); then, when a
# Docker engine answers, the container fault tests (cluster/fault-test.py:
# docker-compose.yml brought up for real, with an image of the debug binary the tests
# just built). Used by README.md and .ci/run.
#
# Arguments go to `cargo nextest run` (e.g. a filter); with arguments the TLS pass and
# the container tests are skipped unless SHOAL_CLUSTER_TLS_TESTS=1 / SHOAL_FAULT_TESTS=1
# (=0 always skips them).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing Debian package prometheus (promtool, interop tests)"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start its own server on :9090; the tests start what they need.
  sudo_if_needed systemctl stop prometheus >/dev/null 2>&1 || true
  sudo_if_needed pkill -x prometheus >/dev/null 2>&1 || true
fi
if ! command -v iptables >/dev/null 2>&1; then
  # The cluster partition test (tests/it/cluster.rs) cuts nodes off with iptables.
  echo "== installing Debian package iptables (cluster partition test)"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends iptables >/dev/null
fi
for tool in openssl curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    # The web config tests (tests/it/web_security.rs) make certificates with openssl
    # and talk HTTPS with curl.
    echo "== installing Debian package $tool (web TLS tests)"
    export DEBIAN_FRONTEND=noninteractive
    sudo_if_needed apt-get update -qq
    sudo_if_needed apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  fi
done
if ! python3 -c 'import prometheus_client.openmetrics.exposition' >/dev/null 2>&1; then
  # The backfill tests (tests/it/backfill.rs) write their OpenMetrics file with it.
  echo "== installing the Python package prometheus_client (backfill tests)"
  export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
  python3 -m pip install --quiet prometheus_client </dev/null \
    || python3 -m pip install --quiet --break-system-packages prometheus_client </dev/null \
    || {
      export DEBIAN_FRONTEND=noninteractive
      sudo_if_needed apt-get update -qq
      sudo_if_needed apt-get install -y -qq --no-install-recommends python3-prometheus-client >/dev/null
    }
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo nextest run"
cargo nextest run --locked --no-fail-fast "$@"

# The multi-node tests once more with every cluster over mutual TLS next to the secret
# (the cluster TLS test mode of tests/it/pki.rs; docs/security.md, "Tested"): about
# 3.5 min on 2 cores. A new multi-node test outside the modules named here goes into
# the filter. With nextest arguments it is skipped unless SHOAL_CLUSTER_TLS_TESTS=1;
# SHOAL_CLUSTER_TLS_TESTS=0 always skips it.
cluster_tls_tests=${SHOAL_CLUSTER_TLS_TESTS:-auto}
if [ "$cluster_tls_tests" = auto ]; then
  if [ $# -eq 0 ]; then cluster_tls_tests=1; else cluster_tls_tests=0; fi
fi
if [ "$cluster_tls_tests" = 1 ]; then
  echo "== cargo nextest run: the multi-node tests over mutual TLS (SHOAL_TEST_CLUSTER_TLS=1)"
  SHOAL_TEST_CLUSTER_TLS=1 cargo nextest run --locked --no-fail-fast -E '
    binary(it) & (
      test(/^(cluster|sharding|master|query|security)::/)
      | test(=secure_default::the_cluster_secret_rotates_without_a_refused_call)
      | test(=hardening::a_bad_target_moving_through_a_cluster_erases_no_node)
      | test(=limits::members_and_every_read_route_are_held_to_the_limits)
      | test(=drain::a_graceful_leave_moves_the_leavers_history_to_the_new_owners)
      | test(=backfill::an_import_through_one_node_stores_each_series_on_its_owner)
      | test(=backfill::with_two_replicas_a_backfilled_series_is_on_both_owners_and_read_once)
    )'
else
  echo "== multi-node tests over mutual TLS skipped (nextest arguments given; SHOAL_CLUSTER_TLS_TESTS=1 runs them)"
fi

# Fuzz smoke: every cargo-fuzz target of fuzz/ for 30 s from its committed corpus
# (docs/reliability.md, "Fuzzing"). New inputs go to a scratch copy, so the committed
# corpora stay as they are. Needs the nightly toolchain, which rustup cannot fetch here
# (no network but the package registries): without it the smoke is skipped, loudly.
# With nextest arguments it is skipped unless SHOAL_FUZZ_SMOKE=1; SHOAL_FUZZ_SMOKE=0
# always skips it.
fuzz_smoke=${SHOAL_FUZZ_SMOKE:-auto}
if [ "$fuzz_smoke" = auto ]; then
  if [ $# -eq 0 ]; then fuzz_smoke=1; else fuzz_smoke=0; fi
fi
if [ "$fuzz_smoke" = 1 ]; then
  echo "== fuzz smoke (cargo-fuzz, 30 s per target)"
  if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!! SKIPPED fuzz smoke: no nightly Rust toolchain (cargo-fuzz needs one), and"
    echo "!! rustup cannot download toolchains on this machine. Install one with"
    echo "!! \`rustup toolchain install nightly\` where the network allows it."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  else
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
      echo "== installing cargo-fuzz"
      cargo install cargo-fuzz --locked
    fi
    (
      cd fuzz
      cargo +nightly fuzz build
      failed=""
      for t in $(cargo +nightly fuzz list); do
        scratch="artifacts-scratch/smoke/$t"
        rm -rf "$scratch"
        mkdir -p "$scratch/corpus"
        log="$scratch/log"
        # ASan's quarantine of freed memory (256 MB by default) would count against
        # the 256 MB RSS limit; a single allocation over it still fails (malloc limit).
        if ASAN_OPTIONS=quarantine_size_mb=16 cargo +nightly fuzz run "$t" "$scratch/corpus" "corpus/$t" -- \
          -max_total_time=30 -rss_limit_mb=256 -timeout=10 \
          -artifact_prefix="$scratch/" -print_final_stats=1 >"$log" 2>&1; then
          echo "fuzz $t: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') executions in 30 s, no crash"
        else
          echo "FAILED fuzz $t (crash, hang or OOM; input under fuzz/$scratch/):"
          tail -n 60 "$log"
          failed="$failed $t"
        fi
      done
      if [ -n "$failed" ]; then
        echo "fuzz smoke failed:$failed"
        exit 1
      fi
    )
  fi
else
  echo "== fuzz smoke skipped (nextest arguments given; SHOAL_FUZZ_SMOKE=1 runs it)"
fi

fault_tests=${SHOAL_FAULT_TESTS:-auto}
if [ "$fault_tests" = auto ]; then
  if [ $# -eq 0 ]; then fault_tests=1; else fault_tests=0; fi
fi
if [ "$fault_tests" = 1 ]; then
  echo "== container fault tests (cluster/fault-test.py)"
  if docker info >/dev/null 2>&1; then
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
      echo "== installing Debian package docker-compose (container fault tests)"
      export DEBIAN_FRONTEND=noninteractive
      sudo_if_needed apt-get update -qq
      sudo_if_needed apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    fi
    # The image of the binary built above (debug: no second, release build in CI); its
    # own tag, so a user's shoal:latest is left alone.
    python3 cluster/fault-test.py --profile debug --build --image shoal:test
  else
    echo "SKIPPED container fault tests: no Docker engine answers \`docker info\`"
  fi
else
  echo "== container fault tests skipped (nextest arguments given; SHOAL_FAULT_TESTS=1 runs them)"
fi
