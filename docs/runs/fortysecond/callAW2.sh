#!/bin/bash
# The call after callAW1.sh on the warm machine: the short lengths at 2x128 with the flat variants, and 65,536 tokens,
# 8x64, eager (see callAW1.sh).
# PARTS (default both: "short128 mid") runs one of them only (docs/runs/fortythird/callBB2.sh).
part() { [[ " ${PARTS:-short128 mid} " == *" $1 "* ]]; }
date -u >> $OUT/times.txt
if part short128; then
timeout 150 megastride bench attention --patterns fixed --configs 2x128 --lengths 3072,12288 \
  --peers flex,flat,flatauto,flatbwd,flatwhole --graphs --rounds 0 --out $OUT/short128 > $OUT/short128.log 2>&1
echo "short128 rc $?" >> $OUT/short128.log; grep -v "^\[" $OUT/short128.log | tail -8 | cut -c1-400
grep -E "FAILED|flat (fwd|dq|dkdv)" $OUT/short128.log | cut -c1-300
fi
date -u >> $OUT/times.txt
if part mid; then
timeout 80 megastride bench attention --patterns fixed --configs 8x64 --lengths 65536 --peers flex,flat,flatauto,flatbwd \
  --rounds 2 --out $OUT/mid > $OUT/mid.log 2>&1
echo "mid rc $?" >> $OUT/mid.log; grep -v "^\[" $OUT/mid.log | tail -6 | cut -c1-400
grep -E "FAILED|flat (fwd|dq|dkdv)" $OUT/mid.log | cut -c1-300
fi
rm -f $OUT/short64/*.json $OUT/short128/*.json $OUT/mid/*.json
date -u >> $OUT/times.txt
