#!/bin/bash
# Fortieth run, call 1: (1) the warp-specialised dK/dV GPU tests, last run before d9662ce (the halves kernel's
# refactor and the one-call warp_specialized); (2) the fixed 1M step under 60 GB profiled with the new idle-gap
# attribution (kernels.profiling.idle_gaps: which kernel pairs the GPU idles between, and under what host call).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py \
  -k "halves or warp_specialised or summed" > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_bench_scaling.py -k "profile_calls or idle_gaps" \
  >> $OUT/tests.log 2>&1; echo "profile tests rc $?" >> $OUT/tests.log
grep -E "passed|failed|rc " $OUT/tests.log
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 1 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 250 megastride bench scaling $common $mem --profile --out $OUT/host > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | tail -4
cp $OUT/host/profile.json $OUT/profile.json 2>/dev/null
python3 -c "
import json
for k, p in json.load(open('$OUT/profile.json')).items():
    print(k, json.dumps(p.get('idle'), indent=1)[:4000])
    print('host', json.dumps(p['host_ops_ms'])[:1500])
"
rm -rf $OUT/host
date -u >> $OUT/times.txt
