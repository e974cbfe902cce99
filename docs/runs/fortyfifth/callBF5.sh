#!/bin/bash
# Session BF's third device call (2026-12-05): the row-segment GPU tests that call BF2's 230 s did not reach, then
# callBF3.sh's bench (the short-length levers at 8x64).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -p no:cacheprovider -k "row_segments" \
  > $OUT/row_segments_tests.log 2>&1
echo "row segments tests rc $?" >> $OUT/row_segments_tests.log; tail -6 $OUT/row_segments_tests.log
date -u >> $OUT/times.txt
PEERS=flex,streams,deltakernel,pdl,pdlstreams,fwdsplit2,split4,dqsplit2,shortlevers,shortstreams CONFIG=8x64 LIMIT=290 \
  bash docs/runs/fortyfifth/short_levers.sh
