#!/bin/bash
# Forty-first run, call AU2 (2026-12-05, a session where the device is scarce: what must not wait, in one call).
# (1) the residual-kernels and FFN GPU tests after their fixes (7cd8ce5; the FFN one never ran on the GPU), and the
# offload tests under MEGASTRIDE_OFFLOAD_RELEASE=ordered (copied tensors let go after a compute-stream wait);
# (2) the halves kernel's GPU tests (head dim 128 with fp16 and fp32 sums, the m0 schedule, column segments);
# (3) 2x128 at 262,144 and 1M beside Flex with the halves kernel (peers halves: fused dQ + halves kernel,
# halveswhole: every column whole, halvessplit: the kernel on the segments gluon_split cuts), alternated rounds.
# -x everywhere: a timeout kills pytest before it prints.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -x -q -p no:cacheprovider tests/test_train_gpu.py -k "residual_kernels or ffn_bias or ordered" \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "^E |passed|failed|rc " $OUT/tests.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
timeout 130 python3 -m pytest -x -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "halves" \
  > $OUT/halves.log 2>&1; echo "halves rc $?" >> $OUT/halves.log
grep -E "^E |passed|failed|rc " $OUT/halves.log | head -20 | cut -c1-300
date -u >> $OUT/times.txt
timeout 190 megastride bench attention --patterns fixed --configs 2x128 --lengths 262144,1048576 \
  --peers flex,halves,halveswhole,halvessplit --rounds 2 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -8; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
