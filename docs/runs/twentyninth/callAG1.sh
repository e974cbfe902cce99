#!/bin/bash
# Twenty-ninth run, call 1: the paper's enwik8 fixed(128,32) pattern at the kernel level, ours (summary-first
# part) vs Flex vs dense SDPA at 12,288 and 65,536 tokens, 8 heads x 64, with per-kernel profiles and CUDA-graph
# replays; then ours in the natural-order layout (MEGASTRIDE_SUMMARY_FIRST=0) at the same cases; then Table 2's
# shape from CUDA graphs with a timeout long enough for CIFAR-10's rows (call AF4's 100 s cut them off).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 260 megastride bench attention --patterns "fixed(128,32),strided(128)" --lengths 12288,65536 --configs 8x64 \
  --graphs --profile --rounds 2 --out $OUT/k > $OUT/k.log 2>&1; echo "k rc $?" >> $OUT/k.log
tail -30 $OUT/k.log; date -u >> $OUT/times.txt
MEGASTRIDE_SUMMARY_FIRST=0 timeout 120 megastride bench attention --patterns "fixed(128,32)" --lengths 12288,65536 \
  --configs 8x64 --peers "" --graphs --rounds 0 --out $OUT/k_old > $OUT/k_old.log 2>&1; echo "k_old rc $?" >> $OUT/k_old.log
tail -8 $OUT/k_old.log; date -u >> $OUT/times.txt
timeout 200 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --steps 3 --warmup 1 --out $OUT/table2 > $OUT/table2.log 2>&1; echo "table2 rc $?" >> $OUT/table2.log
tail -12 $OUT/table2.log; date -u >> $OUT/times.txt
rm -rf $OUT/*/tensorboard
