#!/bin/bash
# A device call planned in session BC (2026-12-05; about 560 s): the FFN with its first layer as one Triton
# product each way (kernels/ffn_gemm.py, MEGASTRIDE_FFN_GEMM=1, off by default), first on a GPU: ffn_check --gemm
# (the layer and the whole FFN in bf16 against torch and float64 three ways, then the model's FFN timed forward
# without gradients, with, and forward+backward beside the default and torch's, alternated, at 65,536 and
# 1,048,576 rows); then, if its checks passed, the fixed 1M step under 60 GB without, with, without it (ABA on one
# card). The GPU test (pytest -m gpu tests/test_train_gpu.py -k one_product, about 2 minutes) in a call of its own.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m megastride.kernels.ffn_check --gemm > $OUT/ffn_gemm.log 2>&1
echo "ffn_check rc $?" >> $OUT/ffn_gemm.log; grep -vE "^\s*$|Warning|warn" $OUT/ffn_gemm.log | tail -8 | cut -c1-400
date -u >> $OUT/times.txt
STEP_TIMEOUT=150; source docs/runs/fortyfourth/step1m.sh  # step NAME: the 1M step, killed after 150 s
if grep -q "^ok   check feed_forward" $OUT/ffn_gemm.log && grep -q "^ok   check one-kernel" $OUT/ffn_gemm.log; then
  MEGASTRIDE_FFN_GEMM=0 step off1; MEGASTRIDE_FFN_GEMM=1 step gemm; MEGASTRIDE_FFN_GEMM=0 step off2
fi
date -u >> $OUT/times.txt
