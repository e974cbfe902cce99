"""What every writer shares: resolving sources, planning splits, streaming into shards, atomic commit.

A writer describes its inputs as :class:`Part` s (a file and how many elements it yields, known before
any data is written so split sizes are fixed up front) and a function that streams a part as uint8
arrays along axis 0. :func:`write_store` does the rest: it writes into ``OUT.partial-PID`` beside
``OUT``, marks the attributes ``complete`` last and renames the folder into place, so an interrupted
prepare never leaves a store that looks complete.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from .format import ATTRS_KEY, FORMAT_VERSION, SPLITS, StoreError, read_attrs

STDLIB_SOURCE = "@stdlib"
CHUNK_BYTES = 1 << 16  # inner chunk of 1-D arrays: a 64K window decodes <= 2 chunks, 1M decodes 17
SHARD_BYTES = 1 << 26  # 64 MiB stored objects: few files, 16 KiB shard index
IMAGES_PER_SHARD = 1024  # one image per inner chunk, so a random sample decodes only itself


class PrepareError(ValueError):
    """A user error in a prepare call (missing source, empty glob, bad header, existing store)."""


@dataclass
class Part:
    """One input file: ``count`` elements (bytes or samples) to go to ``split`` (None: the pool)."""

    path: str
    count: int
    split: str | None = None
    display: str = ""  # the name recorded in the store (stdlib files: relative to the stdlib)
    extra: dict = field(default_factory=dict)


# --- sources ------------------------------------------------------------------------------------

def split_tag(spec: str) -> tuple[str | None, str]:
    """``'valid=path'`` -> ('valid', 'path'); a plain path or ``'train=path'`` -> (None, path).

    Untagged and train-tagged sources form one pool whose tail becomes valid/test by fraction.
    """
    head, sep, tail = spec.partition("=")
    if sep and head in SPLITS:
        return (None if head == "train" else head), tail
    return None, spec


def resolve_sources(specs: Iterable[str], suffixes: tuple[str, ...] | None = None) -> list[tuple[str | None, str, str]]:
    """Expand files, directories (recursively) and globs into (split, path, display) in a fixed order.

    Directories and globs are sorted, so the same inputs always give the same store; ``suffixes``
    filters files found inside directories (explicitly named files are always taken). A walk leaves out
    hidden folders, ``__pycache__`` and zarr stores (a folder with a zarr.json, such as an earlier output
    of `megastride prepare`: compressed chunks, not input); a store named as a source is an error.
    """
    out = []
    for spec in specs:
        split, spec = split_tag(os.fspath(spec))
        if spec == STDLIB_SOURCE:
            out += [(split, p, d) for p, d in stdlib_files()]
        elif any(ch in spec for ch in "*?["):
            hits = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not hits:
                raise PrepareError(f"glob {spec!r} matches no files")
            out += [(split, p, p) for p in hits]
        elif os.path.isdir(spec):
            if _is_zarr_store(spec):
                raise PrepareError(f"source {spec!r} is a zarr store (compressed chunks, not input files): name its "
                                   "sources, or train on it as data.path")
            hits = _walk(spec, suffixes)
            if not hits:
                raise PrepareError(f"directory {spec!r} has no input files" + (f" ({', '.join(suffixes)})" if suffixes else ""))
            out += [(split, p, p) for p in hits]
        elif os.path.isfile(spec):
            out.append((split, spec, spec))
        elif os.path.exists(spec):  # reading a FIFO would wait for a writer, a device would never end
            raise PrepareError(f"source {spec!r} is not a regular file or folder (a FIFO, socket or device)")
        elif os.path.islink(spec):
            raise PrepareError(f"source {spec!r} is a symbolic link to nothing")
        else:
            raise PrepareError(f"source {spec!r} does not exist")
    if not out:
        raise PrepareError("no sources given")
    return out


def _is_zarr_store(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "zarr.json"))


def _walk(root: str, suffixes: tuple[str, ...] | None) -> list[str]:
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"
                       and not _is_zarr_store(os.path.join(dirpath, d))]
        for name in filenames:
            path = os.path.join(dirpath, name)
            # regular files only: a FIFO in the folder would hang the read
            if not name.startswith(".") and (suffixes is None or name.lower().endswith(suffixes)) \
                    and os.path.isfile(path):
                hits.append(path)
    return sorted(hits)


def stdlib_files() -> list[tuple[str, str]]:
    """The running Python's standard library ``*.py`` files and any Python docs found (text).

    Returns (path, name relative to its root) sorted by name; site-packages are left out.
    """
    lib = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(lib):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
    out = [(p, "stdlib/" + os.path.relpath(p, lib)) for p in files]
    for doc in _python_doc_dirs():
        out += [(p, "doc/" + os.path.relpath(p, doc)) for p in _walk(doc, (".rst", ".txt"))]
    return sorted(out, key=lambda t: t[1])


def _python_doc_dirs() -> list[str]:
    """Text docs of this Python where a distribution installed them (e.g. Debian python3.X-doc)."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.join(sys.base_prefix, "share", "doc", f"python{ver}"),
                  f"/usr/share/doc/python{ver}/html/_sources"]
    seen, out = set(), []
    for c in candidates:
        real = os.path.realpath(c)
        if os.path.isdir(real) and real not in seen:
            seen.add(real)
            out.append(real)
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- split planning -----------------------------------------------------------------------------

