#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher (passwordless ssh between the hosts).
#   launch/multinode.sh HOSTFILE CONFIG [--set key=value ...]
# HOSTFILE lines: "node-01 slots=8". MASTER_PORT may be set in the environment.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 HOSTFILE CONFIG [--set key=value ...]" >&2; exit 2; fi
hostfile=$1; config=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
python3 -m megastride.launch.hostfile "$hostfile"  # one clear line and exit 2 if it is malformed
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec deepspeed --hostfile "$hostfile" --master_port "${MASTER_PORT:-29500}" \
  "$here/train.py" "$config" "$@"
