#!/bin/bash
# Thirty-third run, call 1. (1) Where an eager short forward+backward's host time goes (host_profile.py: host
# issue time per call against the GPU's own, ours and Flex, and a cProfile of ours). (2) The training GPU tests
# the thirty-second run's time limit cut off, on its BlockCheckpoint backward (the output's gradient edge).
# (3) The planner's share for host-offload configurations at 90% (was 80%) on the fixed 1M step, no budget:
# does the measured peak stay under the GPU's memory with the extra kept block?
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 130 python3 docs/runs/thirtythird/host_profile.py 12288x8x64 3072x8x64 > $OUT/host_profile.log 2>&1
echo "host rc $?" >> $OUT/host_profile.log; grep -E "^==|ms/call" $OUT/host_profile.log
date -u >> $OUT/times.txt
timeout 220 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_train_gpu.py tests/test_graphs.py \
  tests/test_train_torch_runtime.py tests/test_memtrace.py tests/test_layernorm.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -4 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
sed -i 's/^AUTO_MEMORY_FRACTION_OFFLOAD = 0.80/AUTO_MEMORY_FRACTION_OFFLOAD = 0.90/' engine/plan.py
grep -n "^AUTO_MEMORY_FRACTION_OFFLOAD" engine/plan.py
timeout 200 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 \
  --steps 2 --warmup 1 --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --out $OUT/frac90 > $OUT/frac90.log 2>&1
echo "frac90 rc $?" >> $OUT/frac90.log; grep -v "^|" $OUT/frac90.log | tail -4
cat $OUT/frac90/*.csv > $OUT/frac90_rows.csv 2>/dev/null; rm -rf $OUT/frac90
date -u >> $OUT/times.txt
