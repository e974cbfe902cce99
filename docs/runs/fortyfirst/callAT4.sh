#!/bin/bash
# Forty-first run, call 4 (2026-12-05): the fixed 1M step under 60 GB again (call 3: 7.993 s, MFU 0.469, 48.04 GB),
# three timed steps, then the baseline (the plain PyTorch + compiled FlexAttention script of issue 5) in the same
# call, as the 2026-12-01 side-by-side run did.
date -u > $OUT/times.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 200 megastride bench scaling $common --kinds fixed $mem --steps 3 --out $OUT/ours > $OUT/ours.log 2>&1
echo "ours rc $?" >> $OUT/ours.log; grep -v "^|" $OUT/ours.log | grep -v "memory at the peak" | tail -2 | cut -c1-400
cp $OUT/ours/*.csv $OUT/ours.csv 2>/dev/null; rm -rf $OUT/ours
date -u >> $OUT/times.txt
timeout 230 megastride bench scaling $common --kinds baseline-flex --steps 2 --out $OUT/base > $OUT/base.log 2>&1
echo "base rc $?" >> $OUT/base.log; grep -v "^|" $OUT/base.log | grep -v "memory at the peak" | tail -2 | cut -c1-400
cp $OUT/base/*.csv $OUT/base.csv 2>/dev/null; rm -rf $OUT/base
date -u >> $OUT/times.txt
