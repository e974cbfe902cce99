#!/usr/bin/env bash
# Exponentials by polynomial (blocksparse.exp_poly, off by default) on the device tool's H200: one call of at
# most 570 s. Built 2026-12-01 after the thirteenth bench run (docs/benchmarks.md), not yet run. Results
# and logs under OUT.
#   bash launch/h200_poly_ab.sh OUT
# p. the stripped loops (kernels/ws_probe.py): the forward with 0, 1, 2 quarters of its exponentials by
#    polynomial, and the dK/dV loop beside our dK/dV kernel's rate (446 TFLOP/s at 1M 8x64)
# c. bf16 correctness with a half by polynomial: gpu_check's 12,288 and 1M checks
# b. our forward+backward with poly1 and poly2 beside the default and Flex at 262,144 and 1M; then 12,288
#    replayed from CUDA graphs
set -uo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT}"); mkdir -p "$OUT"; cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MS=(python3 -m megastride.launch.cli)  # an array: timeout runs commands, not shell functions
step() { echo "== $1 rc=$2 $(date -u +%H:%M:%S)" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" \
  2>&1 | tail -1 | tee -a "$OUT/env.log"
date -u | tee -a "$OUT/env.log"
timeout "${P_S:-120}" python3 -m megastride.kernels.ws_probe --kernels poly,dkdv --cases 1048576x64,262144x128 \
  --out "$OUT/probe" > "$OUT/probe.log" 2>&1
step "p: stripped loops, exponentials by polynomial and dK/dV" $?
MEGASTRIDE_BLOCKSPARSE_EXP_POLY=2 timeout "${C_S:-100}" python3 -m megastride.kernels.gpu_check --no-long \
  --only "12288,bf16 1M" --out "$OUT/check" > "$OUT/check.log" 2>&1
step "c: gpu_check (bf16) with half the exponentials by polynomial" $?
timeout "${B_S:-250}" "${MS[@]}" bench attention --patterns fixed --configs 8x64,2x128 --lengths 262144,1048576 \
  --peers flex,poly1,poly2 --out "$OUT/bench" > "$OUT/bench.log" 2>&1
step "b: 262,144 and 1M, default / poly1 / poly2 beside Flex" $?
timeout "${G_S:-90}" "${MS[@]}" bench attention --patterns fixed --configs 8x64,2x128 --lengths 12288 \
  --peers flex,poly1,poly2 --graphs --out "$OUT/short" > "$OUT/short.log" 2>&1
step "b: 12,288 replayed, default / poly1 / poly2 beside Flex" $?
tail -n 40 "$OUT"/*.log > "$OUT/summary.txt" 2>/dev/null
echo "done $(date -u)" | tee -a "$OUT/steps.log"
