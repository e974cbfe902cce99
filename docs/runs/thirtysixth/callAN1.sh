#!/bin/bash
# Thirty-sixth run, call 1: fp16 dQ sums in dQ's own storage (blocksparse.dq_sums_buffer) and the fused dK/dV
# step's rows loaded a step ahead (gluon_bwd.look_ahead, MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD).
# (1) the fused-dQ GPU tests (in-place sums for bf16 and fp16 dQ), then one case with AHEAD=1;
# (2) the bench at 262,144 and 1,048,576 tokens, 8x64, fixed: default, ahead, dqoff and Flex, alternated;
# (3) gpu_check, the 1M and 4M checks (now on the fused dQ, in place).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_kernels_gpu.py -k "summed" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -6 $OUT/gpu_tests.log
MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD=1 timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py \
  -k "summed and fp16 and bfloat16" > $OUT/gpu_tests_ahead.log 2>&1
echo "tests ahead rc $?" >> $OUT/gpu_tests_ahead.log; tail -3 $OUT/gpu_tests_ahead.log
date -u >> $OUT/times.txt
timeout 240 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 \
  --peers flex,ahead,dqoff --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -14; grep -E "rounds:|FAILED" $OUT/bench.log
date -u >> $OUT/times.txt
timeout 150 python3 -m megastride.kernels.gpu_check --only "1M,4M" --out $OUT/gpu_check > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -8 $OUT/gpu_check.log
date -u >> $OUT/times.txt
