#!/usr/bin/env bash
# Open MPI: megastride maps OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK} to ranks.
#   launch/mpirun.sh NPROCS CONFIG [--set key=value ...]      (add -hostfile via MPIRUN_ARGS)
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 NPROCS CONFIG [--set key=value ...]" >&2; exit 2; fi
nprocs=$1; shift
export MASTER_ADDR=${MASTER_ADDR:-$(hostname)} MASTER_PORT=${MASTER_PORT:-29500}
exec mpirun -np "$nprocs" ${MPIRUN_ARGS:-} -x MASTER_ADDR -x MASTER_PORT -x OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} \
  megastride train "$@"
