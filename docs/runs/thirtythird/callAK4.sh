#!/bin/bash
# Thirty-third run, call 4: the plain training loop's eager step (no CUDA graph, the default; every block
# recomputed, the default) at 12,288 tokens, launch plans off, then on, then off again.
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --kinds fixed --lengths 12288 --steps 8 --warmup 3"
for plans in 0 auto 0; do
  MEGASTRIDE_BLOCKSPARSE_PLANS=$plans timeout 60 megastride bench scaling $common --out $OUT/p$plans > $OUT/plans_$plans.log 2>&1
  echo "plans=$plans rc $?"; grep "s/step" $OUT/plans_$plans.log
  cat $OUT/p$plans/*.csv >> $OUT/rows.csv 2>/dev/null; rm -rf $OUT/p$plans
done
date -u >> $OUT/times.txt
