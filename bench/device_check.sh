#!/usr/bin/env bash
# The accelerator check of the pretraining step on one GPU, from the repository root, in under 8 minutes:
#
#   bash bench/device_check.sh [OUTPUT_STEM]      # default stem: device_check_results
#
# writes OUTPUT_STEM.txt (everything printed) and OUTPUT_STEM.json (the benchmark's figures; OUTPUT_STEM.cudnn.json
# for the cuDNN-attention run). Needs JAX with CUDA, Flax, Optax, Orbax, absl, chex and pytest; not TensorFlow.
#
#   1. ml_collections (the configs need it): if it cannot be imported, every wheel in .whl/ is unpacked into
#      /tmp/m3video_site, which goes on PYTHONPATH (ml_collections and PyYAML are pure Python; unpacked, not
#      installed: no pip, no index, no dependency resolution). Without .whl/ it stops, saying how to make one.
#   2. tests/attention_test.py on the GPU (JAX_PLATFORMS=cuda): 'xla' and 'cudnn' attention against 'explicit'.
#   3. bench/train_step.py --platform=gpu: the paper's ViT-B pretraining step (16 x 224², mask 0.7, trajectory target
#      L = 6, joint decoder) in bfloat16 with attention 'auto', at the largest batch that fits; then, time permitting,
#      the same batch with attention 'cudnn'.
#   4. The test files of the model, targets and losses, which need no TensorFlow, on the CPU as the suite always runs
#      (tests/conftest.py sets JAX_PLATFORMS=cpu unless it is set; this script unsets it for them).
# Each step has a time limit; a failed step is reported and the next one still runs; the exit status is 1 if any
# step failed. Environment: PYTHON (default python3), BATCH (fixed batch: skips the search), PEAK_TFLOPS (for MFU;
# default: the bench's table, H100 SXM / H200 = 989), SKIP_TESTS=1, TESTS (test files of step 4),
# DEVICE_CHECK_CPU=1 (a smoke run of this script on a machine without a GPU: everything on the CPU, tiny model).
# Written and smoke-run (DEVICE_CHECK_CPU=1) with jax 0.10 on a CPU-only machine; the GPU image's jax 0.11 could not be
# installed there, so a run of this script is the first run of the code on that version.
set -euo pipefail

STEM="${1:-device_check_results}"
PY="${PYTHON:-python3}"
CPU_SMOKE="${DEVICE_CHECK_CPU:-0}"
TEST_FILES="${TESTS:-tests/models_test.py tests/targets_test.py tests/losses_test.py tests/masking_test.py \
tests/attention_test.py tests/accelerator_test.py}"
BUDGET_S=470  # Steps are cut to what is left of this (8 minutes, less start-up).
SITE=/tmp/m3video_site
# Compiled programs are kept across runs of the script on the same machine (a rerun compiles nothing again).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/m3video_jax_cache}"

if [ ! -f bench/train_step.py ]; then
  echo "error: run this from the repository root (bench/train_step.py not found in $(pwd))" >&2
  exit 2
fi

FAILED=()
SUMMARY=()

# step NAME LIMIT_S COMMAND...: prints and runs COMMAND with a time limit, records how it went, never stops the script.
step() {
  local name=$1 limit=$2 rc=0 start=$SECONDS
  shift 2
  printf '\n== %s (time limit %d s)\n+ %s\n' "$name" "$limit" "$*"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  local result="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    result="FAILED: time limit of $limit s"
  elif [ "$rc" -ne 0 ]; then
    result="FAILED: exit status $rc"
  fi
  [ "$result" = ok ] || FAILED+=("$name")
  SUMMARY+=("$name: $result in $((SECONDS - start)) s")
  printf '== %s: %s in %d s\n' "$name" "$result" "$((SECONDS - start))"
}

# left LIMIT: LIMIT, or less if less of the budget is left (at least 30 s).
left() {
  local rest=$((BUDGET_S - SECONDS))
  [ "$rest" -lt 30 ] && rest=30
  [ "$rest" -lt "$1" ] && echo "$rest" || echo "$1"
}

