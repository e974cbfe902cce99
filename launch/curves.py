"""`megastride curves RUN [RUN ...]`: a run's loss curve from its metrics.jsonl, as a table and a PNG.

    megastride curves runs/music_1m --every 20 --out music_1m.png --line 7.48=histogram

Reads each run's metrics.jsonl (a resumed run appends to it; a step logged twice counts once, the
later line), prints train bits per byte over spans of --every steps beside the validation results,
step time and peak memory, and with --out draws every run's curve into one PNG.
"""

from __future__ import annotations

import argparse
import math
import sys

from megastride.launch.errors import ArgumentParser

PROG = "megastride curves"


def _line(raw: str) -> tuple[str, float]:
    label, sep, value = raw.rpartition("=")
    try:
        if not sep or not label or not math.isfinite(float(value)):  # inf, nan: no height to draw a line at
            raise ValueError
        return label, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LABEL=BITS with BITS a finite number, e.g. histogram=7.48, "
                                         f"got {raw!r}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    p.add_argument("--every", type=int, default=20, help="steps per table row (default 20)")
    p.add_argument("--smooth", type=int, default=20, help="running-mean window of the drawn train curve (default 20)")
    p.add_argument("--out", default=None, help="PNG to draw the curves into")
    p.add_argument("--line", type=_line, action="append", default=[], metavar="LABEL=BITS",
                   help="a horizontal reference line, e.g. --line histogram=7.48 (repeatable)")
    p.add_argument("--title", default="bits per byte", help="the PNG's title (default 'bits per byte')")
    args = p.parse_args(argv)
    for name in ("every", "smooth"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    from megastride.engine.curves import MetricsError, plot_curves, read_curve, summary_table

    from megastride.engine.config import ConfigError
    from megastride.launch.errors import check_output

    try:
        if args.out:  # before the tables: a PNG that cannot be written is named first
            check_output(args.out, "--out", "file", (".png",))
        curves = [read_curve(run) for run in args.runs]
    except (MetricsError, ConfigError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for c in curves:
        if c.note:
            print(f"note: {c.note}", file=sys.stderr)
        print(f"{c.name}: {len(c.train)} logged steps, {len(c.valid)} evaluations")
        print(summary_table(c, args.every) if c.train else "(no train steps logged)")
        print()
    if args.out:
        backend = plot_curves(curves, args.out, smooth=args.smooth, lines=dict(args.line), title=args.title)
        print(f"wrote {args.out} ({backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
