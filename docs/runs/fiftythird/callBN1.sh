#!/bin/bash
# Session BN (2026-12-06), for any single GPU (an H100 holds all of it): issue 5's shorter targets side by side with
# the baseline script in one process, on today's code. The 12,288 and 65,536 targets were last set beside the
# baseline on 2026-11-29/30 code; later numbers (0.2131 s at 65,536) were not beside it.
#   1. 12,288 and 65,536 tokens: ours (fixed, step in a CUDA graph, recompute fitted to memory) beside
#      baseline-dense (SDPA FA2) and baseline-flex (compiled Flex, fixed mask), both recomputing every block.
#   2. 262,144 tokens: ours eager with recompute fitted to memory beside baseline-flex.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
date -u > $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --set train.checkpoint_blocks=auto"
timeout ${SHORT_S:-260} megastride bench scaling $common --set train.cuda_graph=true --lengths 12288,65536 \
  --kinds baseline-dense,fixed,baseline-flex --steps 5 --warmup 2 --budget-s 200 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log
date -u >> $OUT/times.txt
timeout ${LONG_S:-200} megastride bench scaling $common --lengths 262144 \
  --kinds fixed,baseline-flex --steps 3 --warmup 1 --budget-s 150 --out $OUT/long > $OUT/long.log 2>&1
echo "long rc $?" >> $OUT/long.log
date -u >> $OUT/times.txt
for p in short long; do cp $OUT/$p/scaling.csv $OUT/$p.csv 2>/dev/null; grep -E "^\|" $OUT/$p.log | head -20; tail -2 $OUT/$p.log; rm -rf $OUT/$p; done
