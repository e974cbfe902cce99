#!/bin/bash
# Twenty-eighth run, call 3: Table 2's shape with each step replayed from a CUDA graph, the four planner
# cases call 2 ran out of time for, and the fixed and strided models past 1M tokens with the block inputs
# in host memory (what makes 2,097,152 tokens fit in the plain loop).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 100 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --set train.cuda_graph=true --steps 3 --warmup 1 --out $OUT/table2 > $OUT/table2.log 2>&1; echo "table2 rc $?" >> $OUT/table2.log
tail -12 $OUT/table2.log; date -u >> $OUT/times.txt
timeout 110 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --case "fixed, fp32" --case "fixed, 2 sequences" --case "fixed, half recomputed" --case "fixed, kept attention" \
  --steps 1 --warmup 1 --out $OUT/plan > $OUT/plan.log 2>&1; echo "plan rc $?" >> $OUT/plan.log
tail -10 $OUT/plan.log; date -u >> $OUT/times.txt
timeout 300 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --set train.checkpoint_blocks=auto --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --kinds strided,fixed --lengths 2097152 --steps 2 --warmup 1 --budget-s 140 \
  --out $OUT/long > $OUT/long.log 2>&1; echo "long rc $?" >> $OUT/long.log
tail -10 $OUT/long.log; date -u >> $OUT/times.txt
rm -rf $OUT/*/tensorboard
