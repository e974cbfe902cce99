#!/bin/bash
# Thirty-eighth run, call 5 (a fresh machine): (1) the fixed 1M training step under a 60 GB budget with the
# warp-specialised fused dK/dV kernel (kept attention outputs in host memory, as the thirty-seventh run's 9.56 s);
# (2) the attention bench at 1M beside Flex again; (3) at 65,536 and 131,072 beside Flex and with the fused dQ
# forced (peer dqfp16: the warp-specialised kernel where "auto" still runs the dQ kernel).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 200 megastride bench scaling $common $mem --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
date -u >> $OUT/times.txt
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | tail -4
cat $OUT/host/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/host
timeout 120 megastride bench attention --patterns fixed --configs 8x64 --lengths 1048576 --peers flex \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -6; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 8x64 --lengths 65536,131072 --peers flex,dqfp16 \
  --rounds 3 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -8; grep -E "rounds:|FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