def plan_splits(parts: list[Part], valid_fraction: float, test_fraction: float) -> dict[str, int]:
    """Elements per split. Tagged parts go to their split; the untagged pool is cut contiguously,
    train first and then the last ``valid_fraction`` / ``test_fraction`` of it (enwik8's convention),
    except for a split that has tagged sources of its own."""
    for name, f in (("valid", valid_fraction), ("test", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise PrepareError(f"--{name}-fraction must be in [0, 1), got {f}")
    sizes = {s: sum(p.count for p in parts if p.split == s) for s in SPLITS}
    pool = sum(p.count for p in parts if p.split is None)
    carve = {}
    for name, f in (("valid", valid_fraction), ("test", test_fraction)):
        carve[name] = 0 if sizes[name] or f == 0 or pool == 0 else max(1, round(pool * f))
    sizes["train"] += pool - carve["valid"] - carve["test"]
    sizes["valid"] += carve["valid"]
    sizes["test"] += carve["test"]
    if pool and pool - carve["valid"] - carve["test"] <= 0:
        raise PrepareError(f"valid/test fractions leave no training data ({pool} elements in all)")
    if sizes["train"] <= 0:
        routed = sorted({p.split for p in parts if p.split and p.count})
        if routed:  # every source tagged valid= or test=: not that they are empty
            raise PrepareError(f"no training data: the train split would be empty, every source is tagged "
                               f"{' or '.join(f'{s}=' for s in routed)} (leave some untagged, or tag them train=)")
        raise PrepareError("no training data: the sources are empty")
    return {s: n for s, n in sizes.items() if n > 0}


def pool_order(sizes: dict[str, int], parts: list[Part]) -> list[tuple[str, int]]:
    """The untagged pool's run of (split, elements): train, then valid, then test."""
    tagged = {s: sum(p.count for p in parts if p.split == s) for s in SPLITS}
    return [(s, sizes.get(s, 0) - tagged[s]) for s in SPLITS if sizes.get(s, 0) - tagged[s] > 0]


# --- streaming into shards ----------------------------------------------------------------------

class _SplitSink:
    """Buffers one split's elements and writes whole shards (zarr rewrites partial shards)."""

    def __init__(self, array: zarr.Array, shard_elems: int):
        self.array, self.shard = array, shard_elems
        self.buf = np.empty((shard_elems,) + array.shape[1:], dtype=np.uint8)
        self.filled = self.written = 0
        self.segments: list[list[int]] = []

    @property
    def position(self) -> int:
        return self.written + self.filled

    def push(self, x: np.ndarray, source: int) -> None:
        if self.segments and self.segments[-1][0] == source and sum(self.segments[-1][1:]) == self.position:
            self.segments[-1][2] += len(x)
        else:
            self.segments.append([source, self.position, len(x)])
        while len(x):
            take = min(len(x), self.shard - self.filled)
            self.buf[self.filled:self.filled + take] = x[:take]
            self.filled, x = self.filled + take, x[take:]
            if self.filled == self.shard:
                self._flush()

    def _flush(self) -> None:
        if self.filled:
            self.array[self.written:self.written + self.filled] = self.buf[:self.filled]
            self.written += self.filled
            self.filled = 0

    def close(self) -> None:
        self._flush()
        assert self.written == self.array.shape[0], (self.written, self.array.shape)


def compressor_codecs(name: str) -> list:
    """The bytes-to-bytes codecs of an inner chunk: a compressor, then a crc32c checksum."""
    table = {
        "zstd": [ZstdCodec(level=3)],
        "zstd1": [ZstdCodec(level=1)],
        "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
        "none": [],
    }
    if name not in table:
        raise PrepareError(f"unknown compressor {name!r} (choose from {', '.join(table)})")
    return table[name] + [Crc32cCodec()]


def _create_split(group: zarr.Group, name: str, n: int, sample_shape, compressor: str) -> tuple[zarr.Array, int]:
    if sample_shape is None:
        chunks, shards = (CHUNK_BYTES,), (SHARD_BYTES,)
    else:
        chunks, shards = (1, *sample_shape), (IMAGES_PER_SHARD, *sample_shape)
    arr = group.create_array(name, shape=(n, *(sample_shape or ())), dtype="uint8", chunks=chunks,
                             shards=shards, compressors=compressor_codecs(compressor), fill_value=0,
                             config={"write_empty_chunks": True})  # a missing chunk is then an error
    return arr, shards[0]


def _shard_nbytes(path: str, split: str) -> dict[str, int]:
    out = {}
    base = os.path.join(path, split, "c")
    for dirpath, _, filenames in os.walk(base):
        for f in filenames:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, path).replace(os.sep, "/")] = os.path.getsize(full)
    return dict(sorted(out.items(), key=lambda kv: [int(x) if x.isdigit() else x for x in kv[0].split("/")]))


