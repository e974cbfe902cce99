#!/bin/bash
# Forty-first run, call 5 (2026-12-05): the fixed 1M step under 60 GB with the loss over 65,536-position chunks
# (8,192 by default: 128 chunks of small kernels), then the default again in the same call (calls 3-4: 7.993 and
# 8.008 s); then the halves kernel's GPU tests (head dim 128, segments), stopping at the first failure.
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
for run in chunk default; do
  extra=""; [ $run = chunk ] && extra="--set model.loss_chunk=65536"
  timeout 125 megastride bench scaling $common $mem $extra --steps 2 --out $OUT/$run > $OUT/$run.log 2>&1
  echo "$run rc $?" >> $OUT/$run.log; grep -E "s/step" $OUT/$run.log | grep -v "^|" | cut -c1-400
  cp $OUT/$run/*.csv $OUT/$run.csv 2>/dev/null; rm -rf $OUT/$run
  date -u >> $OUT/times.txt
done
timeout 150 python3 -m pytest -x -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "halves" > $OUT/halves.log 2>&1
echo "halves rc $?" >> $OUT/halves.log; grep -E "^E |passed|failed|rc " $OUT/halves.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
