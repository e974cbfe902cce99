#!/bin/bash
# Session BM (2026-12-06), for an H200 (ask with needs_h200: the baseline's step takes 91.5 GB, more than an H100
# holds): issue 5's side-by-side with today's defaults in one call, made short to fit the session's last device time:
# the fixed 1M step under 60 GB (the planner's choice) for 3 timed steps, then the baseline (compiled Flex, every
# block recomputed) for 3. callBH5.sh is the longer form (the nograd A/B alternated, four rounds).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
export MEMWATCH_S=1; source docs/runs/fortysixth/memwatch.sh
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --steps 3"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout ${OURS_S:-200} megastride bench scaling $common --kinds fixed $mem --out $OUT/ours > $OUT/ours.log 2>&1
echo "ours rc $?" >> $OUT/ours.log
grep -E "s/step|rc " $OUT/ours.log | grep -v "^|" | cut -c1-400; cp $OUT/ours/scaling.csv $OUT/ours.csv; rm -rf $OUT/ours
date -u >> $OUT/times.txt
timeout ${BASE_S:-170} megastride bench scaling $common --kinds baseline-flex --out $OUT/base > $OUT/base.log 2>&1
echo "baseline rc $?" >> $OUT/base.log
grep -E "s/step|rc " $OUT/base.log | grep -v "^|" | cut -c1-400; cp $OUT/base/scaling.csv $OUT/base.csv; rm -rf $OUT/base
kill $WATCH; sort -k3 -n $OUT/mem.txt | head -1; date -u >> $OUT/times.txt
