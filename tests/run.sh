#!/usr/bin/env bash
# Runs shoal's whole test suite on a fresh machine: installs what the tests need
# (promtool from Debian's `prometheus` package, iptables, cargo-nextest), checks formatting and
# lints, then runs every test; then, when a Docker engine answers, the container fault
# tests (cluster/fault-test.py: docker-compose.yml brought up for real, with an image of
# the debug binary the tests just built). Used by README.md and .ci/run.
#
# Arguments go to `cargo nextest run` (e.g. a filter); with arguments the container
# tests are skipped unless SHOAL_FAULT_TESTS=1. SHOAL_FAULT_TESTS=0 always skips them.
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
