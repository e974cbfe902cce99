#!/bin/bash
# Superseded (2026-12-04, 22:50 UTC) by docs/runs/fortyfirst/callAS1-AS3.sh, which run the same checks and timings
# with the later changes; kept as planned then.
# NOT RUN: the device machine stopped answering when this call was made (2026-12-04 21:37 UTC) and no more
# device time was lent that session; the next session with a GPU runs it first.
# Fortieth run, call 3: BlockCheckpoint's prefetch copies now start when the compute stream reaches them, into
# buffers of the compute stream's pool (was: at host time, into the side stream's pool; call 2 found a 420 ms
# idle stretch a step under host-to-device copies), and (4d004c8) the first of two or more kept blocks prefetches
# the last recomputed block's input as its backward starts. (1) the overlapped-offload GPU tests; (2) the 1M step timed
# (2 steps) and profiled, with the GPU timeline (streams) around its longest remaining idle gap.
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py -k "overlapped or kept" > $OUT/tests.log 2>&1
echo "tests rc $?" >> $OUT/tests.log; grep -E "passed|failed|rc |Error" $OUT/tests.log | tail -5
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 250 python3 docs/runs/fortieth/gap_timeline.py $common $mem --profile --out $OUT/host > $OUT/host.log 2>&1
echo "host rc $?" >> $OUT/host.log
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | grep -v "^  host.*cudaMemcpyAsync" | tail -150
rm -rf $OUT/host
date -u >> $OUT/times.txt
