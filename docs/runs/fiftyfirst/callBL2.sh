#!/bin/bash
# Session BL (2026-12-06), on an H200 after call BL1 (issue 5's side-by-side): the twenty-eighth run's length sweep
# (docs/scaling.md, "The sweep with the current code") repeated with today's kernels and defaults, fixed and strided
# series, 1,024 to 1,048,576 tokens, the same arguments as callAF1.sh (blocks recomputed only where memory needs).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
date -u > $OUT/times.txt
timeout ${LIMIT:-520} megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --set train.checkpoint_blocks=auto --kinds fixed,strided \
  --lengths 1024,4096,16384,65536,262144,1048576 --steps 2 --warmup 1 --budget-s ${BUDGET:-270} \
  --out $OUT/sweep > $OUT/sweep.log 2>&1; echo "sweep rc $?" >> $OUT/sweep.log
tail -40 $OUT/sweep.log; date -u >> $OUT/times.txt
