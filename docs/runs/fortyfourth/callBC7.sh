#!/bin/bash
# The next H200 call (planned 2026-12-05, session BC; about 300 s): the LayerNorm backward's loads a step ahead, on
# by default since the forty-fourth run on H100 evidence, timed on an H200 (ln_check's sweep times both settings;
# its checks include the bitwise one), then the fixed 1M step under 60 GB with them (the 8 s line).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m megastride.kernels.ln_check --sweep-long-only > $OUT/ln_sweep.log 2>&1
echo "ln_check rc $?" >> $OUT/ln_sweep.log
grep -E "^(ok|FAIL)|checks|rc " $OUT/ln_sweep.log | cut -c1-220
grep -F "tile 2048 x 8/thread (4, 512, 8), 8 programs/SM" $OUT/ln_sweep.log
date -u >> $OUT/times.txt
PARTS="fixed" bash docs/runs/fortyfirst/callAW1.sh
date -u >> $OUT/times.txt
