#!/bin/bash
# Session BF's last device call (2026-12-05): the levers that helped at 2x128 in call BF2 (dependent launches,
# streams) and the forward's rows in segments of 4, at the 8x64 short points, beside the default and Flex.
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
date -u > $OUT/times.txt
PEERS=flex,streams,pdl,pdlstreams,fwdsplit4 CONFIG=8x64 LIMIT=260 bash docs/runs/fortyfifth/short_levers.sh
