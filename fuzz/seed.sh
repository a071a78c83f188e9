#!/usr/bin/env bash
# Seeds the fuzz corpora from the shared test documents (copies live in fuzz/corpus/, which is
# not committed). Usage: fuzz/seed.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared="$here/../../shared/corpus"
mkdir -p "$here"/corpus/{docx,text,sniff}

# Copies files into a corpus folder, prefixing names with their source folder (names collide).
seed() {
  local target=$1; shift
  for f in "$@"; do
    cp "$f" "$here/corpus/$target/$(basename "$(dirname "$f")")_$(basename "$f")"
  done
}

seed docx "$shared"/docx/*/*.docx
seed sniff "$shared"/docx/*/*.docx "$shared"/text/* "$shared"/markdown/* "$shared"/pdf/_negative_not_a_pdf/*
# The text target reads a selector byte first; prefix each seed with one.
for f in "$shared"/text/* "$shared"/markdown/*; do
  { printf '\x0a'; cat "$f"; } > "$here/corpus/text/$(basename "$f")"
done
# Raw main parts for the docx target's XML mode.
for f in "$shared"/docx/*/*.docx; do
  unzip -p "$f" word/document.xml > "$here/corpus/docx/$(basename "$(dirname "$f")")_$(basename "$f" .docx).xml" 2>/dev/null || true
done
find "$here/corpus/docx" -name '*.xml' -empty -delete
