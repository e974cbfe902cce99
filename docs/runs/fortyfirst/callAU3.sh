#!/bin/bash
# Forty-first run, call AU3 (2026-12-05; replaces callAU1.sh when the device is scarce: its tests, profile, and
# the allocator's steady state in one call). (1) the residual-kernels and FFN GPU tests after their fixes
# (7cd8ce5; the FFN one never ran on the GPU); (2) the 1M step under 60 GB profiled with the idle-gap timeline
# (the step sits at 8.00 +- 0.01 s: what idle is left, and where); (3) the same step over 4 timed steps with
# expandable segments: the forty-first run's 2-3 step runs made 8-13 cudaMalloc a step and no cudaFree with
# 135 GB reserved against a 48 GB peak, so a longer run may reach the GPU's size and flush the cache.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 140 python3 -m pytest -x -q -p no:cacheprovider tests/test_train_gpu.py -k "residual_kernels or ffn_bias" \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "^E |passed|failed|rc " $OUT/tests.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 225 python3 docs/runs/fortieth/gap_timeline.py $common $mem --steps 1 --profile --out $OUT/host \
  > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
cp $OUT/host/profile.json $OUT/profile.json 2>/dev/null
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | grep -v "^  host.*cudaMemcpyAsync" | tail -60 | cut -c1-300
rm -rf $OUT/host
date -u >> $OUT/times.txt
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 130 megastride bench scaling $common $mem --steps 4 \
  --out $OUT/expandable > $OUT/expandable.log 2>&1; echo "expandable rc $?" >> $OUT/expandable.log
grep -E "s/step|rc " $OUT/expandable.log | grep -v "^|" | cut -c1-400
cp $OUT/expandable/*.csv $OUT/expandable.csv 2>/dev/null; rm -rf $OUT/expandable
date -u >> $OUT/times.txt
