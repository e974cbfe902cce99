# Twenty-fourth run, call 4: a 2.72B-parameter model (d 3072, 24 layers, 24 heads of 128) at 1,048,576
# tokens on one H200: DeepSpeed bf16, ZeRO-1 with the optimizer in host memory (ZeRO-Offload), 4-block
# segments with their inputs in host memory, the strided pattern of configs/music_1m.yaml. (Call 2's 3.63B
# model, 32 layers and 6-block segments, was killed by the host's OOM killer at the end of its first
# backward: host memory 92 GB -> 125 GB.) The run is stopped once its second step is logged (no final
# checkpoint of 38 GB). Call 3, the same without HostAdamW: killed by the OOM killer at the first optimizer step
# (torch.optim.AdamW on the flat 2.7B-element host partition: host memory 92 -> 114+ GB).
OUT=${OUT:?}; AUDIO=.gpudata/music12k.zarr
nvidia-smi --query-gpu=timestamp,memory.used,power.draw,clocks.sm --format=csv -lms 1000 > $OUT/smi.csv & SMI=$!
(while true; do echo "$(date -u +%T) $(free -g | awk '/Mem/{print $3, $7}')"; sleep 1; done) > $OUT/free.log & FREE=$!
date -u > $OUT/times.txt
timeout 150 python3 docs/runs/twentyfourth/pretune.py 1048576 24 128 'strided(1024)' > $OUT/pretune.log 2>&1; echo "pretune rc $?" >> $OUT/pretune.log
tail -3 $OUT/pretune.log; date -u >> $OUT/times.txt
timeout ${TRAIN_S:-400} python3 -m megastride.launch.cli train configs/music_1m.yaml --set data.path=$AUDIO \
  --set run.dir=/tmp/axes_3b --set train.steps=4 --set train.warmup_steps=1 --set train.eval_every=1000 \
  --set train.save_every=1000 --set run.progress=false --set model.d_model=3072 --set model.n_layers=24 \
  --set model.n_heads=24 --set train.checkpoint_group=4 --set train.cpu_checkpointing=true \
  --set model.ffn_chunk=65536 --set train.zero_stage=1 --set train.offload_optimizer=true > $OUT/train_3b.log 2>&1 &
TRAIN=$!
while kill -0 $TRAIN 2>/dev/null; do
  if [ "0$(grep -c "\"step\": 2" /tmp/axes_3b/metrics.jsonl 2>/dev/null)" -ge 1 ]; then sleep 2; kill -- $TRAIN; pkill -f "launch.cli train"; echo "stopped after step 2" >> $OUT/train_3b.log; break; fi
  sleep 2
done
wait $TRAIN; echo "train rc $?" >> $OUT/train_3b.log
grep -v "^\[20" $OUT/train_3b.log | tail -6; cp /tmp/axes_3b/metrics.jsonl $OUT/train_3b.jsonl 2>/dev/null; cat $OUT/train_3b.jsonl
rm -rf /tmp/axes_3b; date -u >> $OUT/times.txt; kill $SMI $FREE
