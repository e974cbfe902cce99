#!/bin/bash
# Run as session BD's call BD1 (2026-12-05, H100), unchanged from session BC's plan.
# A device call planned in session BC (2026-12-05; about 450 s): the FFN with its first layer as one Triton product
# each way (kernels/ffn_gemm.py, MEGASTRIDE_FFN_GEMM=1, off by default), first on a GPU: ffn_check --gemm (the layer
# and the whole FFN in bf16 against torch and float64 three ways, then the model's FFN timed forward without
# gradients, with, and forward+backward beside the default and torch's, alternated, at 65,536 and 1,048,576 rows;
# the autotuners' choices printed), then the GPU test of the model's FFNs through it (recompute off and on).
# If its products come near cuBLAS's, callBC9.sh times the 1M step without, with and without it.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 260 python3 -m megastride.kernels.ffn_check --gemm > $OUT/ffn_gemm.log 2>&1
echo "ffn_check rc $?" >> $OUT/ffn_gemm.log; grep -vE "^\s*$|Warning|warn" $OUT/ffn_gemm.log | tail -8 | cut -c1-600
date -u >> $OUT/times.txt
timeout 180 python3 -m pytest -q -m gpu tests/test_train_gpu.py -k one_product -p no:cacheprovider > $OUT/pytest_ffn.log 2>&1
echo "pytest rc $?" >> $OUT/pytest_ffn.log; tail -3 $OUT/pytest_ffn.log
date -u >> $OUT/times.txt
