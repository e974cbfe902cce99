#!/bin/bash
# Forty-first run, call 3 (2026-12-05): the residual-kernels GPU test alone, stopping at its failure so its message
# shows (calls 1 and 2 lost it to their timeouts); then the fixed 1M step under 60 GB, two timed steps with the
# default (the prefetch rework, the unread recompute tail, the residual and FFN kernels), two with the residual
# and FFN kernels off (MEGASTRIDE_RESIDUAL=plain MEGASTRIDE_FFN=torch).
date -u > $OUT/times.txt
timeout 150 python3 -m pytest -x -q -p no:cacheprovider tests/test_train_gpu.py -k "residual_kernels" \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "^E |^>|passed|failed|rc |line [0-9]+" $OUT/tests.log | head -30 | cut -c1-300
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
for run in fused plain; do
  envs=""; [ $run = plain ] && envs="MEGASTRIDE_RESIDUAL=plain MEGASTRIDE_FFN=torch"
  env $envs timeout 165 megastride bench scaling $common $mem --steps 2 --out $OUT/$run > $OUT/$run.log 2>&1
  echo "$run rc $?" >> $OUT/$run.log
  echo "== $run"; grep -v "^|" $OUT/$run.log | grep -v "memory at the peak" | tail -2 | cut -c1-400
  cp $OUT/$run/*.csv $OUT/$run.csv 2>/dev/null; rm -rf $OUT/$run
  date -u >> $OUT/times.txt
done
