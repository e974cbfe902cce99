#!/bin/bash
# Thirty-ninth run, call 7: where the fixed 1M step under 60 GB goes with the halves kernel (kept attention outputs
# in host memory; one step timed, two profiled; per-kernel ms into profile.json).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 1 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 190 megastride bench scaling $common $mem --profile --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | tail -5
cp $OUT/host/profile.json $OUT/profile.json 2>/dev/null
python3 -c "
import json
for k, p in json.load(open('$OUT/profile.json')).items():
    print(k, json.dumps(p)[:2500])
"
rm -rf $OUT/host
date -u >> $OUT/times.txt
