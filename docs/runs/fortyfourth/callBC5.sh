#!/bin/bash
# Session BC (2026-12-05): call BC4 found strided_matched 17% under fixed's TFLOP/s at 12,288 tokens (8x64, 64-blocks
# by kernels.bench.strided_block): the same points with 128-blocks, replayed from CUDA graphs.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 megastride bench attention --patterns strided_matched --configs 8x64 --lengths 3072,12288 --block 128 \
  --peers '' --graphs --rounds 0 --out $OUT/short128 > $OUT/short128.log 2>&1
echo "short128 rc $?" >> $OUT/short128.log
grep -E "^(fixed|strided)|ours |rc |chose" $OUT/short128.log | cut -c1-250
date -u >> $OUT/times.txt
