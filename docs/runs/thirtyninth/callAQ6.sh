#!/bin/bash
# Thirty-ninth run, call 6: (1) 1M beside Flex on a third machine; (2) the fixed 1M training step under 60 GB with the
# kept attention outputs in host memory (9.12 s with the two-columns kernel, thirty-eighth run).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 130 megastride bench attention --patterns fixed --configs 8x64 --lengths 1048576 --peers flex \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -6; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 200 megastride bench scaling $common $mem --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | tail -4
cat $OUT/host/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/host
date -u >> $OUT/times.txt
