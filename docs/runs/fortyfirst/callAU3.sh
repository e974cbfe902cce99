#!/bin/bash
# Forty-first run, call AU3 (2026-12-05; with callAU2.sh, which has its tests, replaces callAU1.sh when the device
# is scarce). (1) the 1M step under 60 GB profiled with the idle-gap timeline (the step sits at 8.00 +- 0.01 s:
# what idle is left, and where); (2) the same step over 4 timed steps, then with MEGASTRIDE_OFFLOAD_RELEASE=ordered:
# the forty-first run's 2-3 step runs made 8-13 cudaMalloc a step and no cudaFree with 135 GB reserved against a
# 48 GB peak (record_stream keeps each copied tensor's memory out of use until the side stream passes the point of
# its free, while the host allocates blocks ahead), so a longer run may reach the GPU's size and flush the cache.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 225 python3 docs/runs/fortieth/gap_timeline.py $common $mem --steps 1 --profile --out $OUT/host \
  > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
cp $OUT/host/profile.json $OUT/profile.json 2>/dev/null
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | grep -v "^  host.*cudaMemcpyAsync" | tail -60 | cut -c1-300
rm -rf $OUT/host
date -u >> $OUT/times.txt
for run in recorded ordered; do
  MEGASTRIDE_OFFLOAD_RELEASE=$run timeout 135 megastride bench scaling $common $mem --steps 4 \
    --out $OUT/$run > $OUT/$run.log 2>&1; echo "$run rc $?" >> $OUT/$run.log
  grep -E "s/step|rc " $OUT/$run.log | grep -v "^|" | cut -c1-400
  cp $OUT/$run/*.csv $OUT/$run.csv 2>/dev/null; rm -rf $OUT/$run
  date -u >> $OUT/times.txt
done
