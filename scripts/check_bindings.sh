#!/usr/bin/env bash
# Syntax-checks cuda/src/bindings.cpp here, without CUDA PyTorch: g++ against the CPU torch
# wheel's headers and nvcc's CUDA headers (the wheel lacks c10's generated CUDA macros header;
# an empty one stands in). The device's build is the real test; this catches typos before a call.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_include=$(python3 -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
python_include=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
cuda_include=${CUDA_HOME:-/usr/local/cuda}/include
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
mkdir -p "$stub/c10/cuda/impl" && echo "#pragma once" >"$stub/c10/cuda/impl/cuda_cmake_macros.h"
g++ -std=c++20 -fsyntax-only -w -I"$stub" -I"$torch_include" -I"$torch_include/torch/csrc/api/include" \
    -I"$cuda_include" -I"$python_include" -Icuda/src cuda/src/bindings.cpp
echo "check_bindings: cuda/src/bindings.cpp parses"
