#!/bin/bash
# Thirty-second run, call 3: a recomputed block's backward now lets its recomputed output go (engine.parallel,
# BlockCheckpoint.backward: through the output's gradient edge). Call AJ2 traced it at the strided 1M point with
# host inputs overlapped and no kept outputs: 2.15 GB of engine/model.py:133 (the block's fp32 output) at the
# peak, 22.16 GB measured against 19.62 planned. (1) GPU tests of the checkpoint paths and the FFN's backward.
# (2) That point again, traced. (3) The fixed 1M step under 60 GB with kept outputs on the GPU (60.68 GB in AJ2).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_plan.py tests/test_graphs.py tests/test_train_gpu.py \
  -k "ffns_backward or replayed or graphed or overlapped or kept_attention" > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -3 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1"
timeout 150 megastride bench scaling $common --kinds strided --set train.keep_attention=false --set train.cpu_checkpointing=true \
  --set train.offload_overlap=true --set model.ffn_chunk=65536 --memory-trace --out $OUT/overlap > $OUT/overlap.log 2>&1
echo "overlap rc $?" >> $OUT/overlap.log
date -u >> $OUT/times.txt
timeout 220 megastride bench scaling $common --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --set train.offload_attention=false \
  --set train.memory_budget_gb=60 --out $OUT/fixed60 > $OUT/fixed60.log 2>&1; echo "fixed60 rc $?" >> $OUT/fixed60.log
date -u >> $OUT/times.txt
for r in overlap fixed60; do grep -v "^|" $OUT/$r.log | grep -v "memory at the peak" | tail -3; done
head -30 $OUT/overlap/memory/*.txt > $OUT/memory_overlap.txt
cat $OUT/overlap/*.csv $OUT/fixed60/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/overlap $OUT/fixed60
