#!/usr/bin/env bash
# Issue #8's table: the local model (beside PyTorch) and FAISS's BLAS-bound work under each
# OpenBLAS kernel, on this machine, in one run. Rows: OPENBLAS_CORETYPE unset (what a ragpipe
# process gets by itself, start-up guard included), Prescott (the generic fallback), Haswell,
# SkylakeX where the CPU has AVX-512, and "guard": Prescott made to look like OpenBLAS's own pick
# (as on a CPU it does not know), which ragpipe's start-up guard replaces. Needs the model (`bash ops/fetch-model.sh`), the test
# services, and the PyTorch venv named in benches/local_embed_vs_torch.py.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p') (family $(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -1), model $(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores)"
cargo bench --bench local_embed --no-run --quiet
cargo bench --bench faiss_blas --no-run --quiet
rows=(unset Prescott Haswell)
grep -qw avx512f /proc/cpuinfo && rows+=(SkylakeX)
rows+=(guard)
for core in "${rows[@]}"; do
  run=(env -u RAGPIPE_BLAS_GUARD -u RAGPIPE_BLAS_SIMULATE_UNKNOWN_CPU)
  case $core in
    unset) run+=(-u OPENBLAS_CORETYPE) ;;
    guard) run+=(OPENBLAS_CORETYPE=Prescott RAGPIPE_BLAS_SIMULATE_UNKNOWN_CPU=1) ;;
    *) run+=(OPENBLAS_CORETYPE="$core") ;;
  esac
  echo
  echo "== $core"
  "${run[@]}" cargo bench --quiet --bench local_embed
  "${run[@]}" cargo bench --quiet --bench faiss_blas
done
