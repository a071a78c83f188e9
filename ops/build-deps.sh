#!/usr/bin/env bash
# Installs the C build dependencies FAISS needs (cmake, a C++ compiler, BLAS and LAPACK headers)
# and pdftotext (the extraction benchmarks' reference) on a Debian/Ubuntu machine, if missing.
# No servers: this is all the embedded quickstart needs. Idempotent.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(cmake g++ pkg-config libopenblas-dev liblapack-dev poppler-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing build dependencies: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
fi
