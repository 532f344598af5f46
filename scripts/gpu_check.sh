#!/usr/bin/env bash
# One device call: build the extension, run every GPU test, run the benchmark. Logs go to
# $OUT (the device tool brings them back). The golden data travels in .device_data/ (ignored
# by git, named in the call's `carry`): mkdir -p .device_data && cp -r ../shared .device_data/
#   device run: bash scripts/gpu_check.sh [pytest args...]
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export SVRASTER_SHARED=${SVRASTER_SHARED:-$PWD/.device_data/shared}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
start=$(date +%s)
if ! python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
python3 -m svraster_cuda | tee -a "$OUT/device.txt"
python3 -m pytest -q -m gpu -x -p no:cacheprovider tests "$@" 2>&1 | tee "$OUT/tests.log" | tail -n 25
echo "tests exit: ${PIPESTATUS[0]}"
if [ "${PROFILE:-0}" = 1 ]; then
  python3 bench/bench_cuda.py --profile --scenes ${PROFILE_SCENES:-O6M,R6M} >"$OUT/profile.txt" 2>&1
  grep -E "^(==|Name|  *Self CPU)|rasterize|Kernel|kernel|Sort|sort|Memcpy|memcpy|cumsum|nonzero|aten::(empty|zeros)" "$OUT/profile.txt" | cut -c1-150 | head -60
fi
if [ "${NCU:-0}" = 1 ]; then
  ncu --kernel-name regex:render_forward --launch-skip 2 --launch-count 1 --section SpeedOfLight \
      --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
      python3 bench/bench_cuda.py --scenes O6M --views 1 --repeat 1 >"$OUT/ncu.txt" 2>&1
  grep -E "Duration|Throughput|Stall|Warp Cycles|Issued|Occupancy|Registers|Eligible|L1/TEX Hit|L2 Hit|Mem Busy" "$OUT/ncu.txt" | head -40
fi
if [ "${SKIP_FIT:-0}" != 1 ]; then
  python3 examples/fit_voxels.py --device cuda --out /tmp/fit_output 2>&1 | tee "$OUT/fit.log" | tail -n 4
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 bench/bench_cuda.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -n 12
  python3 bench/bench_cuda.py --scenes R1.5M --long 1000 2>&1 | tee -a "$OUT/bench.log" | tail -n 1
  python3 bench/bench_cuda.py --scenes O6M --sizes 2>&1 | tee -a "$OUT/bench.log" | tail -n 6
fi
