#!/bin/bash
# Thirty-eighth run, call 7: (1) gpu_check at 4,194,304 tokens (B*H*T*D = 2^31) on the warp-specialised fused
# dK/dV kernel; (2) the fixed 1M training step under 60 GB with the kept attention outputs on the GPU.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 120 python3 -m megastride.kernels.gpu_check --only "4M" > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -3 $OUT/gpu_check.log | cut -c1-600
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 200 megastride bench scaling $common $mem --set train.offload_attention=false --out $OUT/gpu > $OUT/gpu.log 2>&1
echo "gpu rc $?" >> $OUT/gpu.log
grep -v "^|" $OUT/gpu.log | grep -v "memory at the peak" | tail -4
cat $OUT/gpu/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/gpu
date -u >> $OUT/times.txt
