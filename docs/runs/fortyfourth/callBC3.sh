#!/bin/bash
# Session BC (2026-12-05): the LayerNorm backward's loads a step ahead (layernorm.BWD_PREFETCH) checked on the GPU
# before it is turned on: ln_check (every check, with the new one that the backward with BWD_PREFETCH gives bitwise
# the gradients without it, in all three backwards, at a ragged row count) and its tile sweep at the 1M step's
# shape; then, with BWD_PREFETCH on in this copy of the tree, ln_check's checks again and the GPU test of the
# residual kernels in the model (loss and gradients against the plain stream's).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m megastride.kernels.ln_check --sweep-long-only > $OUT/ln_sweep.log 2>&1
echo "ln_check rc $?" >> $OUT/ln_sweep.log
grep -E "^(ok|FAIL)|checks|rc |8 programs/SM" $OUT/ln_sweep.log | cut -c1-220
date -u >> $OUT/times.txt
sed -i 's/^BWD_PREFETCH = .*/BWD_PREFETCH = True/' kernels/layernorm.py; grep -n "^BWD_PREFETCH =" kernels/layernorm.py
timeout 120 python3 -m megastride.kernels.ln_check > $OUT/ln_on.log 2>&1
echo "ln_check (on) rc $?" >> $OUT/ln_on.log
grep -E "^(ok|FAIL)|checks|rc " $OUT/ln_on.log | cut -c1-220
timeout 200 python3 -m pytest -q -m gpu tests/test_train_gpu.py -k residual_kernels -p no:cacheprovider > $OUT/pytest_on.log 2>&1
echo "pytest (on) rc $?" >> $OUT/pytest_on.log; tail -3 $OUT/pytest_on.log
date -u >> $OUT/times.txt
