#!/bin/bash
# Thirty-seventh run, call 4: the GPU tests whose backwards run the delta launch's other forms (its new arguments
# unread: merged and atomic dQ, split columns, TMA loads, direct launches, launch plans replaying it) on the
# committed tree.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 500 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py \
  -k "tma_loads or partials or split_columns or direct_launches or launch_plans or auto_mode or first_call" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -4 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
