"""What a model that learned nothing but simple statistics scores on a store, in bits per byte.

Two baselines per window of L bytes (the model's context): the byte histogram of the window itself
(unigram entropy, a lower bound for any model that ignores order) and the entropy of a byte given
the one before it, within the window (a lower bound for models that look one byte back). A training
loss at the first number has learned the histogram; below the second it uses more context.

Both are plug-in estimates from the window's own counts, so they are biased low when the window is
short against what they count: 256 values for the histogram, 65,536 pairs for the previous-byte
entropy. Below ``RELIABLE_LEN`` bytes the second number says little (a 1,024-byte window of audio
"has" 2.7 bits given the previous byte; the same store's 1M windows have 5.7).
"""

from __future__ import annotations

import numpy as np

from .format import Store
from .reader import check_seq_len

RELIABLE_LEN = 65536  # windows shorter than this give previous-byte entropies biased low


def window_entropies(x: np.ndarray) -> tuple[float, float]:
    """(H(x_t), H(x_t | x_t-1)) in bits of one window's empirical distributions."""
    x = np.asarray(x, dtype=np.int64)
    counts = np.bincount(x, minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log2(p)).sum())
    if len(x) < 2:
        return unigram, unigram
    pairs = np.bincount(x[:-1] * 256 + x[1:], minlength=256 * 256).reshape(256, 256).astype(np.float64)
    joint = pairs / pairs.sum()
    prev = joint.sum(axis=1, keepdims=True)
    m = joint > 0
    conditional = float(-(joint[m] * np.log2((joint / np.where(prev > 0, prev, 1.0))[m])).sum())
    return unigram, conditional


def store_entropies(store: Store, split: str, seq_len: int, windows: int = 16, seed: int = 0) -> dict:
    """Mean, min and max of both baselines over ``windows`` random windows of ``seq_len`` bytes."""
    if store.modality == "image":
        raise ValueError("entropy baselines are for 1-D stores (bytes, audio), not images")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    check_seq_len(store, split, seq_len)
    size = store.split(split).size
    starts = np.random.default_rng(seed).integers(0, size - seq_len, size=windows)
    values = np.array([window_entropies(store.read(split, int(s), int(s) + seq_len)) for s in starts])
    out = {"split": split, "seq_len": seq_len, "windows": windows, "seed": seed}
    for k, name in enumerate(("unigram", "previous_byte")):
        col = values[:, k]
        out[name] = {"mean": float(col.mean()), "min": float(col.min()), "max": float(col.max())}
    return out
