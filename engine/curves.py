"""Loss curves of a run from its ``metrics.jsonl``: read (resumed runs included), summarise, draw.

A run's ``metrics.jsonl`` gets one JSON line per logged step (``train/bits_per_byte``,
``perf/step_time_s``, ...) and one per evaluation (``valid/bits_per_byte``). A run resumed from a
checkpoint appends to the same file; steps redone after a crash appear twice, and the later line
is the one that counts.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .loglog import pyplot

TRAIN, VALID = "train/bits_per_byte", "valid/bits_per_byte"


class MetricsError(ValueError):
    """A metrics file that is missing, empty or not JSON lines."""


@dataclass
class Curve:
    """One run's train and valid bits per byte by step, and its per-step time and peak memory."""

    name: str
    train: dict[int, float] = field(default_factory=dict)
    valid: dict[int, float] = field(default_factory=dict)
    step_s: dict[int, float] = field(default_factory=dict)
    peak_gb: dict[int, float] = field(default_factory=dict)
    note: str = ""  # what was left out of the file, if anything (a last line cut off by a killed run)


def metrics_path(run: str | Path) -> Path:
    """A run directory's metrics.jsonl, or the file itself."""
    path = Path(run)
    return path / "metrics.jsonl" if path.is_dir() else path


def read_curve(run: str | Path, name: str | None = None) -> Curve:
    path = metrics_path(run)
    if not path.is_file():
        raise MetricsError(f"{path}: no such metrics file (a run directory holds metrics.jsonl once it has logged a step)")
    curve = Curve(name or (path.parent.name if path.name == "metrics.jsonl" else path.stem))
    with open(path) as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if lineno == len(lines) and not line.endswith("\n"):  # a run killed while writing its last line
                curve.note = f"{path}:{lineno}: left out a last line cut off mid-write"
                break
            raise MetricsError(f"{path}:{lineno}: not a metrics line (JSON with a 'step')") from None
        for key, series in ((TRAIN, curve.train), (VALID, curve.valid), ("perf/step_time_s", curve.step_s),
                            ("perf/peak_memory_gb", curve.peak_gb)):
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series[step] = float(value)
    if not curve.train and not curve.valid:
        raise MetricsError(f"{path}: no bits-per-byte values in it")
    return curve


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for k, v in enumerate(values):
        total += v
        if k >= window:
            total -= values[k - window]
        out.append(total / min(k + 1, window))
    return out


