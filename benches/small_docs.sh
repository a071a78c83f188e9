#!/usr/bin/env bash
# Small-document bulk ingest, ragpipe against LlamaIndex in the same run (issue #13).
#
# N files of ~2 KB (consecutive 2,000-character slices of ../shared/corpus/text and markdown;
# past the ~2,078 slices the corpus holds, the slices repeat with a line that makes each file
# unique) are ingested by:
#   - LlamaIndex's IngestionPipeline (SentenceSplitter 256 + MockEmbedding, in memory, one
#     process; benches/small_docs_llamaindex.py in a throw-away virtualenv outside the repo);
#   - ragpipe embedded (SQLite store and job queue) and distributed (RabbitMQ → PostgreSQL +
#     FAISS, a fresh database and queue names): hash embedder, 256-token chunks, a release
#     worker already running, clocked from `ragpipe ingest DIR --wait` to its summary.
# Prints documents/s, chunks/s, and CPU seconds per document by process (worker with its
# sandbox children, CLI, PostgreSQL, RabbitMQ, Redis), with the CPU model.
#
# LARGE=1 writes N copies of whole corpus files instead (large documents: LARGE=1 ... 180
# "embedded distributed" is ~117,000 chunks, the check that small-document work costs large
# documents nothing).
#
# Usage: bash benches/small_docs.sh [N=2078] [MODES="llamaindex embedded distributed"]
#        (LLAMAINDEX_VENV, default /var/tmp/ragpipe-llamaindex-venv, is created when missing;
#        RAGPIPE_BIN runs another build, e.g. an older commit's, instead of building this one.)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2078}
modes=${2:-"llamaindex embedded distributed"}
bin=${RAGPIPE_BIN:-${CARGO_TARGET_DIR:-target}/release/ragpipe}
venv=${LLAMAINDEX_VENV:-/var/tmp/ragpipe-llamaindex-venv}
work=$(mktemp -d /var/tmp/ragpipe-small-docs.XXXXXX)
worker=
cleanup() {
  if [ -n "$worker" ]; then kill "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${RAGPIPE_BIN:-}" ] || cargo build --release --locked --quiet
tick=$(getconf CLK_TCK)

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $n files"

python3 - "$work/files" "$n" <<'PY'
import os, sys
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out)
slices = []
for d in ("../shared/corpus/text", "../shared/corpus/markdown"):
    for name in sorted(os.listdir(d)):
        text = open(os.path.join(d, name), encoding="utf-8", errors="replace").read()
        slices += [text[i:i + 2000] for i in range(0, len(text), 2000)]
if os.environ.get("LARGE"):
    # Whole corpus files instead of slices (each with a line that makes it unique).
    whole = []
    for d in ("../shared/corpus/text", "../shared/corpus/markdown"):
        for name in sorted(os.listdir(d)):
            whole.append(open(os.path.join(d, name), encoding="utf-8", errors="replace").read())
    for i in range(n):
        with open(os.path.join(out, f"doc-{i:06}.txt"), "w", encoding="utf-8") as f:
            f.write(f"copy {i}\n" + whole[i % len(whole)])
    sys.exit(0)
for i in range(n):
    body = slices[i % len(slices)]
    if i >= len(slices):
        body = f"copy {i // len(slices)}\n" + body
    with open(os.path.join(out, f"doc-{i:06}.txt"), "w", encoding="utf-8") as f:
        f.write(body)
PY