ensure_ml_collections() {
  if "$PY" -c 'import ml_collections' 2>/dev/null; then
    return 0
  fi
  local wheels=(.whl/*.whl)
  if [ ! -e "${wheels[0]}" ]; then
    local pyver
    pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "error: ml_collections is not installed and .whl/ has no wheels: on a machine with internet, in the" \
      "repository root, run 'pip download --no-deps ml_collections PyYAML -d .whl' (Python $pyver here) and run this" \
      "again" >&2
    return 1
  fi
  echo "+ unpacking ${wheels[*]} into $SITE (ml_collections is not installed)"
  mkdir -p "$SITE"
  local wheel
  for wheel in "${wheels[@]}"; do
    "$PY" -m zipfile -e "$wheel" "$SITE"
  done
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c 'import ml_collections' 2>/dev/null; then
    echo "error: ml_collections still does not import from $SITE:" >&2
    "$PY" -c 'import ml_collections' 2>&1 | tail -1 >&2
    echo "(a missing yaml: add PyYAML, 'pip download --no-deps ml_collections PyYAML -d .whl')" >&2
    return 1
  fi
}

main() {
  echo "device check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -n), $("$PY" --version 2>&1)," \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  ensure_ml_collections
  "$PY" -c 'import jax, flax, optax, orbax.checkpoint as ocp, ml_collections; print("jax", jax.__version__, "flax",
flax.__version__, "optax", optax.__version__, "orbax", ocp.__version__, "ml_collections", ml_collections.__version__)'
  if "$PY" -c 'import tensorflow' 2>/dev/null; then
    echo "note: TensorFlow is installed here; nothing below imports it"
  fi

  local bench=(bench/train_step.py --platform=gpu --jax_dtype=bfloat16)
  local gpu_env=(env JAX_PLATFORMS=cuda CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}")
  if [ -n "${PEAK_TFLOPS:-}" ]; then
    bench+=("--peak_tflops=$PEAK_TFLOPS")
  fi
  if [ "$CPU_SMOKE" = 1 ]; then
    echo "DEVICE_CHECK_CPU=1: a smoke run on the CPU (tiny model, the gpu path of the benchmark on the CPU backend)"
    bench+=(--allow_cpu_backend --variant=mu --res=64 --frames=8 --min_batch=2 --max_batch=4 --steps=2 --rounds=1)
    gpu_env=(env JAX_PLATFORMS=cpu)
  else
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    step "attention tests on the GPU" "$(left 120)" "${gpu_env[@]}" "$PY" -m pytest tests/attention_test.py -q
  fi

  if [ -n "${BATCH:-}" ]; then
    bench+=("--batch=$BATCH")
  fi
  step "benchmark, bfloat16, attention auto" "$(left 300)" "${gpu_env[@]}" "$PY" "${bench[@]}" --attention=auto \
    --json="$STEM.json"
  if [ "$CPU_SMOKE" != 1 ] && [ -f "$STEM.json" ] && [ "$SECONDS" -lt 330 ]; then
    local batch
    batch=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["batch"])' "$STEM.json")
    step "benchmark, bfloat16, attention cudnn, batch $batch" "$(left 150)" "${gpu_env[@]}" "$PY" "${bench[@]}" \
      --attention=cudnn --batch="$batch" --json="$STEM.cudnn.json"
  elif [ "$CPU_SMOKE" != 1 ]; then
    SUMMARY+=("benchmark with attention cudnn: not run (no figures from the first run, or too little time left)")
  fi

  if [ "${SKIP_TESTS:-0}" != 1 ]; then
    # shellcheck disable=SC2086  # TEST_FILES is a list of paths.
    step "TensorFlow-free tests on the CPU" "$(left 240)" env -u JAX_PLATFORMS "$PY" -m pytest $TEST_FILES -q \
      -m 'not slow'
  fi

  printf '\n== summary (%d s)\n' "$SECONDS"
  printf '%s\n' "${SUMMARY[@]}"
  local figures
  for figures in "$STEM.json" "$STEM.cudnn.json"; do
    if [ -f "$figures" ]; then
      echo "figures: $figures"
    fi
  done
  echo "log: $STEM.txt"
  [ "${#FAILED[@]}" -eq 0 ]
}

main "$@" 2>&1 | tee "$STEM.txt"
