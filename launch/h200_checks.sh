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
# PARTS="k b 0 4" runs only those steps (default: all)
want() { [[ " ${PARTS:-k b 0 g t 1 2 3 4 5} " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton, deepspeed; print('torch', torch.__version__, 'triton', triton.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/env.log"
date -u | tee -a "$OUT/env.log"
# Autotuning results carry over between fresh machines: a .autotune_cache/ folder in the checkout (the
# OUT/autotune_cache of an earlier run, copied back and named in the device tool's carry) is put into
# Triton's cache first, so each kernel key compiles only its chosen config instead of benchmarking all
# of them (Triton ignores an entry whose kernel source, configs or Triton build differ). The results of
# this run are collected at the end.
TCACHE=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
if [ -d .autotune_cache ]; then
  mkdir -p "$TCACHE" && cp -r .autotune_cache/. "$TCACHE/" && echo "autotune cache: $(find .autotune_cache -name '*.autotune.json' | wc -l) entries restored" | tee -a "$OUT/env.log"
fi
save_autotune() { [ -d "$TCACHE" ] && (cd "$TCACHE" && find . -name '*.autotune.json' -print0 | tar --null -cf - -T -) \
  | (mkdir -p "$OUT/autotune_cache" && cd "$OUT/autotune_cache" && tar -xf -); }
trap save_autotune EXIT
# k. kernels: bf16/fp16 and long lengths against the reference, torch.compile, layout build times
if want k; then
timeout "${KCHECK_S:-200}" python3 -m megastride.kernels.gpu_check --out "$OUT" ${KCHECK_ARGS:-} 2>&1 | tail -20 | tee "$OUT/gpu_check.log"
# the other backward modes (atomic dQ, split dK/dV columns) at 1M tokens, fixed and strided
if [ -z "${KCHECK_ARGS:-}" ]; then
  timeout "${KCHECK_MODES_S:-120}" python3 -m megastride.kernels.gpu_check --out "$OUT/modes" --dq-mode atomic \
    --dkdv-split 16 --no-long --only 1M 2>&1 | tail -4 | tee -a "$OUT/gpu_check.log"
  timeout "${KCHECK_MODES_S:-120}" python3 -m megastride.kernels.gpu_check --out "$OUT/merged" --dq-mode merged \
    --no-long --only 1M 2>&1 | tail -4 | tee -a "$OUT/gpu_check.log"
fi
fi
# b. attention bench (docs/benchmarks.md): ours (DQ_MODE "auto": the faster of separate and merged, timed
#    on first use) beside FlexAttention and dense SDPA, and the separate and merged modes on their own, each case profiled and also replayed
#    from CUDA graphs (the kernels without the host's issue cost).
#    BENCH_PATTERNS=fixed,strided,strided_matched adds the strided pattern at about the fixed density. BENCH_PEERS=flex,atomic,... also times the atomic dQ mode, and the training
#    runs below then use it if it was the faster at the longest length (slower at 1M on 2026-11-29).
#    Each case compiles Flex for its own shapes (kernels.bench.flex_compiled). On a fresh machine the
#    first case's create_block_mask compile takes 4-5 minutes (264 and 301 s on 2026-11-30), later ones
#    1-20 s, and autotuning ~25 s per new key of ours: the whole default set no longer fits one 600 s
#    device call; split it with BENCH_CONFIGS / BENCH_PATTERNS / BENCH_LENGTHS (one GPU each on a
#    2-GPU machine), e.g. BENCH_PATTERNS=fixed BENCH_CONFIGS=8x64 BENCH_LENGTHS=65536,262144,1048576.
if want b; then
timeout "${BENCH_S:-560}" python3 -m megastride.launch.cli bench attention --patterns "${BENCH_PATTERNS:-fixed,strided}" \
  --configs "${BENCH_CONFIGS:-8x64,2x128}" --lengths "${BENCH_LENGTHS:-3072,12288,65536,262144,1048576}" \
  --peers "${BENCH_PEERS:-flex,sdpa,separate,merged}" --profile --graphs ${BENCH_ARGS:-} --out "$OUT/bench_attention" > "$OUT/bench_attention.log" 2>&1
tail -30 "$OUT/bench_attention.log"
if [ -z "${MEGASTRIDE_BLOCKSPARSE_DQ:-}" ] && [ -f "$OUT/bench_attention/bench_attention.json" ]; then
  export MEGASTRIDE_BLOCKSPARSE_DQ=$(python3 - "$OUT/bench_attention/bench_attention.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
longest = max((r["seq_len"] for r in rows), default=0)
at = [r for r in rows if r["seq_len"] == longest]
totals = {"auto": sum(r.get("ours_fwdbwd_ms") or 0 for r in at)}  # ours: the default DQ_MODE "auto"
for mode in ("separate", "atomic", "merged"):  # a mode counts where it was timed for every case at that length
    if at and all(r.get(f"ours_{mode}_fwdbwd_ms") for r in at):
        totals[mode] = sum(r[f"ours_{mode}_fwdbwd_ms"] for r in at)
print(min(totals, key=totals.get))
PY
)
  echo "dQ mode for the runs below: $MEGASTRIDE_BLOCKSPARSE_DQ (faster at the longest benched length)" | tee -a "$OUT/env.log"
fi
fi
# w. tile sweeps (docs/benchmarks.md "Tile sweeps"; opt-in: PARTS="w"): the forward's and the dK/dV
#    kernel's configs each on its own beside Flex's same half, with the index lists and with the full lists
#    walked as runs (MEGASTRIDE_BLOCKSPARSE_RUNS: 1-3% faster from 262,144 in the sixth run, off by default);
#    SWEEP_CONFIGS / SWEEP_LENGTHS pick the cases; SWEEP_FWD / SWEEP_DKDV the configs tried beside the lists
if [[ " ${PARTS:-} " == *" w "* ]]; then
for runs in "" --runs; do
  for kernel in fwd dkdv; do
    if [ $kernel = fwd ]; then extra="${SWEEP_FWD:-128x128w4s4}"; else extra="${SWEEP_DKDV:-64x128w8s4,64x64w4s4}"; fi
    timeout "${SWEEP_S:-240}" python3 -m megastride.launch.cli bench tiles --kernel $kernel $runs \
      --configs "${SWEEP_CONFIGS:-8x64}" --lengths "${SWEEP_LENGTHS:-262144,1048576}" \
      --tiles "list,$extra" --out "$OUT/tiles_${kernel}${runs:+_runs}" \
      > "$OUT/tiles_${kernel}${runs:+_runs}.log" 2>&1
    tail -12 "$OUT/tiles_${kernel}${runs:+_runs}.log"
  done
done
fi
# 0. data loader throughput (docs/data.md): windows of 65,536 and 1,048,576 bytes beside numpy.memmap
if want 0; then
timeout "${DATA_S:-120}" python3 -m megastride.launch.cli bench data --size-mb 256 --lengths 65536,1048576 --seconds 1 \
  --no-remote --workdir /tmp/bench_data --out "$OUT/bench_data.json" --quiet 2>&1 | grep -v WARN | tail -12 | tee "$OUT/bench_data.log"
fi
# g. the CUDA-graph step (replayed steps train like eager ones) and the fused LayerNorm (bf16 output and
#    gradients against torch, timed beside torch's); the graph tests in a process of their own, since the
#    interpreter-run kernel test files set TRITON_INTERPRET at import
if want g; then
timeout "${GTEST_S:-180}" python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py 2>&1 | tail -8 | tee "$OUT/pytest_graphs.log"
# the trainer's graphed steps (train.runtime=torch) against its eager ones, resume included
timeout "${GTEST_S:-180}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_train_torch_runtime.py 2>&1 | tail -8 | tee -a "$OUT/pytest_graphs.log"
# the kernels' first-call autotuning memory, the auto dQ mode's timed choice, the 262,144-token graph replay (failed in the bench)
timeout "${GTEST_S:-180}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py 2>&1 | tail -8 | tee -a "$OUT/pytest_graphs.log"
timeout "${LNCHECK_S:-120}" python3 -m megastride.kernels.ln_check 2>&1 | tail -12 | tee "$OUT/ln_check.log"
fi
# t. the trainer's own step at the paper's Enwik8 shape (12,288 tokens, fixed(128,32), dropout 0.4) on the
#    embedded text store: DeepSpeed (eager) beside train.runtime=torch with the step in a CUDA graph and the
#    fewest recomputed blocks that fit; metrics.jsonl holds each step's time and peak memory
if want t; then
python3 -m megastride.launch.cli prepare text @stdlib --out /tmp/stdlib.zarr --if-missing 2>&1 | tail -1
# torch_graph_b64: the same with 64-token blocks, where fixed(128,32)'s summary positions fill half the
# block columns instead of all of them (docs/scaling.md)
for label in ${T12_RUNS:-deepspeed torch_graph torch_graph_b64}; do
  graph=(--set train.runtime=torch --set train.zero_stage=0 --set train.cuda_graph=true --set train.checkpoint_blocks=auto)
  case $label in
    deepspeed) sets=() ;;
    torch_graph) sets=("${graph[@]}") ;;
    torch_graph_b64) sets=("${graph[@]}" --set model.attention.block=64) ;;
  esac
  echo "== $label: ${sets[*]}" | tee -a "$OUT/train_12k.log"
  timeout "${TRAIN12_S:-150}" python3 -m megastride.launch.cli train configs/enwik8.yaml --set data.path=/tmp/stdlib.zarr \
    --set run.dir="/tmp/t12_$label" --set run.resume=never --set train.steps="${STEPS12:-40}" --set train.warmup_steps=5 \
    --set train.eval_every=1000 --set train.save_every=1000 --set train.log_every=1 --set run.progress=false "${sets[@]}" \
    2>&1 | grep -v "^\[20" | tail -4 | tee -a "$OUT/train_12k.log"
  cp "/tmp/t12_$label/metrics.jsonl" "$OUT/train_12k_$label.jsonl" 2>/dev/null
done
fi
# 1. GPU-only tests: fp16 dynamic loss scaling, bf16 training through the Triton kernels
if want 1; then
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_train_gpu.py 2>&1 | tail -15 | tee "$OUT/pytest_gpu.log"
fi
# 2. ~95M model, 1,048,576-token windows of real audio, a short run: does the loss fall, how fast
if want 2; then
timeout "${TRAIN_S:-300}" python3 -m megastride.launch.cli train configs/music_1m.yaml --set data.path="$AUDIO" \
  --set run.dir=/tmp/music_1m --set train.steps="${STEPS:-16}" --set train.warmup_steps="${WARMUP:-4}" --set train.lr="${LR:-1e-3}" \
  --set train.eval_every=1000 --set run.progress=false 2>&1 | grep -v "^\[20" | tail -8 | tee "$OUT/train_1m.log"
cp /tmp/music_1m/metrics.jsonl "$OUT/train_1m_metrics.jsonl" 2>/dev/null
fi
# 3. scaling sweep (same model size) and the planner check against measured peaks
if want 3; then
# By default the step is a CUDA graph and recomputes the fewest blocks that fit (the fastest measured setup);
# SWEEP_ARGS replaces those options: e.g. "--baseline --budget-s 420 ..." adds issue 5's baseline in the same
# process (Flex's first compile took ~4.5 min on a fresh machine), "" times the plain eager loop
timeout "${SWEEP_S:-200}" python3 -m megastride.launch.cli bench scaling --device cuda --config configs/enwik8.yaml \
  --set model.dropout=0 --kinds "${SWEEP_KINDS:-dense,fixed,strided}" --lengths "${SWEEP_LENGTHS:-12288,65536,262144,1048576}" \
  --steps 2 --warmup 1 --profile ${SWEEP_ARGS---set train.cuda_graph=true --set train.checkpoint_blocks=auto} --out /tmp/scaling 2>&1 | tail -30 | tee "$OUT/scaling.log"
timeout "${PLAN_S:-120}" python3 -m megastride.launch.cli bench scaling --device cuda --config configs/enwik8.yaml \
  --set model.dropout=0 --validate-plan --steps 1 --warmup 1 --out /tmp/scaling 2>&1 | tail -14 | tee -a "$OUT/scaling.log"
cp /tmp/scaling/scaling.csv /tmp/scaling/scaling.png /tmp/scaling/plan_check.csv /tmp/scaling/profile.json "$OUT/" 2>/dev/null
fi
# 4. the memory options at 1M tokens in the plain loop (strided pattern, l ~ sqrt(n)): measured peak
#    and step time beside the planner's prediction, one CSV per run (docs/scaling.md). The 4M and 1B
#    points need the bf16 residual stream of DeepSpeed: step 5
mem_run() {
  label=$1; lengths=$2; shift 2; sets=(); for o in "$@"; do sets+=(--set "$o"); done
  echo "== $label ($lengths): $*" | tee -a "$OUT/memory_options.log"
  timeout "${MEM_S:-180}" python3 -m megastride.launch.cli bench scaling --device cuda --config configs/enwik8.yaml \
    --set model.dropout=0 "${sets[@]}" --kinds strided --lengths "$lengths" --steps 1 --warmup 1 --budget-s 600 \
    --out "/tmp/mem_$label" 2>&1 | tail -4 | tee -a "$OUT/memory_options.log"
  cp "/tmp/mem_$label/scaling.csv" "$OUT/memory_$label.csv" 2>/dev/null
}
if want 4; then
  for label in ${MEMS:-95m_1m_plain 95m_1m_host 95m_1m_host_overlap}; do case $label in
    95m_1m_plain) mem_run 95m_1m_plain 1048576 ;;
    95m_1m_host) mem_run 95m_1m_host 1048576 train.cpu_checkpointing=true model.ffn_chunk=65536 ;;
    95m_1m_host_overlap) mem_run 95m_1m_host_overlap 1048576 train.cpu_checkpointing=true train.offload_overlap=true \
                           model.ffn_chunk=65536 ;;
  esac; done
