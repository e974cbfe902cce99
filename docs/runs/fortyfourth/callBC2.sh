#!/bin/bash
# Session BC (2026-12-05), second call: the fixed 1M step under 60 GB with layernorm.BWD_PREFETCH off, on, off
# (ABA on one warm card), to see what the LayerNorm backward's loads a step ahead (-9 to -12% per kernel in the
# sweep, calls BB1c and BC1) give the whole step. Turned on by editing the device's copy of kernels/layernorm.py.
source docs/runs/fortyfourth/step1m.sh  # step NAME: the 1M step (the function this call ran, moved there)
sed -i 's/^BWD_PREFETCH = .*/BWD_PREFETCH = False/' kernels/layernorm.py; grep -n "^BWD_PREFETCH =" kernels/layernorm.py
step off1
sed -i 's/^BWD_PREFETCH = .*/BWD_PREFETCH = True/' kernels/layernorm.py; grep -n "^BWD_PREFETCH =" kernels/layernorm.py
step on
sed -i 's/^BWD_PREFETCH = .*/BWD_PREFETCH = False/' kernels/layernorm.py
step off2
