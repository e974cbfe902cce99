#!/bin/bash
# Thirty-first run, call 2: the fixed model's 1M step under the 60 GB budget with the current code (last timed
# 2026-12-02: 9.71 / 10.00 s at 48.03 GB, planned 53.03 GB, +10.4%, the 5 GB above the measurement "not
# separated"), now with the allocator's history recorded over the measured steps: what the peak is made of.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 290 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 --kinds fixed \
  --lengths 1048576 --steps 2 --warmup 1 --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.memory_budget_gb=60 --memory-trace --out $OUT/m1 \
  > $OUT/m1.log 2>&1; echo "m1 rc $?" >> $OUT/m1.log
grep -v "^|" $OUT/m1.log | tail -8; date -u >> $OUT/times.txt
head -40 $OUT/m1/memory/*.txt > $OUT/memory_1m.txt 2>/dev/null; cat $OUT/memory_1m.txt
rm -rf $OUT/m1/memory $OUT/m1/tensorboard $OUT/m1/scaling.png
