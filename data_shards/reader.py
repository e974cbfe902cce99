"""The streaming reader: shuffled windows (or image samples) per rank, prefetched, resumable.

``build_loader`` returns a :class:`ShardLoader`: an endless iterator of (B, L+1) uint8 tensors whose
``state_dict()`` is the number of stream positions consumed by all ranks together (see
``partition.py``), so a resumed run sees exactly the samples it would have seen, whatever its new
world size. Worker processes start with forkserver/spawn (zarr v3's event-loop thread can deadlock
after fork) and open the store themselves; with no workers a background thread prefetches.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .format import Store, StoreError, open_store
from .partition import batch_positions, eval_indices, worker_steps
from .shuffle import ShuffledStream

STATE_VERSION = 1


def check_seq_len(store: Store, split: str, seq_len: int) -> None:
    """Raise StoreError unless ``seq_len`` fits the split (1-D) or is a whole sample (images)."""
    size = store.split(split).size
    if store.modality == "image":
        h, w, c = store.sample_shape
        if seq_len != h * w * c:
            raise StoreError(f"{store.url}: seq_len {seq_len} must equal an image's H*W*C = {h}*{w}*{c} = {h * w * c}")
    elif seq_len + 1 > size:
        raise StoreError(f"{store.url}: a window of seq_len+1 = {seq_len + 1} bytes does not fit in split "
                         f"{split!r} of {size} bytes")


class BatchReader:
    """Reads the micro-batch at given stream positions from one split of an open store."""

    def __init__(self, store: Store, split: str, seq_len: int, seed: int):
        check_seq_len(store, split, seq_len)
        self.store, self.split, self.seq_len = store, split, seq_len
        self.image = store.modality == "image"
        n = store.split(split).size
        self.stream = ShuffledStream(n, seed, None if self.image else seq_len)

    def read(self, positions: range | np.ndarray) -> np.ndarray:
        """(B, L+1) uint8: windows of L+1 bytes, or a 0 byte followed by each image's bytes."""
        starts = self.stream.starts(np.asarray(positions, dtype=np.int64))
        if self.image:
            out = np.empty((len(starts), self.seq_len + 1), dtype=np.uint8)
            out[:, 0] = 0
            out[:, 1:] = self.store.read_rows(self.split, starts, 1)
            return out
        return self.store.read_rows(self.split, starts, self.seq_len + 1)


class WindowDataset(IterableDataset):
    """One rank's endless micro-batches from stream position ``start`` on; split among workers.

    Holds only plain values, so it pickles to worker processes, which open the store themselves.
    """

    def __init__(self, url: str, split: str, seq_len: int, batch: int, seed: int, rank: int,
                 world_size: int, start: int = 0, storage_options: dict | None = None, read_threads: int = 1):
        super().__init__()
        self.url, self.split, self.seq_len, self.batch, self.seed = url, split, seq_len, batch, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.storage_options = storage_options
        self.read_threads = max(1, read_threads)

    def _reader(self) -> BatchReader:
        return BatchReader(open_store(self.url, verify=False, storage_options=self.storage_options),
                           self.split, self.seq_len, self.seed)

    def _read(self, reader: BatchReader, step: int) -> torch.Tensor:
        return torch.from_numpy(reader.read(batch_positions(self.start, step, self.batch, self.rank, self.world_size)))

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        steps = worker_steps(worker, workers)
        if self.read_threads > 1:
            yield from self._iter_threads(steps)
            return
        reader = self._reader()
        for step in steps:
            yield self._read(reader, step)

    def _iter_threads(self, steps):
        """Micro-batches in step order, ``read_threads`` of them read at once, each thread with its own
        store and stream (neither is shared across threads): one batch's Python bookkeeping overlaps
        another's decoding and reads, which release the GIL."""
        local = threading.local()

        def read(step: int) -> torch.Tensor:
            if not hasattr(local, "reader"):
                local.reader = self._reader()
            return self._read(local.reader, step)

        with ThreadPoolExecutor(self.read_threads, thread_name_prefix="megastride-read") as pool:
            pending = collections.deque(pool.submit(read, next(steps)) for _ in range(self.read_threads))
            try:
                while True:
                    done = pending.popleft()
                    pending.append(pool.submit(read, next(steps)))
                    yield done.result()
            finally:  # closed early (the loader stopped, or a read failed): drop what is queued
                for f in pending:
                    f.cancel()


