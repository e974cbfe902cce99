# call 5: the attention bench's new dQ row check at 1M tokens (memory and time of the reference's rows)
date -u > $OUT/times.txt
timeout 280 megastride bench attention --patterns fixed --configs 8x64 --lengths 1048576 --peers flex --rounds 1 --out $OUT/bench > $OUT/bench.log 2>&1; echo "bench rc $?" >> $OUT/bench.log
grep -E "checked|FAILED|rc |ms f\+b|alternated" $OUT/bench.log | cut -c1-300; date -u >> $OUT/times.txt
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/bench/bench_attention.json"))
for r in d["results"]:
    print(r["seq_len"], {k: {a: round(b, 5) for a, b in v.items()} for k, v in r.items() if k.endswith("check")})
    print({k: v for k, v in r.items() if "alt" in k})
PY
