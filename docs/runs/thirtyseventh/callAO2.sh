#!/bin/bash
# Thirty-seventh run, call 2: the dK/dV kernels' full blocks walked last query tile first (gluon_bwd.reverse_walk,
# opt-in). (1) the fused-dQ GPU tests and gpu_check's fixed 1M case with it forced; (2) the bench beside Flex and
# the default at 262,144 and 1M tokens, 8x64 (the fused dK/dV) and 2x128 (the plain Gluon dK/dV), alternated.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_GLUON_REVERSE=1 timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_kernels_gpu.py -k "summed" > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -3 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_GLUON_REVERSE=1 timeout 60 python3 -m megastride.kernels.gpu_check --only "fixed bf16 1M" \
  > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -3 $OUT/gpu_check.log | cut -c1-400
date -u >> $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers flex,reverse \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -8; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
timeout 130 megastride bench attention --patterns fixed --configs 2x128 --lengths 262144,1048576 --peers flex,reverse \
  --rounds 3 --out $OUT/bench128 > $OUT/bench128.log 2>&1
echo "bench rc $?" >> $OUT/bench128.log; grep -v "^\[" $OUT/bench128.log | tail -8; grep -E "rounds:|FAILED" $OUT/bench128.log
rm -f $OUT/bench128/*.json
date -u >> $OUT/times.txt