def summary(curve: Curve, every: int) -> list[dict]:
    """Rows of ``every`` consecutive logged steps: train mean/min/max, median step time, peak memory,
    and the validation result logged inside the span (the last, if several)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    steps = sorted(curve.train)
    rows = []
    for k in range(0, len(steps), every):
        span = steps[k:k + every]
        values = [curve.train[s] for s in span]
        times = [curve.step_s[s] for s in span if s in curve.step_s]
        valid = [(s, v) for s, v in sorted(curve.valid.items()) if span[0] <= s <= span[-1]]
        rows.append({"first": span[0], "last": span[-1], "mean": statistics.fmean(values), "min": min(values),
                     "max": max(values), "step_s": statistics.median(times) if times else None,
                     "peak_gb": max((curve.peak_gb[s] for s in span if s in curve.peak_gb), default=None),
                     "valid_step": valid[-1][0] if valid else None, "valid": valid[-1][1] if valid else None})
    return rows


def summary_table(curve: Curve, every: int) -> str:
    lines = ["| steps | train bits/byte: mean | min - max | valid (step) | median s/step | peak GB |",
             "|---|---|---|---|---|---|"]
    for r in summary(curve, every):
        valid = f"{r['valid']:.3f} ({r['valid_step']})" if r["valid"] is not None else "—"
        step_s = f"{r['step_s']:.2f}" if r["step_s"] is not None else "—"
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "—"
        lines.append(f"| {r['first']}-{r['last']} | {r['mean']:.3f} | {r['min']:.3f} - {r['max']:.3f} | {valid} "
                     f"| {step_s} | {peak} |")
    return "\n".join(lines)


# --- drawing (matplotlib where installed, else PIL: linear axes) --------------------------------

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
W, H, LEFT, RIGHT, TOP, BOTTOM = 900, 560, 70, 30, 50, 60


def plot_curves(curves: list[Curve], path: str, smooth: int = 20, lines: dict[str, float] | None = None,
                title: str = "bits per byte") -> str:
    """Each run's train bits/byte (thin), its running mean over ``smooth`` steps (thick) and its
    validation points, with horizontal reference ``lines`` (label -> bits); returns the backend."""
    lines = lines or {}
    series = []
    for c in curves:
        steps = sorted(c.train)
        values = [c.train[s] for s in steps]
        series.append((c, steps, values, running_mean(values, smooth), sorted(c.valid.items())))
    plt = pyplot()
    if plt is None:
        _pil_curves(series, path, smooth, lines, title)
        return "pil"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for k, (c, steps, values, mean, valid) in enumerate(series):
        color = [x / 255 for x in COLORS[k % len(COLORS)]]
        ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(steps, mean, color=color, linewidth=2, label=f"{c.name} train (mean of {smooth})")
        if valid:
            ax.plot([s for s, _ in valid], [v for _, v in valid], "o", color=color, label=f"{c.name} valid")
    for label, y in lines.items():
        ax.axhline(y, color="gray", linestyle="--", linewidth=1)
        ax.annotate(label, (ax.get_xlim()[0], y), fontsize=8, va="bottom")
    ax.set(title=title, xlabel="step", ylabel="bits per byte")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step *= next((m for m in (1, 2, 5, 10) if step * m >= raw), 10)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def _pil_curves(series, path, smooth, lines, title) -> None:
    from PIL import Image, ImageDraw

    xs = [s for _, steps, _, _, valid in series for s in steps + [v[0] for v in valid]]
    ys = [y for _, _, values, _, valid in series for y in values + [v[1] for v in valid]] + list(lines.values())
    x0, x1 = min(xs, default=0), max(xs, default=1)
    y0, y1 = min(ys, default=0), max(ys, default=1)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)  # noqa: E731
    py = lambda y: H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)  # noqa: E731
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((LEFT, TOP, W - RIGHT, H - BOTTOM), outline="black")
    for t in _ticks(x0, x1):
        draw.line((px(t), TOP, px(t), H - BOTTOM), fill=(230, 230, 230))
        draw.text((px(t) - 8, H - BOTTOM + 6), f"{t:g}", fill="black")
    for t in _ticks(y0, y1):
        draw.line((LEFT, py(t), W - RIGHT, py(t)), fill=(230, 230, 230))
        draw.text((8, py(t) - 6), f"{t:g}", fill="black")
    for label, y in lines.items():
        draw.line((LEFT, py(y), W - RIGHT, py(y)), fill=(128, 128, 128), width=1)
        draw.text((LEFT + 6, py(y) - 14), label, fill=(90, 90, 90))
    for k, (c, steps, values, mean, valid) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        light = tuple(int(v + (255 - v) * 0.65) for v in color)
        if len(steps) > 1:
            draw.line([(px(s), py(v)) for s, v in zip(steps, values)], fill=light, width=1)
            draw.line([(px(s), py(v)) for s, v in zip(steps, mean)], fill=color, width=3)
        for s, v in valid:
            draw.ellipse((px(s) - 4, py(v) - 4, px(s) + 4, py(v) + 4), fill=color, outline="black")
        draw.rectangle((W - RIGHT - 300, TOP + 10 + 18 * k, W - RIGHT - 286, TOP + 22 + 18 * k), fill=color)
        draw.text((W - RIGHT - 280, TOP + 10 + 18 * k), f"{c.name}: train (mean of {smooth}), valid (dots)", fill="black")
    draw.text((W // 2 - 4 * len(title), 18), title, fill="black")
    draw.text((W // 2 - 12, H - 28), "step", fill="black")
    draw.text((8, TOP - 30), "bits per byte", fill="black")
    img.save(path)
