#!/bin/bash
# Planned 2026-12-05 (session BB), the call after docs/runs/fortysecond/callAW1.sh on the warm machine: (1) the
# head-dim-64 forward's tiles re-timed at 262,144 and 1M (the listed 128x128 w4 s5 has its products serialised by
# ptxas for want of registers; 128x128 w8 and 64x128 w4 are not: the lever for the 1M step's 8 s margin, its
# forward is 1.78 s of 8.05) and (2) the fixed 1M step under 60 GB once more with the defaults (a tenth sample of
# the 8 s line): those two parts of docs/runs/fortyfirst/callAW1.sh; (3) the short lengths at 2x128 with the flat
# peers (docs/runs/fortysecond/callAW2.sh's first part); (4) where the flat path's forward+backward spends its time
# at the short lengths (GPU kernel time per kernel from the profiler; the flat forward and the dQ mode "flat"
# forced as "ours").
date -u > $OUT/times.txt
PARTS="tiles fixed" bash docs/runs/fortyfirst/callAW1.sh
PARTS=short128 bash docs/runs/fortysecond/callAW2.sh
MEGASTRIDE_BLOCKSPARSE_FLAT=1 MEGASTRIDE_BLOCKSPARSE_DQ=flat timeout 90 megastride bench attention --patterns fixed \
  --configs 8x64 --lengths 3072,12288 --peers flex --graphs --rounds 0 --profile --out $OUT/flatprof > $OUT/flatprof.log 2>&1
echo "flatprof rc $?" >> $OUT/flatprof.log; grep -E "profiled|rc " $OUT/flatprof.log | cut -c1-600
rm -f $OUT/flatprof/*.json $OUT/short128/*.json
date -u >> $OUT/times.txt
