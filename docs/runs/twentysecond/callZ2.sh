git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 2x128,8x64 --lengths 3072,12288 --peers flex --graphs --rounds 0 --profile --out $OUT/bench > $OUT/bench.log 2>&1; echo "bench rc $?" >> $OUT/bench.log
tail -30 $OUT/bench.log; date -u >> $OUT/times.txt
timeout 150 megastride bench tiles --kernel merged --configs 2x128 --lengths 3072 --graphs --tiles list,64x64+64x64w4s3,32x64+64x64w4s5,64x64+64x32w4s5,32x64+64x32w4s5,64x32+64x64w4s5 --out $OUT/m2 > $OUT/m2.log 2>&1; echo "m2 rc $?" >> $OUT/m2.log
tail -12 $OUT/m2.log; date -u >> $OUT/times.txt
timeout 150 megastride bench tiles --kernel merged --configs 8x64 --lengths 12288 --graphs --tiles list,64x64+64x64w4s5,32x64+64x32w4s5,64x64+128x32w4s5,32x128+64x64w4s5 --out $OUT/m8 > $OUT/m8.log 2>&1; echo "m8 rc $?" >> $OUT/m8.log
tail -12 $OUT/m8.log; date -u >> $OUT/times.txt
