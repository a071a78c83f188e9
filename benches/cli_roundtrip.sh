#!/usr/bin/env bash
# Measures the walking skeleton from a user's seat, with the release binary and local services:
#  - documents/s of `ragpipe ingest --wait` for the 4 files of ../shared/corpus/text (fresh collection);
#  - the median wall time of `ragpipe query` (process start, connect, RPC, print) over N runs.
# Usage: bash benches/cli_roundtrip.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-21}
bin=${CARGO_TARGET_DIR:-target}/release/ragpipe
cargo build --release --locked --quiet
export RUST_LOG=warn
mkdir -p data
"$bin" migrate >/dev/null
"$bin" worker --role ingest,query > data/bench-worker.log 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
sleep 2
collection="bench-$(date +%s)"
"$bin" ingest ../shared/corpus/text --collection "$collection" --wait
times=()
for i in $(seq 1 "$n"); do
  start=$(date +%s%N)
  "$bin" query "How doth the little crocodile improve his shining tail?" --collection "$collection" -k 3 >/dev/null
  end=$(date +%s%N)
  times+=($(( (end - start) / 1000000 )))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
echo "ragpipe query round trip over $n runs: median ${sorted[$((n / 2))]} ms, min ${sorted[0]} ms, max ${sorted[$((n - 1))]} ms"
