#!/bin/bash
# An H200 call after callBE3.sh (planned 2026-12-05, session BD; about 500 s; no H200 came in sessions BC and BD):
# the fixed 1M step under 60 GB (the 8 s line) without, with and without MEGASTRIDE_FFN_GEMM=nograd (the
# one-product FFN forward for the 28 recomputed blocks' first forwards: 8% faster than the default FFN without
# gradients on an H100, about 24 ms a step expected), alternated on one card; the LayerNorm backward's loads a step
# ahead are on in all three (on by default since the forty-fourth run). callBE2.sh times those on an H200.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
STEP_TIMEOUT=175; source docs/runs/fortyfourth/step1m.sh
MEGASTRIDE_FFN_GEMM=0 step off1; date -u >> $OUT/times.txt
MEGASTRIDE_FFN_GEMM=nograd step nograd; date -u >> $OUT/times.txt
MEGASTRIDE_FFN_GEMM=0 step off2; date -u >> $OUT/times.txt
