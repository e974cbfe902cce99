"""Process-group setup and small collectives. Rank information comes from the environment."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_from_scheduler(env: dict[str, str]) -> dict[str, str]:
    """torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, ...) derived from mpirun or srun.

    Returns only what is missing: the deepspeed launcher and torchrun set them already. Open MPI
    exports OMPI_COMM_WORLD_*, Slurm SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; MASTER_ADDR must
    come from the job script (launch/ shows how) unless the job runs on one node.
    """
    if "RANK" in env:
        return {}
    for rank, size, local in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                              ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
                              ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if rank in env and size in env:
            out = {"RANK": env[rank], "WORLD_SIZE": env[size], "LOCAL_RANK": env.get(local, "0")}
            out["MASTER_ADDR"] = env.get("MASTER_ADDR", "127.0.0.1")
            out["MASTER_PORT"] = env.get("MASTER_PORT", "29500")
            return out
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": env.get("MASTER_PORT") or str(_free_port())}


def world_size_from_env() -> int:
    """The number of ranks this process's environment asks for, before any process group starts
    (1 for a plain process): what ``init_distributed`` will find."""
    env = dict(os.environ)
    return int({**env, **env_from_scheduler(env)}.get("WORLD_SIZE", "1"))


def init_distributed(deepspeed_comm: bool = True) -> tuple[int, int, torch.device]:
    """Start the process group (NCCL on GPUs, gloo on CPU) and return (rank, world size, device).

    Works under the deepspeed launcher, torchrun, mpirun and srun (see ``env_from_scheduler``) and
    as a plain single process (the environment is filled in for a world of one). ``deepspeed_comm``:
    through DeepSpeed's communication layer, as its engine needs (on a CPU it first builds its shared-memory
    op, tens of seconds); else torch.distributed's own group (``train.runtime: torch``).
    """
    os.environ.update(env_from_scheduler(dict(os.environ)))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if deepspeed_comm:
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        else:
            dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return rank, world, torch.device("cuda", local_rank)
    return rank, world, torch.device("cpu")


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (float64 to keep bits-per-byte exact over many tokens)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
