#!/bin/bash
# Planned 2026-12-05 (session BB), the call after docs/runs/fortysecond/callAW1.sh on the warm machine: (1) the
# head-dim-64 forward's tiles re-timed at 262,144 and 1M (the listed 128x128 w4 s5 has its products serialised by
# ptxas for want of registers; 128x128 w8 and 64x128 w4 are not: the lever for the 1M step's 8 s margin, its
# forward is 1.78 s of 8.05); (2) the fixed 1M step under 60 GB once more with the defaults (a tenth sample of the
# 8 s line); (3) the short lengths at 2x128 with the flat peers (callAW2.sh's first part).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 110 megastride bench tiles --kernel fwd --configs 8x64 --lengths 262144,1048576 --no-flex --rounds 2 \
  --tiles list,128x128w8s5,128x128w8s3,64x128w4s3 --out $OUT/fwd_tiles > $OUT/fwd_tiles.log 2>&1
echo "fwd_tiles rc $?" >> $OUT/fwd_tiles.log; grep -v "^\[" $OUT/fwd_tiles.log | tail -14 | cut -c1-300
date -u >> $OUT/times.txt
timeout 150 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 \
  --warmup 1 --steps 3 --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --set train.memory_budget_gb=60 \
  --out $OUT/fixed > $OUT/fixed.log 2>&1
echo "fixed rc $?" >> $OUT/fixed.log; grep -E "s/step|rc " $OUT/fixed.log | grep -v "^|" | cut -c1-400
cp $OUT/fixed/*.csv $OUT/fixed.csv 2>/dev/null; rm -rf $OUT/fixed
date -u >> $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 2x128 --lengths 3072,12288 \
  --peers flex,flat,flatauto,flatbwd,flatwhole --graphs --rounds 0 --out $OUT/short128 > $OUT/short128.log 2>&1
echo "short128 rc $?" >> $OUT/short128.log; grep -v "^\[" $OUT/short128.log | tail -8 | cut -c1-400
grep -E "FAILED|flat (fwd|dq|dkdv)" $OUT/short128.log | cut -c1-300
rm -f $OUT/short128/*.json
date -u >> $OUT/times.txt
# (4) where the flat path's forward+backward spends its time at the short lengths (GPU kernel time per kernel from
# the profiler; the flat forward and the dQ mode "flat" forced as "ours")
MEGASTRIDE_BLOCKSPARSE_FLAT=1 MEGASTRIDE_BLOCKSPARSE_DQ=flat timeout 90 megastride bench attention --patterns fixed \
  --configs 8x64 --lengths 3072,12288 --peers flex --graphs --rounds 0 --profile --out $OUT/flatprof > $OUT/flatprof.log 2>&1
echo "flatprof rc $?" >> $OUT/flatprof.log; grep -E "profiled|rc " $OUT/flatprof.log | cut -c1-600
rm -f $OUT/flatprof/*.json
date -u >> $OUT/times.txt
