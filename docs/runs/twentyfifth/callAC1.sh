# Twenty-fifth run, call 1 (ran on the working tree with register_operands.patch applied; the switches were removed after it):
# operand (MEGASTRIDE_BLOCKSPARSE_KV_REGS=1 for dK/dV's K and V, QDO_REGS=1 for dQ's Q and dO) against
# shared-memory operands (0), the same tiles forced in each, one process per setting; then the
# natural-order strided layout checked against the reference.
OUT=${OUT:?}
nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv -lms 1000 > $OUT/smi.csv & SMI=$!
date -u > $OUT/times.txt; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/env.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.version.cuda)" >> $OUT/env.txt 2>&1
export MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES=dkdv:32x128w8s5,dkdv:32x128w8s3,dkdv:32x64w4s5,dq:128x64w8s5,dq:128x64w8s3
for regs in 1 0; do
  export MEGASTRIDE_BLOCKSPARSE_KV_REGS=$regs MEGASTRIDE_BLOCKSPARSE_QDO_REGS=$regs
  timeout ${TILE_S:-150} python3 -m megastride.launch.cli bench tiles --kernel dkdv --configs 8x64 \
    --lengths 262144,1048576 --tiles list,32x128w8s5,32x128w8s3,32x64w4s5 --rounds 1 --preheat 2 --no-flex \
    --out $OUT/dkdv$regs > $OUT/dkdv$regs.log 2>&1; echo "dkdv regs=$regs rc $?" >> $OUT/dkdv$regs.log
  grep -v "^\s*$" $OUT/dkdv$regs.log | tail -20; date -u >> $OUT/times.txt
  timeout ${TILE_S:-110} python3 -m megastride.launch.cli bench tiles --kernel dq --configs 8x64 \
    --lengths 1048576 --tiles list,128x64w8s5,128x64w8s3 --rounds 1 --preheat 2 --no-flex \
    --out $OUT/dq$regs > $OUT/dq$regs.log 2>&1; echo "dq regs=$regs rc $?" >> $OUT/dq$regs.log
  grep -v "^\s*$" $OUT/dq$regs.log | tail -12; date -u >> $OUT/times.txt
done
unset MEGASTRIDE_BLOCKSPARSE_KV_REGS MEGASTRIDE_BLOCKSPARSE_QDO_REGS MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES
timeout 60 python3 -m megastride.kernels.gpu_check --only "natural order" --out $OUT/check > $OUT/check.log 2>&1
echo "gpu_check rc $?" >> $OUT/check.log; tail -3 $OUT/check.log; date -u >> $OUT/times.txt; kill $SMI
