"""Training metrics: TensorBoard scalars, a JSON-lines copy, and the rank-0 progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

LN2 = math.log(2.0)


def bits_per_byte(nats: float) -> float:
    return nats / LN2


class MetricsWriter:
    """Writes scalars on rank 0; a no-op elsewhere so callers need no rank checks."""

    def __init__(self, run_dir: Path, tb_dir: Path, enabled: bool):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tb_dir))
            self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            if value is not None:
                self._tb.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


class Progress:
    """tqdm bar on rank 0 (when enabled), silent elsewhere."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, postfix: dict[str, str]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
