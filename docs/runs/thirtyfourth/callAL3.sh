#!/bin/bash
# Thirty-fourth run, call 3. The fused probe's dQ reduce with two staging buffers (a reduce may still read one
# while the next step fills the other) and with dV waited for before dS; 1M and 262,144, fixed lists.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64,262144x64 \
  --orders tiles --settings 128x32s4t,128x32s4tb2,128x32s4tb2w,128x32s3tb2,128x32s2tb2,64x64s3b2,64x64s2b2 \
  --sends 2 --out $OUT/staging > $OUT/staging.log 2>&1
echo "staging rc $?" >> $OUT/staging.log
python3 docs/runs/thirtyfourth/rows.py $OUT/staging.log
date -u >> $OUT/times.txt
