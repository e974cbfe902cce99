#!/bin/bash
# Thirty-fifth run, call 4: the committed form (a dQ product a step, FUSED_SEND 1, and finish_dq). (1) The fused-dQ
# GPU tests. (2) The bench at 262,144 and 1,048,576 tokens, 8x64, fixed: default, fp16 sums and Flex, alternated.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_kernels_gpu.py -k "summed" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -8 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
timeout 300 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 \
  --peers flex,dqfp16 --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -12; grep -E "rounds:|FAILED" $OUT/bench.log
date -u >> $OUT/times.txt
