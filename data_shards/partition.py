"""Who reads which positions of the shuffled stream: pure functions of (world, step).

Training consumes the stream in global batches of ``world_size * batch`` positions. Rank ``r``'s
``s``-th micro-batch is positions ``start + s*world_size*batch + r*batch + [0, batch)``; a rank with
``num_workers`` loader workers hands its micro-batch ``s`` to worker ``s % num_workers``, and the
DataLoader returns them in order. The only state is ``start`` (positions consumed so far), so a run
resumed with another world size continues exactly where the old one stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's place among data-parallel ranks (and its node, for reporting)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")

    @property
    def node(self) -> int:
        return self.rank // self.local_world_size


def global_rank(node: int, local_rank: int, local_world_size: int) -> int:
    """The rank of ``local_rank`` on ``node`` when every node runs ``local_world_size`` ranks."""
    if not 0 <= local_rank < local_world_size:
        raise ValueError(f"local_rank {local_rank} is not in [0, {local_world_size})")
    return node * local_world_size + local_rank


def world_from_env(env=None) -> World:
    """World from RANK/WORLD_SIZE, or NODE_RANK/LOCAL_RANK/LOCAL_WORLD_SIZE/NNODES; default single."""
    env = os.environ if env is None else env
    local_rank = int(env.get("LOCAL_RANK", 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    if "RANK" in env:
        rank = int(env["RANK"])
    else:
        rank = global_rank(int(env.get("NODE_RANK", 0)), local_rank, local_world)
    world_size = int(env.get("WORLD_SIZE", int(env.get("NNODES", 1)) * local_world))
    return World(rank, world_size, local_rank, local_world)


def batch_positions(start: int, step: int, batch: int, rank: int, world_size: int) -> range:
    """Global stream positions of rank ``rank``'s micro-batch number ``step``."""
    first = start + step * world_size * batch + rank * batch
    return range(first, first + batch)


def worker_steps(worker_id: int, num_workers: int, first_step: int = 0):
    """The micro-batch numbers (>= first_step) that loader worker ``worker_id`` produces, endless."""
    if not 0 <= worker_id < max(1, num_workers):
        raise ValueError(f"worker_id {worker_id} is not in [0, {num_workers})")
    step = first_step + worker_id
    while True:
        yield step
        step += max(1, num_workers)


def eval_indices(n_windows: int, rank: int, world_size: int) -> range:
    """Evaluation windows of one rank: k = rank, rank + world_size, ... (the union is all of them)."""
    return range(rank, n_windows, world_size)
