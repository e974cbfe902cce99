#!/bin/bash
# Thirtieth run, call 1 (ready, not yet run): what the CUDA-graph step's extra peak is made of. With a graph
# the planner is 12-27% under the measured peak of the fixed and strided models at 1,024 and 4,096 tokens
# (0.3-0.7 GB more than eager; dense 2-5%: docs/scaling.md, "The sweep with the current code"). The same
# points eager and from a graph, with the allocator's history recorded over the measured steps
# (--memory-trace: OUT/memory/*.txt, the peak split into what was allocated before and the live blocks by
# call site and pool). The recording slows the steps: only the memory columns count here.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m pytest -q -m gpu tests/test_memtrace.py -p no:cacheprovider > $OUT/gpu_test.log 2>&1
tail -4 $OUT/gpu_test.log; date -u >> $OUT/times.txt
for mode in eager graph; do
  graph=false; [ $mode = graph ] && graph=true
  timeout 240 megastride bench scaling --device cuda --kinds fixed,dense --lengths 1024,4096 --steps 2 --warmup 1 \
    --set train.cuda_graph=$graph --set train.checkpoint_blocks=auto --memory-trace --out $OUT/mem_$mode \
    > $OUT/mem_$mode.log 2>&1; echo "mem_$mode rc $?" >> $OUT/mem_$mode.log
  grep -v "^|" $OUT/mem_$mode.log | tail -14; date -u >> $OUT/times.txt
done
for f in $OUT/mem_*/memory/*.txt; do echo "== $f"; head -12 "$f"; done
# the snapshots are for pytorch.org/memory_viz; keep the small ones only (what comes back is limited)
find $OUT -name "*.pickle" -size +20M -delete
rm -rf $OUT/*/tensorboard
