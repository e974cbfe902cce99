"""Training metrics: TensorBoard scalars, a JSON-lines copy, and the rank-0 progress bar."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

LN2 = math.log(2.0)


def bits_per_byte(nats: float) -> float:
    return nats / LN2


class MetricsWriter:
    """Writes scalars on rank 0; a no-op elsewhere so callers need no rank checks.

    ``step``: the step training goes on from (a resumed checkpoint's). What a run killed after it left in the
    files is dropped on open, so the files hold one trajectory: a last line cut off mid-write (the next
    record would be appended to it) and the lines of later steps (the checkpoint discarded them; the resumed
    run logs them anew) leave metrics.jsonl, and TensorBoard hides those steps' events (its purge_step).
    """

    def __init__(self, run_dir: Path, tb_dir: Path, enabled: bool, step: int = 0):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tb_dir), purge_step=step + 1)
            path = run_dir / "metrics.jsonl"
            keep_until(path, step)
            self._jsonl = open(path, "a", buffering=1)

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


def keep_until(path: Path, step: int) -> None:
    """Cut ``path`` (a metrics.jsonl) back to its whole lines of steps up to ``step``; other whole lines stay
    as they are. What goes is appended to metrics.dropped.jsonl beside it first (the cut-off line ended), so
    nothing a run wrote is lost; then ``path`` is rewritten through a temporary file, so a kill now loses
    nothing either. Untouched if nothing goes."""
    if not path.is_file():
        return
    *lines, cut = path.read_text(errors="surrogateescape").split("\n")  # cut: "" unless a kill cut it off
    kept = [line for line in lines if not _after(line, step)]
    if not cut and len(kept) == len(lines):
        return
    dropped = [line for line in lines if _after(line, step)] + ([cut] if cut else [])
    with open(path.with_name("metrics.dropped.jsonl"), "a", errors="surrogateescape") as f:
        f.write("".join(line + "\n" for line in dropped))
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), errors="surrogateescape")
    os.replace(tmp, path)


def _after(line: str, step: int) -> bool:
    try:
        return int(json.loads(line)["step"]) > step
    except (ValueError, KeyError, TypeError):  # not a metrics line: not this writer's to judge
        return False


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
