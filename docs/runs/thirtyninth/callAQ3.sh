#!/bin/bash
# Thirty-ninth run, call 3: the halves kernel (m1) the default for whole columns at head dim 64. (1) the fused-dQ
# GPU tests (now on it); (2) beside Flex and the two-columns kernel (peer columns), alternated, 262,144 and 1M;
# (3) 131,072 beside Flex and with whole columns (peer gluonwhole: the halves kernel where "auto" takes segments);
# (4) gpu_check at 1M; (5) the fixed 1M training step under 60 GB, kept attention outputs on the GPU.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "summed" > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | head -20
date -u >> $OUT/times.txt
timeout 300 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers flex,columns \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -8; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 8x64 --lengths 131072 --peers flex,gluonwhole \
  --rounds 3 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -6; grep -E "rounds:|FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
timeout 100 python3 -m megastride.kernels.gpu_check --only 1M > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -3 $OUT/gpu_check.log | cut -c1-600
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --steps 2 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 200 megastride bench scaling $common $mem --set train.offload_attention=false --out $OUT/gpu > $OUT/gpu.log 2>&1
echo "gpu rc $?" >> $OUT/gpu.log
grep -v "^|" $OUT/gpu.log | grep -v "memory at the peak" | tail -4
cat $OUT/gpu/*.csv > $OUT/rows.csv 2>/dev/null; rm -rf $OUT/gpu
date -u >> $OUT/times.txt
