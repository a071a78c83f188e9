#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to build and test ragpipe: the C build dependencies of FAISS
# (ops/build-deps.sh), then PostgreSQL, Redis and RabbitMQ installed and running
# (ops/services.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/build-deps.sh
bash ops/services.sh
