#!/bin/bash
# Twenty-seventh run, call 3: 64-row forward tiles at head dim 128 for short lengths (3,072 tokens at two
# heads: 48 query blocks of 128 for 132 SMs), forced, then offered to the autotuner in the bench.
git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 100 megastride bench tiles --kernel fwd --configs 2x128 --lengths 3072,12288 --graphs --no-flex \
  --tiles list,64x128w4s5,64x64w4s5,64x128w4s3,64x64w4s3 --out $OUT/fwd > $OUT/fwd.log 2>&1; echo "fwd rc $?" >> $OUT/fwd.log
tail -16 $OUT/fwd.log; date -u >> $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES=fwd:64x128w4s5,fwd:64x64w4s5,fwd:64x64w4s3 timeout 150 megastride bench attention \
  --patterns fixed --configs 2x128 --lengths 3072,12288 --peers flex --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log
grep -v "^|" $OUT/short.log | grep "tiles\|chose\|replayed\|rc"; grep -A 6 "^Replayed" $OUT/short.log; date -u >> $OUT/times.txt
