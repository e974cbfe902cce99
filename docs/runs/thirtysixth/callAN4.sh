#!/bin/bash
# Thirty-sixth run, call 4: the committed tree (the steps without the look-ahead as before the run). (1) the fused-dQ
# and Gluon backward GPU tests; (2) the bench at 262,144 and 1M tokens, 8x64, fixed: default, noahead, Flex.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
git log --oneline -1 > $OUT/tree.txt 2>&1
timeout 220 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "summed or gluon_backward" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -3 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers flex,noahead \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -10; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
