#!/bin/bash
# Fortieth run, call 2: the fixed 1M step under 60 GB profiled again, now with the longest single GPU idle gaps
# in detail (kernels.profiling.idle_gaps "largest": copies, runtime calls and host ops overlapping each).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 1 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 250 megastride bench scaling $common $mem --profile --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | tail -4
cp $OUT/host/profile.json $OUT/profile.json 2>/dev/null
python3 -c "
import json
for k, p in json.load(open('$OUT/profile.json')).items():
    i = p['idle']
    print(k, 'idle', round(i['idle_ms'], 1), 'under copies', round(i['under_copy_ms'], 1))
    for g in i['largest']:
        print(json.dumps(g, indent=1)[:3500])
"
rm -rf $OUT/host
date -u >> $OUT/times.txt
