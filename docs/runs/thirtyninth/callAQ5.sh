#!/bin/bash
# Thirty-ninth run, call 5: the fused dQ from 65,536 tokens (the halves kernel on whole columns). (1) 65,536 beside
# Flex and with the dQ kernel (peer dqoff); (2) the fixed 65,536-token training step in a CUDA graph (issue 5's
# 0.25 s target; 0.2261 s before); (3) gpu_check at 4,194,304 tokens (B*H*T*D = 2^31) on the halves kernel.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 8x64 --lengths 65536 --peers flex,dqoff \
  --rounds 3 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -5; grep -E "rounds:|FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
timeout 150 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 --kinds fixed \
  --lengths 65536 --steps 3 --warmup 1 --set train.cuda_graph=true --set train.checkpoint_blocks=auto \
  --out $OUT/step > $OUT/step.log 2>&1
echo "step rc $?" >> $OUT/step.log
grep -v "^|" $OUT/step.log | grep -v "memory at the peak" | tail -4
cat $OUT/step/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/step
date -u >> $OUT/times.txt
timeout 180 python3 -m megastride.kernels.gpu_check --only "4M" > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -3 $OUT/gpu_check.log | cut -c1-700
date -u >> $OUT/times.txt