def _quiet_worker(_worker_id: int) -> None:
    """A data worker process leaves SIGINT and SIGTERM to the training process: Ctrl-C in a terminal (and a
    scheduler's SIGTERM to the job) reaches every process of the group, and a worker killed by it fails the
    batch the trainer is about to take, where the trainer stops at the step's end and saves. The worker
    ends with its parent (torch's watchdog) either way."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _mp_context():
    """forkserver where the platform has it, else spawn: never fork (zarr v3 + threads)."""
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


class _ThreadPrefetcher:
    """Runs an iterator in a daemon thread, ``depth`` items ahead."""

    JOIN_S = 60.0  # close() waits this long for the batch in flight (a hung remote read is left behind)

    def __init__(self, it, depth: int):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True, name="megastride-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        """Queue ``item`` unless stopped first; False once stopped (no consumer is left to take it)."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it):
        try:
            for x in it:
                if not self._put((x, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((None, e))
        finally:  # the iterator's own read threads end here, not at interpreter exit
            if hasattr(it, "close"):
                it.close()

    def __next__(self):
        x, err = self._q.get()
        if err is not None:
            raise err
        return x

    def close(self):
        """Stop, and wait for the thread to end. A daemon thread still holding a batch at interpreter exit
        frees its tensor there (torch.from_numpy's deleter takes the GIL), which aborts the process:
        "terminate called without an active exception"."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.JOIN_S)


class ShardLoader:
    """Endless, resumable micro-batches for one data-parallel rank. Build with :func:`build_loader`."""

    def __init__(self, store: Store, split: str, seq_len: int, micro_batch_size: int, seed: int,
                 rank: int, world_size: int, num_workers: int, prefetch: int,
                 storage_options: dict | None = None, pin_memory: bool = False, read_threads: int = 2):
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        check_seq_len(store, split, seq_len)
        self.url, self.split, self.seq_len, self.batch = store.url, split, seq_len, micro_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        if read_threads < 1:
            raise ValueError(f"read_threads must be >= 1, got {read_threads}")
        self.num_workers, self.prefetch, self.pin_memory = num_workers, prefetch, pin_memory
        self.read_threads = read_threads
        self.storage_options = storage_options
        self._stream = ShuffledStream(store.split(split).size, seed, None if store.modality == "image" else seq_len)
        self._start, self._steps, self._it = 0, 0, None
        self.wait_seconds = 0.0  # time spent blocked in __next__: the data wait the GPU sees

    # --- position ------------------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Stream positions consumed by all ranks together so far."""
        return self._start + self._steps * self.world_size * self.batch

    @property
    def epoch(self) -> int:
        return self._stream.epoch_of(self.position)

    @property
    def units_per_epoch(self) -> int:
        return self._stream.units

    def state_dict(self) -> dict:
        """A small JSON-able dict: where the next micro-batch starts, and what it must match."""
        return {"version": STATE_VERSION, "position": self.position, "seed": self.seed, "split": self.split,
                "seq_len": self.seq_len, "units_per_epoch": self.units_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``'s position (any world size or micro-batch size)."""
        for key in ("seed", "split", "seq_len", "units_per_epoch"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this loader has {getattr(self, key)!r}")
        self.close()
        self._start, self._steps = int(state["position"]), 0

    # --- iteration -----------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = self._make_iter()
        t0 = time.perf_counter()
        x = next(self._it)
        self.wait_seconds += time.perf_counter() - t0
        self._steps += 1
        return x

    def _make_iter(self):
        ds = WindowDataset(self.url, self.split, self.seq_len, self.batch, self.seed, self.rank,
                           self.world_size, self.position, self.storage_options,
                           read_threads=self.read_threads if self.num_workers == 0 else 1)
        self._start, self._steps = self.position, 0
        if self.num_workers == 0:
            return _ThreadPrefetcher(iter(ds), self.prefetch)
        dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers, prefetch_factor=max(1, self.prefetch),
                        multiprocessing_context=_mp_context(), pin_memory=self.pin_memory, persistent_workers=False,
                        worker_init_fn=_quiet_worker)
        return iter(dl)

    def close(self) -> None:
        """Stop prefetching (threads or worker processes); iteration restarts from ``position``."""
        it, self._it = self._it, None
        if isinstance(it, _ThreadPrefetcher):
            it.close()
        elif it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def build_loader(url, split: str = "train", seq_len: int = 1024, micro_batch_size: int = 1, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, prefetch: int = 2, *,
                 modality: str | None = None, storage_options: dict | None = None,
                 pin_memory: bool = False, read_threads: int = 2) -> ShardLoader:
    """An endless loader of (micro_batch_size, seq_len+1) uint8 tensors for one rank.

    Opens and verifies the store (StoreError if missing, corrupt, of another version, or not of
    ``modality``); checks ``seq_len`` against the split (1-D) or the image size. With
    ``num_workers=0`` a thread prefetches ``prefetch`` batches and ``read_threads`` batches are read at
    once, in order; with worker processes each reads its own batches.
    """
    store = open_store(url, modality=modality, storage_options=storage_options)
    return ShardLoader(store, split, seq_len, micro_batch_size, seed, rank, world_size, num_workers,
                       prefetch, storage_options, pin_memory, read_threads)


def eval_windows(url, split: str = "valid", seq_len: int = 1024, max_windows: int | None = None,
                 rank: int = 0, world_size: int = 1, *, modality: str | None = None,
                 storage_options: dict | None = None):
    """Deterministic evaluation windows of this rank, each a (1, seq_len+1) uint8 tensor.

    1-D data: non-overlapping windows [k*L, k*L + L + 1) in order; images: sample k with a leading 0.
    Windows k = rank, rank + world_size, ... of the first ``max_windows``: the same set for any world.
    """
    store = open_store(url, modality=modality, storage_options=storage_options)
    check_seq_len(store, split, seq_len)
    size = store.split(split).size
    n = size if store.modality == "image" else (size - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    for k in eval_indices(n, rank, world_size):
        if store.modality == "image":
            x = np.concatenate([[0], store.read(split, k, k + 1).reshape(-1)]).astype(np.uint8)
        else:
            x = store.read(split, k * seq_len, k * seq_len + seq_len + 1)
        yield torch.from_numpy(x.reshape(1, -1))
