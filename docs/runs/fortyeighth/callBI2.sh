#!/bin/bash
# Session BI (2026-12-06), on an H200 (asked with needs_h200: the baseline's step takes 91.5 GB, more than an
# H100 holds; call BI1 ran callBH5.sh on an H100, where the baseline ran out of memory). The fixed 1M step under
# 60 GB with MEGASTRIDE_FFN_GEMM=nograd (the default) and =0 alternated in one process (four rounds), then the
# baseline (compiled Flex, every block recomputed) in the same call: issue 5's side-by-side with today's defaults.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
export MEMWATCH_S=1; source docs/runs/fortysixth/memwatch.sh
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 280 megastride bench scaling $common --steps 4 --kinds fixed $mem --alternate MEGASTRIDE_FFN_GEMM=nograd,0 \
  --out $OUT/ab > $OUT/ab.log 2>&1; echo "ab rc $?" >> $OUT/ab.log
grep -E "s/step|rc " $OUT/ab.log | grep -v "^|" | cut -c1-400; cp $OUT/ab/scaling.csv $OUT/ab.csv; rm -rf $OUT/ab
date -u >> $OUT/times.txt
timeout 200 megastride bench scaling $common --steps 3 --kinds baseline-flex --out $OUT/base > $OUT/base.log 2>&1
echo "baseline rc $?" >> $OUT/base.log
grep -E "s/step|rc " $OUT/base.log | grep -v "^|" | cut -c1-400; cp $OUT/base/scaling.csv $OUT/base.csv; rm -rf $OUT/base
kill $WATCH; sort -k3 -n $OUT/mem.txt | head -1; date -u >> $OUT/times.txt
