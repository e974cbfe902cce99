"""Images as an (N, H, W, C) uint8 array: from IDX files (MNIST-style, gzipped or not), ``.npy``
arrays and directories of PNG/JPEG files. All sources must share one (H, W, C)."""

from __future__ import annotations

import gzip
import os
import struct
from typing import Iterator, Sequence

import numpy as np

from .writing import Part, PrepareError, resolve_sources, write_store

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BLOCK_SAMPLES = 4096


def _open(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx_header(path: str) -> tuple[int, tuple[int, int, int], int]:
    """(N, (H, W, C), header bytes) of an IDX file of unsigned bytes with 3 or 4 dimensions."""
    with _open(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0:
            raise PrepareError(f"{path}: not an IDX file (bad magic {head.hex() or 'empty'})")
        if head[2] != 0x08:
            raise PrepareError(f"{path}: IDX element type 0x{head[2]:02x} is not unsigned byte (0x08)")
        ndim = head[3]
        if ndim not in (3, 4):
            raise PrepareError(f"{path}: IDX file has {ndim} dimensions, images need 3 (N,H,W) or 4 (N,H,W,C)")
        raw = f.read(4 * ndim)
        if len(raw) < 4 * ndim:
            raise PrepareError(f"{path}: IDX header truncated")
        dims = struct.unpack(f">{ndim}I", raw)
    shape = (dims[1], dims[2], dims[3] if ndim == 4 else 1)
    return dims[0], shape, 4 + 4 * ndim


def read_image_array(path: str, mode: str | None = None) -> np.ndarray:
    """An image file as (H, W, C) uint8: grey (C = 1) or RGB (C = 3), or the given PIL mode; PrepareError if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode or ("L" if im.mode in ("1", "L", "I;16", "I", "F") else "RGB"))
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise PrepareError(f"{path}: not a readable image ({' '.join(str(e).split())})") from None
    return arr[..., None] if arr.ndim == 2 else arr  # (H, W, C)


def _probe(path: str, split, display) -> tuple[Part, tuple[int, int, int]]:
    low = path.lower()
    if low.endswith(IMAGE_SUFFIXES):
        shape = read_image_array(path).shape
        return Part(path, 1, split, display, {"kind": "image"}), shape
    if low.endswith(".npy"):
        arr = np.load(path, mmap_mode="r")
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
            raise PrepareError(f"{path}: .npy images must be uint8 (N,H,W) or (N,H,W,C), got {arr.dtype} {arr.shape}")
        shape = tuple(arr.shape[1:]) + ((1,) if arr.ndim == 3 else ())
        return Part(path, arr.shape[0], split, display, {"kind": "npy"}), shape
    n, shape, header = read_idx_header(path)
    return Part(path, n, split, display, {"kind": "idx", "header": header}), shape


def _stream(part: Part, shape: tuple[int, int, int]) -> Iterator[np.ndarray]:
    kind = part.extra["kind"]
    if kind == "image":
        yield read_image_array(part.path, "L" if shape[2] == 1 else "RGB")[None]
    elif kind == "npy":
        arr = np.load(part.path, mmap_mode="r")
        for i in range(0, len(arr), BLOCK_SAMPLES):
            yield np.asarray(arr[i:i + BLOCK_SAMPLES]).reshape(-1, *shape)
    else:
        per = int(np.prod(shape))
        with _open(part.path) as f:
            f.read(part.extra["header"])
            left = part.count
            while left:
                take = min(left, BLOCK_SAMPLES)
                raw = f.read(take * per)
                if len(raw) < take * per:
                    raise PrepareError(f"{part.path}: IDX data truncated ({part.count - left + len(raw) // per} of {part.count} images)")
                yield np.frombuffer(raw, dtype=np.uint8).reshape(take, *shape)
                left -= take


def write_image_store(sources: str | Sequence[str], out: str | os.PathLike, valid_fraction: float = 0.0,
                      test_fraction: float = 0.0, progress: bool = True, *, force: bool = False,
                      compressor: str = "zstd") -> str:
    """Write images as an 'image' store. ``train=PATH`` / ``test=PATH`` route a source to a split
    (e.g. Fashion-MNIST's train and t10k files); untagged sources form the train pool, whose last
    ``valid_fraction`` / ``test_fraction`` become the valid / test splits."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [os.fspath(sources)]
    parts, shape = [], None
    for split, path, display in resolve_sources(sources, IMAGE_SUFFIXES):
        part, s = _probe(path, split, display)
        if shape is None:
            shape = s
        elif s != shape:
            raise PrepareError(f"{path}: image shape {s} differs from the first source's {shape}")
        parts.append(part)
    return write_store(os.fspath(out), "image", parts, lambda p: _stream(p, shape),
                       valid_fraction=valid_fraction, test_fraction=test_fraction, sample_shape=shape,
                       compressor=compressor, force=force, progress=progress, unit="img")
