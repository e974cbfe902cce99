#!/bin/bash
# Twenty-seventh run, call 5: the middle lengths with every new list entry in place (does the autotuner keep
# its choices there?), beside Flex, timed one after the other.
git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 170 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 65536,131072 --peers flex \
  --rounds 0 --out $OUT/mid > $OUT/mid.log 2>&1; echo "mid rc $?" >> $OUT/mid.log
grep -v "^|" $OUT/mid.log | grep "tiles\|chose\|f+b\|round\|rc" | cut -c1-400; grep -B2 -A8 "lternat" $OUT/mid.log | tail -20; date -u >> $OUT/times.txt
