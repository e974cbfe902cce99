#!/bin/bash
# Session BC (2026-12-05), second call: the fixed 1M step under 60 GB with layernorm.BWD_PREFETCH off, on, off
# (ABA on one warm card), to see what the LayerNorm backward's loads a step ahead (-9 to -12% per kernel in the
# sweep, calls BB1c and BC1) give the whole step. Turned on by editing the device's copy of kernels/layernorm.py.
step() {
  timeout 170 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 --lengths 1048576 \
    --warmup 1 --steps 3 --kinds fixed --set train.cpu_checkpointing=true --set train.offload_overlap=true \
    --set train.checkpoint_blocks=auto --set train.keep_attention=auto --set train.memory_budget_gb=60 \
    --out $OUT/$1 > $OUT/$1.log 2>&1
  echo "$1 rc $?" >> $OUT/$1.log; grep -E "s/step|rc " $OUT/$1.log | grep -v "^|" | cut -c1-400
  cp $OUT/$1/*.csv $OUT/$1.csv 2>/dev/null; rm -rf $OUT/$1
}
sed -i 's/^BWD_PREFETCH = .*/BWD_PREFETCH = False/' kernels/layernorm.py; grep -n "^BWD_PREFETCH =" kernels/layernorm.py
step off1
sed -i 's/^BWD_PREFETCH = .*/BWD_PREFETCH = True/' kernels/layernorm.py; grep -n "^BWD_PREFETCH =" kernels/layernorm.py
step on
sed -i 's/^BWD_PREFETCH = .*/BWD_PREFETCH = False/' kernels/layernorm.py
step off2
