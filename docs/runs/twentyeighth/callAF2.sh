#!/bin/bash
# Twenty-eighth run, call 2: the dense series of issue 5's sweep (same options as call 1), the paper's
# Table 2 shape, the short lengths with the step replayed from a CUDA graph (all three kinds), and the
# planner against measured peaks.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --set train.checkpoint_blocks=auto --kinds dense \
  --lengths 1024,4096,16384,65536,262144,1048576 --steps 2 --warmup 1 --budget-s 170 \
  --out $OUT/sweep > $OUT/sweep.log 2>&1; echo "sweep rc $?" >> $OUT/sweep.log
grep -v "^|" $OUT/sweep.log | tail -12; date -u >> $OUT/times.txt
timeout 90 megastride bench scaling --device cuda --table2 --set model.dropout=0 --set train.checkpoint_blocks=auto \
  --steps 3 --warmup 1 --out $OUT/table2 > $OUT/table2.log 2>&1; echo "table2 rc $?" >> $OUT/table2.log
tail -12 $OUT/table2.log; date -u >> $OUT/times.txt
timeout 120 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --set train.checkpoint_blocks=auto --set train.cuda_graph=true --kinds dense,fixed,strided \
  --lengths 1024,4096,16384,65536 --steps 3 --warmup 1 --budget-s 40 \
  --out $OUT/graph > $OUT/graph.log 2>&1; echo "graph rc $?" >> $OUT/graph.log
grep -v "^|" $OUT/graph.log | tail -16; date -u >> $OUT/times.txt
timeout 150 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
  --validate-plan --steps 1 --warmup 1 --out $OUT/plan > $OUT/plan.log 2>&1; echo "plan rc $?" >> $OUT/plan.log
tail -16 $OUT/plan.log; date -u >> $OUT/times.txt
