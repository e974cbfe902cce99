#!/bin/bash
# Thirty-seventh run, call 1: the backward's first launch also zeroes the fused dQ sums and takes the fp16 scale's
# three maxima (_bwd_prep), the scale made on the device in one launch (_dq_scale_kernel). (1) the fused-dQ and
# Gluon backward GPU tests; (2) gpu_check at 1M; (3) where the time goes (the bench's kernel profile, 1M and
# 262,144, no peers); (4) the bench beside Flex, alternated rounds.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "summed or gluon_backward" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -3 $OUT/gpu_tests.log
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
timeout 200 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers flex \
  --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -8; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
