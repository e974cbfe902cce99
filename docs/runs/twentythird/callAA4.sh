date -u > $OUT/times.txt
timeout 100 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k "backward_tile_sweep or tile_sweep_times" > $OUT/gputest.log 2>&1; echo "gputest rc $?" >> $OUT/gputest.log; tail -3 $OUT/gputest.log
timeout 150 python3 -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_DQ --values separate,merged --cases 12288x8x64 --rounds 1 --calls 20 --warmup 2 --out $OUT/ab > $OUT/ab.log 2>&1; echo "ab rc $?" >> $OUT/ab.log
tail -3 $OUT/ab.log | cut -c1-600; date -u >> $OUT/times.txt
timeout 250 megastride bench attention --patterns fixed --configs 8x64 --lengths 12288,131072 --peers flex --rounds 0 --out $OUT/bench > $OUT/bench.log 2>&1; echo "bench rc $?" >> $OUT/bench.log
grep -E "checked|FAILED|rc |ms f\+b" $OUT/bench.log | cut -c1-300; date -u >> $OUT/times.txt
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/bench/bench_attention.json"))
for r in d.get("results", d if isinstance(d, list) else []):
    print(r["seq_len"], {k: {a: round(b, 5) for a, b in v.items()} for k, v in r.items() if k.endswith("check")})
PY
