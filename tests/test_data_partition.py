"""Shuffle and partition are pure functions: no overlap, full coverage, deterministic per seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from megastride.data_shards.partition import (World, batch_positions, eval_indices, global_rank, worker_steps,
                                              world_from_env)
from megastride.data_shards.shuffle import ShuffledStream, permutation, window_offset, window_units

SHAPES = [(n, r, w, b) for n, r, w, b in itertools.product((1, 2, 3), (1, 2, 4, 8), (0, 1, 2, 3), (1, 2, 5))]


def _positions(start, nodes, ranks, workers, batch, global_steps):
    """Every position read by every (node, local rank, worker) for the first global steps."""
    world = nodes * ranks
    seen = []
    for node, local, in itertools.product(range(nodes), range(ranks)):
        rank = global_rank(node, local, ranks)
        for worker in range(max(1, workers)):
            for step in itertools.takewhile(lambda s: s < global_steps, worker_steps(worker, workers)):
                seen += list(batch_positions(start, step, batch, rank, world))
    return seen


@pytest.mark.parametrize("nodes,ranks,workers,batch", SHAPES)
def test_partition_covers_every_position_once(nodes, ranks, workers, batch):
    """Over nodes x ranks x workers the positions read are exactly [start, start + steps*world*B)."""
    start, steps = 17, 7
    seen = _positions(start, nodes, ranks, workers, batch, steps)
    assert sorted(seen) == list(range(start, start + steps * nodes * ranks * batch))


def test_worker_steps_interleave_in_dataloader_order():
    """Worker i produces micro-batches i, i+W, ...: round-robin output is steps 0, 1, 2, ..."""
    gens = [worker_steps(w, 3) for w in range(3)]
    assert [next(gens[k % 3]) for k in range(9)] == list(range(9))
    with pytest.raises(ValueError):
        next(worker_steps(3, 3))


def test_world_from_env_and_global_rank():
    """RANK/WORLD_SIZE win; otherwise node-major ranks from NODE_RANK/LOCAL_RANK/LOCAL_WORLD_SIZE."""
    assert world_from_env({}) == World(0, 1, 0, 1)
    assert world_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}).node == 1
    w = world_from_env({"NODE_RANK": "2", "NNODES": "3", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"})
    assert (w.rank, w.world_size, w.node) == (11, 12, 2)
    with pytest.raises(ValueError, match="rank 4 is not in"):
        World(4, 4)


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_eval_indices_union_is_independent_of_world(world):
    """Evaluation windows split across ranks without overlap; the union is all of them."""
    parts = [list(eval_indices(23, r, world)) for r in range(world)]
    assert sorted(sum(parts, [])) == list(range(23))


def test_permutation_is_deterministic_per_seed_and_epoch():
    """The same (seed, epoch) gives the same order; other epochs or seeds differ."""
    p = permutation(1000, 3, 0)
    assert sorted(p.tolist()) == list(range(1000))
    np.testing.assert_array_equal(p, permutation(1000, 3, 0))
    assert not np.array_equal(p, permutation(1000, 3, 1))
    assert not np.array_equal(p, permutation(1000, 4, 0))


@pytest.mark.parametrize("n,L", [(10, 9), (11, 5), (100, 7), (4096, 64), (1000, 999), (3 * 2**20 + 5, 2**20)])
def test_window_grid_fits_and_covers(n, L):
    """Every epoch's windows lie inside the split, do not overlap beyond the target byte, cover it."""
    units = window_units(n, L)
    for epoch in range(5):
        off = window_offset(n, L, seed=1, epoch=epoch)
        starts = off + L * np.arange(units)
        assert starts[0] >= 0 and starts[-1] + L + 1 <= n
        assert off < L
    assert units * L >= n - 2 * L  # at most ~2 windows of bytes unused per epoch
    with pytest.raises(ValueError, match="does not fit"):
        window_units(L, L)


def test_shuffled_stream_visits_each_unit_once_per_epoch():
    """Positions [e*U, (e+1)*U) map onto every window start of epoch e exactly once."""
    s = ShuffledStream(5000, seed=9, seq_len=100)
    u = s.units
    for epoch in range(3):
        starts = s.starts(np.arange(epoch * u, (epoch + 1) * u))
        off = window_offset(5000, 100, 9, epoch)
        assert sorted(starts.tolist()) == [off + 100 * k for k in range(u)]
    img = ShuffledStream(37, seed=2)
    assert sorted(img.starts(np.arange(37, 74)).tolist()) == list(range(37))
