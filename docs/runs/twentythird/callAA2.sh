# call 2 (20:45-20:48 UTC): the first version of diagAA.py (no forced tile, no "notma"); same cases as listed
date -u > $OUT/times.txt
for args in "fixed 1 contig 0" "fixed 0 contig 0" "fixed 1 qkv 0" "fixed 0 qkv 0" "fixed 1 contig auto" "fixed 0 contig auto" "strided 1 contig 0" "strided 0 contig 0" "strided 1 qkv auto" "strided 0 qkv auto"; do
  echo "== $args" >> $OUT/diag.log
  timeout 60 python3 diagAA.py $args 16384 2 64 >> $OUT/diag.log 2>&1 || echo "rc $?" >> $OUT/diag.log
done
grep -E "^==|^ok|Error:|^rc" $OUT/diag.log | cut -c1-300
date -u >> $OUT/times.txt
