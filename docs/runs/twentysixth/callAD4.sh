#!/bin/bash
# Twenty-sixth run, call 4: the fixed pattern at 131,072, 262,144 and 1,048,576 tokens beside Flex and dense SDPA.
set -x
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
timeout 540 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 131072,262144,1048576 \
  --peers flex,sdpa --rounds 1 --out $OUT/long > $OUT/long.log 2>&1
tail -40 $OUT/long.log
