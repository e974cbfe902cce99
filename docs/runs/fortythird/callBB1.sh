#!/bin/bash
# Session BB, 2026-12-05 14:27-14:33 UTC, one NVIDIA H100 80GB HBM3 (kind nvidia-h100-x1: no H200 could be started
# that day), tree 1ccf2df: docs/runs/fortysecond/callAW1.sh as committed (the flat kernels' GPU test, then 3,072 and
# 12,288 tokens at 8x64 with the flat peers, replayed from CUDA graphs). Logs: callBB1/.
bash docs/runs/fortysecond/callAW1.sh
