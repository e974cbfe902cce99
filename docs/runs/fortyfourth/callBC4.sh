#!/bin/bash
# Session BC (2026-12-05): issue 3's "strided within 15% of the fixed pattern's TFLOP/s at about equal density",
# timed only from 65,536 tokens so far (tenth run): the short lengths, 8x64, replayed from CUDA graphs, both
# patterns in one process (no peers: ours only).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 430 megastride bench attention --patterns fixed,strided_matched --configs 8x64 --lengths 3072,12288 \
  --peers '' --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log
grep -E "^(fixed|strided)|ours |rc |TFLOP|stride|chose" $OUT/short.log | cut -c1-250
date -u >> $OUT/times.txt
