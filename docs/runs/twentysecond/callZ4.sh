git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 420 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k "every_listed or auto_mode_times" -x > $OUT/gpu_tests.log 2>&1; echo "tests rc $?" >> $OUT/gpu_tests.log
tail -15 $OUT/gpu_tests.log; date -u >> $OUT/times.txt
