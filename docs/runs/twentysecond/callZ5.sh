timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k "every_listed or auto_mode_times" -x > $OUT/gpu_tests.log 2>&1; echo "tests rc $?" >> $OUT/gpu_tests.log
tail -8 $OUT/gpu_tests.log
