#!/bin/bash
# Thirty-fourth run, call 7. After the probes' shared pieces moved into gluon_bwd_probe helpers (_column_program,
# _column_init, _score_step, _write_dkdv, probe_inputs): both probes still run and check their values, 262,144.
nvidia-smi --query-gpu=name,driver_version --format=csv
timeout 200 python3 -m megastride.kernels.gluon_bwd_probe --lists fixed --cases 262144x64 --out $OUT/bwd > $OUT/bwd.log 2>&1
echo "bwd rc $?" >> $OUT/bwd.log
python3 docs/runs/thirtyfourth/rows.py $OUT/bwd.log
timeout 200 python3 -m megastride.kernels.gluon_fused_probe --lists fixed --cases 262144x64 --settings 128x32s4p,128x32s4t \
  --out $OUT/fused > $OUT/fused.log 2>&1
echo "fused rc $?" >> $OUT/fused.log
python3 docs/runs/thirtyfourth/rows.py $OUT/fused.log
