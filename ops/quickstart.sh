#!/usr/bin/env bash
# The main job, end to end: start a worker, ingest the sample documents, answer a query, stop.
# Uses the local services (PostgreSQL, RabbitMQ, Redis; started if needed) and no API keys.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/dev-setup.sh >/dev/null
cargo build --release --locked --quiet
bin=target/release/ragpipe
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/ragpipe"
mkdir -p data
export RUST_LOG=${RUST_LOG:-warn}
"$bin" migrate
"$bin" worker --role ingest,query > data/quickstart-worker.log 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
"$bin" ingest ../shared/corpus/text ../shared/corpus/markdown --collection quickstart --wait
question=${1:-"How doth the little crocodile improve his shining tail?"}
echo
echo "query: $question"
"$bin" query "$question" --collection quickstart --top-k 3
