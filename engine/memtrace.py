"""What a measured memory peak is made of: the CUDA caching allocator's history, replayed to its peak.

``megastride bench scaling --memory-trace`` records the allocator's history (``torch.cuda.memory.
_record_memory_history``) over each point's measured steps and writes, beside the CSV, the snapshot
(``memory_<label>_n<len>.pickle``, for https://pytorch.org/memory_viz) and this module's reading of it
(``.txt`` and ``.json``): the bytes allocated at the peak, split into what was already allocated when
the trace began (parameters, optimizer states, whatever the warm-up left) and the blocks the traced
steps had allocated and not yet freed then, grouped by the line of our code that asked for them and
by memory pool (a CUDA graph's private pool or the default one).

The allocated total follows ``torch.cuda.max_memory_allocated``: a block counts from its ``alloc``
event to its ``free_requested`` one (the allocator stops counting a block when it is freed, even where
another stream's use keeps it from being reused until later: ``free_completed``), and counts what the
allocator gives, not what was asked: the events record the requested size, which the allocator rounds
up to a multiple of 512 bytes (``block_bytes``; a 4-byte loss is a 512-byte block). Where it hands out
a cached block larger than that (a large block whose rest, under 1 MiB, is not split off) it counts the
whole block, which the history does not show: the replayed peak can be that much under its own.
Sizes are printed in GB of 10^9 bytes, as everywhere in megastride.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_POOL = (0, 0)
MIN_BLOCK = 512  # the CUDA caching allocator's kMinBlockSize: every block is a multiple of it
GB = 1e9
# the innermost frame in a file under one of these names is the call site a block is charged to
OUR_CODE = ("megastride", "/engine/", "/kernels/", "/data_shards/", "/launch/")


ALLOCATOR_COUNTS = ("num_alloc_retries", "num_device_alloc", "num_device_free")


def allocator_counts(device) -> dict[str, int]:
    """The CUDA caching allocator's cumulative counters (``torch.cuda.memory_stats``): cache flushes after a
    failed cudaMalloc (each synchronises the device and frees every cached block before retrying), and the
    device allocation and free calls; {} off CUDA."""
    if device.type != "cuda":
        return {}
    import torch

    stats = torch.cuda.memory_stats(device)
    return {k: int(stats.get(k, 0)) for k in ALLOCATOR_COUNTS}


@dataclass
class Site:
    where: str  # "file.py:line function" of the innermost frame in our code (or the innermost frame)
    pool: str  # "default" or "private <pool id>" (a CUDA graph's)
    bytes: int = 0
    blocks: int = 0


@dataclass
class PeakReport:
    peak_bytes: int  # allocated bytes at the trace's peak: before_bytes + the sites' bytes
    before_bytes: int  # of the bytes allocated when the trace began, those still allocated at the peak
    base_bytes: int  # bytes allocated when the trace began
    peak_event: int  # index of the event that reached the peak (-1: the trace never rose above its start)
    events: int
    measured_peak_bytes: int | None = None  # torch.cuda.max_memory_allocated over the same steps, if given
    sites: list[Site] = field(default_factory=list)  # largest first
    by_pool: dict[str, int] = field(default_factory=dict)

    def text(self, top: int = 20) -> str:
        lines = [f"peak {self.peak_bytes / GB:.3f} GB allocated at event {self.peak_event:,} of {self.events:,}"
                 + (f" (the allocator's own peak over the same steps: {self.measured_peak_bytes / GB:.3f} GB)"
                    if self.measured_peak_bytes is not None else ""),
                 f"{self.before_bytes / GB:9.3f} GB  allocated before the trace began and still allocated "
                 f"(of {self.base_bytes / GB:.3f} GB then)"]
        for pool, size in sorted(self.by_pool.items(), key=lambda kv: -kv[1]):
            lines.append(f"{size / GB:9.3f} GB  allocated by the traced steps, {pool} pool")
        lines.append("by call site (innermost frame in megastride's code), largest first:")
        for s in self.sites[:top]:
            lines.append(f"{s.bytes / GB:9.3f} GB  {s.blocks:6,} blocks  {s.where}  [{s.pool}]")
        if len(self.sites) > top:
            rest = self.sites[top:]
            lines.append(f"{sum(s.bytes for s in rest) / GB:9.3f} GB  {sum(s.blocks for s in rest):6,} blocks  "
                         f"{len(rest)} more sites")
        return "\n".join(lines)


def block_bytes(requested: int) -> int:
    """The block the caching allocator hands out for ``requested`` bytes (its ``round_size``)."""
    return max(MIN_BLOCK, -(-requested // MIN_BLOCK) * MIN_BLOCK)


def _pool_name(pool) -> str:
    pool = tuple(pool) if pool is not None else DEFAULT_POOL
    return "default" if pool == DEFAULT_POOL else f"private {pool[0]},{pool[1]}"


def _segment_pools(snapshot: dict, device: int) -> list[tuple[int, int, object]]:
    return [(s["address"], s["address"] + s["total_size"], s.get("segment_pool_id"))
            for s in snapshot.get("segments", []) if s.get("device", device) == device]


def _pool_of(event: dict, segments: list[tuple[int, int, object]]) -> str:
    if "pool_id" in event:
        return _pool_name(event["pool_id"])
    for lo, hi, pool in segments:  # older torch: the segment it lies in, if that is still reserved at the dump
        if lo <= event["addr"] < hi:
            return _pool_name(pool)
    return "default"


def call_site(frames: list[dict]) -> str:
    """The innermost frame in our code (frames run innermost first), else the innermost one."""
    if not frames:
        return "(no stack recorded)"
    for f in frames:
        name = f.get("filename", "")
        if any(part in name for part in OUR_CODE) and "/torch/" not in name:
            return f"{_short(name)}:{f.get('line', 0)} {f.get('name', '?')}"
    f = frames[0]
    return f"{_short(f.get('filename', '?'))}:{f.get('line', 0)} {f.get('name', '?')}"


def _short(filename: str) -> str:
    for marker in ("/megastride/", "/site-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    parts = filename.rsplit("/", 2)
    return "/".join(parts[-2:])


def peak_report(snapshot: dict, base_bytes: int, device: int = 0,
                measured_peak_bytes: int | None = None) -> PeakReport:
    """Replay ``snapshot``'s history of ``device`` (``torch.cuda.memory._snapshot()`` taken after recording
    with ``_record_memory_history``) from ``base_bytes`` allocated at its start: the peak of allocated
    bytes and, at the first event that reached it, what the live blocks were. A block freed in the trace
    that was not allocated in it was one of the ``base_bytes``."""
    traces = snapshot.get("device_traces", [])
    events = traces[device] if device < len(traces) else []
    current, peak, peak_at = base_bytes, base_bytes, -1
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            current += block_bytes(e["size"])
        elif e["action"] == "free_requested":
            current -= block_bytes(e["size"])
        if current > peak:
            peak, peak_at = current, i
    segments = _segment_pools(snapshot, device)
    live: dict[int, dict] = {}
    before = base_bytes
    for e in events[:peak_at + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        elif e["action"] == "free_requested":
            if live.pop(e["addr"], None) is None:
                before -= block_bytes(e["size"])
    sites: dict[tuple[str, str], Site] = {}
    by_pool: dict[str, int] = {}
    for e in live.values():
        pool = _pool_of(e, segments)
        key = (call_site(e.get("frames", [])), pool)
        site = sites.setdefault(key, Site(*key))
        size = block_bytes(e["size"])
        site.bytes += size
        site.blocks += 1
        by_pool[pool] = by_pool.get(pool, 0) + size
    return PeakReport(peak_bytes=peak, before_bytes=before, base_bytes=base_bytes, peak_event=peak_at,
                      events=len(events), measured_peak_bytes=measured_peak_bytes,
                      sites=sorted(sites.values(), key=lambda s: (-s.bytes, s.where)), by_pool=by_pool)


class Recorder:
    """Records the allocator's history from ``start()`` to ``stop(path)``, which writes the snapshot
    (``path.pickle``) and the peak report (``path.txt``, ``path.json``) and returns the report."""

    def __init__(self, device, max_entries: int = 2_000_000):
        import torch

        self.torch, self.device, self.max_entries = torch, device, max_entries
        self.base = 0

    def start(self) -> None:
        cuda = self.torch.cuda
        cuda.synchronize(self.device)
        self.base = cuda.memory_allocated(self.device)
        cuda.memory._record_memory_history(enabled="all", context="alloc", stacks="python",
                                           max_entries=self.max_entries, clear_history=True)

    def stop(self, path: Path, measured_peak_bytes: int | None = None, note: str = "") -> PeakReport:
        cuda = self.torch.cuda
        try:
            cuda.synchronize(self.device)
            snapshot = cuda.memory._snapshot(self.device)
        finally:
            cuda.memory._record_memory_history(enabled=None)
        index = self.torch.device(self.device).index
        report = peak_report(snapshot, self.base, index if index is not None else cuda.current_device(),
                             measured_peak_bytes)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".pickle"), "wb") as f:
            pickle.dump(snapshot, f)
        text = report.text() + (f"\n{note}" if note else "")
        if report.events >= self.max_entries:
            text += f"\n(the trace kept only its last {self.max_entries:,} events: the split above is not whole)"
        path.with_suffix(".txt").write_text(text + "\n")
        path.with_suffix(".json").write_text(json.dumps(asdict(report), indent=1) + "\n")
        return report

    def abandon(self, path: Path) -> None:
        """After an error in the traced steps (out of memory): write what was recorded if that can be
        done, stop recording either way, and raise nothing of its own (the error is the caller's)."""
        try:
            self.stop(path, None, note="the traced steps stopped on an error (out of memory?): the peak is the "
                                       "last one reached before it")
        except Exception:  # noqa: BLE001 - the traced steps' own error is the one to report
            pass
