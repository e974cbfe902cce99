#!/bin/bash
# Session BB, 2026-12-05 14:33-14:38 UTC, the same warm H100, tree 1ccf2df: the head-dim-64 forward's tiles at 262,144
# and 1M (docs/runs/fortyfirst/callAW1.sh's "tiles" part; its alternated rounds at 1M ran out of the part's 100 s),
# then the flat kernels' GPU test at head dim 128 (cut by callBB1's 250 s limit). Logs: callBB1b/.
date -u > $OUT/times.txt
PARTS=tiles bash docs/runs/fortyfirst/callAW1.sh
timeout 200 python3 -m pytest -x -q --tb=short -p no:cacheprovider -o faulthandler_timeout=190 -m gpu \
  tests/test_kernels_gpu.py -k "flat_forward and 128" > $OUT/tests128.log 2>&1
echo "tests rc $?" >> $OUT/tests128.log; grep -E "^E |passed|failed|rc " $OUT/tests128.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
