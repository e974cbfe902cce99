#!/bin/bash
# Ran as call BC1 (session BC, 2026-12-05 15:43-15:49 UTC), on an H100: no H200 came. A copy of
# docs/runs/fortythird/callBB2.sh:
# The next device call on an H200 (planned 2026-12-05, session BB, after calls BB1 and BB1b on an H100 timed the flat
# kernels slower than the default ones and the forward's other tiles slower than the listed one at 1M): what is left
# of docs/runs/fortyfirst/callAW1.sh, about 450 s: callAS4.sh's rest (the short lengths at 2x128 with the halves
# peers, gpu_check's fp16 D=128 case on the halves kernel), the LayerNorm backward's tile sweep at the 1M step's
# shape (LayerNorm is 293 ms of the 8 s step; on an H100, call BB1c, its loads a step ahead made the model's two
# backwards 9-12% faster: if the H200 agrees, turn layernorm.BWD_PREFETCH on), and a tenth sample of the fixed 1M step
# under 60 GB (the 8 s line).
date -u > $OUT/times.txt
PARTS="as4 ln fixed" bash docs/runs/fortyfirst/callAW1.sh
