#!/bin/bash
# Thirty-eighth run, call 6 (a fresh machine): the fused dQ from 131,072 tokens (warp-specialised): (1) the kernel
# profile at 131,072; (2) 131,072 beside Flex and the dQ kernel (peer dqoff), alternated rounds; (3) 262,144 and 1M
# beside Flex once more.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 90 megastride bench attention --patterns fixed --configs 8x64 --lengths 131072 --profile \
  --out $OUT/prof > $OUT/prof.log 2>&1
echo "prof rc $?" >> $OUT/prof.log; grep -E "profiled|rc " $OUT/prof.log
rm -f $OUT/prof/*.json
date -u >> $OUT/times.txt
timeout 120 megastride bench attention --patterns fixed --configs 8x64 --lengths 131072 --peers flex,dqoff \
  --rounds 3 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -5; grep -E "rounds:|FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers flex \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -7; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
