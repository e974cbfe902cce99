nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 1000 > $OUT/smi.csv &
SMI=$!
date -u > $OUT/times.txt
timeout 120 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k "tma_loads and atomic" > $OUT/gputest.log 2>&1; echo "gputest rc $?" >> $OUT/gputest.log
tail -5 $OUT/gputest.log; date -u >> $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_DQ=atomic timeout 100 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_DQ_SWAP --values 0,1 --profile --cases 262144x8x64 --rounds 2 --calls 3 --warmup 1 --out $OUT/swap > $OUT/swap.log 2>&1; echo "swap rc $?" >> $OUT/swap.log
tail -4 $OUT/swap.log | cut -c1-1500; date -u >> $OUT/times.txt
timeout 200 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_DQ --values auto,atomic --profile --cases 262144x8x64,1048576x8x64 --rounds 2 --calls 3 --warmup 1 --out $OUT/ab > $OUT/ab.log 2>&1; echo "ab rc $?" >> $OUT/ab.log
tail -4 $OUT/ab.log | cut -c1-1500; date -u >> $OUT/times.txt
timeout 150 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_DQ --values auto,atomic --profile --cases 262144x2x128,1048576x2x128 --rounds 2 --calls 3 --warmup 1 --out $OUT/ab128 > $OUT/ab128.log 2>&1; echo "ab128 rc $?" >> $OUT/ab128.log
tail -4 $OUT/ab128.log | cut -c1-1500; date -u >> $OUT/times.txt
kill $SMI
