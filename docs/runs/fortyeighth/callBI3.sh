#!/bin/bash
# Session BI (2026-12-06): the GPU test files on the tree of this session, on whatever card comes (H100 or H200);
# each test's outcome as it ends (-v), the ids of those that passed in $OUT/passed.txt, and a later call skips
# those named in SKIP_FILE. Since session BJ this is launch/gpu_tests.sh over the two files it ran (calls BI3,
# BJ2-BJ4 ran its own copy of that logic, `git show bf5e3f3:docs/runs/fortyeighth/callBI3.sh`); the compiled
# kernels are now packed under $OUT/kernel_cache too.
# FILES: the test files to run (default both); K: a pytest -k expression; SKIP_FILE: node ids to deselect, one a
# line (an earlier call's passed.txt, or several concatenated); LIMIT: seconds for pytest (default 520).
FILES=${FILES:-tests/test_kernels_gpu.py tests/test_train_gpu.py} LIMIT=${LIMIT:-520} bash launch/gpu_tests.sh "$OUT"
