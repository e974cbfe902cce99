# Twenty-fourth run, call 1: the 95M model (enwik8 shape) at 8,388,608 tokens on one H200 (DeepSpeed bf16,
# strided(2048) = strided(auto) at this length, 3-block segments, segment inputs in host memory)
OUT=${OUT:?}; AUDIO=.gpudata/music12k.zarr
nvidia-smi --query-gpu=timestamp,memory.used,power.draw,clocks.sm --format=csv -lms 2000 > $OUT/smi.csv & SMI=$!
(while true; do echo "$(date -u +%T) $(free -g | awk '/Mem/{print $3, $7}')"; sleep 5; done) > $OUT/free.log & FREE=$!
date -u > $OUT/times.txt; git log -1 --format=%h > $OUT/tree.txt 2>/dev/null
python3 -c "import torch, triton, deepspeed; print(torch.__version__, triton.__version__, deepspeed.__version__)" > $OUT/env.txt 2>&1
timeout 200 python3 docs/runs/twentyfourth/pretune.py 8388608 8 64 'strided(2048)' > $OUT/pretune.log 2>&1; echo "pretune rc $?" >> $OUT/pretune.log
tail -3 $OUT/pretune.log; date -u >> $OUT/times.txt
timeout ${TRAIN_S:-380} python3 -m megastride.launch.cli train configs/music_1m.yaml --set data.path=$AUDIO \
  --set run.dir=/tmp/axes_8m --set train.steps=3 --set train.warmup_steps=1 --set train.eval_every=1000 \
  --set train.save_every=1000 --set run.progress=false --set model.seq_len=8388608 \
  --set 'model.attention.layers=["strided(2048)"]' --set data.valid_split=train --set train.checkpoint_group=3 \
  --set train.cpu_checkpointing=true --set model.ffn_chunk=65536 > $OUT/train_8m.log 2>&1; echo "train rc $?" >> $OUT/train_8m.log
grep -v "^\[20" $OUT/train_8m.log | tail -8; cp /tmp/axes_8m/metrics.jsonl $OUT/train_8m.jsonl 2>/dev/null
date -u >> $OUT/times.txt; kill $SMI $FREE
