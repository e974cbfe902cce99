#!/bin/bash
# Twenty-seventh run, call 1: short lengths at 8x64. Where the replayed forward+backward goes per kernel
# (ours and Flex), and whether 64-row dQ / 64-key dK/dV tiles (which cut 3,072 2x128 by 15% in the
# twenty-second run) help at head dim 64.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 --peers flex \
  --graphs --rounds 0 --profile --out $OUT/prof > $OUT/prof.log 2>&1; echo "prof rc $?" >> $OUT/prof.log
grep -v "^|" $OUT/prof.log | tail -40; grep -A 8 "^Replayed" $OUT/prof.log; date -u >> $OUT/times.txt
timeout 150 megastride bench tiles --kernel merged --configs 8x64 --lengths 3072,12288 --graphs \
  --tiles list,64x64+64x64w4s5,64x64+64x32w4s5,32x64+64x64w4s5,32x128+64x64w4s5,64x64+64x64w4s3 \
  --out $OUT/merged > $OUT/merged.log 2>&1; echo "merged rc $?" >> $OUT/merged.log
tail -24 $OUT/merged.log; date -u >> $OUT/times.txt
timeout 120 megastride bench tiles --kernel dq --configs 8x64 --lengths 3072,12288 --graphs \
  --tiles list,64x64w4s5,64x32w4s5,64x64w4s3 --out $OUT/dq > $OUT/dq.log 2>&1; echo "dq rc $?" >> $OUT/dq.log
tail -16 $OUT/dq.log; date -u >> $OUT/times.txt
timeout 120 megastride bench tiles --kernel dkdv --configs 8x64 --lengths 3072,12288 --graphs \
  --tiles list,64x64w4s3,32x64w4s5,64x32w4s5 --out $OUT/dkdv > $OUT/dkdv.log 2>&1; echo "dkdv rc $?" >> $OUT/dkdv.log
tail -16 $OUT/dkdv.log; date -u >> $OUT/times.txt
