#!/bin/bash
# Session BI (2026-12-06), for an H200 (ask with needs_h200: the baseline's step takes 91.5 GB, more than an H100
# holds; call BI1 ran callBH5.sh on an H100, where the baseline ran out of memory): the fixed 1M step under 60 GB
# with MEGASTRIDE_FFN_GEMM=nograd (the default) and =0 alternated in one process, then the baseline in the same
# call, without the GPU tests (they passed in call BI1): issue 5's side-by-side with today's defaults.
NO_TESTS=1 bash docs/runs/fortyseventh/callBH5.sh
