#!/bin/bash
# Forty-first run, call 1 (planned 2026-12-04 22:45 UTC, a session without a device; run first when one is lent):
# checks, no timing of the step. (1) ln_check: the LayerNorm kernels and, new since f7fb599, ln1 with its input
# kept for the stream (its backward summing the stream's gradient) and the FFN's fp32 + bf16 residual add, checked
# against torch and float64 in bf16 and timed against what they replace; (2) the GPU tests of the step's new
# pieces: the overlapped-offload prefetch (de28378, 4d004c8; fortieth run's callAR3, never run), kept attention,
# the residual kernels' loss and gradients against the plain stream's, and the FFN's bias in the SiLU's kernel against
# torch's (15be590).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m megastride.kernels.ln_check > $OUT/ln_check.log 2>&1; echo "ln_check rc $?" >> $OUT/ln_check.log
cat $OUT/ln_check.log | cut -c1-400
date -u >> $OUT/times.txt
# the FFN's bias added, and its gradient summed, in the SiLU's kernels (kernels.linear_silu): checked and timed
timeout 90 python3 -m megastride.kernels.ffn_check > $OUT/ffn_check.log 2>&1; echo "ffn_check rc $?" >> $OUT/ffn_check.log
cut -c1-400 $OUT/ffn_check.log
# the LayerNorm backward's tiles and row groups at the 1M step's shape, plain and with the stream's gradient (ln1
# kept, 101-121 registers: fewer programs an SM than the plain kernel's 80) and the branch's (ln2's add)
timeout 120 python3 -m megastride.kernels.ln_check --sweep-long-only > $OUT/ln_sweep.log 2>&1
echo "sweep rc $?" >> $OUT/ln_sweep.log; grep -E "^sweep bwd" $OUT/ln_sweep.log | sort -t: -k2 -n | head -3
for v in "bwd (" "bwd +stream (" "bwd +stream +branch ("; do grep -F "sweep $v" $OUT/ln_sweep.log | sort -t: -k2 -n | head -2; done
grep -F "tile 2048 x 8/thread" $OUT/ln_sweep.log | grep "8 programs"
date -u >> $OUT/times.txt
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py -k "overlapped or kept or residual or ffn" \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "passed|failed|rc |Error|assert" $OUT/tests.log | tail -12
date -u >> $OUT/times.txt
