#!/bin/bash
# Thirty-eighth run, call 2: the warp-specialised probe again, now with the rows' lse and delta through the ring
# (the loader's TMA) and dK's dS^T read from shared memory (ptxas, sm_90: no spills at 240 registers, 367
# instructions an iteration against the fused probe's 470), beside the fused probe at the production tiles.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 150 python3 -m megastride.kernels.gluon_ws_probe --lists fixed --cases 65536x64 --repeat 1 \
  --settings 4x2rd > $OUT/ws_small.log 2>&1
echo "small rc $?" >> $OUT/ws_small.log; tail -3 $OUT/ws_small.log | cut -c1-400
date -u >> $OUT/times.txt
if grep -q '"ws gluon".*"ms"' $OUT/ws_small.log; then
  timeout 400 python3 -m megastride.kernels.gluon_ws_probe --lists fixed --cases 262144x64,1048576x64 --repeat 2 \
    --out $OUT > $OUT/ws.log 2>&1
  echo "probe rc $?" >> $OUT/ws.log
  python3 -c "
import json
for r in json.load(open('$OUT/gluon_ws_probe.json'))['rows']:
    print(r['n'], r['kernel'], r['stages'], r['staging'], r.get('rows_via_ring'), r.get('dk_smem'), r['repeat'],
          r.get('ms'), r.get('tflops'), r.get('max_rel_diff_dk'), r.get('max_rel_diff_dv'), r.get('max_rel_diff_dq_vs_fp32'), r.get('error', ''))
"
fi
date -u >> $OUT/times.txt
