#!/bin/bash
# Session BH's third call (2026-12-06), on an H200: (1) the fixed 1M step under 60 GB (the planner's choice: kept
# attention outputs on the host) with MEGASTRIDE_FFN_GEMM=nograd, then without, then the baseline (compiled Flex,
# every block recomputed): issue 5's side-by-side, and the A/B that decides whether nograd becomes the default (call
# BH1 on an H200: 8.367 s with it, 8.402 s without, GPU-kept, one run each); (2) the GPU test of nograd in a
# recomputed model's training (last: the call may be cut off by the session's device time); (3) the two steps again
# while time is left.
# Few files come back (at most eight): the steps' logs and CSVs are appended to one file each.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
start=$(date +%s); date -u > $OUT/times.txt
export MEMWATCH_S=1; source docs/runs/fortysixth/memwatch.sh
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --steps 3"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
step() {  # NAME GEMM KIND
  local extra=""; [ $3 = fixed ] && extra="$mem"
  echo "== $1 (MEGASTRIDE_FFN_GEMM=$2) $(date -u +%T)" >> $OUT/steps.log
  MEGASTRIDE_FFN_GEMM=$2 timeout 150 megastride bench scaling $common --kinds $3 $extra --out $OUT/$1 >> $OUT/steps.log 2>&1
  echo "$1 rc $?" >> $OUT/steps.log
  grep -E "s/step" $OUT/steps.log | tail -1 | cut -c1-400; echo "$1 rc"
  { echo "# $1 MEGASTRIDE_FFN_GEMM=$2"; cat $OUT/$1/*.csv; } >> $OUT/steps.csv 2>/dev/null; rm -rf $OUT/$1
  date -u >> $OUT/times.txt
}
step nograd nograd fixed
step off 0 fixed
gputest() {
  timeout 130 python3 -m pytest -x -q -p no:cacheprovider tests/test_train_gpu.py -k "without_gradients" > $OUT/tests.log 2>&1
  echo "tests rc $?" >> $OUT/tests.log; grep -E "^E |passed|failed|rc " $OUT/tests.log | head -12 | cut -c1-300
  date -u >> $OUT/times.txt
}
[ -n "$BASELINE_LAST" ] && gputest  # BASELINE_LAST=1 (on an H100, little device time): the test before the baseline
step baseline 0 baseline-flex
[ -z "$BASELINE_LAST" ] && gputest
[ $(( $(date +%s) - start )) -lt 400 ] && step nograd2 nograd fixed
[ $(( $(date +%s) - start )) -lt 400 ] && step off2 0 fixed
kill $WATCH; sort -k3 -n $OUT/mem.txt | head -1
