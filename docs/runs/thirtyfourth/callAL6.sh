#!/bin/bash
# Thirty-fourth run, call 6. Is the fused probe's reduce cost the rows' trips to memory or the L2's own adds?
# SEND 3 adds each step's dQ into the first 16,384 rows of its head (32 MB in all, inside the 50 MB L2) instead of
# its own rows (2 GB at 1M): same reduces, same bytes, targets that stay in L2. 1M and 262,144, fixed lists.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64,262144x64 \
  --orders tiles --settings 128x32s4p,128x32s4t --sends 2,3,1 --out $OUT/l2 > $OUT/l2.log 2>&1
echo "l2 rc $?" >> $OUT/l2.log
python3 docs/runs/thirtyfourth/rows.py $OUT/l2.log
date -u >> $OUT/times.txt
