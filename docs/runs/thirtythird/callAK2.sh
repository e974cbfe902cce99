#!/bin/bash
# Thirty-third run, call 2: launch plans (blocksparse._Plan: an eager call replays the launches two calls of
# its key agreed on). (1) The GPU test of their bits (fixed with TMA loads, strided two-part, fused q/k/v,
# a CUDA graph capture), and the training GPU tests that call 1's interpreter mix-up failed. (2) Host issue
# time per eager forward+backward, plans off and on alternated in one process, beside Flex. (3) The bench's
# eager and replayed rows at 3,072 and 12,288 tokens, with "noplans" beside the default and Flex.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 80 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_kernels_gpu.py -k "launch_plans or direct_launches" \
  > $OUT/gpu_tests_kernels.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests_kernels.log; tail -4 $OUT/gpu_tests_kernels.log
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_train_gpu.py tests/test_graphs.py \
  tests/test_train_torch_runtime.py tests/test_memtrace.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -4 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
timeout 130 python3 docs/runs/thirtythird/host_profile.py 12288x8x64 3072x8x64 12288x2x128 > $OUT/host_profile.log 2>&1
echo "host rc $?" >> $OUT/host_profile.log; grep -E "^==|ms/call|round" $OUT/host_profile.log
date -u >> $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 --peers flex,noplans \
  --graphs --rounds 2 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -30
date -u >> $OUT/times.txt
