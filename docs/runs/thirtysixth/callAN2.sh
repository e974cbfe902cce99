#!/bin/bash
# Thirty-sixth run, call 2: look_ahead's "auto" the default (fused steps' rows a step ahead over whole columns
# into fp16 sums), the sums in dQ's own storage. (1) the fused-dQ GPU tests, and the segment case with the
# look-ahead forced (AHEAD=1: segments and earlier sums); (2) the bench at 131,072 (fused forced against the
# dQ kernel, the default there) and at 262,144 and 1M (the default, noahead, dqoff, Flex); (3) gpu_check at 4M;
# (4) the fixed 1M training step of the thirty-fifth run's call 5.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "summed" > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -3 $OUT/gpu_tests.log
MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD=1 timeout 80 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py \
  -k "summed and fp16-dtype1" > $OUT/gpu_tests_ahead.log 2>&1
echo "tests ahead rc $?" >> $OUT/gpu_tests_ahead.log; tail -3 $OUT/gpu_tests_ahead.log
date -u >> $OUT/times.txt
timeout 90 megastride bench attention --patterns fixed --configs 8x64 --lengths 131072 \
  --peers flex,dqfp16 --rounds 3 --out $OUT/bench131k > $OUT/bench131k.log 2>&1
echo "bench rc $?" >> $OUT/bench131k.log; grep -E "rounds:|FAILED|bench rc" $OUT/bench131k.log
timeout 200 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 \
  --peers flex,noahead,dqoff --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -12; grep -E "rounds:|FAILED" $OUT/bench.log
date -u >> $OUT/times.txt
timeout 60 python3 -m megastride.kernels.gpu_check --only "4M" --out $OUT/gpu_check > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -3 $OUT/gpu_check.log | cut -c1-400
date -u >> $OUT/times.txt
timeout 170 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --lengths 1048576 --steps 2 --warmup 1 --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --out $OUT/step > $OUT/step.log 2>&1
echo "step rc $?" >> $OUT/step.log
grep -E "s/step|rc |plan" $OUT/step.log | tail -5
date -u >> $OUT/times.txt
