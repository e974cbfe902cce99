#!/bin/bash
# Thirty-second run, call 1 (was thirtyfirst/callAI3.sh, ready in the last session): before the planner counts one FFN-width gradient in the FFN's
# backward instead of two (call AI2: the fixed 1M step's plan is +10.6%, its backward transients 7.2 GB over),
# trace the points that change would lower most, all measured under the plan before: the strided model at 1M
# with every block recomputed (+3.1%), and with block inputs in host memory and FFN chunks of 65,536 (-8.4%,
# -9.1% overlapped; 2026-11-30). What each peak is made of (OUT/*/memory/*.txt) says where the plan is short.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --kinds strided --lengths 1048576 --steps 2 --warmup 1 --memory-trace"
timeout 170 megastride bench scaling $common --out $OUT/all > $OUT/all.log 2>&1; echo "all rc $?" >> $OUT/all.log
timeout 170 megastride bench scaling $common --set train.cpu_checkpointing=true --set model.ffn_chunk=65536 \
  --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
timeout 170 megastride bench scaling $common --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set model.ffn_chunk=65536 --out $OUT/overlap > $OUT/overlap.log 2>&1; echo "overlap rc $?" >> $OUT/overlap.log
for r in all host overlap; do grep -v "^|" $OUT/$r.log | grep -v "memory at the peak" | tail -3; head -40 $OUT/$r/memory/*.txt > $OUT/memory_$r.txt; done
date -u >> $OUT/times.txt
cat $OUT/all/*.csv $OUT/host/*.csv $OUT/overlap/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/all $OUT/host $OUT/overlap
