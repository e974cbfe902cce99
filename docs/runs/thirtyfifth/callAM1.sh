#!/bin/bash
# Thirty-fifth run, call 1: dQ summed by the Gluon dK/dV kernel (blocksparse.gluon_dq_sums, MEGASTRIDE_BLOCKSPARSE_GLUON_DQ
# fp32 / fp16; no dQ kernel). (1) The GPU tests: the new one against the reference (fp32 and fp16 sums, segments,
# gradients of 1e-7) and the Gluon backward's existing ones. (2) The bench at 131,072 and 262,144 tokens, 8x64, fixed:
# the default, both variants and Flex, alternated rounds.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_kernels_gpu.py -k "summed or gluon_backward" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -8 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
timeout 300 megastride bench attention --patterns fixed --configs 8x64 --lengths 131072,262144 --peers flex,dqfp32,dqfp16 \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -30
date -u >> $OUT/times.txt
