#!/usr/bin/env bash
# Measures the PDF extractor on the shared corpus:
#   1. peak memory: max RSS of one process extracting one file, for every corpus file
#      (examples/pdf_extract.rs under /usr/bin/time -v), and the maximum over the corpus;
#   2. word recall against pdftotext, tracemonkey reading order and pages/s on
#      freeculture.pdf (benches/pdf_recall.rs).
# Needs poppler-utils (pdftotext) and GNU time. Run from anywhere: benches/pdf_recall.sh
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=../shared/corpus/pdf
cargo build --release --quiet --example pdf_extract
bin="${CARGO_TARGET_DIR:-target}/release/examples/pdf_extract"

password_for() {
    case "$1" in
        */aes-128.pdf | */rc4-128.pdf) echo foo ;;
        */aes-256-r6.pdf) echo usersecret ;;
        */libreoffice-writer-password.pdf) echo openpassword ;;
        */issue6010_1.pdf) echo abc ;;
        */issue21579.pdf) echo 'pässwört' ;;
        *) echo "" ;;
    esac
}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
echo "== peak RSS per file (KiB) =="
max=0
max_file=""
while IFS= read -r -d '' f; do
    pw=$(password_for "$f")
    args=("$f")
    [ -n "$pw" ] && args+=("$pw")
    # %M is the maximum resident set size in KiB; the extractor exits 1 on a named
    # error, which is a normal outcome here.
    /usr/bin/time -f '%M' -o "$tmp" "$bin" "${args[@]}" >/dev/null 2>&1 || true
    kib=$(tail -n 1 "$tmp")
    printf '%8s  %s\n' "$kib" "${f#"$corpus"/}"
    if [ "$kib" -gt "$max" ]; then max=$kib; max_file=$f; fi
done < <(find "$corpus" -name '*.pdf' -print0 | sort -z)
echo "MAX peak RSS: $max KiB ($((max / 1024)) MiB) on ${max_file#"$corpus"/}"

echo
cargo bench --quiet --bench pdf_recall
