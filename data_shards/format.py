"""The megastride store format (version 1) and opening a store with its integrity checks.

A store is a zarr v3 group. Its attributes hold one key, ``megastride`` (see ``docs/data.md``):
format version, modality, per-split sizes and segments (which source lies where: the track
boundaries of audio), sample shape or sample rate, the source files with their sha256, the byte size
of every stored shard, and ``complete``, written last. Each split is one sharded uint8 array: 1-D for
bytes and audio, (N, H, W, C) for images. Inner chunks carry a crc32c, so corruption is caught at
decode time; shard sizes are compared at open time, because zarr reads a missing shard as zeros.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr

from .fastread import ChunkError, ChunkReader

FORMAT_VERSION = 1
ATTRS_KEY = "megastride"
MODALITIES = ("bytes", "image", "audio")
SPLITS = ("train", "valid", "test")
DECODE_THREADS = os.cpu_count() or 1  # threads decoding chunks, per process


class StoreError(Exception):
    """A store that is missing, incomplete, corrupt, of another format version or modality.

    ``str(e)`` is one line naming the store (and the chunk where there is one) and the problem.
    """


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class SplitInfo:
    """One split as recorded in the attributes: its size in elements and its stored shards."""

    name: str
    size: int  # bytes for 1-D data, samples for images
    shard_elems: int  # elements (bytes or samples) per shard, along axis 0
    shard_nbytes: dict[str, int]  # chunk key -> stored size in bytes
    segments: list[list[int]]  # [source index, start, length] in this split's elements


def _split_infos(url: str, splits) -> dict[str, SplitInfo]:
    """The splits' metadata, or a StoreError naming the first field that is missing or of the wrong type."""
    if not isinstance(splits, dict):
        raise StoreError(f"{url}: corrupt store metadata: splits is a {type(splits).__name__}, not a mapping")
    out = {}
    for name, s in splits.items():
        field_ = "size"
        try:
            size = int(s["size"])
            field_ = "shard_elems"
            shard_elems = int(s["shard_elems"])
            field_ = "shard_nbytes"
            shard_nbytes = {str(k): int(v) for k, v in dict(s["shard_nbytes"]).items()}
            field_ = "segments"
            segments = [[int(v) for v in x] for x in s.get("segments", [])]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StoreError(f"{url}: corrupt store metadata: splits.{name}.{field_}") from None
        if size < 0 or shard_elems < 1:
            raise StoreError(f"{url}: corrupt store metadata: splits.{name} has size {size} and shard_elems {shard_elems}")
        out[name] = SplitInfo(name, size, shard_elems, shard_nbytes, segments)
    return out


