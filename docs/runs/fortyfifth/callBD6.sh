#!/bin/bash
# Session BD's sixth call (2026-12-05, 18:21-18:24 UTC): docs/runs/fortyfourth/callBC7.sh as planned for an H200 (the
# LayerNorm sweep with and without the loads a step ahead, then the fixed 1M step under 60 GB); asked for an H200,
# it ran on an H100.
bash docs/runs/fortyfourth/callBC7.sh
