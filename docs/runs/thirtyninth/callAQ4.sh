#!/bin/bash
# Thirty-ninth run, call 4: the halves kernel takes whole columns at 131,072 (gluon_split with one program an SM).
# (1) 65,536 and 131,072 beside Flex and with the fused dQ forced (peer dqfp16: at 65,536 the halves kernel on whole
# columns where "auto" runs the dQ kernel); (2) 1M beside Flex again (another machine).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 8x64 --lengths 65536,131072 --peers flex,dqfp16 \
  --rounds 3 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -7; grep -E "rounds:|FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 8x64 --lengths 1048576 --peers flex \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -6; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
