# Sourced by the session-BG call scripts: logs the host's memory every ${MEMWATCH_S:-0.5} s into $OUT/mem.txt
# (MemAvailable; Committed_AS, Mlocked and Shmem, where pinned CUDA host buffers show) and stops `megastride bench
# scaling` below ${MEMWATCH_MIN_MB:-15000} MB available. The 1M step pins host memory at about 2.7 GB/s (call BF7),
# so the 2 s / 6 GB watch of docs/runs/fortyfifth/memwatch.sh could be passed between two samples. WATCH: the pid.
( while true; do
    avail=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
    echo "$(date -u +%T.%N | cut -c1-10) available_MB $avail $(awk '/^(Committed_AS|Mlocked|Shmem):/ {printf "%s %d ", $1, $2/1024}' /proc/meminfo)" >> $OUT/mem.txt
    if [ "$avail" -lt "${MEMWATCH_MIN_MB:-15000}" ]; then
      echo "$(date -u +%T) available ${avail} MB: stopping the step" >> $OUT/mem.txt
      pkill -f "megastride bench scaling"
    fi
    sleep ${MEMWATCH_S:-0.5}
  done ) &
WATCH=$!
