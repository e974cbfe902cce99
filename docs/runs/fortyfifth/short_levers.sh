#!/bin/bash
# The fixed pattern at 3,072 and 12,288 tokens for CONFIG (HEADSxHEAD_DIM) beside PEERS, replayed from CUDA graphs
# and in three alternated eager rounds, within LIMIT seconds; log and tables under $OUT/short_$CONFIG.
timeout ${LIMIT:-220} megastride bench attention --patterns fixed --configs $CONFIG --lengths 3072,12288 \
  --peers $PEERS --graphs --rounds 3 --out $OUT/short_$CONFIG > $OUT/short_$CONFIG.log 2>&1
echo "short $CONFIG rc $?" >> $OUT/short_$CONFIG.log
grep -E "^(fixed|strided)|ours |rc |chose|round|Flex" $OUT/short_$CONFIG.log | cut -c1-250 | tail -40
cat $OUT/short_$CONFIG/bench_attention.md 2>/dev/null | head -20
date -u >> $OUT/times.txt
