date -u > $OUT/times.txt
timeout 170 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 --peers flex --graphs --rounds 0 --profile --out $OUT/base > $OUT/base.log 2>&1; echo "base rc $?" >> $OUT/base.log
date -u >> $OUT/times.txt; grep -E '^\| fixed|rc ' $OUT/base.log | head -20
X="fwd:64x128w4s3,fwd:64x64w4s3,fwd:64x128w4s5,dq:64x64w4s5,dq:64x32w4s4,dkdv:32x64w4s5,dkdv:64x64w4s3"
MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES=$X timeout 170 megastride bench attention --patterns fixed --configs 8x64,2x128 --lengths 3072,12288 --peers flex --graphs --rounds 0 --profile --out $OUT/extra > $OUT/extra.log 2>&1; echo "extra rc $?" >> $OUT/extra.log
date -u >> $OUT/times.txt; grep -E '^\| fixed|rc ' $OUT/extra.log | head -20
python3 - <<'PY'
import json, os
for tag in ("base", "extra"):
    p = os.path.join(os.environ["OUT"], tag, "bench_attention.json")
    if os.path.exists(p):
        d = json.load(open(p)); print(tag, json.dumps(d.get("tuned_configs"))[:3000])
PY
