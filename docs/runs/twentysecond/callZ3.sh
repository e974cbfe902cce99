git log -1 --format=%h > $OUT/tree.txt; date -u > $OUT/times.txt
timeout 230 megastride bench attention --patterns fixed --configs 2x128,8x64 --lengths 3072,12288 --peers flex --graphs --rounds 0 --out $OUT/events > $OUT/events.log 2>&1; echo "events rc $?" >> $OUT/events.log
grep -v "^|" $OUT/events.log | grep "tiles\|chose\|replayed\|rc"; grep -A 6 "^Replayed" $OUT/events.log; date -u >> $OUT/times.txt
MEGASTRIDE_BLOCKSPARSE_TUNE_BENCH=graphs TRITON_CACHE_DIR=/tmp/tc2 timeout 260 megastride bench attention --patterns fixed --configs 2x128,8x64 --lengths 3072,12288 --peers flex --graphs --rounds 0 --out $OUT/graphs > $OUT/graphs.log 2>&1; echo "graphs rc $?" >> $OUT/graphs.log
grep -v "^|" $OUT/graphs.log | grep "tiles\|chose\|replayed\|rc"; grep -A 6 "^Replayed" $OUT/graphs.log; date -u >> $OUT/times.txt
