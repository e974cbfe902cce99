#!/bin/bash
# Session BD's fifth call (2026-12-05; about 550 s): the FFN in one product each way (MEGASTRIDE_FFN_GEMM=1) with
# persistent programs added to its autotuners' lists (ffn_gemm.PERSIST_TILES, GRAD_PERSIST_TILES: TMA descriptors,
# the tile loop flattened with the depth loop so that the next tile's loads overlap this one's epilogue). Call BD1
# timed the non-persistent kernels 7% slower than the default FFN at 1M rows (32.16 against 29.98 ms forward and
# backward). (1) ffn_check --gemm: checks, then the three FFNs timed in alternated rounds at 65,536 and 1M rows, the
# tuners' choices printed; (2) only if the gemm FFN's forward and backward at 1M beats the default's: the fixed 1M
# step under 60 GB without and with it.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 300 python3 -m megastride.kernels.ffn_check --gemm > $OUT/ffn_gemm.log 2>&1
echo "ffn_check rc $?" >> $OUT/ffn_gemm.log
grep -E "^(ok|FAIL)|rc " $OUT/ffn_gemm.log | cut -c1-200
grep -E "^time ffn" $OUT/ffn_gemm.log | cut -c1-260
grep -E "^time ffn \(1, 1048576" $OUT/ffn_gemm.log | grep -oE "'backward[^}]*|PERSIST: [A-Za-z]+" | head -8
date -u >> $OUT/times.txt
faster=$(python3 - $OUT/ffn_gemm.log <<'PY'
import re, sys
for line in open(sys.argv[1]):
    if line.startswith("time ffn (1, 1048576"):
        d = float(re.search(r"default .*?fwd\+bwd ([0-9.]+)", line).group(1))
        g = float(re.search(r"gemm .*?fwd\+bwd ([0-9.]+)", line).group(1))
        print(1 if g < d else 0); break
else:
    print(0)
PY
)
echo "gemm faster at 1M: $faster"
if [ "$faster" = "1" ]; then
  STEP_TIMEOUT=130; source docs/runs/fortyfourth/step1m.sh
  MEGASTRIDE_FFN_GEMM=0 step off; MEGASTRIDE_FFN_GEMM=1 step gemm
fi
date -u >> $OUT/times.txt
