#!/bin/bash
# Thirtieth run, call 2 (ready, not yet run): the paper's fixed(128,32) with the summary-first part's tiles
# mapped from their start (blocksparse._natural_tile: the dK/dV loop 732 -> 455 sm_90 instructions, dQ 623 ->
# 543, forward 1,221 -> 1,115) beside Flex and dense SDPA at 12,288 and 65,536 tokens, with the part's dK/dV
# columns split (segments of 8, both finishes) as extra columns (twenty-ninth run, call 2, for the same case
# before: 1.345 / 0.831 ms at 12,288 eager / graph, 13.90 ms at 65,536); then the enwik8 and CIFAR-10 models'
# Table 2 steps from CUDA graphs (call AG2: fixed 0.0531 and 0.2358 s) and enwik8 at 64-token blocks.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k summary_first -p no:cacheprovider \
  > $OUT/gpu_test.log 2>&1; tail -3 $OUT/gpu_test.log; date -u >> $OUT/times.txt
timeout 300 megastride bench attention --patterns "fixed(128,32)" --lengths 12288,65536 --configs 8x64 \
  --peers flex,sdpa,split,split8last --graphs --rounds 2 --out $OUT/k > $OUT/k.log 2>&1; echo "k rc $?" >> $OUT/k.log
grep -v "^|" $OUT/k.log | tail -30; date -u >> $OUT/times.txt
timeout 150 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --steps 3 --warmup 1 --out $OUT/table2 > $OUT/table2.log 2>&1; echo "table2 rc $?" >> $OUT/table2.log
tail -9 $OUT/table2.log; date -u >> $OUT/times.txt
timeout 120 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --set model.attention.block=64 --steps 3 --warmup 1 --out $OUT/table2_b64 \
  > $OUT/table2_b64.log 2>&1; echo "table2_b64 rc $?" >> $OUT/table2_b64.log
tail -9 $OUT/table2_b64.log; date -u >> $OUT/times.txt
rm -rf $OUT/*/tensorboard $OUT/*/table2.csv
