# Compiled kernels carried between fresh GPU machines (source this file; bash).
#
# A lent GPU machine starts bare, so every call compiles each Triton and Gluon kernel variant again (and
# TorchInductor's FlexAttention kernels): most of a GPU test call's time. A test that took 2.9 s on a warm machine
# was one of 14 that took 380 s on a fresh one (docs/benchmarks.md, forty-eighth run). These two functions keep
# Triton's and TorchInductor's caches under one fixed root, so the absolute paths Triton records in its cache
# entries hold on the next machine too, and pack them into parts small enough to come back from the device tool
# and travel in its carry.
#
#   source launch/kernel_cache.sh
#   kernel_cache_restore [DIR]        # before any kernel runs; DIR defaults to .kernel_cache (the carried parts)
#   kernel_cache_save OUTDIR [MAX_MB] # after; writes OUTDIR/kernels.tgz.part-aa, -ab, ... (15 MiB each); over MAX_MB
#                                     # (45) without TorchInductor's share, the smallest Triton kernels that fit
#
# A Triton kernel keeps its binary, metadata, PTX and TTGIR (what a loaded kernel's `asm` is read for here: the
# FFN check asks its PTX and TTGIR); the earlier stages (.source, .ttir, .llir), the bulk of an entry, stay behind:
# Triton loads an entry from the files its group still finds.
# Autotuning results (*.autotune.json) are never packed: the autotuner times its configs again on each machine
# (an H100's choice is not an H200's), and a test of first-call autotuning still autotunes. A pack made under a
# different Triton, torch or GPU architecture is not restored (Triton would not use its entries anyway).
# launch/h200_checks.sh carries the other share, the autotuning results alone (its .autotune_cache/), for runs that
# should keep an earlier machine's choices; it puts them into the TRITON_CACHE_DIR set here when both are used.

KERNEL_CACHE_ROOT=${KERNEL_CACHE_ROOT:-/tmp/megastride-kernel-cache}
# what never travels (see above), for tar and du alike
KERNEL_CACHE_LEFT_OUT=(--exclude='*.autotune.json' --exclude='lock' --exclude='tmp.*' --exclude='*.source'
  --exclude='*.ttir' --exclude='*.llir')
export TRITON_CACHE_DIR=$KERNEL_CACHE_ROOT/triton TORCHINDUCTOR_CACHE_DIR=$KERNEL_CACHE_ROOT/inductor

_kernel_cache_mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }  # FILE's size, MiB rounded up
_kernel_cache_count() { find "$TRITON_CACHE_DIR" -name '__grp__*' | wc -l; }        # Triton kernels cached here

kernel_cache_stamp() {
  python3 -c "import torch, triton; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else 'cpu'; print('triton', triton.__version__, 'torch', torch.__version__, 'sm', c)"
}

kernel_cache_restore() {
  local dir=${1:-.kernel_cache} want have
  mkdir -p "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR"
  if ! compgen -G "$dir/kernels.tgz.part-*" > /dev/null; then
    echo "kernel cache: no parts in $dir, compiling from scratch"; return 0
  fi
  if ! want=$(kernel_cache_stamp); then echo "kernel cache: not restored, python3 could not name torch and triton"; return 0; fi
  have=$(cat "$dir/kernels.tgz.part-"* | tar -xzOf - ./STAMP 2>/dev/null)
  if [ "$have" != "$want" ]; then
    echo "kernel cache: not restored, made under '$have', this machine is '$want'"; return 0
  fi
  if ! cat "$dir/kernels.tgz.part-"* | tar -xzf - -C "$KERNEL_CACHE_ROOT"; then
    echo "kernel cache: the parts in $dir do not unpack (a part missing or cut short?); compiling from scratch"
    rm -rf "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR" "$KERNEL_CACHE_ROOT/STAMP"; mkdir -p "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR"
    return 0
  fi
  echo "kernel cache: restored $(_kernel_cache_count) Triton kernels," \
    "$(du -sh "$TORCHINDUCTOR_CACHE_DIR" | cut -f1) of TorchInductor's cache, from $(cat "$dir/kernels.tgz.part-"* | wc -c) bytes"
}

