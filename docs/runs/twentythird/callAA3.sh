date -u > $OUT/times.txt
run() { echo "== $*" >> $OUT/diag.log; timeout 60 python3 diagAA.py "$@" >> $OUT/diag.log 2>&1 || echo "rc $?" >> $OUT/diag.log; }
for t in 32x128w4s5 64x64w4s5 64x128w8s5; do
  run fixed 1 contig 0 16384 2 64 $t
  run fixed 1 contig auto 16384 2 64 $t
  run strided 1 contig 0 16384 2 64 $t
done
run fixed 1 contig auto 16384 2 64 notma
run strided 1 contig 0 16384 2 64 notma
run fixed 1 contig 0 16384 2 128
run fixed 0 contig auto 16384 2 64 64x128w8s5
grep -E "^==|^ok|Error:|^rc" $OUT/diag.log | cut -c1-300
date -u >> $OUT/times.txt
