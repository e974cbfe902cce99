#!/bin/bash
# (Session BF: this call lost its machine in the 1M step, as did callBF4.sh; run callBF4.sh, the same step with a host-
# memory watch, first, and this call's parts (2) and (3) after it.)
# The next device call (planned 2026-12-05, session BE; replaces callBE1.sh and callBE2.sh, which session BE could
# not run: its second call's machine stopped answering, later starts failed, then lending paused). One call of
# about 520 s on an H200 (on an H100 it is still a same-card A/B, not set against the H200's steps), in order of
# what the open targets need, so a call cut at its limit keeps the parts before the cut:
# (1) the fixed 1M step under 60 GB (issue 5's 8 s line) without, with and without MEGASTRIDE_FFN_GEMM=nograd
#     (the one-product FFN forward for the recomputed blocks' first forwards: 7.5-8.1% faster than the default FFN
#     without gradients on H100s in calls BD5 and BE3, about 24 ms a step expected); the LayerNorm backward's loads
#     a step ahead are on in all three (the default since the forty-fourth run, never yet in an H200 step);
# (2) the LayerNorm sweep on an H200 (ln_check times both settings; its checks include the bitwise one);
# (3) the strided pattern beside the fixed one at 3,072 and 12,288 tokens (issue 3; H100 call BD2: -5.0%, -9.9%).
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
source docs/runs/fortyfourth/step1m.sh
STEP_TIMEOUT=170 MEGASTRIDE_FFN_GEMM=0 step off1; date -u >> $OUT/times.txt
STEP_TIMEOUT=150 MEGASTRIDE_FFN_GEMM=nograd step nograd; date -u >> $OUT/times.txt
STEP_TIMEOUT=150 MEGASTRIDE_FFN_GEMM=0 step off2; date -u >> $OUT/times.txt
PARTS="ln" bash docs/runs/fortyfirst/callAW1.sh
PARTS="short" bash docs/runs/fortyfourth/callBC6.sh
