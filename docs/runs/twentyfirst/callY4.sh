date -u > $OUT/times.txt
timeout 150 megastride bench tiles --kernel merged --configs 8x64 --lengths 3072 --graphs --tiles list,32x64+64x32w4s5,64x64+64x64w4s5,32x128+64x32w4s5,32x64+128x32w4s5 --out $OUT/merged > $OUT/merged.log 2>&1; echo "merged rc $?" >> $OUT/merged.log
tail -14 $OUT/merged.log; date -u >> $OUT/times.txt
timeout 90 python3 -m pytest -m gpu -x -q -p no:cacheprovider tests/test_kernels_gpu.py -k replays_each 2>&1 | tail -3 > $OUT/test.txt
cat $OUT/test.txt; date -u >> $OUT/times.txt
