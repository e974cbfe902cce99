"""Print a probe log's JSON rows as one short line each (the other lines as they are)."""
import json
import sys

KEYS = ("n", "kernel", "block_n", "block_m", "stages", "swap", "staging", "dv_wait", "pair", "fp16_sums", "order", "send", "ms", "tflops", "max_rel_diff_dk",
        "max_rel_diff_dv", "max_rel_diff_dq_vs_fp32", "error")
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        print(" ".join(f"{k}={r[k]}" for k in KEYS if k in r))
    else:
        print(line.rstrip()[:300])
