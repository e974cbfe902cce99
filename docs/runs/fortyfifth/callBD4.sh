#!/bin/bash
# Session BD's fourth call (2026-12-05, H100, the card of call BD3 still held): the FFN-in-one-product GPU test again
# with an empty Triton cache, so its dz kernel's autotuner runs its trials inside the test (call BD3's pass read the
# tuner's choice from the disk cache the failing call BD1 had written).
export TRITON_CACHE_DIR=$(mktemp -d); date -u > $OUT/times.txt
timeout 240 python3 -m pytest -q -m gpu tests/test_train_gpu.py -k one_product -p no:cacheprovider > $OUT/pytest_ffn_fresh.log 2>&1
echo "pytest rc $?" >> $OUT/pytest_ffn_fresh.log; grep -E "^E .*from fp32|passed|failed|rc" $OUT/pytest_ffn_fresh.log | tail -4
date -u >> $OUT/times.txt
