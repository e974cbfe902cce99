#!/usr/bin/env bash
# One batched GPU session (the device tool's H200): GPU tests, a short million-length training run
# on real 12 kHz audio, the scaling sweep, the planner check and the long-sequence memory options.
# Results and logs under OUT.
#   bash launch/h200_checks.sh OUT [AUDIO_STORE]
set -uo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT [AUDIO_STORE]}"); AUDIO=${2:-data/music12k.zarr}
mkdir -p "$OUT"; cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
ms() { python3 -m megastride.launch.cli "$@"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton, deepspeed; print('torch', torch.__version__, 'triton', triton.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/env.log"
date -u | tee -a "$OUT/env.log"
# 0. data loader throughput (docs/data.md): windows of 65,536 and 1,048,576 bytes beside numpy.memmap
timeout "${DATA_S:-120}" python3 -m megastride.launch.cli bench data --size-mb 256 --lengths 65536,1048576 --seconds 1 \
  --no-remote --workdir /tmp/bench_data --out "$OUT/bench_data.json" --quiet 2>&1 | grep -v WARN | tail -12 | tee "$OUT/bench_data.log"
# 1. GPU-only tests: fp16 dynamic loss scaling, bf16 training through the Triton kernels
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py 2>&1 | tail -15 | tee "$OUT/pytest_gpu.log"
# 2. ~95M model, 1,048,576-token windows of real audio, a short run: does the loss fall, how fast
timeout "${TRAIN_S:-300}" python3 -m megastride.launch.cli train configs/music_1m.yaml --set data.path="$AUDIO" \
  --set run.dir=/tmp/music_1m --set train.steps="${STEPS:-16}" --set train.warmup_steps=4 --set train.lr=1e-3 \
  --set train.eval_every=1000 --set run.progress=false 2>&1 | grep -v "^\[20" | tail -8 | tee "$OUT/train_1m.log"
cp /tmp/music_1m/metrics.jsonl "$OUT/train_1m_metrics.jsonl" 2>/dev/null
# 3. scaling sweep (same model size) and the planner check against measured peaks
timeout "${SWEEP_S:-200}" python3 -m megastride.launch.cli bench scaling --device cuda --config configs/enwik8.yaml \
  --set model.dropout=0 --lengths 12288,65536,262144,1048576 --steps 2 --warmup 1 --out /tmp/scaling 2>&1 | tail -20 | tee "$OUT/scaling.log"
timeout "${PLAN_S:-120}" python3 -m megastride.launch.cli bench scaling --device cuda --config configs/enwik8.yaml \
  --set model.dropout=0 --validate-plan --steps 1 --warmup 1 --out /tmp/scaling 2>&1 | tail -14 | tee -a "$OUT/scaling.log"
cp /tmp/scaling/scaling.csv /tmp/scaling/scaling.png /tmp/scaling/plan_check.csv "$OUT/" 2>/dev/null
# 4. the memory options at 1M and 4M tokens (fixed pattern, same model): measured peak and step time
#    beside the planner's prediction, one CSV row each (docs/scaling.md lists the predictions)
for opts in "train.cpu_checkpointing=true model.ffn_chunk=65536" "train.checkpoint_group=5 train.cpu_checkpointing=true model.ffn_chunk=65536"; do
  sets=(); for o in $opts; do sets+=(--set "$o"); done
  timeout "${MEM_S:-150}" python3 -m megastride.launch.cli bench scaling --device cuda --config configs/enwik8.yaml \
    --set model.dropout=0 "${sets[@]}" --kinds fixed --lengths 1048576,4194304 --steps 1 --warmup 1 \
    --out "/tmp/mem_${opts// /_}" 2>&1 | tail -6 | tee -a "$OUT/memory_options.log"
  cp "/tmp/mem_${opts// /_}/scaling.csv" "$OUT/memory_${opts// /_}.csv" 2>/dev/null
done
ls "$OUT"
