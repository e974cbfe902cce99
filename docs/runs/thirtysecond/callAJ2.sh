#!/bin/bash
# Thirty-second run, call 2: the planner now counts one FFN-width gradient in the FFN's backward (call AJ1 and
# the thirty-first run's AI2 traced one). (1) The GPU test that measures it, and the trace's own GPU test.
# (2) The strided 1M host-offload points with no attention outputs kept (as on 2026-11-30, when they measured
# 26.47 / 28.61 GB; today's plan says 17.9 / 19.6), traced. (3) The fixed 1M step under 60 GB with the kept
# outputs on the GPU: the planner's "auto" now keeps them in 25 of 29 recomputed blocks (59.26 GB planned)
# instead of 21 (measured 56.30 GB, 10.11 s on 2026-12-01): its peak and time.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_plan.py tests/test_memtrace.py -k "ffns_backward or traced_bench_point" \
  > $OUT/gpu_tests.log 2>&1; echo "tests rc $?" >> $OUT/gpu_tests.log; tail -3 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1"
timeout 150 megastride bench scaling $common --kinds strided --set train.keep_attention=false --set train.cpu_checkpointing=true \
  --set model.ffn_chunk=65536 --memory-trace --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
timeout 150 megastride bench scaling $common --kinds strided --set train.keep_attention=false --set train.cpu_checkpointing=true \
  --set train.offload_overlap=true --set model.ffn_chunk=65536 --memory-trace --out $OUT/overlap > $OUT/overlap.log 2>&1
echo "overlap rc $?" >> $OUT/overlap.log
date -u >> $OUT/times.txt
timeout 200 megastride bench scaling $common --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --set train.offload_attention=false \
  --set train.memory_budget_gb=60 --out $OUT/fixed60 > $OUT/fixed60.log 2>&1; echo "fixed60 rc $?" >> $OUT/fixed60.log
date -u >> $OUT/times.txt
for r in host overlap fixed60; do grep -v "^|" $OUT/$r.log | grep -v "memory at the peak" | tail -3; done
for r in host overlap; do head -30 $OUT/$r/memory/*.txt > $OUT/memory_$r.txt; done
cat $OUT/host/*.csv $OUT/overlap/*.csv $OUT/fixed60/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/host $OUT/overlap $OUT/fixed60
