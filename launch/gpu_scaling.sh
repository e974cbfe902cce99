#!/usr/bin/env bash
# The one-GPU run behind docs/scaling.md: the length sweep (dense / fixed / strided, 1,024 to
# 1,048,576 tokens), the paper's Table 2 and the planner check -- about 6 minutes on one H200.
# Needs torch with CUDA and triton; not DeepSpeed.
#   bash launch/gpu_scaling.sh OUT_DIR [extra `megastride bench scaling` options]
set -euo pipefail
OUT=$(realpath -m "${1:-runs/scaling}")
shift || true
mkdir -p "$OUT"
# fewer fragmentation OOMs at 1M tokens (max_memory_allocated, what is reported, is unaffected)
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
cd "$(dirname "$0")/.."
python -m megastride.launch.cli bench scaling --device cuda --config configs/enwik8.yaml --all --out "$OUT" "$@" \
  2>&1 | tee "$OUT/run.log"
