#!/bin/bash
# Session BD's first call (2026-12-05, 17:55 UTC, H100): session BC's plan for the one-product FFN's first GPU run,
# unchanged (ffn_check --gemm, then its GPU test).
bash docs/runs/fortyfourth/callBC8.sh
