#!/bin/bash
# Thirty-first run, call 1: the CUDA-graph step's extra memory, after the fixes it suggested. The thirtieth
# run's traces (call AH1) showed the memory allocated before each graphed point's steps growing point by point
# (1.139, 1.252, 1.315, 1.378 GiB; eager flat at 1.124-1.139): a new side stream per graphed step, each with
# a cuBLAS workspace the allocator never frees. engine.graphs now runs every graphed step's warm-up and capture
# on one side stream per GPU. Here: the GPU tests of the graph step, of the torch runtime and of the trace
# (its replay now counts the allocator's 512-byte blocks and prints GB of 10^9 bytes), then the same sweep
# as AH1 with strided added, eager and graphed, traced.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m pytest -q -m gpu tests/test_memtrace.py tests/test_graphs.py tests/test_train_torch_runtime.py \
  -p no:cacheprovider > $OUT/gpu_test.log 2>&1
tail -6 $OUT/gpu_test.log; date -u >> $OUT/times.txt
for mode in eager graph; do
  graph=false; [ $mode = graph ] && graph=true
  timeout 240 megastride bench scaling --device cuda --kinds fixed,strided,dense --lengths 1024,4096 --steps 2 --warmup 1 \
    --set train.cuda_graph=$graph --set train.checkpoint_blocks=auto --memory-trace --out $OUT/mem_$mode \
    > $OUT/mem_$mode.log 2>&1; echo "mem_$mode rc $?" >> $OUT/mem_$mode.log
  grep -v "^|" $OUT/mem_$mode.log | grep -v "memory at the peak" | tail -9; date -u >> $OUT/times.txt
done
# what comes back is limited to a few files: the reports' text in one file each, the rest removed
for mode in eager graph; do
  for f in $OUT/mem_$mode/memory/*.txt; do echo "== $(basename $f)"; head -14 "$f"; done > $OUT/memory_$mode.txt
done
rm -rf $OUT/*/memory $OUT/*/tensorboard $OUT/*/scaling.png
