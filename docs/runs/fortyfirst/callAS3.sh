#!/bin/bash
# Forty-first run, call 3 (the fortieth run's callAR4, never run): two more levers on the 1M step's idle time, each
# timed as call 2 timed the default step (run this call right after call 2, on the same machine: the default's
# time is call 2's "fused" line; a third default run ends this call if time is left): the loss over 65,536
# positions a chunk (8,192 by default: 128 chunks of small kernels, about 50-65 ms a step of host-bound gaps in the
# fortieth run) and the CUDA allocator's expandable segments (a cudaFree/cudaMalloc stretch of 46-93 ms a step
# there; the log line now says whether the allocator flushed its cache); between them, the LayerNorm backward's
# tile sweep at the 1M shape.
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timed() {  # name, then env assignments and extra arguments
  local run=$1; shift
  local envs="" extra=""
  for a in "$@"; do case $a in *=*:*|PYTORCH*) envs="$envs $a";; *) extra="$extra $a";; esac; done
  env $envs timeout 150 megastride bench scaling $common $mem $extra --out $OUT/$run > $OUT/$run.log 2>&1
  echo "$run rc $?" >> $OUT/$run.log
  echo "== $run"; grep -v "^|" $OUT/$run.log | grep -v "memory at the peak" | tail -2 | cut -c1-400
  rm -rf $OUT/$run
  date -u >> $OUT/times.txt
}
timed chunk --set model.loss_chunk=65536
timed expandable PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# the LayerNorm backward's tiles and row groups at the 1M step's shape, plain and with the stream's gradient (ln1
# kept, 101-121 registers: fewer programs an SM than the plain kernel's 80) and the branch's (ln2's add)
timeout 100 python3 -m megastride.kernels.ln_check --sweep-long-only > $OUT/ln_sweep.log 2>&1
echo "sweep rc $?" >> $OUT/ln_sweep.log; grep -E "^sweep bwd" $OUT/ln_sweep.log | sort -t: -k2 -n | head -3
for v in "bwd (" "bwd +stream (" "bwd +stream +branch ("; do grep -F "sweep $v" $OUT/ln_sweep.log | sort -t: -k2 -n | head -2; done
grep -F "tile 2048 x 8/thread" $OUT/ln_sweep.log | grep "8 programs"
date -u >> $OUT/times.txt
timed default
