#!/bin/bash
# Forty-first run, call 4 (planned 2026-12-05): what is left of it after calls AU2, AU4 and AV2 (AV2 ran the 8x64 half
# of the short lengths below: the halves kernel 2-21% slower there), which ran its GPU tests
# and its 2x128 bench at 262,144 and 1M (the halves kernel is now the default at head dim 128): (1) the short
# lengths at both head dims, replayed from CUDA graphs, with the halves kernel on whole columns and on segments
# (where "auto" runs the Triton kernels); (2) gpu_check's 262,144-token fp16 D=128 case on the halves kernel.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
# the short lengths replayed from CUDA graphs (issue 3's >= 2x Flex at <= 12,288): the fused dQ on the halves
# kernel (whole columns, or segments) at both head dims, where "auto" runs the Triton kernels
timeout 110 megastride bench attention --patterns fixed --configs 2x128 --lengths 3072,12288 \
  --peers flex,halveswhole,halvessplit --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -12; grep -E "FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_GLUON_DQ=fp16 MEGASTRIDE_BLOCKSPARSE_GLUON_WS=halves MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT=0 \
  timeout 50 python3 -m megastride.kernels.gpu_check --only "fixed fp16 D=128" > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -3 $OUT/gpu_check.log | cut -c1-600
date -u >> $OUT/times.txt
