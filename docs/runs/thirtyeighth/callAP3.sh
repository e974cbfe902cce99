#!/bin/bash
# Thirty-eighth run, call 3: the warp-specialised fused dK/dV kernel in the backward (gluon_bwd._dkdv_ws_kernel,
# the default for whole columns into fused dQ sums). (1) its GPU test and the fused-dQ tests; (2) gpu_check at 1M;
# (3) the kernel profile at 262,144 and 1M (call 4: beside Flex and without it).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "warp_specialised or summed" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | head -20
date -u >> $OUT/times.txt
timeout 120 python3 -m megastride.kernels.gpu_check --only 1M > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -6 $OUT/gpu_check.log
date -u >> $OUT/times.txt
timeout 120 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --profile \
  --out $OUT/prof > $OUT/prof.log 2>&1
echo "bench rc $?" >> $OUT/prof.log; grep -E "profiled|rc " $OUT/prof.log
python3 -c "
import json
for r in json.load(open('$OUT/prof/bench_attention.json'))['results']:
    p = r.get('ours_profile')
    if p: print(r['seq_len'], {k: round(v, 3) for k, v in list(p['kernels_ms'].items())[:14]})
"
rm -f $OUT/prof/*.json
date -u >> $OUT/times.txt
