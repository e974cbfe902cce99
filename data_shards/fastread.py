"""A fast read path for the arrays megastride writes, straight from the shards.

zarr 3.1 spends milliseconds of event-loop work per chunk of a sharded array, far more than the
decoding (a 1 MiB window read through zarr ran at ~60 MB/s on 2 cores). The layout is fixed by the
zarr v3 sharding spec, so we read it directly: each shard ends with an index of (offset, nbytes)
little-endian uint64 pairs per inner chunk plus its crc32c; an inner chunk is the compressed bytes
followed by their crc32c. Contiguous inner chunks are fetched with one read (pread locally, a byte
range remotely; remote reads run on a thread pool), and checked against their crc32c.

Decoding: zstd chunks of a whole batch go to python-zstandard's ``multi_decompress_to_buffer`` in
one call, which decodes them on its own C threads with the GIL released once. Decoding chunk by
chunk on a Python thread pool takes and drops the GIL around every chunk; those hand-offs did not
scale with cores (16 threads read only ~1.7x faster than 2 on the H200 host, docs/data.md).
blosc chunks, or zstd without python-zstandard, are still decoded per chunk on the pool. Arrays with any other codec chain are
read through zarr instead (``ChunkReader.maybe`` returns None).
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

MISSING = np.uint64(2**64 - 1)

try:
    import zstandard
except ImportError:  # optional: the per-chunk path decodes without it
    zstandard = None


def _load_crc32c():
    """crc32c(address, nbytes) from google-crc32c's C library, called holding the GIL (no copy).

    ctypes.PyDLL keeps the GIL across the call: a crc of one chunk takes about a microsecond, less
    than handing the GIL to another thread and back. None where the library is not found.
    """
    base = os.path.dirname(google_crc32c.__file__)
    for lib in sorted(glob.glob(os.path.join(os.path.dirname(base), "google_crc32c.libs", "libcrc32c*.so*"))
                      + glob.glob(os.path.join(base, "libcrc32c*.so*"))):
        try:
            fn = ctypes.PyDLL(lib).crc32c_value
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_size_t]
        return fn
    return None


_CRC32C = _load_crc32c()


class ChunkError(Exception):
    """A shard or inner chunk failed a check; the caller names the store."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _decompressor(codecs):
    """numcodecs decoder for the inner bytes->bytes codecs [compressor?, crc32c], or raise."""
    if not codecs or not isinstance(codecs[-1], Crc32cCodec) or len(codecs) > 2:
        raise NotImplementedError
    if len(codecs) == 1:
        return None
    c = codecs[0]
    if isinstance(c, ZstdCodec):
        return numcodecs.Zstd()
    if isinstance(c, BloscCodec):
        return numcodecs.Blosc()
    raise NotImplementedError


