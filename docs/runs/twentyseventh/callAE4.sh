#!/bin/bash
# Twenty-seventh run, call 4: with the 64-row forward tiles listed at head dim 128, what the autotuner
# takes at long lengths, beside Flex; every listed config against the reference.
git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 2x128 --lengths 262144,1048576 --peers flex \
  --out $OUT/long > $OUT/long.log 2>&1; echo "long rc $?" >> $OUT/long.log
grep -v "^|" $OUT/long.log | grep "tiles\|chose\|f+b\|rc"; date -u >> $OUT/times.txt
timeout 150 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k every_listed > $OUT/test.log 2>&1; echo "test rc $?" >> $OUT/test.log
tail -3 $OUT/test.log; date -u >> $OUT/times.txt
