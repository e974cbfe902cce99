#!/bin/bash
# Superseded (2026-12-04, 22:50 UTC) by docs/runs/fortyfirst/callAS1-AS3.sh, which run the same checks and timings
# with the later changes; kept as planned then.
# NOT RUN YET (planned 2026-12-04, the device lost): the next session runs it after callAR3.sh.
# Fortieth run, call 4: two more levers on the 1M step's idle time, each beside the plain step in the same call:
# (1) the loss over 65,536 positions a chunk (8,192 by default: 128 chunks of small kernels, whose host-bound gaps
# summed to about 50-60 ms a step in calls 1-2); (2) the CUDA allocator's expandable segments (a cudaFree/cudaMalloc
# stretch of 46-93 ms a step in the forward in calls 1-2).
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
for run in plain chunk expandable; do
  extra=""; envs=""
  [ $run = chunk ] && extra="--set model.loss_chunk=65536"
  [ $run = expandable ] && envs="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
  env $envs timeout 170 megastride bench scaling $common $mem $extra --out $OUT/$run > $OUT/$run.log 2>&1
  echo "$run rc $?" >> $OUT/$run.log
  echo "== $run"; grep -v "^|" $OUT/$run.log | grep -v "memory at the peak" | tail -2
  rm -rf $OUT/$run
  date -u >> $OUT/times.txt
done
