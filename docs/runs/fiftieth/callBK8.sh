#!/bin/bash
# Session BK: kernel_cache_save's partial pack on real Triton entries. Restore the carried cache, run the four
# summary-first bf16 tests, pack under a 12 MiB cap (the whole pack is about 27 MiB, so only the smallest kernels
# go), restore that into a fresh root and run the same tests again: they must pass, and the count of kernels that
# were compiled anew (entries after the run, less those restored) shows what the partial pack saved.
set -u
source launch/kernel_cache.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/times.txt
kernel_cache_restore .kernel_cache | tee -a $OUT/times.txt
run() {  # $1: a name
  local t0=$(date +%s)
  timeout 110 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k summary_first -n 4 \
    > $OUT/$1.log 2>&1
  echo "$1: pytest rc $? in $(( $(date +%s) - t0 )) s, $(tail -1 $OUT/$1.log)" | tee -a $OUT/times.txt
}
run first
kernel_cache_save $OUT/sub 12 | tee -a $OUT/times.txt
export KERNEL_CACHE_ROOT=/tmp/megastride-kernel-cache-2
source launch/kernel_cache.sh
kernel_cache_restore $OUT/sub | tee -a $OUT/times.txt
before=$(find $TRITON_CACHE_DIR -name '__grp__*' | wc -l)
run second
echo "second: $before kernels restored, $(( $(find $TRITON_CACHE_DIR -name '__grp__*' | wc -l) - before )) compiled anew" \
  | tee -a $OUT/times.txt
rm -rf $OUT/sub
