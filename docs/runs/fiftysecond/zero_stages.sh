#!/bin/bash
# Session BM (2026-12-06): the planner's ZeRO stages and offloads against `megastride train` (DeepSpeed, bf16) on one
# GPU, the measured peaks beside `megastride plan --json` for the same overrides (docs/scaling.md's Limits said ZeRO-2/3
# and parameter offload on one GPU were planned but not measured). A 1.01B model (d 2048, 20 layers, 16 heads, the
# shape of "Memory options and the two axes") at 32,768 tokens on the embedded text store, so the weights' share
# (16 bytes a parameter before ZeRO's buffers) is most of the peak. Each run: 3 steps, every step logged.
#   OUT=... CASES="1 2 3 2o 3op" bash docs/runs/fiftysecond/zero_stages.sh
set -u
OUT=${OUT:?}; mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch, triton, deepspeed; print('torch', torch.__version__, 'triton', triton.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/env.txt"
date -u >> "$OUT/env.txt"
source launch/kernel_cache.sh && kernel_cache_restore > "$OUT/kernel_cache.log" 2>&1
python3 -m megastride.launch.cli prepare text @stdlib --out /tmp/stdlib.zarr --if-missing > "$OUT/prepare.log" 2>&1
GPU_GB=$(python3 -c "import torch; print(torch.cuda.get_device_properties(0).total_memory / 1e9)")
model="--set model.d_model=2048 --set model.n_layers=20 --set model.n_heads=16 --set model.seq_len=${SEQ:-32768} --set model.dropout=0"
for case in ${CASES:-1 2 3 2o 3op}; do
  sets="--set train.zero_stage=${case:0:1}"
  [[ $case == *o* ]] && sets="$sets --set train.offload_optimizer=true"
  [[ $case == *p* ]] && sets="$sets --set train.offload_params=true"
  python3 -m megastride.launch.cli plan configs/enwik8.yaml $model $sets --gpu-memory-gb "$GPU_GB" --json > "$OUT/plan_$case.json" 2> "$OUT/plan_$case.err"
  rm -rf /tmp/zrun; date -u +"%T start $case" >> "$OUT/times.txt"
  timeout "${CASE_S:-170}" python3 -m megastride.launch.cli train configs/enwik8.yaml --set data.path=/tmp/stdlib.zarr $model $sets \
    --set run.dir=/tmp/zrun --set run.progress=false --set train.steps=${STEPS:-3} --set train.warmup_steps=1 \
    --set train.log_every=1 --set train.eval_every=1000 --set train.save_every=0 --set data.valid_split=train \
    > "$OUT/train_$case.log" 2>&1
  echo "rc $?" >> "$OUT/train_$case.log"; date -u +"%T end $case" >> "$OUT/times.txt"
  cp /tmp/zrun/metrics.jsonl "$OUT/metrics_$case.jsonl" 2>/dev/null
  grep -E "^plan|rc |Error|error:" "$OUT/train_$case.log" | cut -c1-300
done
rm -rf /tmp/zrun
python3 docs/runs/fiftysecond/zero_table.py "$OUT" | tee "$OUT/table.md"
