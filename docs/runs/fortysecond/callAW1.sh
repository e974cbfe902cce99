#!/bin/bash
# The next device call, first (planned 2026-12-05, session AW, on the CPU machine: no device was lent that session):
# the flat kernels (kernels/flat.py, built then, interpreter-checked and compiled for sm_90 only): (1) their GPU
# test (every listed config of the flat forward, dQ and dK/dV forced, bf16, against the fp32 reference; then
# "auto"); (2) the short lengths replayed beside Flex and the default: the flat forward, "auto" (timed per part
# against the default forward), the flat dQ with it (dQ mode separate), the flat dK/dV too (whole columns only:
# flatbwd; columns never split: flatwhole); (3) 65,536 tokens, 8x64, eager, where rows hold about 23 key tiles.
# Part (2) at 2x128 and part (3) are callAW2.sh (a call runs 600 s at most; this one about 520). Then docs/runs/fortyfirst/callAW1.sh.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 250 python3 -m pytest -x -q --tb=short -p no:cacheprovider -o faulthandler_timeout=240 -m gpu \
  tests/test_kernels_gpu.py -k "flat_forward" > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "^E |passed|failed|rc " $OUT/tests.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
timeout 260 megastride bench attention --patterns fixed --configs 8x64 --lengths 3072,12288 \
  --peers flex,flat,flatauto,flatdq,flatbwd,flatwhole --graphs --rounds 0 --out $OUT/short64 > $OUT/short64.log 2>&1
echo "short64 rc $?" >> $OUT/short64.log; grep -v "^\[" $OUT/short64.log | tail -12 | cut -c1-400
grep -E "FAILED|flat (fwd|dq|dkdv)" $OUT/short64.log | cut -c1-300
rm -f $OUT/short64/*.json
date -u >> $OUT/times.txt
