#!/bin/bash
# Call AV2 (2026-12-05): (1) the residual-kernels GPU test with its paths compared in norm (call AV1: one element
# one bf16 step apart failed the elementwise bound), the FFN bias test (not reached in AV1), the soft exponentials'
# test; (2) the forward alone with the soft exponentials against the plain ones, alternated (soft_fwd.py); (3) the
# short lengths replayed with the halves kernel on whole columns and on segments (callAS4.sh's first part).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py tests/test_kernels_gpu.py \
  -k "residual_kernels or ffn_bias or soft_exp" > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "^E |passed|failed|rc " $OUT/tests.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
timeout 150 python3 docs/runs/fortyfirst/soft_fwd.py --cases 1048576x8x64,262144x8x64,12288x8x64 --values 0,4,8,16 \
  --rounds 3 --out $OUT > $OUT/soft_fwd.log 2>&1; echo "soft_fwd rc $?" >> $OUT/soft_fwd.log
grep -v "^\[" $OUT/soft_fwd.log | tail -14 | cut -c1-300
date -u >> $OUT/times.txt
timeout 110 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 \
  --peers flex,halveswhole,halvessplit --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -12; grep -E "FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
