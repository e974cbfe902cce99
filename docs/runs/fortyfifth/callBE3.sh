#!/bin/bash
# The next device call, before callBE1.sh (since replaced by callBF1.sh; planned 2026-12-05, session BD; about
# 450 s; any H100 or H200): the one-product FFN's autotuning lists now hold Triton-warp-specialised persistent
# programs (ffn_gemm.WS_TILES, GRAD_WS_TILES: a loading warp group and two computing ones taking turns, so one's
# epilogue runs under the other's products; sm_90 compiles clean, never run on a GPU). (1) Every config of both
# lists forced in turn against torch
# and float64 (ffn_check --every-config, and its GPU test); (2) ffn_check --gemm: the three FFNs timed in alternated
# rounds at 65,536 and 1M rows, the tuners' choices printed (call BD5, before them: forward without gradients -8.1%,
# forward+backward +0.7% against the default).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
timeout 200 python3 -m megastride.kernels.ffn_check --every-config > $OUT/every_config.log 2>&1
echo "every_config rc $?" >> $OUT/every_config.log; grep -E "^FAIL|ffn_check|rc " $OUT/every_config.log | cut -c1-400
date -u >> $OUT/times.txt
timeout 260 python3 -m megastride.kernels.ffn_check --gemm > $OUT/ffn_gemm.log 2>&1
echo "ffn_check rc $?" >> $OUT/ffn_gemm.log
grep -E "^(ok|FAIL)|rc " $OUT/ffn_gemm.log | cut -c1-200
grep -E "^time ffn" $OUT/ffn_gemm.log | cut -c1-260
grep -E "^time ffn \(1, 1048576" $OUT/ffn_gemm.log | tr '"' '\n' | grep -E "BLOCK" | sort -u | cut -c1-200
date -u >> $OUT/times.txt