fi
# 5. the same axes as real DeepSpeed training runs (bf16 weights and residual stream) on the audio store:
#    95M at 4,194,304 tokens and a 1.01B model at 1,048,576; metrics.jsonl has step time and peak memory
#    (the 4M run evaluates on a training window: the valid split of the wesnoth store is 1.3M samples).
#    On a fresh machine the first step compiles and autotunes at the new length (the 4M and 1B runs did
#    not log it inside 225 s on 2026-11-30): one AXES label per device call, e.g. AXES=95m_4m
train_run() {
  label=$1; steps=$2; shift 2; sets=(); for o in "$@"; do sets+=(--set "$o"); done
  echo "== $label: $*" | tee -a "$OUT/train_axes.log"
  timeout "${AXES_S:-420}" python3 -m megastride.launch.cli train configs/music_1m.yaml --set data.path="$AUDIO" \
    --set run.dir="/tmp/axes_$label" --set train.steps="$steps" --set train.warmup_steps=1 --set train.eval_every=1000 \
    --set train.save_every=1000 --set run.progress=false "${sets[@]}" 2>&1 | grep -v "^\[20" | tail -6 | tee -a "$OUT/train_axes.log"
  cp "/tmp/axes_$label/metrics.jsonl" "$OUT/train_$label.jsonl" 2>/dev/null
}
if want 5; then
  for label in ${AXES:-95m_4m 1b_1m}; do case $label in
    95m_4m) train_run 95m_4m 3 model.seq_len=4194304 'model.attention.layers=["strided(2048)"]' data.valid_split=train \
              train.checkpoint_group=5 train.cpu_checkpointing=true model.ffn_chunk=65536 ;;
    1b_1m)  train_run 1b_1m 3 model.d_model=2048 model.n_layers=20 model.n_heads=16 \
              train.checkpoint_group=4 train.cpu_checkpointing=true model.ffn_chunk=65536 ;;
  esac; done
fi
ls "$OUT"
