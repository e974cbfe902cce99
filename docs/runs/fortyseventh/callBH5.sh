#!/bin/bash
# For the next session (planned 2026-12-06 after session BH's device time ran out), on an H200: the fixed 1M step
# under 60 GB (the planner's choice: kept attention outputs on the host) with MEGASTRIDE_FFN_GEMM=nograd (the
# default since 4049e35) and =0 alternated in one process (`--alternate`, four rounds), then the baseline (compiled
# Flex, every block recomputed) beside it: issue 5's side-by-side and the nograd A/B of call BH1 repeated; then the
# GPU tests of nograd and of --alternate's first GPU run (NO_TESTS=1: not the tests). At most eight files come back.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
export MEMWATCH_S=1; source docs/runs/fortysixth/memwatch.sh
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 260 megastride bench scaling $common --steps 4 --kinds fixed $mem --alternate MEGASTRIDE_FFN_GEMM=nograd,0 \
  --out $OUT/ab > $OUT/ab.log 2>&1; echo "ab rc $?" >> $OUT/ab.log
grep -E "s/step|rc " $OUT/ab.log | grep -v "^|" | cut -c1-400; cp $OUT/ab/scaling.csv $OUT/ab.csv; rm -rf $OUT/ab
date -u >> $OUT/times.txt
timeout 150 megastride bench scaling $common --steps 3 --kinds baseline-flex --out $OUT/base > $OUT/base.log 2>&1
echo "baseline rc $?" >> $OUT/base.log
grep -E "s/step|rc " $OUT/base.log | grep -v "^|" | cut -c1-400; cp $OUT/base/scaling.csv $OUT/base.csv; rm -rf $OUT/base
date -u >> $OUT/times.txt
if [ -z "$NO_TESTS" ]; then
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py -k "without_gradients or one_product_each_way" \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log; grep -E "^E |passed|failed|rc " $OUT/tests.log | head -12
fi
kill $WATCH; sort -k3 -n $OUT/mem.txt | head -1; date -u >> $OUT/times.txt
