#!/bin/bash
# Next run's first call (planned 2026-12-05 after the forty-first run): what the forty-first run left unconfirmed
# on the GPU after its fixes (7cd8ce5): the residual-kernels and FFN GPU tests (the FFN one never ran: calls AS1
# and AT2 ran out of time; -x so a failure's message shows), ffn_check's corrected bound; then the 1M step under
# 60 GB profiled with the idle-gap timeline (the step sits at 8.00 +- 0.01 s: what idle is left).
date -u > $OUT/times.txt
timeout 260 python3 -m pytest -x -q -p no:cacheprovider tests/test_train_gpu.py -k "residual_kernels or ffn_bias" \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "^E |passed|failed|rc " $OUT/tests.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
timeout 60 python3 -m megastride.kernels.ffn_check > $OUT/ffn_check.log 2>&1; echo "ffn_check rc $?" >> $OUT/ffn_check.log
cut -c1-300 $OUT/ffn_check.log
date -u >> $OUT/times.txt
common="--device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 --warmup 1 --kinds fixed"
mem="--set train.cpu_checkpointing=true --set train.offload_overlap=true --set train.checkpoint_blocks=auto \
  --set train.keep_attention=auto --set train.memory_budget_gb=60"
timeout 230 python3 docs/runs/fortieth/gap_timeline.py $common $mem --steps 1 --profile --out $OUT/host \
  > $OUT/host.log 2>&1; echo "host rc $?" >> $OUT/host.log
cp $OUT/host/profile.json $OUT/profile.json 2>/dev/null
grep -v "^|" $OUT/host.log | grep -v "memory at the peak" | grep -v "^  host.*cudaMemcpyAsync" | tail -60 | cut -c1-300
rm -rf $OUT/host
date -u >> $OUT/times.txt
