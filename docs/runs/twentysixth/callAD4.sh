#!/bin/bash
# Twenty-sixth run, call 4: where the halves' time goes, per kernel (1M, 8x64).
set -x
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
timeout 240 python3 -m megastride.kernels.split_probe --lengths 1048576 --configs 8x64 --groups 16 --profile \
  --out $OUT > $OUT/split_probe.log 2>&1
python3 - <<PY
import json
r = json.load(open("$OUT/split_probe.json"))
for c in r["cases"]:
    for name, row in c["rows"].items():
        if "profile" in row:
            print(name, round(row["fwdbwd_ms"], 2), row["profile"]["summary"])
PY
