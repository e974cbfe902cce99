#!/bin/bash
# Thirty-eighth run, call 4: the backward with the warp-specialised fused dK/dV kernel beside Flex and beside the
# fused kernel without it (peer nows), alternated rounds, 262,144 and 1M tokens, 8x64, fixed.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 400 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers flex,nows \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -14; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
