"""Reading throughput of stores against ``numpy.memmap`` over the same bytes, in one run.

The data is real text (the standard library's sources, repeated to the asked size) or random
bytes (incompressible; the worst case for decoding); both are flagged in the results. Windows are
drawn by the same shuffled stream the loader uses, so every reader reads the same windows.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import zarr

from . import format as format_mod
from .format import open_store
from .reader import BatchReader, build_loader
from .shuffle import ShuffledStream
from .write_text import write_bytes_store
from .writing import stdlib_files


def make_raw(path: str, size_mb: float, kind: str = "stdlib") -> int:
    """Write ``size_mb`` MiB of data to ``path``: stdlib text repeated, or random bytes."""
    n = int(size_mb * (1 << 20))
    if kind == "random":
        data = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == "stdlib":
        text = b"".join(open(p, "rb").read() for p, _ in stdlib_files())
        data = (text * (n // len(text) + 1))[:n]
    else:
        raise ValueError(f"unknown data kind {kind!r} (stdlib or random)")
    with open(path, "wb") as f:
        f.write(data)
    return n


def _timed(read_batch: Callable[[range], np.ndarray], batch: int, seconds: float) -> dict:
    """Batches for ``seconds``; positions run on past one epoch (the stream reshuffles per epoch)."""
    read_batch(range(0, batch))  # warm-up: opens, first index reads
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done == 0:
        x = read_batch(range((done + 1) * batch, (done + 2) * batch))
        done += 1
    dt = time.perf_counter() - t0
    windows = done * batch
    return {"windows": windows, "seconds": round(dt, 4), "windows_per_s": round(windows / dt, 2),
            "MB_per_s": round(windows * x.shape[1] / dt / 1e6, 1)}


def memmap_reader(raw: str, n: int, seq_len: int, seed: int):
    """Batches of the same windows straight from ``numpy.memmap`` (copied out, as a loader would)."""
    mm = np.memmap(raw, dtype=np.uint8, mode="r", shape=(n,))
    stream = ShuffledStream(n, seed, seq_len)

    def read(positions):
        starts = stream.starts(np.asarray(positions))
        out = np.empty((len(starts), seq_len + 1), dtype=np.uint8)
        for i, s in enumerate(starts.tolist()):
            out[i] = mm[s:s + seq_len + 1]
        return out
    return read


def zarr_api_reader(store, seq_len: int, seed: int):
    """The same windows through zarr's own indexing (the path fastread.py replaces)."""
    arr = store.array("train")
    stream = ShuffledStream(store.split("train").size, seed, seq_len)

    def read(positions):
        starts = stream.starts(np.asarray(positions))
        return np.stack([arr[s:s + seq_len + 1] for s in starts.tolist()])
    return read


def loader_reader(url: str, seq_len: int, batch: int, seed: int):
    """The full loader (prefetch thread, tensors) as the engine uses it."""
    ld = build_loader(url, seq_len=seq_len, micro_batch_size=batch, seed=seed, prefetch=2)
    return lambda positions: next(ld).numpy(), ld


def run_bench(workdir: str, size_mb: float = 256, lengths=(65_536, 1_048_576), kind: str = "stdlib",
              compressor: str = "zstd", seconds: float = 3.0, batch_bytes: int = 8 << 20, threads: int | None = None,
              remote: bool = True, progress: bool = True, log=print) -> dict:
    """Write the data, then time memmap, local store, full loader and loopback HTTP store per length."""
    threads = threads or os.cpu_count() or 1
    zarr.config.set({"threading.max_workers": threads, "async.concurrency": max(64, 4 * threads)})
    format_mod.DECODE_THREADS = threads
    os.makedirs(workdir, exist_ok=True)
    raw, url = os.path.join(workdir, "bench.raw"), os.path.join(workdir, "bench.zarr")
    n = make_raw(raw, size_mb, kind)
    t0 = time.perf_counter()
    write_bytes_store([raw], url, valid_fraction=0.0, progress=progress, force=True, compressor=compressor)
    write_s = time.perf_counter() - t0
    store = open_store(url)
    stored = sum(sum(s.shard_nbytes.values()) for s in store.splits.values())
    result = {"data": kind, "size_bytes": n, "stored_bytes": stored, "compression_ratio": round(n / stored, 3),
              "compressor": compressor, "write_MB_per_s": round(n / write_s / 1e6, 1), "threads": threads,
              "cpu_count": os.cpu_count(), "rows": []}
    server = None
    if remote:
        try:
            import aiohttp  # noqa: F401 - fsspec's HTTP filesystem needs it
            from .remote import serve_directory
            base, server = serve_directory(workdir)
        except ImportError:
            log("note: aiohttp is not installed, skipping the loopback HTTP store")
    try:
        for L in lengths:
            batch = max(1, batch_bytes // L)
            readers = {"numpy.memmap": memmap_reader(raw, n, L, 0),
                       "store local": BatchReader(store, "train", L, 0).read,
                       "zarr API local": zarr_api_reader(store, L, 0)}
            per_chunk = open_store(url)  # the fast path decoding chunk by chunk on threads, for comparison
            if getattr(per_chunk.chunk_reader("train"), "batched", False):
                per_chunk.chunk_reader("train").batched = False
                readers["store local per-chunk"] = BatchReader(per_chunk, "train", L, 0).read
            ld_read, ld = loader_reader(url, L, batch, 0)
            readers["loader local"] = ld_read
            if server is not None:
                readers["store http loopback"] = BatchReader(open_store(f"{base}/bench.zarr"), "train", L, 0).read
            try:
                for name, read in readers.items():
                    row = {"reader": name, "seq_len": L, "batch": batch, **_timed(read, batch, seconds)}
                    result["rows"].append(row)
                    log(f"{name:<20} L={L:>9,} B={batch:<4} {row['windows_per_s']:>10.1f} windows/s "
                        f"{row['MB_per_s']:>9.1f} MB/s")
            finally:  # its prefetch thread ended before the next length, or the error, is reached
                ld.close()
    finally:
        if server is not None:
            server.shutdown()
    return result
