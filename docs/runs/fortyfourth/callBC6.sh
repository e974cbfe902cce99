#!/bin/bash
# The next device call (planned 2026-12-05, session BC; about 450 s): (1) the GPU test of every listed tile config,
# which now also forces block 64's configs on the strided pattern (the 64x64 backward tiles listed at block 64 and
# head dim 64 after call BC4, not yet run on a GPU); (2) the strided pattern beside the fixed one at 3,072 and
# 12,288 tokens again (call BC4: strided -17% at 12,288), so the autotuner can take those tiles.
# PARTS (default both: "listed short") runs some of them only (docs/runs/fortyfifth/callBF1.sh).
part() { [[ " ${PARTS:-listed short} " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u >> $OUT/times.txt
if part listed; then
timeout 260 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k every_listed -p no:cacheprovider > $OUT/every_listed.log 2>&1
echo "every_listed rc $?" >> $OUT/every_listed.log; tail -3 $OUT/every_listed.log
fi
date -u >> $OUT/times.txt
if part short; then
timeout 200 megastride bench attention --patterns fixed,strided_matched --configs 8x64 --lengths 3072,12288 \
  --peers '' --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log
grep -E "^(fixed|strided)|ours |rc |chose|tiles" $OUT/short.log | cut -c1-250
fi
date -u >> $OUT/times.txt
