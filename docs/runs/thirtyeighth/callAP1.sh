#!/bin/bash
# Thirty-eighth run, call 1: the warp-specialised fused dK/dV + dQ probe (kernels/gluon_ws_probe.py: two
# consumer warpgroups a CTA, each one 128-key column's loop; a loader and a dQ sender warp for each) beside the
# fused probe at the production kernel's tiles (128 keys x 32 queries, 4 slots, fp16 sums), full blocks of the
# fixed pattern, values checked (dK, dV against the Triton probe, dQ against fp32 PyTorch on sampled tiles).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m megastride.kernels.gluon_ws_probe --lists fixed --cases 65536x64 --repeat 1 \
  --settings 4x2 > $OUT/ws_small.log 2>&1
echo "small rc $?" >> $OUT/ws_small.log; tail -4 $OUT/ws_small.log
date -u >> $OUT/times.txt
if grep -q '"ws gluon".*"ms"' $OUT/ws_small.log; then
  timeout 330 python3 -m megastride.kernels.gluon_ws_probe --lists fixed --cases 262144x64,1048576x64 --repeat 2 \
    --out $OUT > $OUT/ws.log 2>&1
  echo "probe rc $?" >> $OUT/ws.log; cat $OUT/ws.log | cut -c1-400
fi
date -u >> $OUT/times.txt