# --- the store as a whole -----------------------------------------------------------------------

def file_in_the_way(path) -> str | None:
    """The nearest existing path above ``path``, if it is a file rather than a folder (so nothing can be
    made at ``path``), else None. Shared by every command that writes a path a user names."""
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.lexists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    return None if os.path.isdir(parent) else parent


def check_out(out: str, force: bool) -> None:
    """Refuse to overwrite an existing store unless ``force``, and anything that is not a store (a file, a
    folder of other things) even then: ``--force`` replaces stores, never a user's files. A parent path
    that is a file is named here too, before any work."""
    if not out:
        raise PrepareError("the output path is empty: name the store's folder (--out)")
    blocker = file_in_the_way(out)
    if blocker:
        raise PrepareError(f"{out}: {blocker} is a file, not a folder")
    if not os.path.lexists(out):
        return
    try:
        complete = bool(read_attrs(out)[0].get("complete"))
        store = True
    except StoreError:
        complete = False
        # a zarr store we cannot read (an interrupted or damaged prepare), or an empty folder, is replaceable
        store = os.path.isdir(out) and (os.path.isfile(os.path.join(out, "zarr.json")) or not os.listdir(out))
    if not store:
        kind = "a folder of other files" if os.path.isdir(out) else "a file"
        raise PrepareError(f"{out} already exists and is not a store ({kind}): --force replaces stores only; "
                           "pick another --out")
    if not force:
        what = "a complete store" if complete else "something that is not a complete store"
        raise PrepareError(f"{out} already exists ({what}); use --force to replace it")


