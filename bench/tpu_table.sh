#!/usr/bin/env bash
# The TPU table of BENCHMARKS.md ("TPU slices, compiled on a CPU host"): one `bench/tpu_compile.py` run per row, each
# writing <out>/<row>.json and <out>/<row>.log. ~1-2 hours on 2 cores. Usage: bash bench/tpu_table.sh [out_dir] [row ...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/tpu_table}
shift || true
mkdir -p "$OUT"
PY=${PYTHON:-python}
# name | config | topology | extra flags. The v5e row searches (two compiles: 16 and 32 per chip, 64 predicted over the
# HBM); the other ViT-B pretraining rows compile the batch that v5e's two programs predict (same step, ~1.37 GiB fixed +
# 0.376 GiB per clip): one compile each on these 2 cores instead of three. The other rows search from a base near the
# expected largest. pretrain_k400 is not compiled: it lowers to pretrain_ssv2's program but for the lr schedule's step
# constants (BENCHMARKS.md).
ROWS=(
  "b_pretrain_v5e8|configs/pretrain_ssv2.py|v5e:2x4|--base_batch=16"
  "b_pretrain_v6e8|configs/pretrain_ssv2.py|v6e:2x4|--per_chip_batch=64"
  "b_pretrain_v5p8|configs/pretrain_ssv2.py|v5p:2x2x2|--per_chip_batch=128"
  "b_pretrain_v4_8|configs/pretrain_ssv2.py|v4:2x2x2|--per_chip_batch=64"
  "b_finetune_v5p8|configs/finetune_ssv2.py|v5p:2x2x2|--base_batch=16"
  "b_pretrain_v5e8_remat|configs/pretrain_ssv2.py|v5e:2x4|--base_batch=32 --config.model.remat=True"
  "l_pretrain_v5p8_fsdp8|configs/pretrain_ssv2.py:variant=L|v5p:2x2x2|--base_batch=32 --config.mesh.fsdp=8"
  "b_pretrain_v5e256|configs/pretrain_ssv2.py|v5e:16x16|--per_chip_batch=2"
  "l_pretrain_v6e8_fsdp8|configs/pretrain_ssv2.py:variant=L|v6e:2x4|--base_batch=16 --config.mesh.fsdp=8"
  "l_pretrain_v5p128_fsdp4|configs/pretrain_ssv2.py:variant=L|v5p:4x4x8|--per_chip_batch=4 --config.mesh.fsdp=4"
)
for row in "${ROWS[@]}"; do
  IFS='|' read -r name config topology extra <<< "$row"
  if [ $# -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then continue; fi
  if [ -s "$OUT/$name.json" ]; then echo "$name: done before ($OUT/$name.json)"; continue; fi
  echo "$name: $PY bench/tpu_compile.py --config=$config --topology=$topology $extra"
  # shellcheck disable=SC2086
  $PY bench/tpu_compile.py --config="$config" --topology="$topology" $extra --json="$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  grep -E '^(largest|per-chip|hbm|xla|model|global|compile)' "$OUT/$name.log" | sed 's/^/    /'
done
