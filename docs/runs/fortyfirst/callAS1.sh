#!/bin/bash
# Forty-first run, call 1 (planned 2026-12-04 22:45 UTC, a session without a device; run first when one is lent):
# checks, no timing of the step. (1) ln_check: the LayerNorm kernels and, new since f7fb599, ln1 with its input
# kept for the stream (its backward summing the stream's gradient) and the FFN's fp32 + bf16 residual add, checked
# against torch and float64 in bf16 and timed against what they replace; (2) the GPU tests of the step's new
# pieces: the overlapped-offload prefetch (de28378, 4d004c8; fortieth run's callAR3, never run), kept attention,
# the residual kernels' loss and gradients against the plain stream's, and the FFN's bias in the SiLU's kernel against
# torch's (15be590); the whole file, so DeepSpeed's bf16 and fp16 training runs go through the unread recompute tail
# (2d64c4f) and the new kernels too.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 120 python3 -m megastride.kernels.ln_check > $OUT/ln_check.log 2>&1; echo "ln_check rc $?" >> $OUT/ln_check.log
cat $OUT/ln_check.log | cut -c1-400
date -u >> $OUT/times.txt
# the FFN's bias added, and its gradient summed, in the SiLU's kernels (kernels.linear_silu): checked and timed
timeout 90 python3 -m megastride.kernels.ffn_check > $OUT/ffn_check.log 2>&1; echo "ffn_check rc $?" >> $OUT/ffn_check.log
cut -c1-400 $OUT/ffn_check.log
timeout 370 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "passed|failed|rc |Error|assert" $OUT/tests.log | tail -12
date -u >> $OUT/times.txt