class ChunkReader:
    """Reads runs of axis-0 elements of one sharded uint8 array of a store."""

    def __init__(self, fs, root: str, split: str, array, shard_nbytes: dict[str, int], threads: int):
        (sharding,) = array.metadata.codecs
        self.fs, self.split = fs, split
        self.path = f"{root}/{split}"
        self.local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        self.chunk = sharding.chunk_shape[0]  # elements per inner chunk
        self.per_shard = array.metadata.chunk_grid.chunk_shape[0] // self.chunk
        self.elem = int(np.prod(array.shape[1:], dtype=np.int64))  # bytes per element
        self.chunk_bytes = self.chunk * int(np.prod(sharding.chunk_shape[1:], dtype=np.int64))
        self.trailing = "/0" * (array.ndim - 1)
        self.shard_nbytes = shard_nbytes
        self.decoder = _decompressor(list(sharding.codecs[1:]))
        self.threads = threads
        self.batched = zstandard is not None and isinstance(self.decoder, numcodecs.Zstd)
        self.run_chunks = 4 if self.local else 16  # inner chunks per task (one read each)
        self._index: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="megastride-decode")

    @classmethod
    def maybe(cls, fs, root, split, array, shard_nbytes, threads) -> "ChunkReader | None":
        """A reader if the array has exactly the layout megastride writes, else None."""
        try:
            (sharding,) = array.metadata.codecs
            ok = (isinstance(sharding, ShardingCodec) and str(array.dtype) == "uint8"
                  and sharding.index_location == ShardingCodecIndexLocation.end
                  and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
                  and isinstance(sharding.codecs[0], BytesCodec)
                  and tuple(sharding.chunk_shape[1:]) == tuple(array.shape[1:]))
            if not ok:
                return None
            _decompressor(list(sharding.codecs[1:]))
        except (NotImplementedError, ValueError, AttributeError, TypeError):
            return None
        return cls(fs, root, split, array, shard_nbytes, threads)

    # --- raw bytes -----------------------------------------------------------------------------
    def key(self, shard: int) -> str:
        return f"{self.split}/c/{shard}{self.trailing}"

    def _fd(self, shard: int) -> int:
        """An open descriptor of a local shard file (opened once, shared by the threads)."""
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    try:
                        fd = self._fds[shard] = os.open(f"{self.path}/c/{shard}{self.trailing}", os.O_RDONLY)
                    except FileNotFoundError:
                        raise ChunkError(self.key(shard), "missing") from None
        return fd

    def _fetch(self, shard: int, start: int, stop: int) -> bytes:
        key = self.key(shard)
        if self.local:
            data = os.pread(self._fd(shard), stop - start, start)
        else:
            try:
                data = self.fs.cat_file(f"{self.path}/c/{shard}{self.trailing}", start=start, end=stop)
            except FileNotFoundError:
                raise ChunkError(key, "missing") from None
        if len(data) != stop - start:
            raise ChunkError(key, f"truncated (read {len(data)} of {stop - start} bytes at offset {start})")
        return data

    def index(self, shard: int) -> np.ndarray:
        """(chunks per shard, 2) uint64 offsets and sizes of a shard's inner chunks (cached)."""
        idx = self._index.get(shard)
        if idx is None:
            key = self.key(shard)
            size = self.shard_nbytes.get(key)
            if size is None:
                raise ChunkError(key, "not recorded in the store attributes")
            n = 16 * self.per_shard + 4
            raw = self._fetch(shard, size - n, size)
            if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise ChunkError(key, "shard index checksum mismatch")
            idx = self._index[shard] = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.per_shard, 2)
        return idx

    # --- decoding ------------------------------------------------------------------------------
    def _decode_into(self, shard: int, inner: int, raw: memoryview, dest: np.ndarray, lo: int, hi: int) -> None:
        """Check and decode inner chunk ``inner`` of ``shard``; copy its bytes [lo, hi) into dest."""
        if google_crc32c.value(bytes(raw[:-4])) != int.from_bytes(raw[-4:], "little"):  # copies: it takes no views
            raise ChunkError(self.key(shard), f"inner chunk {inner} checksum mismatch")
        body = raw[:-4]
        if self.decoder is None:
            plain = np.frombuffer(body, dtype=np.uint8)
        elif lo == 0 and hi == self.chunk_bytes and dest.flags.c_contiguous:
            try:
                self.decoder.decode(body, out=dest)
            except Exception as e:  # noqa: BLE001
                raise ChunkError(self.key(shard), f"inner chunk {inner} does not decode ({e})") from None
            return
        else:
            try:
                plain = np.frombuffer(self.decoder.decode(body), dtype=np.uint8)
            except Exception as e:  # noqa: BLE001
                raise ChunkError(self.key(shard), f"inner chunk {inner} does not decode ({e})") from None
        if len(plain) != self.chunk_bytes:
            raise ChunkError(self.key(shard), f"inner chunk {inner} decodes to {len(plain)} bytes, expected {self.chunk_bytes}")
        dest[:] = plain[lo:hi]

    def _run(self, dest: np.ndarray, start: int, stop: int) -> None:
        """Elements [start, stop) (within one shard and one task) into the flat byte buffer dest."""
        c0, c1 = start // self.chunk, (stop - 1) // self.chunk
        shard = c0 // self.per_shard
        idx = self.index(shard)
        rows = idx[c0 - shard * self.per_shard: c1 - shard * self.per_shard + 1]
        if (rows == MISSING).any():
            raise ChunkError(self.key(shard), "an inner chunk is missing from the shard index")
        offsets, sizes = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        lo_byte, hi_byte = int(offsets.min()), int((offsets + sizes).max())
        buf = memoryview(self._fetch(shard, lo_byte, hi_byte))
        pos = 0
        for k, chunk in enumerate(range(c0, c1 + 1)):
            a, b = max(start, chunk * self.chunk), min(stop, (chunk + 1) * self.chunk)
            lo, hi = (a - chunk * self.chunk) * self.elem, (b - chunk * self.chunk) * self.elem
            raw = buf[offsets[k] - lo_byte: offsets[k] - lo_byte + sizes[k]]
            self._decode_into(shard, chunk % self.per_shard, raw, dest[pos:pos + hi - lo], lo, hi)
            pos += hi - lo

    def tasks(self, start: int, stop: int, dest: np.ndarray):
        """Split [start, stop) into (dest slice, start, stop) runs within a shard, <= run_chunks chunks."""
        step = self.chunk * self.run_chunks
        a = start
        while a < stop:
            shard_end = (a // (self.chunk * self.per_shard) + 1) * self.chunk * self.per_shard
            b = min(stop, shard_end, (a // step + 1) * step)
            yield dest[(a - start) * self.elem:(b - start) * self.elem], a, b
            a = b

    # --- batched zstd decoding ----------------------------------------------------------------
    def _fetch_into(self, shard: int, start: int, stop: int, dest: memoryview) -> None:
        """Stored bytes [start, stop) of a shard into ``dest`` (pread straight into it locally)."""
        if not self.local:
            dest[:] = self._fetch(shard, start, stop)
            return
        got = os.preadv(self._fd(shard), [dest], start)
        if got != stop - start:
            raise ChunkError(self.key(shard), f"truncated (read {got} of {stop - start} bytes at offset {start})")

    def _read_batched(self, ranges: list[tuple[int, int]], out: np.ndarray) -> None:
        """All chunks of all ranges at once: index rows gathered with numpy, one read per run of
        chunks into one buffer, crc32c checks, one multi-threaded zstd call, then the copies out."""
        span = self.chunk * self.per_shard
        runs = []  # (row of out, first element, end element, byte position in the row)
        for i, (a, b) in enumerate(ranges):
            pos = 0
            while a < b:
                e = min(b, (a // span + 1) * span)
                runs.append((i, a, e, pos))
                pos += (e - a) * self.elem
                a = e
        row, rs, re_, rpos = (np.array(x, dtype=np.int64) for x in zip(*runs))
        c0, counts = rs // self.chunk, (re_ - 1) // self.chunk - rs // self.chunk + 1
        first = np.cumsum(counts) - counts  # index of each run's first chunk
        run_of = np.repeat(np.arange(len(runs)), counts)
        chunk = c0[run_of] + np.arange(int(counts.sum())) - first[run_of]
        shard = chunk // self.per_shard
        rows = np.empty((len(chunk), 2), dtype=np.int64)
        for s in np.unique(shard).tolist():
            m = shard == s
            r = self.index(s)[chunk[m] - s * self.per_shard]
            if (r == MISSING).any():
                raise ChunkError(self.key(s), "an inner chunk is missing from the shard index")
            rows[m] = r.astype(np.int64)
        offsets, sizes = rows[:, 0], rows[:, 1]
        if (sizes < 4).any():
            k = int(np.argmax(sizes < 4))
            raise ChunkError(self.key(int(shard[k])), f"inner chunk {int(chunk[k] % self.per_shard)} is too short for its checksum")
        lo_byte = np.minimum.reduceat(offsets, first)
        nbytes = np.maximum.reduceat(offsets + sizes, first) - lo_byte
        base = np.cumsum(nbytes) - nbytes
        buf = np.empty(int(nbytes.sum()), dtype=np.uint8)
        view = memoryview(buf)
        fetches = [(int(shard[first[j]]), int(lo_byte[j]), int(lo_byte[j] + nbytes[j]), view[base[j]:base[j] + nbytes[j]])
                   for j in range(len(runs))]
        if self.local or len(fetches) == 1:
            for f in fetches:
                self._fetch_into(*f)
        else:  # remote: overlap the requests' latency
            list(self.pool.map(lambda f: self._fetch_into(*f), fetches))

        seg = base[run_of] + offsets - lo_byte[run_of]  # where each chunk's stored bytes start in buf
        body = sizes - 4
        end = seg + body
        stored = (buf[end].astype(np.uint32) | buf[end + 1].astype(np.uint32) << 8
                  | buf[end + 2].astype(np.uint32) << 16 | buf[end + 3].astype(np.uint32) << 24).tolist()
        addr = buf.ctypes.data
        for k, (p, n) in enumerate(zip(seg.tolist(), body.tolist())):
            crc = _CRC32C(addr + p, n) if _CRC32C else google_crc32c.value(buf[p:p + n].tobytes())
            if crc != stored[k]:
                raise ChunkError(self.key(int(shard[k])), f"inner chunk {int(chunk[k] % self.per_shard)} checksum mismatch")

        frames = zstandard.BufferWithSegments(buf, np.stack([seg, body], axis=1).astype("<u8").tobytes())
        try:
            decoded = zstandard.ZstdDecompressor().multi_decompress_to_buffer(
                frames, decompressed_sizes=np.full(len(chunk), self.chunk_bytes, dtype="<u8").tobytes(),
                threads=max(1, min(self.threads, len(chunk))))
        except (zstandard.ZstdError, ValueError) as e:  # a bad frame (header, data or size)
            item = re.search(r"item (\d+)", str(e))
            k = int(item.group(1)) if item else 0
            raise ChunkError(self.key(int(shard[k])), f"inner chunk {int(chunk[k] % self.per_shard)} does not decode ({e})") from None

        # elements [a, b) of each chunk land at byte dpos of their row
        a = np.maximum(rs[run_of], chunk * self.chunk)
        b = np.minimum(re_[run_of], (chunk + 1) * self.chunk)
        lo, hi = (a - chunk * self.chunk) * self.elem, (b - chunk * self.chunk) * self.elem
        dpos = rpos[run_of] + (a - rs[run_of]) * self.elem
        flat = [out[i].reshape(-1) for i in range(len(ranges))]
        for k, (r, d, x, y) in enumerate(zip(row[run_of].tolist(), dpos.tolist(), lo.tolist(), hi.tolist())):
            flat[r][d:d + y - x] = np.frombuffer(decoded[k], dtype=np.uint8)[x:y]

    def read_many(self, ranges: list[tuple[int, int]], out: np.ndarray) -> None:
        """Fill ``out[i]`` (flat bytes) with elements ranges[i] = (start, stop), decoding in parallel."""
        if self.batched and ranges:
            self._read_batched(ranges, out)
            return
        jobs = [t for i, (a, b) in enumerate(ranges) for t in self.tasks(a, b, out[i].reshape(-1))]
        if len(jobs) == 1:
            self._run(*jobs[0])
            return
        for f in [self.pool.submit(self._run, *job) for job in jobs]:
            f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
