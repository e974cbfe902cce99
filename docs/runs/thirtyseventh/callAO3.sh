#!/bin/bash
# Thirty-seventh run, call 3: the fixed 1M training step under a 60 GB budget with today's kernels (the fused dQ
# backward, its first launch taking the scale's maxima and zeroing the sums): the kept attention outputs in host
# memory (offload_attention, default where the host has the RAM) and on the GPU; then the attention bench at 1M
# beside Flex once more.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 200 megastride bench scaling $common $mem --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
date -u >> $OUT/times.txt
timeout 200 megastride bench scaling $common $mem --set train.offload_attention=false --out $OUT/gpu > $OUT/gpu.log 2>&1
echo "gpu rc $?" >> $OUT/gpu.log
date -u >> $OUT/times.txt
for r in host gpu; do grep -v "^|" $OUT/$r.log | grep -v "memory at the peak" | tail -4; done
cat $OUT/host/*.csv $OUT/gpu/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/host $OUT/gpu
timeout 120 megastride bench attention --patterns fixed --configs 8x64 --lengths 1048576 --peers flex \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -6; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
