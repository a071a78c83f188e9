#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, RabbitMQ and Redis (set up if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/dev-setup.sh
# promtool checks ops/alerts.yml (tests/ops_metrics.rs); Debian ships it in `prometheus`.
if ! command -v promtool >/dev/null; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus
fi
# The local embedding model's tests run when its files are present (CI requires them).
bash ops/fetch-model.sh || echo "warning: could not fetch the local model; its tests will be skipped" >&2
cargo test --locked --all-targets "$@"
# Then, alone, the tests that stop and start the servers every other test uses (the whole suite
# only: arguments pick a part of it).
if [ $# -eq 0 ]; then
  cargo test --locked --test service_restarts -- --ignored --test-threads=1
fi
