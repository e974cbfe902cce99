#!/bin/bash
# Forty-first run, call 2: the fixed 1M step under 60 GB with everything since the fortieth run's calls (the prefetch
# rework, the last recomputed block prefetched, the residual kernels, the FFN's bias in the SiLU's kernels), profiled
# with the idle-gap timeline (docs/runs/fortieth/gap_timeline.py; the allocator's counts in the log line), then, in
# the same call, two timed steps with MEGASTRIDE_RESIDUAL=plain MEGASTRIDE_FFN=torch (the elementwise path of the
# fortieth run) and two with the default; the profile's kernel list tells the two new paths' shares apart.
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 230 python3 docs/runs/fortieth/gap_timeline.py $common $mem --steps 2 --profile --out $OUT/host \
  > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
cp $OUT/host/profile.json $OUT/profile.json 2>/dev/null
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | grep -v "^  host.*cudaMemcpyAsync" | tail -90 | cut -c1-300
rm -rf $OUT/host
date -u >> $OUT/times.txt
for run in plain fused; do
  envs=""; [ $run = plain ] && envs="MEGASTRIDE_RESIDUAL=plain MEGASTRIDE_FFN=torch"
  env $envs timeout 150 megastride bench scaling $common $mem --steps 2 --out $OUT/$run > $OUT/$run.log 2>&1
  echo "$run rc $?" >> $OUT/$run.log
  echo "== $run"; grep -v "^|" $OUT/$run.log | grep -v "memory at the peak" | tail -2 | cut -c1-400
  rm -rf $OUT/$run
  date -u >> $OUT/times.txt
done
