#!/bin/bash
# An H200 call planned 2026-12-05 (session BD; about 250 s): the LayerNorm backward's loads a step ahead timed on an
# H200 (ln_check's sweep times both settings; its checks include the bitwise one), then the strided pattern beside
# the fixed one at 3,072 and 12,288 tokens (on an H100 in call BD2: -5.0% and -9.9%).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 130 python3 -m megastride.kernels.ln_check --sweep-long-only > $OUT/ln_sweep.log 2>&1
echo "ln_check rc $?" >> $OUT/ln_sweep.log
grep -E "^(ok|FAIL)|checks|rc " $OUT/ln_sweep.log | cut -c1-160
grep -F "tile 2048 x 8/thread (4, 512, 8), 8 programs/SM" $OUT/ln_sweep.log
date -u >> $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed,strided_matched --configs 8x64 --lengths 3072,12288 \
  --peers '' --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log
grep -E "^\| (fixed|strided)|rc " $OUT/short.log | cut -c1-200
date -u >> $OUT/times.txt
