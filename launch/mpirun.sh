#!/usr/bin/env bash
# Open MPI: megastride maps OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK} to ranks.
#   launch/mpirun.sh NPROCS CONFIG [--set key=value ...]      (add -hostfile via MPIRUN_ARGS)
# Python: $PYTHON, else this checkout's .venv (launch/setup_cpu.sh makes it), else python3 from PATH.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 NPROCS CONFIG [--set key=value ...]" >&2; exit 2; fi
nprocs=$1
# mpirun reads -np 0 as "every slot": a count it was not given
if ! [[ $nprocs =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: error: NPROCS must be an integer of at least 1, got '$nprocs'" >&2; exit 2
fi
if [ ! -f "$2" ]; then echo "$0: error: config $2 is not a file" >&2; exit 2; fi
shift
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$here/../.venv/bin/python" ]; then python=$here/../.venv/bin/python; fi
found="import importlib.util as u, sys; sys.exit(not u.find_spec('megastride.launch'))"
if ! "$python" -c "$found" 2>/dev/null; then
  echo "$0: error: $python cannot import megastride (activate its environment or set PYTHON)" >&2; exit 2
fi
export MASTER_ADDR=${MASTER_ADDR:-$(hostname)} MASTER_PORT=${MASTER_PORT:-29500}
exec mpirun -np "$nprocs" ${MPIRUN_ARGS:-} -x MASTER_ADDR -x MASTER_PORT -x OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} \
  "$python" -m megastride.launch.cli train "$@"
