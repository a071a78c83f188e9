#!/usr/bin/env bash
# Fuzzes extract_pdf, seeded from the shared PDF corpus (read-only; new inputs go to
# fuzz/corpus/pdf). Stable Rust works with RUSTC_BOOTSTRAP=1; `-s none` because the
# sanitizer runtime may not build here. Crashes land in fuzz/artifacts/pdf/: copy each into
# tests/fixtures/pdf/ once fixed, so the test suite keeps exercising it.
#
# Two targets: `pdf` takes whole files (seeded from the shared corpus); `pdf_content` wraps
# its input as a page's content stream and a font's ToUnicode CMap (seeded from
# fuzz/seeds/pdf_content), which reaches our interpreter and layout far more often.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET]   (defaults: 600, pdf)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
target="${2:-pdf}"
case "$target" in
    # Uncompressed copies from fuzz/make_seeds.py, when present, reach deeper.
    pdf) seeds="../shared/corpus/pdf $(ls -d fuzz/corpus/pdf_plain 2>/dev/null || true)"; max_len=300000 ;;
    pdf_content) seeds=fuzz/seeds/pdf_content; max_len=20000 ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
esac
mkdir -p "fuzz/corpus/$target"
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -s none --release \
    "fuzz/corpus/$target" $seeds -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len="$max_len" \
    -dict=fuzz/pdf.dict -print_final_stats=1
