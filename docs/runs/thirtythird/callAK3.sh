#!/bin/bash
# Thirty-third run, call 3: the GPU tests call 2's time limits cut off. The launch plans' bits test (now at
# 8,192 tokens, TMA loads forced in its first case: one autotuning bucket), then the training GPU tests that
# had not run: CUDA-graph steps, the torch runtime's graphed trainer, the memory trace.
date -u > $OUT/times.txt
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_kernels_gpu.py -k "launch_plans" \
  > $OUT/gpu_tests_kernels.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests_kernels.log; tail -4 $OUT/gpu_tests_kernels.log
timeout 190 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=0 tests/test_graphs.py::test_graphed_steps_one_after_another_leave_no_memory_behind \
  tests/test_train_torch_runtime.py tests/test_memtrace.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $?" >> $OUT/gpu_tests.log; tail -4 $OUT/gpu_tests.log
date -u >> $OUT/times.txt
