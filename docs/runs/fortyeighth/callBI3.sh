#!/bin/bash
# Session BI (2026-12-06): the GPU test files on the tree of this session, on whatever card comes (H100 or H200);
# each test's outcome as it ends (-v). The whole GPU suite takes longer than one call, so the tests that passed go
# to $OUT/passed.txt, and a later call skips those named in SKIP_FILE.
# FILES: the test files to run (default both); K: a pytest -k expression; SKIP_FILE: node ids to deselect, one a
# line (an earlier call's passed.txt, or several concatenated); LIMIT: seconds for pytest (default 520).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
skip=()
if [ -n "$SKIP_FILE" ]; then
  while read -r id; do [ -n "$id" ] && skip+=(--deselect "$id"); done < "$SKIP_FILE"
fi
timeout ${LIMIT:-520} python3 -m pytest -m gpu -v -p no:cacheprovider -rfE --durations=0 \
  ${FILES:-tests/test_kernels_gpu.py tests/test_train_gpu.py} ${K:+-k "$K"} "${skip[@]}" > $OUT/gpu_tests.log 2>&1
echo "pytest rc $?" >> $OUT/gpu_tests.log
grep " PASSED" $OUT/gpu_tests.log | awk '{print $1}' > $OUT/passed.txt
grep -E " (PASSED|FAILED|ERROR|SKIPPED)|passed|failed|rc " $OUT/gpu_tests.log | cut -c1-200 | tail -60
date -u >> $OUT/times.txt
