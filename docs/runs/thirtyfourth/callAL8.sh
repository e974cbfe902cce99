#!/bin/bash
# Thirty-fourth run, call 8. Half the reduce's bytes: the fused probe with dQ summed in fp16 (each step's dQ cast to
# fp16, the TMA reduce adding fp16 in L2) against fp32 sums, time and dQ's error against fp32 PyTorch; 1M, 262,144.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64,262144x64 \
  --orders tiles --settings 128x32s4p,128x32s4ph,128x32s4t,128x32s4th --sends 2 --out $OUT/half > $OUT/half.log 2>&1
echo "half rc $?" >> $OUT/half.log
python3 docs/runs/thirtyfourth/rows.py $OUT/half.log
date -u >> $OUT/times.txt