kernel_cache_save() {
  local out=${1:?usage: kernel_cache_save OUTDIR [MAX_MB]} max=${2:-45} tgz mb keep
  mkdir -p "$KERNEL_CACHE_ROOT"
  if ! kernel_cache_stamp > "$KERNEL_CACHE_ROOT/STAMP"; then echo "kernel cache: not saved, python3 could not name torch and triton"; return 0; fi
  tgz=$(mktemp /tmp/kernels.XXXXXX.tgz)
  # TorchInductor's cache goes first when both do not fit: a Triton kernel of ours is the most often compiled.
  for keep in "STAMP triton inductor" "STAMP triton"; do
    (cd "$KERNEL_CACHE_ROOT" && tar -czf "$tgz" "${KERNEL_CACHE_LEFT_OUT[@]}" \
      $(for p in $keep; do [ -e "$p" ] && echo "./$p"; done))
    mb=$(_kernel_cache_mib "$tgz")
    [ "$mb" -le "$max" ] && break
    echo "kernel cache: $keep packs to $mb MiB, over $max"
  done
  local count
  count=$(_kernel_cache_count)
  if [ "$mb" -gt "$max" ]; then
    # Every Triton kernel does not fit (the whole GPU suite's packed to 98 MiB, fiftieth run): the smallest
    # kernels first, as many as fit, so the next call compiles only the rest.
    if ! count=$(kernel_cache_subset "$tgz" "$max" "$mb"); then
      echo "kernel cache: not saved ($mb MiB packed, over $max)"; rm -f "$tgz"; return 0
    fi
    mb=$(_kernel_cache_mib "$tgz")
    keep="STAMP, $count of $(_kernel_cache_count) Triton kernels, the smallest"
  fi
  mkdir -p "$out" && rm -f "$out/kernels.tgz.part-"* && split -b 15M "$tgz" "$out/kernels.tgz.part-"
  echo "kernel cache: saved $count Triton kernels ($keep) as" \
    "$(ls "$out"/kernels.tgz.part-* | wc -l) parts, $mb MiB, in $out"
  rm -f "$tgz"
}

# Packs into TGZ the STAMP and the smallest whole Triton cache entries (a folder each, its group file with it)
# whose pack fits MAX MiB, from ALL (the MiB of every entry's pack); prints how many kernels (group files) it
# packed, or fails when not even one entry fits.
kernel_cache_subset() {
  local tgz=$1 max=$2 all=$3 sizes list raw budget try
  sizes=$(mktemp /tmp/kernels.XXXXXX.sizes) list=$(mktemp /tmp/kernels.XXXXXX.list)
  # each entry's packed files' bytes, smallest first, measured once
  (cd "$KERNEL_CACHE_ROOT" && for d in triton/*/; do
     echo "$(du -sb "${KERNEL_CACHE_LEFT_OUT[@]}" "$d" | cut -f1) ./${d%/}"; done | sort -n) > "$sizes"
  raw=$(awk '{ t += $1 } END { print t + 0 }' "$sizes")
  budget=$(( raw * max / all ))  # the raw bytes the cap holds at the whole pack's ratio
  for try in 1 2 3 4 5 6; do
    awk -v b="$budget" '{ t += $1; if (t > b) exit; print $2 }' "$sizes" > "$list"
    [ -s "$list" ] || break
    (cd "$KERNEL_CACHE_ROOT" && tar -czf "$tgz" "${KERNEL_CACHE_LEFT_OUT[@]}" ./STAMP -T "$list")
    if [ "$(_kernel_cache_mib "$tgz")" -le "$max" ]; then
      (cd "$KERNEL_CACHE_ROOT" && while read -r d; do compgen -G "$d/__grp__*"; done < "$list") | wc -l
      rm -f "$sizes" "$list"; return 0
    fi
    budget=$(( budget * 4 / 5 ))
  done
  rm -f "$sizes" "$list"; return 1
}
