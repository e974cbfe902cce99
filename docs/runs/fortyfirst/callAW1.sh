#!/bin/bash
# The next session's first device call (planned 2026-12-05 after call AV2): (1) what is left of callAS4.sh (the
# short lengths at 2x128 with the halves peers, gpu_check's fp16 D=128 case on the halves kernel); (2) the LayerNorm
# backward's tile sweep at the 1M step's shape (callAS3.sh's middle part: LayerNorm is 293 ms of the 8 s step, its
# ln1 backward at about 2.2 TB/s), now also with each tile's loads a step ahead (layernorm.BWD_PREFETCH, off); (3) the forward's
# tiles at head dim 64 re-timed at 1M (the listed 128x128 w4 s5 keeps S, P and O in one warpgroup's registers: ptxas
# serialises its products, "insufficient register resources for the wgmma pipeline"; 128 rows on two warpgroups, or
# 64-row programs two an SM, do not; the fifth run timed 128x128 w8 slower, before the TMA loads and the multiply-add
# softmax); (4) the fixed 1M step under 60 GB once more (a tenth sample of the 8 s line).
# PARTS (default all four: "as4 ln tiles fixed") runs some of them only (docs/runs/fortythird/callBB2.sh).
part() { [[ " ${PARTS:-as4 ln tiles fixed} " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
if part as4; then bash docs/runs/fortyfirst/callAS4.sh; fi
date -u >> $OUT/times.txt
if part ln; then
timeout 130 python3 -m megastride.kernels.ln_check --sweep-long-only > $OUT/ln_sweep.log 2>&1
echo "sweep rc $?" >> $OUT/ln_sweep.log; grep -E "^sweep bwd" $OUT/ln_sweep.log | sort -t: -k2 -n | head -3
for v in "bwd (" "bwd +stream (" "bwd +stream +branch ("; do grep -F "sweep $v" $OUT/ln_sweep.log | sort -t: -k2 -n | head -2; done
grep -F "tile 2048 x 8/thread" $OUT/ln_sweep.log | grep "8 programs"
fi
date -u >> $OUT/times.txt
if part tiles; then
timeout 100 megastride bench tiles --kernel fwd --configs 8x64 --lengths 262144,1048576 --no-flex --rounds 2 \
  --tiles list,128x128w8s5,128x128w8s3,64x128w4s3 --out $OUT/fwd_tiles > $OUT/fwd_tiles.log 2>&1
echo "fwd_tiles rc $?" >> $OUT/fwd_tiles.log; grep -v "^\[" $OUT/fwd_tiles.log | tail -14 | cut -c1-300
fi
date -u >> $OUT/times.txt
if part fixed; then
timeout 150 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 \
  --warmup 1 --steps 3 --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
  --set train.checkpoint_blocks=auto --set train.keep_attention=auto --set train.memory_budget_gb=60 \
  --out $OUT/fixed > $OUT/fixed.log 2>&1
echo "fixed rc $?" >> $OUT/fixed.log; grep -E "s/step|rc " $OUT/fixed.log | grep -v "^|" | cut -c1-400
cp $OUT/fixed/*.csv $OUT/fixed.csv 2>/dev/null; rm -rf $OUT/fixed
fi
date -u >> $OUT/times.txt
