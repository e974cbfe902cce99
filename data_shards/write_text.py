"""Byte streams from text (or any) files: the files' bytes concatenated in a fixed order."""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from .writing import STDLIB_SOURCE, Part, PrepareError, resolve_sources, write_store

READ_BLOCK = 1 << 22


def write_bytes_store(sources: str | Sequence[str], out: str | os.PathLike, valid_fraction: float = 0.01,
                      test_fraction: float = 0.0, progress: bool = True, *, force: bool = False,
                      compressor: str = "zstd") -> str:
    """Write the bytes of ``sources`` (files, directories, globs, ``@stdlib``) as a 'bytes' store.

    Files are concatenated in sorted order (directories recursively); the last ``valid_fraction``
    and ``test_fraction`` of the stream become the valid and test splits. A source written
    ``valid=PATH`` or ``test=PATH`` goes to that split whole. Returns the store path.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [os.fspath(sources)]
    parts = [Part(path, os.path.getsize(path), split, display)
             for split, path, display in resolve_sources(sources)]
    if not sum(p.count for p in parts):
        raise PrepareError("the sources hold no bytes")
    return write_store(os.fspath(out), "bytes", parts, _stream_file, valid_fraction=valid_fraction,
                       test_fraction=test_fraction, compressor=compressor, force=force,
                       progress=progress, hash_in_stream=True)


def _stream_file(part: Part) -> Iterator[np.ndarray]:
    with open(part.path, "rb") as f:
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            yield np.frombuffer(block, dtype=np.uint8)


__all__ = ["STDLIB_SOURCE", "write_bytes_store"]
