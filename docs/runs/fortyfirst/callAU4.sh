#!/bin/bash
# Forty-first run, call AU4 (2026-12-05): the halves kernel made the default at head dim 128 (with the fused dQ's
# fp16 sums, and on column segments) after call AU2 timed it at 2x128 beside Flex. (1) its GPU tests not reached
# in AU2 (head dim 128 with fp32 sums, the m0 schedule, the three segment cases); (2) 2x128 beside Flex with the
# new defaults ("ours" is checked against the reference before timing), alternated rounds, from 131,072.
date -u > $OUT/times.txt
timeout 90 python3 -m pytest -x -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py \
  -k "halves and (fp32-dtype6 or m0 or segments)" > $OUT/halves.log 2>&1; echo "halves rc $?" >> $OUT/halves.log
grep -E "^E |passed|failed|rc " $OUT/halves.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 2x128 --lengths 131072,262144,1048576 \
  --peers flex --rounds 2 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^|" $OUT/bench.log | grep -E "checked|rounds|FAILED|rc |whole|segment" | cut -c1-250
grep "^| fixed" $OUT/bench.log | cut -c1-200
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
