#!/bin/bash
# Session BG's first device call (2026-12-05), for an H200: why are H200 machines lost in the fixed 1M step under
# 60 GB (session BE's second call, calls BF1 and BF4), where the same step on an H100 (call BF7) pinned 86.9 GB of
# its host's 128.9 GB? The host's memory is printed first; the step is then run with the kept attention outputs on
# the GPU (train.offload_attention=false: about 60 GB pinned, 58.5 GB on the GPU in the thirty-eighth run) with
# MEGASTRIDE_FFN_GEMM=nograd, then, if the host started with more than 105 GB available, with them on the host (the
# planner's choice, about 91 GB pinned), under a 0.5 s / 15 GB memory watch (and the bench's own, at 3%), then on
# the GPU without nograd. Last, the strided
# pattern beside the fixed one at 3,072 and 12,288 tokens (issue 3; not yet on an H200 at these lengths).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
free -m | head -2; grep -E "MemTotal|MemAvailable|Hugetlb|CommitLimit" /proc/meminfo
python3 -c "from megastride.engine import plan as P; print('cgroup limit', P.cgroup_memory_limit_bytes(), 'RAM', P.physical_memory_bytes(), '-', P.host_basis_words(1))"; ulimit -l
free -m > $OUT/free.txt; cat /proc/meminfo > $OUT/meminfo_start.txt
avail0=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
source docs/runs/fortysixth/memwatch.sh
date -u > $OUT/times.txt
stepx() {  # NAME [--set ...]: the command of docs/runs/fortyfourth/step1m.sh with extra settings
  local name=$1; shift
  timeout ${STEP_TIMEOUT:-170} megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
    --lengths 1048576 --warmup 1 --steps 3 --kinds fixed --set train.cpu_checkpointing=true \
    --set train.offload_overlap=true --set train.checkpoint_blocks=auto --set train.keep_attention=auto \
    --set train.memory_budget_gb=60 "$@" --out $OUT/$name > $OUT/$name.log 2>&1
  echo "$name rc $?" >> $OUT/$name.log; grep -E "s/step|rc |stopped|skipped" $OUT/$name.log | grep -v "^|" | cut -c1-600
  cp $OUT/$name/*.csv $OUT/$name.csv 2>/dev/null; rm -rf $OUT/$name
  date -u >> $OUT/times.txt
}
MEGASTRIDE_FFN_GEMM=nograd stepx gpukept_nograd --set train.offload_attention=false
[ -n "$ONLY_FIRST" ] && { kill $WATCH; exit 0; }  # ONLY_FIRST=1: this step alone (a call with little device time)
if [ "$avail0" -gt 105000 ]; then
  MEGASTRIDE_FFN_GEMM=nograd STEP_TIMEOUT=150 stepx hostkept_nograd
else
  echo "host-kept step skipped: ${avail0} MB available at the start" | tee -a $OUT/times.txt
fi
MEGASTRIDE_FFN_GEMM=0 STEP_TIMEOUT=150 stepx gpukept_off --set train.offload_attention=false
kill $WATCH
sort -k3 -n $OUT/mem.txt | head -2
[ -n "$SKIP_SHORT" ] || PARTS="short" bash docs/runs/fortyfourth/callBC6.sh  # SKIP_SHORT=1 on an H100 (its short points: call BD2)
