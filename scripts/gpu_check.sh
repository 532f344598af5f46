#!/usr/bin/env bash
# One device call: build the extension, run every GPU test, run the benchmark. Logs go to
# $OUT (the device tool brings them back). The golden data travels in .device_data/ (ignored
# by git, named in the call's `carry`): mkdir -p .device_data && cp -r ../shared .device_data/
#   device run: bash scripts/gpu_check.sh [pytest args...]
# Options (environment): SKIP_TESTS=1, TESTS_TIMEOUT (s, per pass), SKIP_EAGER=1 (no second test pass with eager octant ranks),
# SKIP_FIT=1, SKIP_BENCH=1, SKIP_SPARSE=1, SKIP_LONG=1 (no long run and
# large sizes), BENCH_SCENES, BENCH_ROUNDS (baseline and tree alternate that many times; run-to-run
# spread is 5-10%); PROFILE=1 (torch profiler, PROFILE_SCENES), NCU=1 (Nsight Compute,
# NCU_SCENES, NCU_REGEX: kernel names, NCU_COUNT: launches), NCU_SOURCE=1 (stall samples per source
# line: scripts/ncu_source.py, NCU_KERNELS, NCU_SCENES, NCU_VIEW, NCU_TOP, NCU_HEAD; NCU_SPARSE=1: in a
# fresh 1%-sparse frame), STEADY=N (N training steps back to back,
# camera matrices on CPU and GPU; STEADY_SCENES; baseline and tree),
# HOST=1 (host time of the Python and C++ steps: bench/bench_host.py, HOST_SCENE), HOST_AB=N (N rounds
# of whole frames' host time through the public API, baseline and tree in alternating processes),
# AB=1 (whole frames of baseline and tree in one process, alternating blocks: bench_host.py --ab, AB_SCENES),
# GAPS=1 (host spans and GPU idle of unprofiled dense forwards: bench_host.py --gaps, GAPS_SCENES;
# baseline and tree, in alternating order), GPUONLY=1 (each view's GPU time of the forward and of the
# render with reused intersections, the host's time before the first launch hidden: bench_cuda.py
# --gpu-only, GPUONLY_SCENES; baseline, tree and variants; GPUONLY_SPARSE=1: sparse frames' GPU time
# too, bench_cuda.py --gpu-only --sparse on O6M and R6M). Variants: each .device_data/variants/NAME.patch
# is applied to a copy of the tree, built beside it and measured by GPUONLY (and GAPS: its per-kernel
# GPU times; VARIANT_TESTS=1: the GPU tests with eager octant ranks; NAME in the log).
# The device tool brings back at most 8 files: device.txt, tests.log, bench.log (fit example
# and benchmarks), bench.json, bench_base.json, profile.txt, ncu.txt, and a build log on failure.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export SVRASTER_SHARED=${SVRASTER_SHARED:-$PWD/.device_data/shared}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
start=$(date +%s)
# Baseline: the previous commit's sources in .device_data/base (git archive HEAD | tar -x -C
# .device_data/base), built in place alongside, benchmarked in the same run.
if [ -d .device_data/base ]; then
  (cd .device_data/base && python3 setup.py build_ext --inplace >"$LOGS/base_build.log" 2>&1; echo $? >"$LOGS/base_build.rc") &
