#!/usr/bin/env bash
# Compiles every CUDA source of cuda/src for sm_90 with nvcc, without PyTorch (the kernels
# depend only on CUDA and CUB; the PyTorch glue lives in the .cpp files). Nothing runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
for f in cuda/src/*.cu; do
  nvcc -std=c++17 -arch=sm_90 -O3 -Icuda/src -c "$f" -o "$out/$(basename "$f").o"
done
rm -rf "$out"
echo "compile_check: $(ls cuda/src/*.cu | wc -l) CUDA sources compiled for sm_90"
