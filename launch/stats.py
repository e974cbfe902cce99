"""`megastride stats STORE`: bits-per-byte baselines of a store's windows (what a loss means).

    megastride stats data/music12k.zarr --seq-len 1048576 --windows 12

Prints, over random windows of --seq-len bytes, the entropy of each window's byte histogram (a
model that learned only the histogram scores this) and of a byte given the previous one.
"""

from __future__ import annotations

import argparse
import json

from megastride.launch.errors import ArgumentParser, user_errors

PROG = "megastride stats"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("store", help="path or URL of a store written by `megastride prepare`")
    p.add_argument("--split", default="train", help="split of the store to read (default train)")
    p.add_argument("--seq-len", type=int, default=65536, help="window length (the model's context)")
    p.add_argument("--windows", type=int, default=16, help="random windows to average over")
    p.add_argument("--seed", type=int, default=0, help="seed of the windows' random starts (default 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    with user_errors(PROG):
        from megastride.data_shards import StoreError, open_store
        from megastride.data_shards.stats import RELIABLE_LEN, store_entropies
        from megastride.launch.errors import check_number

        check_number(args.seq_len, "--seq-len", 1)
        check_number(args.seed, "--seed", 0)  # numpy's generator takes no negative seed
        store = open_store(args.store)
        if args.split not in store.split_sizes:
            raise StoreError(f"{args.store}: no split {args.split!r} (has {sorted(store.split_sizes)})")
        try:
            result = store_entropies(store, args.split, args.seq_len, args.windows, args.seed)
        except ValueError as err:
            raise StoreError(f"{args.store}: {err}") from None
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.store} split {args.split!r}, {args.windows} random windows of {args.seq_len:,} bytes (seed {args.seed}):")
    for name, label in (("unigram", "byte histogram of the window"), ("previous_byte", "byte given the previous byte")):
        r = result[name]
        print(f"  {label:<30} {r['mean']:.3f} bits per byte (windows {r['min']:.3f} - {r['max']:.3f})")
    if args.seq_len < RELIABLE_LEN:
        print(f"note: windows under {RELIABLE_LEN:,} bytes hold too few byte pairs for the previous-byte entropy "
              f"(256 x 256 counts): it is biased low here")
    return 0