# CPU seconds (user + system, reaped children included) of the processes whose command
# matches $1, or of one pid with -p.
cpu_of() {
  local pids
  if [ "$1" = -p ]; then pids=$2; else pids=$(pgrep -d ' ' -f "$1" || true); fi
  local total=0
  for pid in $pids; do
    local stat
    stat=$(cut -d ')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
    # Fields after the command: state is 1st, utime 12th … cstime 15th.
    total=$(awk -v s="$stat" -v t="$total" 'BEGIN { split(s, f, " "); print t + f[12] + f[13] + f[14] + f[15] }')
  done
  echo "$total"
}
secs() { awk -v a="$1" -v b="$2" -v t="$tick" 'BEGIN { printf "%.2f", (b - a) / t }'; }
per_doc_ms() { awk -v a="$1" -v b="$2" -v t="$tick" -v n="$n" 'BEGIN { printf "%.3f", (b - a) / t / n * 1000 }'; }

llamaindex() {
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet llama-index-core
  fi
  local out
  out=$("$venv/bin/python" benches/small_docs_llamaindex.py "$work/files")
  echo "$out" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
n, c, t = r["documents"], r["chunks"], r["seconds"]
print("llamaindex   %d docs in %.2f s: %7.1f docs/s, %8.1f chunks/s (%d chunks); CPU %.3f ms/doc"
      % (n, t, n / t, c / t, c, 1000 * r["cpu_seconds"] / n))'
}

ragpipe() {
  local mode=$1 dir=$work/$1
  mkdir -p "$dir"
  local port=$((20000 + RANDOM % 20000)) tag
  tag="bench$(date +%s%N)"
  {
    echo "[storage]"
    echo "data_dir = \"$dir/data\""
    echo "allowed_roots = [\"$work/files\"]"
    echo "[embedder]"
    echo "kind = \"hash\""
    echo "model = \"hash-v1\""
    echo "dimensions = 384"
    echo "[chunk]"
    echo "max_tokens = 256"
    echo "[http]"
    echo "port = $port"
    if [ "$mode" = distributed ]; then
      echo "[broker]"
      echo "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\""
      for key in ingest_exchange ingest_queue dead_letter_exchange dead_letter_queue query_queue events_exchange; do
        echo "$key = \"$tag.$key\""
      done
      echo "[database]"
      echo "url = \"postgres://postgres@127.0.0.1:5432/$tag\""
      echo "[cache]"
      echo "url = \"redis://127.0.0.1:6379/0\""
      echo "key_prefix = \"$tag:\""
    fi
  } > "$dir/workers.toml"
  RUST_LOG=warn "$bin" --config "$dir/workers.toml" migrate > /dev/null
  RUST_LOG=warn "$bin" --config "$dir/workers.toml" worker --role ingest > "$dir/worker.log" 2>&1 &
  worker=$!
  until curl -sf "http://127.0.0.1:$port/ready" > /dev/null; do
    kill -0 "$worker" 2>/dev/null || { cat "$dir/worker.log"; exit 1; }
    sleep 0.2
  done
  local w0 p0 r0 d0 w1 p1 r1 d1 t0 t1 cli
  w0=$(cpu_of -p "$worker"); p0=$(cpu_of '^postgres'); r0=$(cpu_of 'beam.smp'); d0=$(cpu_of '^redis-server')
  t0=$(date +%s%N)
  cli=$( ( RUST_LOG=warn "$bin" --config "$dir/workers.toml" ingest "$work/files" --collection small --wait > "$dir/ingest.log" 2>&1; times ) | tail -1)
  t1=$(date +%s%N)
  w1=$(cpu_of -p "$worker"); p1=$(cpu_of '^postgres'); r1=$(cpu_of 'beam.smp'); d1=$(cpu_of '^redis-server')
  # Where a document's time goes inside the worker (wall time per stage, overlapping).
  local stages
  stages=$(curl -sf "http://127.0.0.1:$port/metrics" | awk -v n="$n" '
    /^ragpipe_stage_seconds_sum/ { match($0, /stage="[a-z]+"/); st = substr($0, RSTART + 7, RLENGTH - 8);
      printf "%s %.2f ms, ", st, $2 / n * 1000 }
    /^ragpipe_extract_children_started_total/ { printf "sandbox children started %d, ", $2 }')
  kill "$worker"; wait "$worker" 2>/dev/null || true; worker=
  local chunks
  chunks=$(grep -oE '[0-9]+ chunks' "$dir/ingest.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
  grep -q "ingested" "$dir/ingest.log" || { cat "$dir/ingest.log"; exit 1; }
  # `times` prints the children's user and system time as "XmY.YYYs XmY.YYYs".
  local cli_ms
  cli_ms=$(echo "$cli" | awk -v n="$n" '{ split($1, u, "m"); split($2, s, "m"); sub("s", "", u[2]); sub("s", "", s[2]);
    printf "%.3f", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) / n * 1000 }')
  awk -v m="$mode" -v n="$n" -v c="$chunks" -v a="$t0" -v b="$t1" 'BEGIN { s = (b - a) / 1e9;
    printf "ragpipe %-12s %d docs in %.2f s: %7.1f docs/s, %8.1f chunks/s (%d chunks)\n", m, n, s, n / s, c / s, c }'
  echo "  stage wall ms/doc: ${stages%, }"
  echo "  CPU ms/doc: worker+sandbox $(per_doc_ms "$w0" "$w1"), CLI $cli_ms, PostgreSQL $(per_doc_ms "$p0" "$p1"), RabbitMQ $(per_doc_ms "$r0" "$r1"), Redis $(per_doc_ms "$d0" "$d1")"
  if [ "$mode" = distributed ]; then
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE \"$tag\"" postgres > /dev/null 2>&1 || true
    for queue in ingest_queue dead_letter_queue query_queue; do
      rabbitmqctl -q delete_queue "$tag.$queue" > /dev/null 2>&1 || true
    done
  fi
}

for mode in $modes; do
  case $mode in
    llamaindex) llamaindex ;;
    embedded | distributed) ragpipe "$mode" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
done
