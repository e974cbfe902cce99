"""`megastride bench data`: windows/s and MB/s of the store reader beside numpy.memmap."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from megastride.launch.errors import ArgumentParser, user_errors

PROG = "megastride bench data"
BENCH_FILES = ("bench.raw", "bench.zarr")  # what run_bench writes into --workdir


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--size-mb", type=float, default=256, help="data size in MiB (default 256)")
    p.add_argument("--data", choices=["stdlib", "random"], default="stdlib",
                   help="stdlib: Python's sources repeated (real text); random: incompressible bytes")
    p.add_argument("--lengths", default="65536,1048576", help="comma-separated window lengths L")
    p.add_argument("--compressor", default="zstd", choices=["zstd", "zstd1", "lz4", "none"],
                   help="chunk codec of the written store: zstd level 3 (default), zstd level 1, blosc lz4, none")
    p.add_argument("--seconds", type=float, default=3.0, help="time per reader and length")
    p.add_argument("--batch-mb", type=float, default=8.0, help="bytes per micro-batch; B = this // L")
    p.add_argument("--threads", type=int, default=None, help="decode threads (default: all cores)")
    p.add_argument("--no-remote", action="store_true", help="skip the loopback HTTP store")
    p.add_argument("--workdir", default=None, help="where to write the data (default: a temp folder)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _check(args, lengths: list[int]) -> None:
    """Every argument before any data is written: one line naming the first that cannot work."""
    from megastride.engine.config import ConfigError
    from megastride.launch.errors import check_number, check_output

    check_number(args.size_mb, "--size-mb", 0, low_open=True)
    check_number(args.seconds, "--seconds", 0, low_open=True)
    check_number(args.batch_mb, "--batch-mb", 0, low_open=True)
    check_number(args.threads, "--threads", 1)
    size = int(args.size_mb * (1 << 20))
    for n in lengths:
        if n < 1:
            raise ConfigError(f"--lengths must be positive, got {n}")
        if n + 1 > size:
            raise ConfigError(f"--lengths: a window of L + 1 = {n + 1:,} bytes does not fit the --size-mb "
                              f"{args.size_mb:g} of data ({size:,} bytes)")
    if args.out:
        check_output(args.out, "--out", "file")
    if args.workdir:
        check_output(args.workdir, "--workdir", "folder")
        _check_workdir(args.workdir)


def _check_workdir(path: str) -> None:
    """The bench writes (and replaces) bench.raw and bench.zarr in --workdir: a new or empty folder, or a
    previous bench's, never one holding other things (a store, a user's files) it would write into."""
    from megastride.engine.config import ConfigError

    if not os.path.isdir(path):
        return
    other = sorted(set(os.listdir(path)) - set(BENCH_FILES))
    if "zarr.json" in other:
        raise ConfigError(f"--workdir {path} is a zarr store: give a new or empty folder")
    if other:
        raise ConfigError(f"--workdir {path} holds other files than a previous bench's ({other[0]}"
                          f"{f' and {len(other) - 1} more' if len(other) > 1 else ''}): give a new or empty folder")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with user_errors(PROG):
        try:
            lengths = [int(x) for x in args.lengths.split(",") if x]
        except ValueError:
            from megastride.engine.config import ConfigError

            raise ConfigError(f"--lengths must be integers, got {args.lengths!r}") from None
        _check(args, lengths)
        from megastride.data_shards.bench import run_bench

        with tempfile.TemporaryDirectory(prefix="megastride-bench-") as tmp:
            result = run_bench(args.workdir or tmp, size_mb=args.size_mb, lengths=lengths, kind=args.data,
                               compressor=args.compressor, seconds=args.seconds,
                               batch_bytes=int(args.batch_mb * (1 << 20)), threads=args.threads,
                               remote=not args.no_remote, progress=not args.quiet)
    print(f"data {result['data']}, {result['size_bytes'] / 2**20:.0f} MiB, {result['compressor']} ratio "
          f"{result['compression_ratio']}, write {result['write_MB_per_s']} MB/s, {result['threads']} threads")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
