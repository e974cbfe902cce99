"""`megastride bench attention`: our block-sparse kernels vs FlexAttention vs dense SDPA on one GPU."""

from __future__ import annotations

import argparse
import sys

from megastride.kernels.variants import describe
from megastride.launch.errors import ArgumentParser

PROG = "megastride bench attention"
LENGTHS = "3072,12288,65536,262144,1048576"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--lengths", default=LENGTHS, help=f"comma-separated sequence lengths (default {LENGTHS})")
    p.add_argument("--patterns", default="fixed,strided", help="comma-separated: fixed, strided, strided_matched (strided at about the fixed density), or the paper's "
                        "patterns in full, e.g. fixed(128,32) (enwik8's), fixed(96,16), strided(128)")
    p.add_argument("--configs", default="8x64,2x128", help="comma-separated HEADSxHEAD_DIM (default 8x64,2x128)")
    p.add_argument("--peers", default="flex,sdpa",
                   help="comma-separated peers to time beside ours: flex, sdpa; and our own kernels under other "
                        "settings of the MEGASTRIDE_BLOCKSPARSE_ switches (docs/kernels.md), each named by what it "
                        f"sets: {describe()}")
    p.add_argument("--block", type=int, default=None,
                   help="the layouts' block size for every case (default: 128; for a strided pattern 64 where its "
                        "groups n / l do not fill 128-blocks and its local band spans fewer than 20 of them)")
    p.add_argument("--dense-max", type=int, default=262144, help="longest length for dense SDPA (default 262144)")
    p.add_argument("--flex-strided-max", type=int, default=262144,
                   help="longest length for Flex on the strided pattern (default 262144: seconds per step beyond)")
    p.add_argument("--quick", action="store_true", help="lengths 12288,65536, config 8x64 only")
    p.add_argument("--profile", action="store_true",
                   help="also profile one forward+backward of ours (and Flex): wall vs GPU kernel time, per-kernel ms (JSON)")
    p.add_argument("--graphs", action="store_true",
                   help="also time each forward and forward+backward replayed from a CUDA graph (ours and the peers): "
                        "the kernels without the host's cost of issuing them (JSON: *_graph_*_ms)")
    p.add_argument("--rounds", type=int, default=3,
                   help="after each case's timings, this many rounds of forward+backward alternating between ours and "
                        "the peers, with the GPU's clock and power after each (default 3; 0: none): at long lengths the "
                        "GPU runs at its power cap and heats over a run, so one implementation timed after another meets "
                        "another clock")
    p.add_argument("--out", default=None, help="folder for bench_attention.md and bench_attention.json")
    return p


def cases_from(patterns: str, configs: str, lengths: str, block: int | None = None) -> list:
    """Bench cases from comma-separated patterns, HEADSxHEAD_DIM configs and lengths, per config and
    pattern shortest first (a run cut short keeps the short lengths; each case compiles Flex for its own
    shapes: kernels.bench.flex_compiled); ``block``: every case's layout block (None: the pattern's choice).
    ValueError names a malformed config or length, an unknown pattern, a head count or head dim the kernels
    do not take, or a block (given or the pattern's own) that does not divide a length: every case's layout
    is worked out here, before any GPU work."""
    from megastride.kernels.blocksparse import _HEAD_DIMS
    from megastride.kernels.bench import Case, case_pattern, split_patterns

    ns = sorted({int(x) for x in lengths.split(",") if x})
    if block is not None:
        bad = [n for n in ns if block <= 0 or n % block]
        if bad:
            raise ValueError(f"--block {block} does not divide the length {bad[0]}")
    cases = []
    for config in filter(None, configs.split(",")):
        dims = config.lower().split("x")
        if len(dims) != 2:
            raise ValueError(f"config {config!r} is not HEADSxHEAD_DIM")
        heads, head_dim = (int(x) for x in dims)
        if heads < 1 or head_dim not in _HEAD_DIMS:
            raise ValueError(f"config {config!r}: heads must be >= 1 and the head dim one of "
                             f"{', '.join(map(str, _HEAD_DIMS))}")
        for pattern in split_patterns(patterns):
            cases += [Case(pattern, n, heads, head_dim, block=block) for n in ns]
    for case in cases:
        if case.seq_len <= 0:
            raise ValueError(f"length {case.seq_len} is not positive")
        _, _, case_block, _ = case_pattern(case)  # unknown pattern, or a given block that does not divide n
        if case.seq_len % case_block:
            raise ValueError(f"the {case.pattern} pattern's block {case_block} does not divide the length "
                             f"{case.seq_len}")
    return cases


def out_unwritable(prog: str, out: str | None) -> bool:
    """True (after a one-line error naming ``prog``) where the folder ``out`` cannot be made: checked before the
    GPU is, so that the results are not lost at the end of a run for want of somewhere to write them."""
    from megastride.engine.config import ConfigError
    from megastride.launch.errors import check_output

    try:
        if out is not None:
            check_output(out, "--out", "folder")
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return True
    return False


def gpu_missing(prog: str) -> bool:
    """True (after a one-line error naming ``prog``) where no CUDA GPU is there to bench on."""
    import torch

    if torch.cuda.is_available():
        return False
    print(f"{prog}: error: needs a CUDA GPU", file=sys.stderr)
    return True


def _cases(args):
    if args.quick:
        return cases_from(args.patterns, "8x64", "12288,65536", args.block)
    return cases_from(args.patterns, args.configs, args.lengths, args.block)


def _peers(raw: str) -> set[str]:
    from megastride.kernels.bench import OUR_VARIANTS

    peers = {p for p in raw.split(",") if p}
    unknown = sorted(peers - {"flex", "sdpa", *OUR_VARIANTS})
    if unknown:
        raise ValueError(f"unknown --peers {', '.join(unknown)} (known: flex, sdpa, {', '.join(OUR_VARIANTS)})")
    return peers


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        peers = _peers(args.peers)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        cases = _cases(args)
    except ValueError as err:
        print(f"{PROG}: error: bad --patterns, --lengths, --configs or --block ({err})", file=sys.stderr)
        return 2
    if args.rounds < 0:
        print(f"{PROG}: error: --rounds must be 0 or more, got {args.rounds}", file=sys.stderr)
        return 2
    if out_unwritable(PROG, args.out) or gpu_missing(PROG):
        return 2
    from megastride.kernels.bench import run_bench, table
    results = run_bench(cases, peers, out_dir=args.out, dense_max=args.dense_max,
                        flex_max={"strided": args.flex_strided_max}, profile=args.profile, graphs=args.graphs,
                        rounds=args.rounds,
                        log=lambda s: print(s, flush=True))
    print(table(results))
    if args.out:
        print(f"wrote {args.out}/bench_attention.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
