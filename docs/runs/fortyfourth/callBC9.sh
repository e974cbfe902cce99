#!/bin/bash
# A device call planned in session BC (2026-12-05; about 450 s), after callBC8.sh passed: the fixed 1M step under
# 60 GB without, with and without MEGASTRIDE_FFN_GEMM=1 (ABA on one card; the 8 s line).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
STEP_TIMEOUT=150; source docs/runs/fortyfourth/step1m.sh  # step NAME: the 1M step, killed after 150 s
MEGASTRIDE_FFN_GEMM=0 step off1; MEGASTRIDE_FFN_GEMM=1 step gemm; MEGASTRIDE_FFN_GEMM=0 step off2
date -u >> $OUT/times.txt
