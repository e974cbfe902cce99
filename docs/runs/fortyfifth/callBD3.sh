#!/bin/bash
# Session BD's third call (2026-12-05; asked for an H200, ran on the H100 still held; about 480 s): (1) callBC7.sh: the LayerNorm backward's loads a step ahead (on
# by default since the forty-fourth run's H100 sweeps) timed on an H200 by ln_check's sweep (its checks include the
# bitwise one), then the fixed 1M step under 60 GB (the 8 s line); (2) the GPU test of the FFN in one product each
# way (MEGASTRIDE_FFN_GEMM=1) again, after its dz kernel's autotuner was made to zero the bias's column partials
# before and after its trials (call BD1: fc.bias's gradient 0.00618 from fp32 against torch's 5.5e-5, recompute off,
# the first launch, where the tuner ran).
bash docs/runs/fortyfourth/callBC7.sh
date -u >> $OUT/times.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_train_gpu.py -k one_product -p no:cacheprovider > $OUT/pytest_ffn.log 2>&1
echo "pytest rc $?" >> $OUT/pytest_ffn.log; grep -E "^E .*from fp32|passed|failed" $OUT/pytest_ffn.log | tail -3
date -u >> $OUT/times.txt
