#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher (passwordless ssh between the hosts).
#   launch/multinode.sh HOSTFILE CONFIG [--set key=value ...]
# HOSTFILE lines: "node-01 slots=8". MASTER_PORT may be set in the environment.
# Python: $PYTHON, else this checkout's .venv (launch/setup_cpu.sh makes it), else python3 from PATH; the
# launcher runs under it, and so starts the ranks on every host with it.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 HOSTFILE CONFIG [--set key=value ...]" >&2; exit 2; fi
hostfile=$1; config=$2; shift 2
if [ ! -f "$config" ]; then echo "$0: error: config $config is not a file" >&2; exit 2; fi
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$here/../.venv/bin/python" ]; then python=$here/../.venv/bin/python; fi
found="import importlib.util as u, sys; sys.exit(not (u.find_spec('megastride.launch') and u.find_spec('deepspeed')))"
if ! "$python" -c "$found" 2>/dev/null; then
  echo "$0: error: $python cannot import megastride and deepspeed (activate their environment or set PYTHON)" >&2
  exit 2
fi
# one clear line and exit 2 for a malformed hostfile, then for a config or override train would refuse on
# every host
"$python" -m megastride.launch.hostfile "$hostfile"
"$python" -m megastride.launch.cli config "$config" "$@" > /dev/null
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$python" -m deepspeed.launcher.runner --hostfile "$hostfile" --master_port "${MASTER_PORT:-29500}" \
  "$here/train.py" "$config" "$@"
