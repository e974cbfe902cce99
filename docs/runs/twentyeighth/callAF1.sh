#!/bin/bash
# Twenty-eighth run, call 1: issue 5's length sweep with today's code, fixed and strided series
# (1,024 to 1,048,576 tokens and 2,097,152 while the planner says it fits), recomputing only the
# blocks memory needs (train.checkpoint_blocks=auto; attention outputs kept where they fit).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
date -u > $OUT/times.txt
timeout 560 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --set train.checkpoint_blocks=auto --kinds fixed,strided \
  --lengths 1024,4096,16384,65536,262144,1048576,2097152 --steps 2 --warmup 1 --budget-s 270 \
  --out $OUT/sweep > $OUT/sweep.log 2>&1; echo "sweep rc $?" >> $OUT/sweep.log
cat $OUT/sweep.log | tail -40; date -u >> $OUT/times.txt
