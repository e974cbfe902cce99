#!/bin/bash
# Thirty-fourth run, call 2. Where the fused probe's time goes: SEND 2 (all), 1 (no TMA reduce), 0 (no staging
# store either), -1 (no dQ product: the four dK/dV products with the step's end waited for), 1M and 262,144.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64,262144x64 \
  --orders tiles --settings 64x64s3,128x32s4t --sends 2,1,0,-1 --out $OUT/sends > $OUT/sends.log 2>&1
echo "sends rc $?" >> $OUT/sends.log
python3 docs/runs/thirtyfourth/rows.py $OUT/sends.log
date -u >> $OUT/times.txt
