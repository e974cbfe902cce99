#!/bin/bash
# A device call planned 2026-12-05, session BF (no device lent that session): the dQ mode "streams" (dQ on a second
# stream beside dK/dV, the delta kernel first; built in session BF, checked only under the interpreter so far) for
# issue 3's >= 2x Flex at <= 12,288 tokens. About 350 s, one GPU. In order, so a call cut at its limit keeps the
# parts before the cut:
# (1) its GPU tests: the bits of the one-stream launches eager, from launch plans and replayed from a CUDA graph
#     (tests/test_kernels_gpu.py: the second-stream test, and the direct-launch and launch-plan tests' "streams" cases);
# (2) the bench at the four short points, replayed from CUDA graphs and in alternated eager rounds: the default
#     (auto: separate or merged), streams, and deltakernel (the same launches as streams on one stream), beside Flex.
# If streams is faster than the default at a point, add it to blocksparse.AUTO_MODES (auto times it per layout and
# shape) and write the numbers into docs/benchmarks.md and docs/kernels.md.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
date -u > $OUT/times.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -p no:cacheprovider \
  -k "second_stream or (launch_plans and streams) or (direct_launches and streams)" > $OUT/streams_tests.log 2>&1
echo "streams tests rc $?" >> $OUT/streams_tests.log; tail -4 $OUT/streams_tests.log
date -u >> $OUT/times.txt
timeout 330 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 \
  --peers flex,streams,deltakernel --graphs --rounds 3 --out $OUT/short > $OUT/short.log 2>&1
echo "short rc $?" >> $OUT/short.log
grep -E "^(fixed|strided)|ours |rc |chose|round|Flex" $OUT/short.log | cut -c1-250 | tail -40
cat $OUT/short/bench_attention.md 2>/dev/null | head -30
date -u >> $OUT/times.txt
