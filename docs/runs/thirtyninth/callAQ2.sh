#!/bin/bash
# Thirty-ninth run, call 2: the halves kernel's schedules (gluon_bwd.halves_tiles): m0 (score products waited for
# together), m1 (exponentials under dP^T), m2 (the consumers taking turns, dQ a step late). (1) the GPU tests; (2)
# m0 against m2 and m1, alternated, profiled, at 262,144 and 1M, 8x64.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "halves" \
  > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | head -20
date -u >> $OUT/times.txt
export MEGASTRIDE_BLOCKSPARSE_GLUON_WS=halves
for v in s2g2d2m0,s2g2d2m2 s2g2d2m0,s2g2d2m1; do
  timeout 200 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES --values $v \
    --cases 262144x8x64,1048576x8x64 --calls 4 --warmup 1 --rounds 3 --profile --out $OUT/ab_${v/,/_} \
    > $OUT/ab_${v/,/_}.log 2>&1
  echo "ab $v rc $?"; grep -v "^\[" $OUT/ab_${v/,/_}.log | tail -8
  date -u >> $OUT/times.txt
done
