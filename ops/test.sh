#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, RabbitMQ and Redis (set up if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/dev-setup.sh
# The local embedding model's tests run when its files are present (CI requires them).
bash ops/fetch-model.sh || echo "warning: could not fetch the local model; its tests will be skipped" >&2
cargo test --locked --all-targets "$@"
