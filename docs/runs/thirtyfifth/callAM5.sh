#!/bin/bash
# Thirty-fifth run, call 5: the fused dQ as the default ("auto": fp16 sums from 262,144 tokens at head dim 64).
# (1) The bench at 262,144 and 1,048,576 tokens, 8x64, fixed: the default, the dQ kernel (dqoff) and Flex, alternated.
# (2) The fixed 1M training step of the thirty-fourth run's call 5 (block inputs on the host, checkpoint_blocks and
# keep_attention auto) under the new default, with the planner's prediction (its dQ sums now counted).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 170 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 \
  --peers flex,dqoff --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -12; grep -E "rounds:|FAILED" $OUT/bench.log
date -u >> $OUT/times.txt
timeout 250 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --lengths 1048576 --steps 2 --warmup 1 --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --out $OUT/step > $OUT/step.log 2>&1
echo "step rc $?" >> $OUT/step.log
grep -E "s/step|rc " $OUT/step.log
date -u >> $OUT/times.txt
