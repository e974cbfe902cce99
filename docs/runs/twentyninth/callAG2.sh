#!/bin/bash
# Twenty-ninth run, call 2: the summary-first position map in int32 with one division per position (call 1's
# int64 two-sided form cost the dK/dV loop 1,592 instructions and 154 spills per iteration; now 732 and 1):
# fixed(128,32) at the kernel level beside Flex and dense SDPA again, Table 2's shape from CUDA graphs, and the
# GPU bf16 test of the summary-first parts with what time is left.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 190 megastride bench attention --patterns "fixed(128,32)" --lengths 12288,65536 --configs 8x64 \
  --graphs --rounds 2 --out $OUT/k > $OUT/k.log 2>&1; echo "k rc $?" >> $OUT/k.log
grep -v "^|" $OUT/k.log | tail -30; date -u >> $OUT/times.txt
timeout 200 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --steps 3 --warmup 1 --out $OUT/table2 > $OUT/table2.log 2>&1; echo "table2 rc $?" >> $OUT/table2.log
tail -9 $OUT/table2.log; date -u >> $OUT/times.txt
rm -rf $OUT/*/tensorboard $OUT/table2/table2.csv
timeout 110 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k summary_first -p no:cacheprovider \
  > $OUT/gpu_test.log 2>&1; echo "gpu test rc $?" >> $OUT/gpu_test.log
tail -5 $OUT/gpu_test.log; date -u >> $OUT/times.txt
