#!/bin/bash
# Twenty-sixth run, call 3: the split probe at 1M again (output gradient made outside the timed call),
# then the fixed pattern at the short lengths beside Flex and dense SDPA, eager and replayed.
set -x
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
timeout 230 python3 -m megastride.kernels.split_probe --lengths 1048576 --configs 8x64,2x128 \
  --groups 16 --out $OUT/probe > $OUT/split_probe.log 2>&1
tail -40 $OUT/split_probe.log
timeout 300 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288,65536 \
  --peers flex,sdpa --graphs --rounds 1 --out $OUT/short > $OUT/short.log 2>&1
tail -30 $OUT/short.log
