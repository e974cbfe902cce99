#!/usr/bin/env bash
# Kernel comparisons for the device tool's H200, run 2026-12-01 (docs/benchmarks.md, thirteenth run); each
# step has its own time limit (at most 580 s together for "s", 420 for "t a": two calls of 600 s).
# Results and logs under OUT.
#   PARTS=s bash launch/h200_kernel_ab.sh OUT; PARTS="t a" bash launch/h200_kernel_ab.sh OUT2
# s. the launch savings at short lengths: split columns finished in the kernel (SPLIT_FINISH "last"; its GPU
#    test first, the concurrent counting the interpreter cannot run), delta computed in the dQ kernel
#    (DELTA_IN_DQ; both the defaults since that run), and launches straight to the compiled kernels
#    (DIRECT_LAUNCH, opt-in: eager host time); then the fixed pattern at 12,288 tokens, eager and replayed
#    from CUDA graphs, beside Flex: the default, the earlier "cast" finish with the delta kernel, "last" with
#    columns in segments of 8 everywhere, launches through Triton (direct launches the default since 2026-12-01)
# t. the backward's tiles with both score products issued first (DOTS_FIRST): dK/dV and dQ at 1M, 8x64
# a. atomic dQ (five products a tile instead of seven) beside the default with the reordered products
set -uo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT}"); mkdir -p "$OUT"; cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MS=(python3 -m megastride.launch.cli)  # an array: timeout runs commands, not shell functions
want() { [[ " ${PARTS:-s t a} " == *" $1 "* ]]; }
step() { echo "== $1 rc=$2 $(date -u +%H:%M:%S)" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" \
  2>&1 | tail -1 | tee -a "$OUT/env.log"
date -u | tee -a "$OUT/env.log"
if want s; then
  timeout "${S_TEST_S:-200}" python3 -m pytest -v -x -o faulthandler_timeout=190 -m gpu tests/test_kernels_gpu.py -k last_finish > "$OUT/s_gpu_test.log" 2>&1
  step "s: GPU test of the last finish" $?
  MEGASTRIDE_BLOCKSPARSE_DQ=separate MEGASTRIDE_BLOCKSPARSE_DIRECT=1 \
    timeout "${S_CHECK_S:-80}" python3 -m megastride.kernels.gpu_check --no-long --only "12288,strided bf16 D=128" \
    --out "$OUT/s_gpu_check" > "$OUT/s_gpu_check.log" 2>&1
  step "s: gpu_check (bf16), separate dQ (delta in it), the last finish, direct launches" $?
  timeout "${S_BENCH_S:-300}" "${MS[@]}" bench attention --patterns fixed --configs 2x128,8x64 --lengths 12288 \
    --peers flex,cast,split8last,nodirect --graphs --out "$OUT/s_bench" > "$OUT/s_bench.log" 2>&1
  step "s: 12,288 tokens, default / cast finish and delta kernel / last everywhere / Triton's launches, beside Flex" $?
fi
if want t; then
  timeout "${T_DKDV_S:-150}" "${MS[@]}" bench tiles --kernel dkdv --configs 8x64 --lengths 1048576 --no-flex \
    --tiles list,64x128w8s3,64x128w8s4,64x64w4s4,64x64w4s5,32x128w4s4,32x128w4s3 --out "$OUT/t_dkdv" > "$OUT/t_dkdv.log" 2>&1
  step "t: dK/dV tiles at 1M 8x64" $?
  timeout "${T_DQ_S:-100}" "${MS[@]}" bench tiles --kernel dq --configs 8x64 --lengths 1048576 --no-flex \
    --tiles list,128x64w4s4,128x128w8s4,128x64w8s4 --out "$OUT/t_dq" > "$OUT/t_dq.log" 2>&1
  step "t: dQ tiles at 1M 8x64" $?
fi
if want a; then
  timeout "${A_S:-120}" "${MS[@]}" bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 \
    --peers atomic --out "$OUT/a_bench" > "$OUT/a_bench.log" 2>&1
  step "a: atomic dQ beside the default at 262,144 and 1M" $?
fi
tail -n 40 "$OUT"/*.log > "$OUT/summary.txt" 2>/dev/null
echo "done $(date -u)" | tee -a "$OUT/steps.log"
