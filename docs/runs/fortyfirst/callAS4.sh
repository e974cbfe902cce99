#!/bin/bash
# Forty-first run, call 4 (planned 2026-12-05, a session without a device; after calls 1-3, or first in a session
# that works on the kernels): the halves kernel at head dim 128 (64 queries a step, each consumer's dQ half the
# head dim; built 2026-12-05, never run), and on column segments. (1) its GPU tests beside the two-columns kernel,
# whole columns and the fp32 reference (head dims 64 and 128, the schedules, segments); (2) beside Flex and the
# default (the dQ kernel on a second stream) at 2x128, alternated rounds, 262,144 and 1M; (3) the short lengths at
# both head dims, replayed; (4) gpu_check's 262,144-token fp16 D=128 case with it and the fused dQ on whole columns.
# Peer "halves" turns the fused dQ and the halves kernel on, "halveswhole" also keeps every column whole (at
# 262,144 tokens, 2x128, gluon_split's "auto" cuts the summary columns into segments, which the halves kernel does
# not take by default), "halvessplit" lets it take the segments. Under 600 s if every step stays in its cap.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 230 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -k "halves" > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | head -20
date -u >> $OUT/times.txt
timeout 190 megastride bench attention --patterns fixed --configs 2x128 --lengths 262144,1048576 \
  --peers flex,halves,halveswhole,halvessplit --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1
echo "bench rc $?" >> $OUT/bench.log; grep -v "^\[" $OUT/bench.log | tail -8; grep -E "rounds:|FAILED" $OUT/bench.log
rm -f $OUT/bench/*.json
date -u >> $OUT/times.txt
# the short lengths replayed from CUDA graphs (issue 3's >= 2x Flex at <= 12,288): the fused dQ on the halves
# kernel (whole columns, or segments) at both head dims, where "auto" runs the Triton kernels
timeout 110 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 \
  --peers flex,halveswhole,halvessplit --graphs --rounds 0 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log; grep -v "^\[" $OUT/short.log | tail -12; grep -E "FAILED" $OUT/short.log
rm -f $OUT/short/*.json
date -u >> $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_GLUON_DQ=fp16 MEGASTRIDE_BLOCKSPARSE_GLUON_WS=halves MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT=0 \
  timeout 50 python3 -m megastride.kernels.gpu_check --only "fixed fp16 D=128" > $OUT/gpu_check.log 2>&1
echo "gpu_check rc $?" >> $OUT/gpu_check.log; tail -3 $OUT/gpu_check.log | cut -c1-600
date -u >> $OUT/times.txt