class Store:
    """An opened, validated store. Use :func:`open_store`."""

    def __init__(self, url: str, group: zarr.Group, meta: dict[str, Any], fs, root: str):
        self.url = url
        self.group = group
        self.meta = meta
        self._fs, self._root = fs, root
        self.splits = _split_infos(url, meta["splits"])
        self._arrays: dict[str, zarr.Array] = {}
        self._readers: dict = {}

    # --- the attributes the engine reads -------------------------------------------------------
    @property
    def modality(self) -> str:
        return self.meta["modality"]

    @property
    def split_sizes(self) -> dict[str, int]:
        return {name: s.size for name, s in self.splits.items()}

    @property
    def sample_shape(self) -> tuple[int, int, int] | None:
        shape = self.meta.get("sample_shape")
        return tuple(shape) if shape else None

    @property
    def sample_rate(self) -> int | None:
        return self.meta.get("sample_rate")

    @property
    def sources(self) -> list[dict[str, Any]]:
        return self.meta.get("sources", [])

    def __repr__(self) -> str:
        return f"Store({self.url!r}, modality={self.modality!r}, splits={self.split_sizes})"

    # --- reading -------------------------------------------------------------------------------
    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise StoreError(f"{self.url}: no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self.split(name)
            meta = f"{self.url.rstrip('/')}/{name}/zarr.json"
            try:
                self._arrays[name] = self.group[name]
            except KeyError:  # zarr's word for a node without metadata
                raise StoreError(f"{self.url}: cannot open array {name!r}: its metadata {meta} is missing "
                                 "(a damaged or partly copied store: prepare it again)") from None
            except ValueError as e:  # JSON cut off or not zarr's
                raise StoreError(f"{self.url}: cannot open array {name!r}: its metadata {meta} is corrupt "
                                 f"({_one_line(e)})") from None
            except Exception as e:  # noqa: BLE001 - any failure to open is a store problem
                raise StoreError(f"{self.url}: cannot open array {name!r}: {_one_line(e)}") from None
        return self._arrays[name]

    def shard_key(self, split: str, shard: int) -> str:
        """The stored key of shard ``shard`` of ``split`` (zarr v3 default chunk key encoding)."""
        ndim = 4 if self.modality == "image" else 1
        return f"{split}/c/{shard}" + "/0" * (ndim - 1)

    def chunk_reader(self, split: str):
        """The fast shard reader of a split (see fastread.py), or None to read through zarr."""
        if split not in self._readers:
            info = self.split(split)
            self._readers[split] = ChunkReader.maybe(self._fs, self._root, split, self.array(split),
                                                     info.shard_nbytes, DECODE_THREADS)
        return self._readers[split]

    def read_rows(self, split: str, starts, length: int) -> np.ndarray:
        """(len(starts), length * element bytes) uint8: elements [s, s + length) for each start s.

        Elements are bytes (1-D) or whole images; reads and decodes all rows' chunks in parallel.
        """
        starts = [int(s) for s in np.asarray(starts).reshape(-1)]
        info = self.split(split)
        for s in starts:
            if s < 0 or s + length > info.size:
                raise ValueError(f"{self.url}: {split}[{s}:{s + length}] is outside the split of {info.size}")
        fast = self.chunk_reader(split)
        elem = int(np.prod(self.sample_shape)) if self.sample_shape else 1
        out = np.empty((len(starts), length * elem), dtype=np.uint8)
        if fast is not None:
            try:
                fast.read_many([(s, s + length) for s in starts], out)
            except ChunkError as e:
                kind = "missing" if e.problem == "missing" else "truncated" if e.problem.startswith("truncated") else "corrupt"
                raise StoreError(f"{self.url}: {kind} chunk {e.key}: {_one_line(e.problem)}") from None
            return out
        for i, s in enumerate(starts):
            out[i] = self._zarr_read(split, s, s + length).reshape(-1)
        return out

    def read(self, split: str, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) of a split: (n,) bytes or (n, H, W, C) images."""
        out = self.read_rows(split, [start], stop - start)
        return out.reshape((stop - start,) + (self.sample_shape or ()))

    def read_samples(self, split: str, indices) -> np.ndarray:
        """Samples at ``indices`` (any order) of an image split: (len(indices), H, W, C)."""
        return self.read_rows(split, indices, 1).reshape((-1,) + self.sample_shape)

    def _zarr_read(self, split: str, start: int, stop: int) -> np.ndarray:
        try:
            return self.array(split)[start:stop]
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - decode errors name no key; we add it
            self._raise_read_error(split, start, stop, e)

    def _raise_read_error(self, split: str, start: int, stop: int, err: Exception):
        info = self.split(split)
        first, last = start // info.shard_elems, max(start, stop - 1) // info.shard_elems
        keys = [self.shard_key(split, s) for s in range(first, last + 1)]
        where = keys[0] if len(keys) == 1 else f"{keys[0]} .. {keys[-1]}"
        raise StoreError(
            f"{self.url}: corrupt chunk {where} (reading {split}[{start}:{stop}]): "
            f"{type(err).__name__}: {_one_line(err)}"
        ) from None

    # --- integrity -----------------------------------------------------------------------------
    def verify_shards(self) -> None:
        """Every recorded shard exists with its recorded size; else StoreError naming the chunk."""
        expected = {f"{self._root}/{key}": (key, n) for s in self.splits.values()
                    for key, n in s.shard_nbytes.items()}
        sizes = _sizes(self._fs, self._root, list(expected))
        for path, (key, n) in sorted(expected.items()):
            got = sizes.get(path)
            if got is None:
                raise StoreError(f"{self.url}: missing chunk {key} (expected {n} bytes)")
            if got != n:
                kind = "truncated" if got < n else "wrong size"
                raise StoreError(f"{self.url}: {kind} chunk {key}: {got} bytes, expected {n}")


def _sizes(fs, root: str, paths: list[str]) -> dict[str, int]:
    """Sizes of ``paths`` by one listing where the filesystem lists, else one query per path."""
    try:
        listing = fs.find(root, detail=True)
        found = {fs._strip_protocol(p).rstrip("/"): int(info["size"]) for p, info in listing.items()}
        if found:
            return {p: found[_norm(fs, p)] for p in paths if _norm(fs, p) in found}
    except (NotImplementedError, OSError, ValueError):
        pass
    out = {}
    for p in paths:
        try:
            out[p] = int(fs.size(p))
        except (FileNotFoundError, OSError):
            pass
    return out


def _norm(fs, path: str) -> str:
    return fs._strip_protocol(path).rstrip("/")


def read_attrs(url: str, storage_options: dict | None = None) -> tuple[dict, Any, str, zarr.Group]:
    """(megastride attributes, fsspec filesystem, root path, zarr group) of the store at ``url``."""
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as e:  # noqa: BLE001 - unknown protocol, missing optional dependency, ...
        raise StoreError(f"{url}: cannot open: {type(e).__name__}: {_one_line(e)}") from None
    root = root.rstrip("/")
    try:
        raw = fs.cat_file(f"{root}/zarr.json")
    except (FileNotFoundError, OSError) as e:
        try:
            absent = isinstance(e, FileNotFoundError) and not fs.exists(root)
        except Exception:  # noqa: BLE001 - a remote filesystem that cannot answer: report the first error
            absent = False
        if absent:
            raise StoreError(f"{url}: no store here (nothing at this path; `megastride prepare` writes one)") from None
        raise StoreError(f"{url}: no store here (missing zarr.json: {_one_line(e) or 'not found'})") from None
    try:
        meta = json.loads(raw)["attributes"][ATTRS_KEY]
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{url}: not a megastride store (zarr.json has no '{ATTRS_KEY}' attributes)") from None
    group = zarr.open_group(_zarr_url(url, fs), mode="r", storage_options=storage_options)
    return meta, fs, root, group


def _zarr_url(url: str, fs) -> str:
    """Local paths go to zarr as paths (its LocalStore); everything else as the fsspec URL."""
    if "://" in url and not url.startswith("file://"):
        return url
    return os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)


def validate_meta(url: str, meta: dict) -> None:
    """Raise StoreError for a wrong version, an incomplete store or unknown modality."""
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{url}: store format version {version}, this megastride reads version {FORMAT_VERSION}")
    if not meta.get("complete"):
        raise StoreError(f"{url}: incomplete store (an interrupted prepare?); prepare it again with --force")
    if meta.get("modality") not in MODALITIES:
        raise StoreError(f"{url}: unknown modality {meta.get('modality')!r} (expected one of {MODALITIES})")
    if not meta.get("splits"):
        raise StoreError(f"{url}: store has no splits")


def open_store(url: str | os.PathLike, *, modality: str | None = None, verify: bool = True,
               storage_options: dict | None = None) -> Store:
    """Open and check a store: a local path or any fsspec URL (``s3://``, ``http://``, ``memory://``).

    ``modality``: the one the model expects; a different store modality is a StoreError.
    ``verify``: compare every shard's size with the recorded one (one listing; cheap).
    """
    url = os.fspath(url)
    meta, fs, root, group = read_attrs(url, storage_options)
    validate_meta(url, meta)
    if modality is not None and meta["modality"] != modality:
        raise StoreError(f"{url}: store modality is {meta['modality']!r} but the model config expects {modality!r}")
    store = Store(url, group, meta, fs, root)
    if verify:
        store.verify_shards()
    return store
