#!/bin/bash
# Thirty-fourth run, call 1. The fused dK/dV/dQ Gluon probe (kernels/gluon_fused_probe.py: five products a
# step, dQ sent by an asynchronous TMA reduce into fp32) beside the Triton dK/dV probe and the Gluon dK/dV and
# dQ probes, at head dim 64, the fixed pattern's full-block lists, 1M and 262,144 tokens, eight heads.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64,262144x64 \
  --orders tiles,heaviest --out $OUT/fixed > $OUT/fused_fixed.log 2>&1
echo "fused rc $?" >> $OUT/fused_fixed.log
python3 docs/runs/thirtyfourth/rows.py $OUT/fused_fixed.log
date -u >> $OUT/times.txt
