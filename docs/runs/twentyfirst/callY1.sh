nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 500 > $OUT/smi.csv &
SMI=$!
date -u > $OUT/times.txt
timeout 80 python3 -m pytest -m gpu -x -q tests/test_bench_attention.py -k energy 2>&1 | tail -5 > $OUT/test_energy.txt
cat $OUT/test_energy.txt; date -u >> $OUT/times.txt
for T in 64x128s3w4a1 128x128s3w8a1; do
  MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES=$T timeout 100 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_GLUON_FWD --cases 262144x8x64,1048576x8x64 --calls 5 --warmup 2 --rounds 3 --profile --out $OUT/gfwd_$T > $OUT/gfwd_$T.log 2>&1; echo "gfwd $T rc $?" >> $OUT/gfwd_$T.log
  tail -30 $OUT/gfwd_$T.log; date -u >> $OUT/times.txt
done
timeout 280 megastride bench attention --patterns fixed --configs 8x64 --lengths 262144,1048576 --peers flex --rounds 3 --out $OUT/bench > $OUT/bench.log 2>&1; echo "bench rc $?" >> $OUT/bench.log
tail -40 $OUT/bench.log
date -u >> $OUT/times.txt
kill $SMI
