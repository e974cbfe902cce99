#!/bin/bash
# Session BL (2026-12-06), on an H100: the hint of a point skipped for GPU memory (engine.bench_scaling.offload_hint)
# on a real card, then the fixed 1M step with the overrides it names, to set the hint's plan against the measured peak.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --set train.checkpoint_blocks=auto --kinds fixed"
timeout 60 megastride bench scaling $common --lengths 1048576 --steps 2 --warmup 1 --out $OUT/skip > $OUT/skip.log 2>&1
echo "skip rc $?" >> $OUT/skip.log; grep -E "would fit|skipped|rc " $OUT/skip.log | cut -c1-300
date -u >> $OUT/times.txt
timeout ${LIMIT:-300} megastride bench scaling $common --lengths 1048576 --steps 2 --warmup 1 \
  --set train.cpu_checkpointing=true --set train.offload_overlap=true --out $OUT/fit > $OUT/fit.log 2>&1
echo "fit rc $?" >> $OUT/fit.log; grep -E "s/step|skipped|rc " $OUT/fit.log | grep -v "^|" | cut -c1-400
cp $OUT/fit/scaling.csv $OUT/fit.csv 2>/dev/null; rm -rf $OUT/fit $OUT/skip; date -u >> $OUT/times.txt
