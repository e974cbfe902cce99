"""Power-law fits and log-log plots for scaling studies (matplotlib where installed, else PIL)."""

from __future__ import annotations

import math

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def fit_slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares fit of log y = slope * log x + intercept; returns (slope, intercept)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a slope needs at least two (x, y) points, got {len(xs)}")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((x - mx) ** 2 for x in lx)
    if var == 0:
        raise ValueError("a slope needs at least two distinct x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / var
    return slope, my - slope * mx


def tail_slope(xs: list[float], ys: list[float], min_x: float) -> float | None:
    """Slope over the points with x >= min_x (all points if fewer than two qualify); None if < 2."""
    pts = [(x, y) for x, y in zip(xs, ys) if x >= min_x]
    if len(pts) < 2:
        pts = list(zip(xs, ys))
    if len({x for x, _ in pts}) < 2:
        return None
    return fit_slope([x for x, _ in pts], [y for _, y in pts])[0]


def pyplot():
    """matplotlib.pyplot on its file-only backend, or None where matplotlib is not installed (the
    plots then fall back to PIL)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_loglog(series: dict[str, tuple[list[float], list[float]]], path: str, title: str,
                xlabel: str, ylabel: str) -> str:
    """Draw each labelled (xs, ys) series as a line on log-log axes into a PNG; returns the backend."""
    series = {k: v for k, v in series.items() if v[0]}
    plt = pyplot()
    if plt is None:
        _pil_plot(series, path, title, xlabel, ylabel)
        return "pil"
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for label, (xs, ys) in series.items():
        ax.loglog(xs, ys, marker="o", label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


# --- the PIL fallback: a plain log-log chart ---------------------------------------------------

W, H, LEFT, RIGHT, TOP, BOTTOM = 900, 600, 90, 30, 50, 70


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = math.log10(min(values)), math.log10(max(values))
    pad = max(hi - lo, 0.5) * 0.05
    return lo - pad, hi + pad


def _to_px(v: float, lo: float, hi: float, a: int, b: int) -> float:
    return a + (math.log10(v) - lo) / (hi - lo) * (b - a)


def _label(v: float) -> str:
    for unit, scale in (("M", 2**20), ("K", 2**10)):
        if v >= scale and v % scale == 0:
            return f"{int(v // scale)}{unit}"
    return f"{v:g}"


def _pil_plot(series, path, title, xlabel, ylabel) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    xs = [x for s in series.values() for x in s[0]]
    ys = [y for s in series.values() for y in s[1]]
    xr, yr = _range(xs or [1, 10]), _range(ys or [1, 10])
    px = lambda x: _to_px(x, *xr, LEFT, W - RIGHT)  # noqa: E731
    py = lambda y: _to_px(y, *yr, H - BOTTOM, TOP)  # noqa: E731
    _axes(draw, xr, yr, px, py)
    for k, (label, (sx, sy)) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        points = [(px(x), py(y)) for x, y in zip(sx, sy)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=color)
        draw.rectangle((LEFT + 12, TOP + 10 + 18 * k, LEFT + 26, TOP + 22 + 18 * k), fill=color)
        draw.text((LEFT + 32, TOP + 10 + 18 * k), label, fill="black")
    draw.text((W // 2 - 4 * len(title), 15), title, fill="black")
    draw.text((W // 2 - 3 * len(xlabel), H - 30), xlabel, fill="black")
    draw.text((8, TOP - 30), ylabel, fill="black")
    img.save(path)


def _axes(draw, xr, yr, px, py) -> None:
    draw.rectangle((LEFT, TOP, W - RIGHT, H - BOTTOM), outline="black")
    lo, hi = math.ceil(xr[0] / math.log10(2)), math.floor(xr[1] / math.log10(2))
    for e in range(lo, hi + 1, 1 if hi - lo < 8 else 2):  # powers of 2 (of 4 over wide ranges)
        x = px(2.0**e)
        draw.line((x, TOP, x, H - BOTTOM), fill=(225, 225, 225))
        draw.text((x - 10, H - BOTTOM + 6), _label(2.0**e), fill="black")
    for e in range(math.ceil(yr[0]), math.floor(yr[1]) + 1):  # powers of 10
        y = py(10.0**e)
        draw.line((LEFT, y, W - RIGHT, y), fill=(225, 225, 225))
        draw.text((8, y - 6), f"{10.0**e:g}", fill="black")
