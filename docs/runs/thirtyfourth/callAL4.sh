#!/bin/bash
# Thirty-fourth run, call 4. The fused probe with one dQ product of two steps (64 queries x 128 keys, not
# swapped: 64 x 64 x 128) against the swapped one a step; program orders tiles and heads; 1M and 262,144;
# then SEND 1 and 0 (no reduce; no staging store either) of the two-step form at 1M.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64,262144x64 \
  --orders tiles,heads --settings 128x32s4t,128x32s4p,128x32s2p,128x32s4pb2 --sends 2 --out $OUT/pair > $OUT/pair.log 2>&1
echo "pair rc $?" >> $OUT/pair.log
python3 docs/runs/thirtyfourth/rows.py $OUT/pair.log
timeout 120 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64 \
  --orders tiles --settings 128x32s4p,128x32s2p --sends 1,0 --out $OUT/pair_sends > $OUT/pair_sends.log 2>&1
echo "pair sends rc $?" >> $OUT/pair_sends.log
python3 docs/runs/thirtyfourth/rows.py $OUT/pair_sends.log | grep fused
date -u >> $OUT/times.txt
