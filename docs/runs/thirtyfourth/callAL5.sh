#!/bin/bash
# Thirty-fourth run, call 5. The planner's share for host-offload configurations at 90% (engine/plan.py,
# AUTO_MEMORY_FRACTION_OFFLOAD; edited here on the device), the fixed 1M step with block inputs on the host,
# checkpoint_blocks and keep_attention auto, run to its end this time: when the results are written and when
# the process exits (the thirty-third run's call 1 outran its 200 s limit after writing them).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u +%s > $OUT/start.txt
sed -i 's/^AUTO_MEMORY_FRACTION_OFFLOAD = 0.80/AUTO_MEMORY_FRACTION_OFFLOAD = 0.90/' engine/plan.py
grep -n "^AUTO_MEMORY_FRACTION_OFFLOAD" engine/plan.py
( while sleep 1; do ls $OUT/frac90/*.csv >/dev/null 2>&1 && { date -u +%s > $OUT/results_written.txt; break; }; done ) &
watcher=$!
/usr/bin/time -v timeout 540 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --lengths 1048576 --steps 2 --warmup 1 --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --out $OUT/frac90 > $OUT/frac90.log 2>&1
echo "frac90 rc $?" >> $OUT/frac90.log
date -u +%s > $OUT/exited.txt
kill $watcher 2>/dev/null
grep -v "^|" $OUT/frac90.log | grep -v "^\s" | tail -6; grep -E "Elapsed|Maximum resident" $OUT/frac90.log
echo "start $(cat $OUT/start.txt) results $(cat $OUT/results_written.txt 2>/dev/null) exit $(cat $OUT/exited.txt)"
cat $OUT/frac90/*.csv
