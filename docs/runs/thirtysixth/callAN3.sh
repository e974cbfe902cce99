#!/bin/bash
# Thirty-sixth run, call 3: (1) the Gluon backward's GPU tests (the non-fused dK/dV step now reads its rows through
# _step_rows, as the look-ahead does); (2) the default against Flex at 1M tokens, 8x64, fixed, five alternated rounds.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_kernels_gpu.py -k "gluon_backward" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -4 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 8x64 --lengths 1048576 --peers flex --rounds 5 \
  --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -10; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
