# Sourced by callBF4.sh and callBF7.sh: logs the host's memory every 2 s into $OUT/mem.txt (MemAvailable, and
# Committed_AS, Mlocked and Shmem, where pinned CUDA host buffers show) and stops `megastride bench scaling` if less
# than 6 GB is available, so a call returns what it saw instead of losing the machine; WATCH is the loop's pid.
( while true; do
    avail=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
    echo "$(date -u +%T) available_MB $avail $(awk '/^(Committed_AS|Mlocked|Shmem):/ {printf "%s %d ", $1, $2/1024}' /proc/meminfo)" >> $OUT/mem.txt
    if [ "$avail" -lt 6000 ]; then
      echo "$(date -u +%T) available ${avail} MB: stopping the step" >> $OUT/mem.txt
      pkill -f "megastride bench scaling"
    fi
    sleep 2
  done ) &
WATCH=$!
