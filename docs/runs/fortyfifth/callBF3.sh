#!/bin/bash
# The device call after callBF2.sh (planned 2026-12-05, session BF): the same levers at the 8x64 short points
# (3,072 and 12,288 tokens), about 300 s, one GPU.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
PEERS=flex,streams,deltakernel,pdl,pdlstreams,fwdsplit2,split4,dqsplit2,shortlevers,shortstreams CONFIG=8x64 LIMIT=300 \
  bash docs/runs/fortyfifth/short_levers.sh
