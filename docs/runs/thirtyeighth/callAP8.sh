#!/bin/bash
# Thirty-eighth run, call 8: the fused dQ at head dim 128 (64-key tiles, the warp-specialised kernel; asked for by
# MEGASTRIDE_BLOCKSPARSE_GLUON_DQ=fp16, "auto" leaves it off there): (1) the warp-specialised GPU test at head dims
# 64 and 128; (2) 2x128 at 262,144 and 1M beside Flex and with the fused dQ (peer dqfp16), alternated rounds.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "warp_specialised" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | head -20
date -u >> $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 2x128 --lengths 262144,1048576 --peers flex,dqfp16 \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -7; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
