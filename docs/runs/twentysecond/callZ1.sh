nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 1000 > $OUT/smi.csv &
SMI=$!
git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 170 megastride bench tiles --kernel merged --configs 2x128 --lengths 3072,12288 --graphs --tiles list,64x64+128x64w4s5,64x64+64x64w4s5,32x128+64x64w4s5,64x64+128x32w4s3 --out $OUT/merged > $OUT/merged.log 2>&1; echo "merged rc $?" >> $OUT/merged.log
tail -22 $OUT/merged.log; date -u >> $OUT/times.txt
timeout 150 megastride bench tiles --kernel fwd --configs 8x64 --lengths 262144,1048576 --tiles list --rounds 1 --preheat 2 --no-flex --out $OUT/fwd > $OUT/fwd.log 2>&1; echo "fwd rc $?" >> $OUT/fwd.log
tail -16 $OUT/fwd.log; date -u >> $OUT/times.txt
timeout 200 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_DQ --values auto,atomic --profile --cases 262144x8x64,1048576x8x64 --rounds 2 --calls 3 --warmup 1 --out $OUT/ab > $OUT/ab.log 2>&1; echo "ab rc $?" >> $OUT/ab.log
tail -14 $OUT/ab.log; date -u >> $OUT/times.txt
kill $SMI
