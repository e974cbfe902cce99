#!/usr/bin/env bash
# dK/dV columns walked last query tile first (blocksparse.reverse_columns, off by default) on the device tool's
# H200: one call of at most 570 s. Built 2026-12-01 after the fourteenth bench run (docs/benchmarks.md), not
# yet run. Results and logs under OUT.
#   bash launch/h200_reverse_ab.sh OUT
# p. the stripped dK/dV loop on the fixed pattern's own lists, forwards and reversed (ws_probe --lists fixed)
# c. bf16 correctness with the reversed walk: gpu_check's 1M checks (fixed and strided)
# b. our forward+backward reversed beside the default and Flex at 262,144 and 1M, profiled (the dK/dV
#    kernel's own time)
set -uo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT}"); mkdir -p "$OUT"; cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MS=(python3 -m megastride.launch.cli)  # an array: timeout runs commands, not shell functions
step() { echo "== $1 rc=$2 $(date -u +%H:%M:%S)" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" \
  2>&1 | tail -1 | tee -a "$OUT/env.log"
date -u | tee -a "$OUT/env.log"
timeout "${P_S:-120}" python3 -m megastride.kernels.ws_probe --kernels dkdv --lists fixed --cases 1048576x64,262144x64 \
  --out "$OUT/probe" > "$OUT/probe.log" 2>&1
step "p: stripped dK/dV loop on the fixed pattern's lists, forwards and reversed" $?
MEGASTRIDE_BLOCKSPARSE_DKDV_REVERSE=1 timeout "${C_S:-150}" python3 -m megastride.kernels.gpu_check --no-long \
  --only "bf16 1M" --out "$OUT/check" > "$OUT/check.log" 2>&1
step "c: gpu_check (bf16, 1M) with the reversed walk" $?
timeout "${B_S:-280}" "${MS[@]}" bench attention --patterns fixed --configs 8x64,2x128 --lengths 262144,1048576 \
  --peers flex,reverse --profile --out "$OUT/bench" > "$OUT/bench.log" 2>&1
step "b: 262,144 and 1M, default / reverse beside Flex, profiled" $?
tail -n 40 "$OUT"/*.log > "$OUT/summary.txt" 2>/dev/null
echo "done $(date -u)" | tee -a "$OUT/steps.log"
