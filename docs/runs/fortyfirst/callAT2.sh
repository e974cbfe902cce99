#!/bin/bash
# Forty-first run, call 2 (2026-12-05): call 1 (callAS1.sh) found ffn_check's check failing and
# test_residual_kernels_give_the_plain_streams_loss_and_gradients_on_the_gpu failing (its message cut by the
# call's timeout). The FFN kernel isolated (diag_ffn.py), then the two failing/unrun GPU tests alone with their
# messages.
date -u > $OUT/times.txt
timeout 120 python3 docs/runs/fortyfirst/diag_ffn.py > $OUT/diag_ffn.log 2>&1; echo "diag rc $?" >> $OUT/diag_ffn.log
cat $OUT/diag_ffn.log | cut -c1-400
date -u >> $OUT/times.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py -k "residual_kernels or ffn_bias" \
  > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
grep -E "^E |passed|failed|rc " $OUT/tests.log | head -40 | cut -c1-300
date -u >> $OUT/times.txt
