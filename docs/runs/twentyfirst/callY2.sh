nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 500 > $OUT/smi.csv &
SMI=$!
date -u > $OUT/times.txt
timeout 200 megastride bench attention --patterns fixed --configs 2x128 --lengths 262144,1048576 --peers flex --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1; echo "bench rc $?" >> $OUT/bench.log
tail -12 $OUT/bench.log; date -u >> $OUT/times.txt
timeout 110 megastride bench tiles --kernel dkdv --configs 8x64 --lengths 262144 --tiles list --rounds 2 --preheat 2 --out $OUT/tiles > $OUT/tiles.log 2>&1; echo "tiles rc $?" >> $OUT/tiles.log
tail -25 $OUT/tiles.log; date -u >> $OUT/times.txt
timeout 60 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_DQ --values auto,atomic --profile --cases 12288x8x64 --rounds 2 --calls 100 --out $OUT/ab > $OUT/ab.log 2>&1; echo "ab rc $?" >> $OUT/ab.log
tail -8 $OUT/ab.log; date -u >> $OUT/times.txt
timeout 120 megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 --kinds fixed --lengths 65536 --steps 2 --warmup 1 --out $OUT/scaling > $OUT/scaling.log 2>&1; echo "scaling rc $?" >> $OUT/scaling.log
tail -15 $OUT/scaling.log
date -u >> $OUT/times.txt
kill $SMI
