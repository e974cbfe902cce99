"""`megastride prepare text|images|audio SOURCES... --out PATH`: write a zarr shard store.

`megastride prepare info PATH` prints what a store holds. User errors print one line,
`megastride prepare: error: ...`, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from megastride.launch.errors import ArgumentParser

PROG = "megastride prepare"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Write a zarr v3 shard store (see docs/data.md).")
    sub = p.add_subparsers(dest="kind", required=True, metavar="{text,images,audio,info}")
    helps = {
        "text": "bytes of files, directories, globs, or @stdlib (Python's own sources and docs)",
        "images": "IDX files (gzipped or not), .npy arrays, directories of PNG/JPEG",
        "audio": "Ogg/FLAC/WAV files or directories, resampled and 8-bit mu-law encoded",
    }
    for kind, help_ in helps.items():
        s = sub.add_parser(kind, help=help_, aliases=["bytes"] if kind == "text" else [])
        s.add_argument("sources", nargs="+", help="paths, directories, globs; prefix SPLIT= (train=, valid=, test=) to route one")
        s.add_argument("--out", required=True, help="the store to write (a local folder, e.g. data/stdlib.zarr)")
        default_valid = 0.0 if kind == "images" else 0.01
        s.add_argument("--valid-fraction", type=float, default=default_valid, help=f"tail of the stream kept for validation (default {default_valid})")
        s.add_argument("--test-fraction", type=float, default=0.0, help="tail kept for test, after valid (default 0)")
        s.add_argument("--compressor", default="zstd", choices=["zstd", "zstd1", "lz4", "none"], help="inner chunk compressor (default zstd level 3)")
        s.add_argument("--force", action="store_true", help="replace an existing store")
        s.add_argument("--if-missing", action="store_true",
                       help="keep an existing complete store at OUT and exit 0 (for scripts)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        if kind == "audio":
            s.add_argument("--sample-rate", type=int, default=12_000, help="output sample rate in Hz (default 12000, as the paper)")
    info = sub.add_parser("info", help="print a store's attributes (sizes, modality, sources count)")
    info.add_argument("store", help="path or fsspec URL")
    return p


def _run(args) -> int:
    from megastride import data_shards as ds

    if args.kind == "info":
        store = ds.open_store(args.store)
        meta = {k: v for k, v in store.meta.items() if k not in ("sources", "splits")}
        meta["split_sizes"] = store.split_sizes
        meta["n_sources"] = len(store.sources)
        print(json.dumps(meta, indent=2))
        return 0
    if args.if_missing and not args.force and _complete(ds, args.out):
        print(f"{args.out} already holds a complete store; kept (--if-missing)")
        return 0
    common = dict(valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
                  progress=not args.quiet, force=args.force, compressor=args.compressor)
    if args.kind in ("text", "bytes"):
        out = ds.write_bytes_store(args.sources, args.out, **common)
    elif args.kind == "images":
        out = ds.write_image_store(args.sources, args.out, **common)
    else:
        out = ds.write_audio_store(args.sources, args.out, sample_rate=args.sample_rate, **common)
    store = ds.open_store(out)
    sizes = ", ".join(f"{k} {v:,}" for k, v in store.split_sizes.items())
    print(f"wrote {out}: {store.modality}, {sizes}" + (f", samples {store.sample_shape}" if store.sample_shape else ""))
    return 0


def _complete(ds, out: str) -> bool:
    """True if OUT opens as a valid store (a half-written or corrupt one is not kept)."""
    try:
        ds.open_store(out)
    except ds.StoreError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from megastride.data_shards import PrepareError, StoreError

    try:
        return _run(args)
    except (PrepareError, StoreError, OSError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no store was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