def write_store(out: str, modality: str, parts: list[Part], stream: Callable[[Part], Iterator[np.ndarray]],
                *, valid_fraction: float, test_fraction: float, sample_shape=None, extra_meta=None,
                compressor: str = "zstd", force: bool = False, progress: bool = True,
                unit: str = "B", hash_in_stream: bool = False) -> str:
    """Write ``parts`` as a store at ``out`` atomically; returns ``out``.

    ``stream(part)`` yields uint8 arrays along axis 0 totalling ``part.count`` elements. With
    ``hash_in_stream`` the sha256 of each source is taken from those arrays (they are the file's
    bytes), otherwise the file is hashed separately.
    """
    check_out(os.fspath(out), force)
    out = os.path.abspath(os.fspath(out))
    sizes = plan_splits(parts, valid_fraction, test_fraction)
    stage = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:  # before any work: where the store goes can be written (not /proc, not a read-only mount)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.makedirs(stage)
    except OSError as err:
        raise PrepareError(f"{out}: cannot write a store there ({err.strerror or err})") from None
    try:
        meta = _write_stage(stage, modality, parts, stream, sizes, sample_shape, extra_meta or {},
                            compressor, progress, unit, hash_in_stream)
        _commit(stage, out, meta)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _write_stage(stage, modality, parts, stream, sizes, sample_shape, extra_meta, compressor, progress,
                 unit, hash_in_stream) -> dict:
    group = zarr.open_group(stage, mode="w")
    meta = {"format_version": FORMAT_VERSION, "modality": modality, "complete": False,
            "sample_shape": list(sample_shape) if sample_shape else None, "sample_rate": None,
            "compressor": compressor, "writer": "megastride.data_shards", **extra_meta}
    group.attrs[ATTRS_KEY] = meta  # not complete yet: a reader refuses this store
    sinks, shard_elems = {}, {}
    for name, n in sizes.items():
        arr, shard_elems[name] = _create_split(group, name, n, sample_shape, compressor)
        sinks[name] = _SplitSink(arr, shard_elems[name])
    pool = [list(t) for t in pool_order(sizes, parts)]
    sources = []
    total = sum(p.count for p in parts)
    with tqdm(total=total, unit=unit, unit_scale=True, disable=not progress, desc=f"prepare {modality}") as bar:
        for i, part in enumerate(parts):
            h = hashlib.sha256() if hash_in_stream else None
            got = 0
            for x in stream(part):
                if h is not None:
                    h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
                _route(x, i, part, sinks, pool)
                got += len(x)
                bar.update(len(x))
            if got != part.count:
                raise PrepareError(f"{part.path}: yielded {got} elements, expected {part.count} (changed while reading?)")
            sources.append({"path": part.display or part.path, "elements": part.count,
                            "bytes": os.path.getsize(part.path),
                            "sha256": h.hexdigest() if h is not None else sha256_file(part.path), **part.extra})
    for sink in sinks.values():
        sink.close()
    meta["sources"] = sources
    meta["splits"] = {name: {"size": sizes[name], "shard_elems": shard_elems[name],
                             "shard_nbytes": _shard_nbytes(stage, name), "segments": sinks[name].segments}
                      for name in sizes}
    return meta


def _route(x: np.ndarray, source: int, part: Part, sinks: dict, pool: list[list]) -> None:
    """Send ``x`` to its split: a tagged part's own, or the pool's current split(s) in order.

    ``pool`` is the untagged run as [split, elements still to come] pairs, consumed front first.
    """
    if part.split is not None:
        sinks[part.split].push(x, source)
        return
    while len(x):
        while pool[0][1] == 0:
            pool.pop(0)
        take = min(len(x), pool[0][1])
        sinks[pool[0][0]].push(x[:take], source)
        pool[0][1] -= take
        x = x[take:]


def _commit(stage: str, out: str, meta: dict) -> None:
    """Mark the staged store complete, then move it into place (replacing an old one last)."""
    meta["complete"] = True
    group = zarr.open_group(stage, mode="r+")
    group.attrs[ATTRS_KEY] = meta
    old = None
    if os.path.lexists(out):
        old = f"{out}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(stage, out)
    if old:
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
