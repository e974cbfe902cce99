#!/usr/bin/env bash
# The kernel comparisons the twelfth bench run left open (docs/benchmarks.md), for the device tool's
# H200; each step has its own time limit (at most 9 minutes together for "s", 7 for "t a": two calls of
# 600 s). Results and logs under OUT.
#   PARTS=s bash launch/h200_kernel_ab.sh OUT; PARTS="t a" bash launch/h200_kernel_ab.sh OUT2
# s. the opt-in launch savings at short lengths: split columns finished in the kernel (SPLIT_FINISH
#    "last"; its GPU test first, the concurrent counting the interpreter cannot run) and delta computed in
#    the dQ kernel (DELTA_IN_DQ), and launches straight to the compiled kernels (DIRECT_LAUNCH: eager host
#    time); then the fixed pattern at 12,288 tokens, eager and replayed from CUDA graphs, beside Flex: the
#    default, "last", "last" with columns in segments of 8 everywhere, delta in dQ, those two, direct
# t. the backward's tiles with both score products issued first (DOTS_FIRST): dK/dV and dQ at 1M, 8x64
# a. atomic dQ (five products a tile instead of seven) beside the default with the reordered products
set -uo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT}"); mkdir -p "$OUT"; cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
ms() { python3 -m megastride.launch.cli "$@"; }
want() { [[ " ${PARTS:-s t a} " == *" $1 "* ]]; }
step() { echo "== $1 rc=$2 $(date -u +%H:%M:%S)" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" \
  2>&1 | tail -1 | tee -a "$OUT/env.log"
date -u | tee -a "$OUT/env.log"
if want s; then
  timeout "${S_TEST_S:-120}" python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k last_finish > "$OUT/s_gpu_test.log" 2>&1
  step "s: GPU test of the last finish" $?
  MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ=1 MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH=last MEGASTRIDE_BLOCKSPARSE_DQ=separate \
    MEGASTRIDE_BLOCKSPARSE_DIRECT=1 \
    timeout "${S_CHECK_S:-80}" python3 -m megastride.kernels.gpu_check --no-long --only "12288,strided bf16 D=128" \
    --out "$OUT/s_gpu_check" > "$OUT/s_gpu_check.log" 2>&1
  step "s: gpu_check (bf16) with delta in dQ and the last finish" $?
  timeout "${S_BENCH_S:-330}" ms bench attention --patterns fixed --configs 2x128,8x64 --lengths 12288 \
    --peers flex,splitlast,split8last,dqdelta,lean,direct --graphs --out "$OUT/s_bench" > "$OUT/s_bench.log" 2>&1
  step "s: 12,288 tokens, default / last / last everywhere / delta in dQ / both / direct launches, beside Flex" $?
fi
if want t; then
  timeout "${T_DKDV_S:-150}" ms bench tiles --kernel dkdv --configs 8x64 --lengths 1048576 --no-flex \
    --tiles list,64x128w8s3,64x128w8s4,64x64w4s4,64x64w4s5,32x128w4s4,32x128w4s3 --out "$OUT/t_dkdv" > "$OUT/t_dkdv.log" 2>&1
  step "t: dK/dV tiles at 1M 8x64" $?
  timeout "${T_DQ_S:-100}" ms bench tiles --kernel dq --configs 8x64 --lengths 1048576 --no-flex \
    --tiles list,128x64w4s4,128x128w8s4,128x64w8s4 --out "$OUT/t_dq" > "$OUT/t_dq.log" 2>&1
  step "t: dQ tiles at 1M 8x64" $?
fi
if want a; then
  timeout "${A_S:-120}" ms bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 \
    --peers atomic --out "$OUT/a_bench" > "$OUT/a_bench.log" 2>&1
  step "a: atomic dQ beside the default at 262,144 and 1M" $?
fi
tail -n 40 "$OUT"/*.log > "$OUT/summary.txt" 2>/dev/null
echo "done $(date -u)" | tee -a "$OUT/steps.log"
