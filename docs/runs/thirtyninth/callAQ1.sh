#!/bin/bash
# Thirty-ninth run, call 1: the fused dK/dV kernel with one column a program, its keys split between two consumer
# warpgroups (gluon_bwd._dkdv_halves_kernel, MEGASTRIDE_BLOCKSPARSE_GLUON_WS=halves). (1) its GPU test and the
# two-columns kernel's; (2) beside the default (two columns a program) in alternated rounds at 262,144 and 1M, 8x64.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "halves or warp_specialised" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | head -20
date -u >> $OUT/times.txt
timeout 300 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers halves \
  --rounds 2 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -14; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
