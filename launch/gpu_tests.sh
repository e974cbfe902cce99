#!/usr/bin/env bash
# The GPU tests (pytest -m gpu) in one device call, or across several: each test's outcome as it ends (-v), the
# ids of those that passed in OUT/passed.txt, and the compiled kernels packed for the next call.
#   bash launch/gpu_tests.sh OUT
# Environment:
#   FILES      test files or folders (default: tests, where 97 tests are marked gpu on 2026-12-06; all passed in one
#              call, WORKERS=4, 364 s on an H100: docs/benchmarks.md, fiftieth run)
#   K          a pytest -k expression
#   SKIP_FILE  node ids to deselect, one a line (an earlier call's passed.txt, or several concatenated)
#   LIMIT      seconds for pytest (default 500); the cache is packed after it, so leave the call 60 s more
#   WORKERS    pytest-xdist workers sharing the GPU (default 1): compiling, most of a fresh machine's time, then runs
#              on that many CPU cores; the tests that time kernels (autotuning, `auto`) see each other's load
#   CACHE      the carried parts of launch/kernel_cache.sh (default .kernel_cache); CACHE_MB its cap (default 45)
# At most 8 files come back from the device tool: this writes times.txt, gpu_tests.log, passed.txt and up to
# three 15 MiB parts under OUT/kernel_cache. Copy that folder to .kernel_cache/ (git-ignored) and name it in the
# next call's carry.
set -uo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT}"); mkdir -p "$OUT"; cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
source launch/kernel_cache.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/times.txt"
date -u >> "$OUT/times.txt"
kernel_cache_restore "${CACHE:-.kernel_cache}" | tee -a "$OUT/times.txt"
skip=()
if [ -n "${SKIP_FILE:-}" ]; then
  while read -r id; do [ -n "$id" ] && skip+=(--deselect "$id"); done < "$SKIP_FILE"
fi
files=${FILES:-tests}
timeout "${LIMIT:-500}" python3 -m pytest -m gpu -v -p no:cacheprovider -rfE --durations=30 --continue-on-collection-errors $files \
  ${K:+-k "$K"} "${skip[@]}" $([ "${WORKERS:-1}" -gt 1 ] && echo "-n $WORKERS") > "$OUT/gpu_tests.log" 2>&1
echo "pytest rc $? (124: stopped at LIMIT=${LIMIT:-500} s)" >> "$OUT/gpu_tests.log"
# -v prints "tests/x.py::name PASSED", and with workers "[gw0] [ 1%] PASSED tests/x.py::name"
grep -E "(^| )PASSED( |$)" "$OUT/gpu_tests.log" | grep -oE "tests/[^ ]+::[^ ]+" | sort -u > "$OUT/passed.txt"
date -u >> "$OUT/times.txt"
kernel_cache_save "$OUT/kernel_cache" "${CACHE_MB:-45}" | tee -a "$OUT/times.txt"
date -u >> "$OUT/times.txt"
grep -E " (PASSED|FAILED|ERROR)|passed|failed|pytest rc" "$OUT/gpu_tests.log" | cut -c1-200 | tail -80
cat "$OUT/times.txt"