fi
VARIANTS=()
for patch in .device_data/variants/*.patch; do
  [ -e "$patch" ] || continue
  name=$(basename "$patch" .patch)
  VARIANTS+=("$name")
  rm -rf "/tmp/variant_$name" && mkdir -p "/tmp/variant_$name"
  tar --exclude=./.device_data -cf - . | tar -xf - -C "/tmp/variant_$name"
  (cd "/tmp/variant_$name" && git apply "$OLDPWD/$patch" && python3 setup.py build_ext --inplace \
     >"$LOGS/variant_$name.log" 2>&1; echo "variant $name: build rc $?") &
done
if ! python3 -m pip install --no-build-isolation --no-deps -e . >"$LOGS/build.log" 2>&1; then
  cp "$LOGS/build.log" "$OUT/"; tail -n 60 "$LOGS/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
python3 -m svraster_cuda | tee -a "$OUT/device.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  # A hung kernel must not take the call's whole time limit.
  timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -m gpu -x -p no:cacheprovider tests "$@" 2>&1 \
    | tee "$OUT/tests.log" | tail -n 25
  rc=${PIPESTATUS[0]}
  echo "tests exit: $rc"
  [ "$rc" = 124 ] && { echo "tests timed out: a kernel may hang, nothing else is run"; exit 1; }
  if [ "${SKIP_EAGER:-0}" != 1 ]; then
    # Again with the octant ranks cached from every octree's first frame on (most tests render
    # an octree once: by default they would never reach the cached path).
    echo "== SVRASTER_OCTANT_RANKS=eager" >>"$OUT/tests.log"
    SVRASTER_OCTANT_RANKS=eager timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -m gpu -x -p no:cacheprovider tests "$@" 2>&1 \
      | tee -a "$OUT/tests.log" | tail -n 5
    echo "tests (eager ranks) exit: ${PIPESTATUS[0]}"
  fi
fi
if [ "${PROFILE:-0}" = 1 ]; then
  # Merged host/GPU timelines of one frame (bench_cuda.py timeline()), dense and sparse.
  python3 bench/bench_cuda.py --profile --scenes ${PROFILE_SCENES:-O6M,R6M} >"$OUT/profile.txt" 2>&1
  python3 bench/bench_cuda.py --profile --sparse --scenes ${PROFILE_SCENES:-O6M,R6M} >>"$OUT/profile.txt" 2>&1
  grep -E "^==|^  +[0-9.]+ \+" "$OUT/profile.txt" | cut -c1-120 | head -${PROFILE_LINES:-400}
fi
if [ "${NCU:-0}" = 1 ]; then
  for scene in ${NCU_SCENES:-O6M R6M}; do
    ncu --kernel-name regex:"${NCU_REGEX:-render_(forward|backward)}" --launch-skip 2 \
        --launch-count ${NCU_COUNT:-2} --section SpeedOfLight \
        --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
        --section InstructionStats --section SchedulerStats \
        --metrics smsp__thread_inst_executed_per_inst_executed.ratio,smsp__sass_average_branch_targets_threads_uniform.pct \
        python3 bench/bench_cuda.py --scenes "$scene" --views 1 --repeat 1 >"$LOGS/ncu_$scene.txt" 2>&1
    echo "== ncu $scene" | tee -a "$OUT/ncu.txt"
    cat "$LOGS/ncu_$scene.txt" >>"$OUT/ncu.txt"
    grep -E "render_|Duration|Stall|Warp Cycles|Issued Ipc|Achieved Occupancy|Registers|Eligible|L1/TEX Hit|L2 Hit|thread_inst|branch_targets" "$LOGS/ncu_$scene.txt" | head -40
  done
fi
if [ "${NCU_SOURCE:-0}" = 1 ]; then
  for scene in ${NCU_SCENES:-R6M}; do
    for kernel in ${NCU_KERNELS:-render_backward render_forward}; do
      python3 scripts/ncu_source.py --kernel "$kernel" --scene "$scene" --view ${NCU_VIEW:-0} --top ${NCU_TOP:-40} \
        $([ "${NCU_SPARSE:-0}" = 1 ] && echo --sparse) \
        >"$LOGS/source.txt" 2>&1
      cat "$LOGS/source.txt" >>"$OUT/ncu.txt"
      head -n ${NCU_HEAD:-30} "$LOGS/source.txt"
    done
  done
fi
if [ "${SKIP_FIT:-0}" != 1 ]; then
  python3 examples/fit_voxels.py --device cuda --out /tmp/fit_output 2>&1 | tee -a "$OUT/bench.log" | tail -n 4
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  [ -d .device_data/base ] && wait
  for round in $(seq "${BENCH_ROUNDS:-1}"); do
    if [ -d .device_data/base ]; then
      echo "== baseline (build rc $(cat "$LOGS/base_build.rc")), round $round"
      [ "$(cat "$LOGS/base_build.rc")" = 0 ] || cp "$LOGS/base_build.log" "$OUT/"
      PYTHONPATH=$PWD/.device_data/base/cuda python3 -c "import svraster_cuda; print(svraster_cuda.__file__)"
      PYTHONPATH=$PWD/.device_data/base/cuda python3 bench/bench_cuda.py --scenes ${BENCH_SCENES:-O1.4M,O6M,R1.5M,R6M} \
        --json "$OUT/bench_base.json" 2>&1 | tee -a "$OUT/bench.log" | tail -n 6
      if [ "${SKIP_SPARSE:-0}" != 1 ]; then
        PYTHONPATH=$PWD/.device_data/base/cuda python3 bench/bench_cuda.py --scenes O6M,R6M --sparse 2>&1 \
          | tee -a "$OUT/bench.log" | tail -n 24
      fi
      echo "== this tree, round $round"
    fi
    python3 bench/bench_cuda.py --scenes ${BENCH_SCENES:-O1.4M,O6M,R1.5M,R6M} --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/bench.log" | tail -n 6
    if [ "${SKIP_SPARSE:-0}" != 1 ]; then
      python3 bench/bench_cuda.py --scenes O6M,R6M --sparse 2>&1 | tee -a "$OUT/bench.log" | tail -n 24
    fi
  done
  if [ "${SKIP_LONG:-0}" != 1 ]; then
    python3 bench/bench_cuda.py --scenes R1.5M --long 1000 2>&1 | tee -a "$OUT/bench.log" | tail -n 1
    python3 bench/bench_cuda.py --scenes O6M --sizes 2>&1 | tee -a "$OUT/bench.log" | tail -n 6
  fi
fi
if [ "${HOST:-0}" = 1 ]; then
  python3 bench/bench_host.py --scene ${HOST_SCENE:-R1.5M} 2>&1 | tee -a "$OUT/bench.log" | tail -n 14
fi
if [ -n "${HOST_AB:-}" ] && [ -d .device_data/base ]; then
  wait  # the baseline's build
  for round in $(seq "$HOST_AB"); do
    PYTHONPATH=$PWD/.device_data/base/cuda python3 bench/bench_host.py --frames --label base \
      --scene ${HOST_SCENE:-R1.5M} 2>&1 | tee -a "$OUT/bench.log" | tail -n 6
    python3 bench/bench_host.py --frames --label tree --scene ${HOST_SCENE:-R1.5M} 2>&1 | tee -a "$OUT/bench.log" | tail -n 6
  done
fi
if [ "${AB:-0}" = 1 ] && [ -d .device_data/base ]; then
  wait  # the baseline's build
  for scene in ${AB_SCENES:-R6M}; do
    python3 bench/bench_host.py --ab .device_data/base/cuda/svraster_cuda --scene "$scene" 2>&1 \
      | tee -a "$OUT/bench.log" | tail -n 6
  done
fi
if [ "${GAPS:-0}" = 1 ]; then
  [ -d .device_data/base ] && wait
  gaps() {  # gaps LABEL [PYTHONPATH] SCENE
    echo "== gaps, $1"
    PYTHONPATH=$2 python3 bench/bench_host.py --gaps --scene "$3" 2>&1 | tee -a "$OUT/bench.log" | tail -n 10
  }
  # The process run second was often the slower on the host (session 17): the order alternates
  # from scene to scene.
  i=0
  for scene in ${GAPS_SCENES:-R6M O6M}; do
    if [ ! -d .device_data/base ]; then
      gaps "this tree" "" "$scene"
    elif [ $((i % 2)) = 0 ]; then
      gaps baseline "$PWD/.device_data/base/cuda" "$scene"; gaps "this tree" "" "$scene"
    else
      gaps "this tree" "" "$scene"; gaps baseline "$PWD/.device_data/base/cuda" "$scene"
    fi
    i=$((i + 1))
  done
fi
if [ "${GPUONLY:-0}" = 1 ]; then
  [ -d .device_data/base ] && wait
  if [ -d .device_data/base ]; then
    echo "== gpu-only, baseline"
    PYTHONPATH=$PWD/.device_data/base/cuda python3 bench/bench_cuda.py --gpu-only \
      --scenes ${GPUONLY_SCENES:-O6M,R1.5M,R6M} 2>&1 | tee -a "$OUT/bench.log" | grep median
    [ "${GPUONLY_SPARSE:-0}" = 1 ] && PYTHONPATH=$PWD/.device_data/base/cuda python3 bench/bench_cuda.py --gpu-only \
      --sparse --scenes O6M,R6M 2>&1 | tee -a "$OUT/bench.log" | grep -E "^\| (dense|sparse|[OR][0-9.]+M )"
  fi
  echo "== gpu-only, this tree"
  python3 bench/bench_cuda.py --gpu-only --scenes ${GPUONLY_SCENES:-O6M,R1.5M,R6M} 2>&1 | tee -a "$OUT/bench.log" | grep median
  [ "${GPUONLY_SPARSE:-0}" = 1 ] && python3 bench/bench_cuda.py --gpu-only --sparse --scenes O6M,R6M 2>&1 \
    | tee -a "$OUT/bench.log" | grep -E "^\| (dense|sparse|[OR][0-9.]+M )"
  wait
  for name in "${VARIANTS[@]}"; do
    if [ "${VARIANT_TESTS:-0}" = 1 ]; then  # the GPU tests on the variant, octant ranks cached at once
      echo "== tests, variant $name" | tee -a "$OUT/tests.log"
      SVRASTER_OCTANT_RANKS=eager PYTHONPATH=/tmp/variant_$name/cuda timeout "${TESTS_TIMEOUT:-240}" \
        python3 -m pytest -q -m gpu -x -p no:cacheprovider tests 2>&1 | tee -a "$OUT/tests.log" | tail -n 3
    fi
    echo "== gpu-only, variant $name"
    PYTHONPATH=/tmp/variant_$name/cuda python3 bench/bench_cuda.py --gpu-only \
      --scenes ${GPUONLY_SCENES:-O6M,R1.5M,R6M} 2>&1 | tee -a "$OUT/bench.log" | grep -E "median|Error"
    [ "${GPUONLY_SPARSE:-0}" = 1 ] && PYTHONPATH=/tmp/variant_$name/cuda python3 bench/bench_cuda.py --gpu-only \
      --sparse --scenes O6M,R6M 2>&1 | tee -a "$OUT/bench.log" | grep -E "^\| (dense|sparse|[OR][0-9.]+M )|Error"
    if [ "${GAPS:-0}" = 1 ]; then  # the variant's per-kernel GPU times too
      for scene in ${GAPS_SCENES:-R6M O6M}; do gaps "variant $name" "/tmp/variant_$name/cuda" "$scene"; done
    fi
  done
fi
if [ -n "${STEADY:-}" ]; then
  if [ -d .device_data/base ]; then
    wait  # the baseline's build
    echo "== steady state, baseline"
    PYTHONPATH=$PWD/.device_data/base/cuda python3 bench/bench_cuda.py --scenes ${STEADY_SCENES:-O6M,R6M} \
      --steady "$STEADY" 2>&1 | tee -a "$OUT/bench.log" | tail -n 12
    echo "== steady state, this tree"
  fi
  python3 bench/bench_cuda.py --scenes ${STEADY_SCENES:-O6M,R6M} --steady "$STEADY" 2>&1 | tee -a "$OUT/bench.log" | tail -n 12
fi
