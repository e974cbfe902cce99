#!/bin/bash
# Thirty-fifth run, call 2. (1) The fused-dQ GPU test that call 1's 200 s cut off (fp16 inputs). (2) Where the time
# goes: the bench's kernel profile of the default backward and of the fp16-sums one ("ours" under
# MEGASTRIDE_BLOCKSPARSE_GLUON_DQ=fp16), 262,144 and 1,048,576 tokens, 8x64, fixed, each with the other as a variant.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_kernels_gpu.py -k "summed" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -8 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
timeout 150 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers dqfp16 \
  --profile --rounds 2 --out $OUT/default > $OUT/default.log 2>&1
echo "bench rc $?" >> $OUT/default.log; grep -E "profiled|rounds:|rc " $OUT/default.log
date -u >> $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_GLUON_DQ=fp16 timeout 150 megastride bench attention --patterns fixed --configs 8x64 \
  --lengths 262144,1048576 --peers gluon --profile --rounds 2 --out $OUT/fp16 > $OUT/fp16.log 2>&1
echo "bench rc $?" >> $OUT/fp16.log; grep -E "profiled|rounds:|rc " $OUT/fp16.log
for f in default fp16; do python3 -c "
import json,sys
for r in json.load(open('$OUT/$f/bench_attention.json'))['results']:
    p=r.get('ours_profile')
    if p: print('$f', r['seq_len'], {k: round(v,3) for k,v in list(p['kernels_ms'].items())[:12]})
"; done
date -u >> $OUT/times.txt
