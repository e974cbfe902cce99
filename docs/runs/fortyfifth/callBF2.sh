#!/bin/bash
# A device call planned 2026-12-05, session BF (no device lent that session), for issue 3's >= 2x Flex at <= 12,288
# tokens: three levers built in session BF and checked only on the CPU so far (the interpreter; sm_90 compiles):
# the dQ mode "streams" (dQ on a second stream beside dK/dV, the delta kernel first), MEGASTRIDE_BLOCKSPARSE_PDL=1
# (the Triton kernels as programmatic dependent launches) and MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT / _DQ_SPLIT (the
# forward's and the dQ kernel's rows in segments, merged by each row's last: more programs where a launch has fewer
# query tiles than the GPU has room for); beside them dK/dV columns of 4 (split4). About 500 s, one GPU; callBF6.sh
# times the 8x64 points. In order, so a call cut at its limit keeps the parts before the cut:
# (1) their GPU tests: the bits of the launches without them (or the reference's bound and stable bits for the row
#     segments), eager, from launch plans and replayed from a CUDA graph;
# (2) the bench at the 2x128 short points (3,072, where the forward has 48-96 query tiles for 132 SMs, and 12,288),
#     replayed from CUDA graphs and in alternated eager rounds: the default beside each lever and Flex.
# Where streams is faster than the default, add it to blocksparse.AUTO_MODES (auto times it per layout and shape);
# where pdl is faster everywhere, make blocksparse.PDL the default; where a row split is faster, give fwd_split an
# "auto" for those shapes; write the numbers into docs/benchmarks.md and docs/kernels.md either way.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
# the image's setuptools (pyproject's license table is deprecated from setuptools 77, gone after 2027-02-18; the
# device's editable install builds without isolation, with this one)
python3 -c "import setuptools; print('setuptools', setuptools.__version__)"
date -u > $OUT/times.txt
timeout 230 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -p no:cacheprovider \
  -k "second_stream or dependent_launches or row_segments or (launch_plans and streams) or (direct_launches and streams)" \
  > $OUT/levers_tests.log 2>&1
echo "levers tests rc $?" >> $OUT/levers_tests.log; tail -4 $OUT/levers_tests.log
date -u >> $OUT/times.txt
PEERS=flex,streams,pdl,fwdsplit2,fwdsplit4,split4,dqsplit2,shortlevers,shortstreams CONFIG=2x128 LIMIT=250 \
  bash docs/runs/fortyfifth/short_levers.sh
