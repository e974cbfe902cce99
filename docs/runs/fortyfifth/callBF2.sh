#!/bin/bash
# A device call planned 2026-12-05, session BF (no device lent that session), for issue 3's >= 2x Flex at <= 12,288
# tokens: two launch-level levers built in session BF and checked only on the CPU so far (the interpreter; sm_90
# compiles): the dQ mode "streams" (dQ on a second stream beside dK/dV, the delta kernel first) and
# MEGASTRIDE_BLOCKSPARSE_PDL=1 (the Triton kernels as programmatic dependent launches). About 400 s, one GPU. In
# order, so a call cut at its limit keeps the parts before the cut:
# (1) their GPU tests: the bits of the launches without them, eager, from launch plans and replayed from a CUDA graph
#     (tests/test_kernels_gpu.py: the second-stream and dependent-launch tests, the direct-launch and launch-plan
#     tests' "streams" cases);
# (2) the bench at the four short points, replayed from CUDA graphs and in alternated eager rounds: the default
#     (auto: separate or merged), streams, deltakernel (the same launches as streams on one stream), pdl and
#     pdlstreams, beside Flex.
# Where streams is faster than the default, add it to blocksparse.AUTO_MODES (auto times it per layout and shape);
# where pdl is faster everywhere, make blocksparse.PDL the default; write the numbers into docs/benchmarks.md and
# docs/kernels.md either way.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
# the image's setuptools (pyproject's license table is deprecated from setuptools 77, gone after 2027-02-18; the
# device's editable install builds without isolation, with this one)
python3 -c "import setuptools; print('setuptools', setuptools.__version__)"
date -u > $OUT/times.txt
timeout 220 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -p no:cacheprovider \
  -k "second_stream or dependent_launches or (launch_plans and streams) or (direct_launches and streams)" \
  > $OUT/streams_tests.log 2>&1
echo "streams and pdl tests rc $?" >> $OUT/streams_tests.log; tail -4 $OUT/streams_tests.log
date -u >> $OUT/times.txt
for config in 8x64 2x128; do  # one bench each: a config cut at its limit keeps the other's table
timeout 170 megastride bench attention --patterns fixed --configs $config --lengths 3072,12288 \
  --peers flex,streams,deltakernel,pdl,pdlstreams --graphs --rounds 3 --out $OUT/short_$config > $OUT/short_$config.log 2>&1
echo "short $config rc $?" >> $OUT/short_$config.log
grep -E "^(fixed|strided)|ours |rc |chose|round|Flex" $OUT/short_$config.log | cut -c1-250 | tail -30
cat $OUT/short_$config/bench_attention.md 2>/dev/null | head -20
date -u >> $OUT/times.txt
done
