#!/bin/bash
# Thirty-sixth run, call 5: the committed tree (c47e246) at 2x128 (no fused dQ at head dim 128): the default against
# Flex at 131,072, 262,144 and 1M tokens, fixed, three alternated rounds (last timed at 2x128 in the twenty-first run).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 230 megastride bench attention --patterns fixed --configs 2x128 --lengths 131072,262144,1048576 --peers flex \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -12; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
