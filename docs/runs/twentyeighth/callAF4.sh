#!/bin/bash
# Twenty-eighth run, call 4: the paper's fixed patterns with a summary-first part (summary columns that are
# not whole blocks gathered into full tiles), checked in bf16 against the reference, then Table 2's shape
# replayed from CUDA graphs as in call 3, beside the natural-order layout (MEGASTRIDE_SUMMARY_FIRST=0) in the same
# call, and at 64-token blocks.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k summary_first -p no:cacheprovider \
  > $OUT/gpu_test.log 2>&1; echo "gpu test rc $?" >> $OUT/gpu_test.log
tail -5 $OUT/gpu_test.log; date -u >> $OUT/times.txt
timeout 100 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --steps 3 --warmup 1 --out $OUT/table2 > $OUT/table2.log 2>&1; echo "table2 rc $?" >> $OUT/table2.log
tail -12 $OUT/table2.log; date -u >> $OUT/times.txt
MEGASTRIDE_SUMMARY_FIRST=0 timeout 100 megastride bench scaling --device cuda --table2 --set model.dropout=0 \
  --set train.checkpoint_blocks=auto --set train.cuda_graph=true --steps 3 --warmup 1 --out $OUT/table2_old \
  > $OUT/table2_old.log 2>&1; echo "table2_old rc $?" >> $OUT/table2_old.log
tail -8 $OUT/table2_old.log; date -u >> $OUT/times.txt
timeout 80 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --set model.attention.block=64 --steps 3 --warmup 1 --out $OUT/table2_b64 \
  > $OUT/table2_b64.log 2>&1; echo "table2_b64 rc $?" >> $OUT/table2_b64.log
tail -10 $OUT/table2_b64.log; date -u >> $OUT/times.txt
rm -rf $OUT/*/tensorboard
