#!/usr/bin/env bash
# Set up a CPU-only environment in .venv (idempotent; CI runs it on a fresh machine).
# The pins are a stack known to work together on CPU: torch 2.13.0 (CPU wheel), numpy < 2.4
# (the Triton 3.6 interpreter breaks on 2.4), triton 3.6 (kernels run under TRITON_INTERPRET=1),
# deepspeed 0.19.8 (gloo on CPU), zarr 3.1.6 (3.2 needs Python 3.12). On a GPU machine use
# `pip install -e .` instead: it takes the CUDA torch from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.13.0 numpy==2.3.5 triton==3.6.0 zarr==3.1.6
"${pip[@]}" deepspeed==0.19.8
"${pip[@]}" -e ".[test,audio]"
# Open MPI lets the test suite check `mpirun` launches too; optional, best effort (root + apt only).
if ! command -v mpirun >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin >/dev/null) \
    || echo "setup: Open MPI not installed; the mpirun test will be skipped" >&2
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, deepspeed, triton, zarr; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, triton {triton.__version__}, zarr {zarr.__version__}")' 2>/dev/null))"
