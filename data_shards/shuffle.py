"""Which sample sits at each position of the endless, per-epoch shuffled stream: pure functions.

A split is a list of *units*: whole samples for images; for 1-D data, the windows
``[offset + k*L, offset + k*L + L + 1)`` for k < U, where each epoch draws its own phase ``offset``
so that over epochs every byte starts a window. Epoch ``e`` visits the units in the order
``permutation(seed, e)``; global position ``p`` is unit ``perm_{p // U}[p % U]``. Everything is a
function of (sizes, seed, epoch), so any rank or worker computes any position without talking.
"""

from __future__ import annotations

import numpy as np


def window_units(n: int, seq_len: int) -> int:
    """Windows of ``seq_len + 1`` bytes per epoch in a split of ``n`` bytes (stride ``seq_len``)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if n < seq_len + 1:
        raise ValueError(f"a window of seq_len+1 = {seq_len + 1} bytes does not fit in {n} bytes")
    return max(1, (n - seq_len) // seq_len)


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, epoch, purpose)."""
    return np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, seed >> 32, epoch, stream]))


def window_offset(n: int, seq_len: int, seed: int, epoch: int) -> int:
    """The phase of epoch ``epoch``'s window grid, uniform in [0, min(L, n - U*L))."""
    units = window_units(n, seq_len)
    return int(epoch_rng(seed, epoch, 1).integers(0, min(seq_len, n - units * seq_len)))


def permutation(units: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``units`` units (int64)."""
    return epoch_rng(seed, epoch, 0).permutation(units).astype(np.int64)


class ShuffledStream:
    """Maps global positions to units (sample indices or window starts), caching one epoch's order."""

    def __init__(self, n: int, seed: int, seq_len: int | None = None):
        self.n, self.seed, self.seq_len = n, seed, seq_len
        self.units = n if seq_len is None else window_units(n, seq_len)
        self._epoch, self._perm, self._offset = -1, None, 0

    def _load(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._perm = permutation(self.units, self.seed, epoch)
            if self.seq_len is not None:
                self._offset = window_offset(self.n, self.seq_len, self.seed, epoch)
            self._epoch = epoch

    def epoch_of(self, position: int) -> int:
        return position // self.units

    def starts(self, positions: np.ndarray) -> np.ndarray:
        """Sample index (images) or window start byte (1-D) of each global position."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty_like(positions)
        for i, p in enumerate(positions.tolist()):
            epoch, k = divmod(p, self.units)
            self._load(epoch)
            unit = int(self._perm[k])
            out[i] = unit if self.seq_len is None else self._offset + unit * self.seq_len
        return out
