# Sourced by the session-BC call scripts: step NAME runs the fixed 1M step under 60 GB (3 timed steps after one
# warm-up, the command of docs/scaling.md "The fixed 1M step under 60 GB at 8 s") into $OUT/NAME.log and NAME.csv,
# killed after ${STEP_TIMEOUT:-170} s.
step() {
  timeout ${STEP_TIMEOUT:-170} megastride bench scaling --device cuda --config configs/enwik8.yaml --set model.dropout=0 \
    --lengths 1048576 --warmup 1 --steps 3 --kinds fixed --set train.cpu_checkpointing=true \
    --set train.offload_overlap=true --set train.checkpoint_blocks=auto --set train.keep_attention=auto \
    --set train.memory_budget_gb=60 --out $OUT/$1 > $OUT/$1.log 2>&1
  echo "$1 rc $?" >> $OUT/$1.log; grep -E "s/step|rc " $OUT/$1.log | grep -v "^|" | cut -c1-400
  cp $OUT/$1/*.csv $OUT/$1.csv 2>/dev/null; rm -rf $OUT/$1
}
