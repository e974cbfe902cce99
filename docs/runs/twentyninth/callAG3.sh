#!/bin/bash
# Twenty-ninth run, call 3 (ready, not yet run): on the paper's fixed(128,32), the summary-first part's dK/dV
# columns split (segments of 8, both finishes) beside the default whole columns, Flex and SDPA; then the
# enwik8 model's Table 2 step at 64-token blocks with the int32 position map (call AF4 timed 64-blocks only
# with the int64 one: 0.0789 s against 0.0961 at 128).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 megastride bench attention --patterns "fixed(128,32)" --lengths 12288,65536 --configs 8x64 \
  --peers flex,sdpa,split,split8last --graphs --rounds 2 --out $OUT/k > $OUT/k.log 2>&1; echo "k rc $?" >> $OUT/k.log
grep -v "^|" $OUT/k.log | tail -30; date -u >> $OUT/times.txt
timeout 200 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --set model.attention.block=64 --steps 3 --warmup 1 --out $OUT/table2_b64 \
  > $OUT/table2_b64.log 2>&1; echo "table2_b64 rc $?" >> $OUT/table2_b64.log
tail -9 $OUT/table2_b64.log; date -u >> $OUT/times.txt
rm -rf $OUT/*/tensorboard $OUT/*/table2.csv
