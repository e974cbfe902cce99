#!/bin/bash
# Session BB, 2026-12-05 15:06-15:08 UTC, one NVIDIA H100 80GB HBM3 (a fresh machine), tree 59dd62c: the LayerNorm
# backward's tile sweep at the 1M step's shape, with and without each tile's loads a step ahead
# (docs/runs/fortyfirst/callAW1.sh's "ln" part). Logs: callBB1c/.
date -u > $OUT/times.txt
PARTS=ln bash docs/runs/fortyfirst/callAW1.sh
