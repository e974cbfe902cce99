#!/bin/bash
# Session BD's second call (2026-12-05, 18:01 UTC, H100): session BC's plan, unchanged (the GPU test of every listed
# tile config, block 64's new tiles included, then the strided pattern beside the fixed one at 3,072 and 12,288).
bash docs/runs/fortyfourth/callBC6.sh
