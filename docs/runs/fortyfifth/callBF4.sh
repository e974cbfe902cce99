#!/bin/bash
# Session BF's second device call (2026-12-05): the fixed 1M step under 60 GB, off then MEGASTRIDE_FFN_GEMM=nograd,
# with a host-memory watch. The machine running this step was lost twice (session BE's second call, and call BF1
# this session: "taken back" mid-call, nothing returned), where session BE had seen about 91 GB of pinned host memory
# on a 128 GiB host. So a loop logs the host's memory every 2 s into $OUT/mem.txt, and stops the step if less than
# 6 GB is available, so the call returns what it saw instead of losing the machine.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
free -m | head -2
source docs/runs/fortyfifth/memwatch.sh  # WATCH: the memory watch loop
date -u > $OUT/times.txt
source docs/runs/fortyfourth/step1m.sh
STEP_TIMEOUT=170 MEGASTRIDE_FFN_GEMM=0 step off1; date -u >> $OUT/times.txt
if [ -z "$ONLY_OFF" ]; then  # callBF7.sh: the first step only
STEP_TIMEOUT=150 MEGASTRIDE_FFN_GEMM=nograd step nograd; date -u >> $OUT/times.txt
fi
kill $WATCH
sort -k3 -n $OUT/mem.txt | head -3
