"""8-bit mu-law companding (ITU-T G.711 curve, mu = 255), as the paper's audio used."""

from __future__ import annotations

import numpy as np

MU = 255


def mulaw_encode(x: np.ndarray, mu: int = MU) -> np.ndarray:
    """Float samples in [-1, 1] (clipped) -> uint8 codes 0..255 (128 is silence's upper neighbour)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)  # in [-1, 1]
    return np.clip(np.floor((y + 1.0) / 2.0 * mu + 0.5), 0, mu).astype(np.uint8)


def mulaw_decode(codes: np.ndarray, mu: int = MU) -> np.ndarray:
    """uint8 codes -> float32 samples in [-1, 1] (the inverse of the curve at the code centres)."""
    y = 2.0 * np.asarray(codes, dtype=np.float64) / mu - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)
