#!/bin/bash
# Twenty-sixth run, calls 1-3: the fixed pattern's halves timed apart, ours beside cuDNN / FlashAttention-2
# (call 1 ran it with --groups 1,4,16).
set -x
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())"
timeout 500 python3 -m megastride.kernels.split_probe --lengths 1048576,262144 --configs 8x64,2x128 \
  --groups 16 --out $OUT 2>&1 | tee $OUT/split_probe.log
