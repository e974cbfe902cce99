"""`megastride bench tiles`: one of our kernels timed at each of several tile configs, beside Flex."""

from __future__ import annotations

import argparse
import os
import sys

from megastride.launch.errors import ArgumentParser

PROG = "megastride bench tiles"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--kernel", default="fwd", help="fwd (timed alone), dq, dkdv or merged (timed in a forward+backward)")
    p.add_argument("--tiles", default="list",
                   help="comma-separated configs, MxNwWsS (merged: MxN+MxNwWsS), and/or 'list' for the kernel's "
                        "autotuning list (default list); e.g. list,128x64w4s5,128x128w4s5")
    p.add_argument("--patterns", default="fixed", help="comma-separated: fixed, strided, strided_matched, or the paper's patterns in full, e.g. fixed(128,32) (default fixed)")
    p.add_argument("--configs", default="8x64", help="comma-separated HEADSxHEAD_DIM (default 8x64)")
    p.add_argument("--lengths", default="65536,262144", help="comma-separated sequence lengths (default 65536,262144)")
    p.add_argument("--no-flex", action="store_true", help="leave out FlexAttention")
    p.add_argument("--runs", action="store_true",
                   help="walk full block lists as arithmetic runs (MEGASTRIDE_BLOCKSPARSE_RUNS=1; experimental)")
    p.add_argument("--rounds", type=int, default=0,
                   help="then this many rounds of every config, the autotuner's choice and Flex in turn, after "
                        "--preheat seconds of the autotuner's choice (default 0: none): one config timed after "
                        "another meets a hotter GPU, at long lengths one at its power cap")
    p.add_argument("--graphs", action="store_true",
                   help="also time each config (and Flex) replayed from a CUDA graph: at short lengths an eager call "
                        "is bound by the host's issue of its launches, and only the replay compares the kernels")
    p.add_argument("--preheat", type=float, default=3.0, help="seconds of forward(+backward) before the rounds (default 3)")
    p.add_argument("--out", default=None, help="folder for bench_tiles.md and bench_tiles.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from megastride.kernels import tile_sweep as S
    from megastride.launch.bench_attention import cases_from, gpu_missing, out_unwritable

    try:
        if args.kernel not in S.KERNELS:
            raise ValueError(f"--kernel must be one of {', '.join(S.KERNELS)}, got {args.kernel!r}")
        for item in filter(None, args.tiles.split(",")):
            if item != "list":
                S.parse_tile(args.kernel, item)
        cases = cases_from(args.patterns, args.configs, args.lengths)
        if args.rounds < 0 or args.preheat < 0:
            raise ValueError(f"--rounds and --preheat must be 0 or more, got {args.rounds} and {args.preheat}")
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    if out_unwritable(PROG, args.out) or gpu_missing(PROG):
        return 2
    if args.runs:
        os.environ["MEGASTRIDE_BLOCKSPARSE_RUNS"] = "1"
    rows = S.run(cases, args.kernel, args.tiles, flex=not args.no_flex, out_dir=args.out,
                 log=lambda s: print(s, flush=True), rounds=args.rounds, preheat_s=args.preheat, graphs=args.graphs)
    print(S.table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
