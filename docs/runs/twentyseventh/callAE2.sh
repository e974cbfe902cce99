#!/bin/bash
# Twenty-seventh run, call 2: the 64-row dQ tile and the 64x64+64x64 merged tile listed at head dim 64.
# The short-length table with them; the forward's small tiles at short lengths; the autotuner's timings
# at 262,144 (does the new tile win or lose there?); every listed config against the reference.
git log -1 --format=%h > $OUT/tree.txt; git diff --stat > $OUT/diff.txt; date -u > $OUT/times.txt
timeout 220 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 --peers flex \
  --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1; echo "short rc $?" >> $OUT/short.log
grep -v "^|" $OUT/short.log | grep "tiles\|chose\|replayed\|rc"; grep -A 8 "^Replayed" $OUT/short.log; date -u >> $OUT/times.txt
timeout 90 megastride bench tiles --kernel fwd --configs 8x64 --lengths 3072,12288 --graphs --no-flex \
  --tiles list,64x64w4s3,64x64w4s5,128x64w4s3,64x128w4s3 --out $OUT/fwd > $OUT/fwd.log 2>&1; echo "fwd rc $?" >> $OUT/fwd.log
tail -14 $OUT/fwd.log; date -u >> $OUT/times.txt
timeout 120 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144 --peers flex \
  --out $OUT/long > $OUT/long.log 2>&1; echo "long rc $?" >> $OUT/long.log
grep -v "^|" $OUT/long.log | grep "tiles\|chose\|f+b\|rc"; date -u >> $OUT/times.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k every_listed > $OUT/test.log 2>&1; echo "test rc $?" >> $OUT/test.log
tail -5 $OUT/test.log; date -u >> $OUT/times.txt
