"""The host's memory while a bench point runs: how full it got, and a stop before it runs out.

At 1M tokens a step pins tens of GB of host memory (block inputs, host-kept attention outputs: about 91 GB
on a 128 GB host for the fixed model, docs/scaling.md), and it pins them at a few GB a second. A machine
that runs out does not raise an error: the kernel's OOM killer ends the process, or the machine is lost
with everything the run had not yet written. ``HostWatch`` samples ``/proc/meminfo`` on a thread while a
point runs, records the least memory available (so the bench reports the machine's memory in use at its
fullest beside the planner's host figure), and where the available memory falls below a floor it
interrupts the main thread (a signal handler of its own, not SIGINT's), which ``HostWatch.__exit__`` turns
into ``HostMemoryLow``: the point ends as "stopped (host memory)" and the sweep goes on with what it has.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time

MEMINFO = "/proc/meminfo"
GB = 1e9
# the default floor: this share of the machine's memory, and at least FLOOR_MIN_BYTES
FLOOR_FRACTION = 0.03
FLOOR_MIN_BYTES = 2 * GB


class HostMemoryLow(RuntimeError):
    """A watched call was stopped: the host's available memory fell below the watch's floor."""


def meminfo(path: str = MEMINFO) -> dict[str, float]:
    """``/proc/meminfo``'s fields in bytes (the kB ones converted); empty where it cannot be read."""
    out: dict[str, float] = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                words = rest.split()
                if not words:
                    continue
                try:
                    value = float(words[0])
                except ValueError:
                    continue
                out[name.strip()] = value * 1024 if len(words) > 1 and words[1] == "kB" else value
    except OSError:
        return {}
    return out


def available_bytes(path: str | None = None) -> float | None:
    """The host's available memory now (MemAvailable: free memory and what the kernel can reclaim), None where
    /proc/meminfo cannot say."""
    return meminfo(path or MEMINFO).get("MemAvailable")


def room_bytes(floor_bytes: float | None = None, path: str | None = None) -> float | None:
    """What a watch with ``floor_bytes`` (None: ``default_floor``) would let a call pin from now: the available
    memory less the floor; None where /proc/meminfo cannot say."""
    info = meminfo(path or MEMINFO)
    if "MemAvailable" not in info or "MemTotal" not in info:
        return None
    return info["MemAvailable"] - (default_floor(info["MemTotal"]) if floor_bytes is None else floor_bytes)


def default_floor(total_bytes: float) -> float:
    """The floor a watch stops at unless told: FLOOR_FRACTION of the machine's memory, at least FLOOR_MIN_BYTES."""
    return max(FLOOR_MIN_BYTES, FLOOR_FRACTION * total_bytes)


# The signal the watch's thread raises its stop through in the main thread (``_thread.interrupt_main`` simulates
# it: nothing is sent to the process). Not SIGINT, whose handler a launcher or a library may have replaced; the
# watch installs its own handler for this one while it runs and restores the previous one after.
STOP_SIGNAL = getattr(signal, "SIGUSR2", None)


class _Tripped(BaseException):
    """Raised in the main thread by the watch's signal handler (a BaseException: no ``except Exception`` in the
    step swallows it); the watch turns it into HostMemoryLow."""


class HostWatch:
    """``with HostWatch(floor_bytes) as w: ...``: samples MemAvailable every ``interval`` seconds on a daemon
    thread. ``used_peak_bytes``: MemTotal less the least MemAvailable seen (the machine's memory in use at its
    fullest, every process counted; None where /proc/meminfo cannot be read). Where MemAvailable falls below
    ``floor_bytes`` (None: ``default_floor``; 0: never) the block is interrupted in the main thread (through
    STOP_SIGNAL's handler) and raises ``HostMemoryLow`` naming what was left; already below it, the block does
    not start. Entered off the main thread (or where there is no STOP_SIGNAL), it records and never stops."""

    def __init__(self, floor_bytes: float | None = None, interval: float = 0.2, path: str | None = None):
        self.interval, self.path = interval, path or MEMINFO
        self.floor = floor_bytes
        self.total: float | None = None
        self.least: float | None = None
        self.tripped: float | None = None  # MemAvailable when the floor was passed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._armed = False  # STOP_SIGNAL's handler is ours
        self._previous = None  # the handler it replaced
        self._raised = False

    @property
    def used_peak_bytes(self) -> float | None:
        return None if self.total is None or self.least is None else self.total - self.least

    def _sample(self) -> bool:
        """One sample; False where /proc/meminfo has no MemAvailable."""
        info = meminfo(self.path)
        avail = info.get("MemAvailable")
        if avail is None or "MemTotal" not in info:
            return False
        self.total = info["MemTotal"]
        self.least = avail if self.least is None else min(self.least, avail)
        if self.floor and avail < self.floor and self.tripped is None:
            self.tripped = avail
            if self._armed:
                _thread.interrupt_main(STOP_SIGNAL)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._sample():
                return

    def _handler(self, signum, frame) -> None:
        if self.tripped is not None and not self._raised:
            self._raised = True
            raise _Tripped
        if callable(self._previous):  # a real STOP_SIGNAL meant for whoever handled it before
            self._previous(signum, frame)

    def _message(self) -> str:
        return (f"host memory: {self.tripped / GB:.1f} GB available of {self.total / GB:.0f} GB, below the "
                f"{self.floor / GB:.1f} GB floor; stopped before the machine ran out")

    def __enter__(self) -> HostWatch:
        if STOP_SIGNAL is None or threading.current_thread() is not threading.main_thread():
            self.floor = 0  # the stop can only be raised in the main thread: elsewhere the watch only records
        if self.floor is None:
            total = meminfo(self.path).get("MemTotal")
            self.floor = default_floor(total) if total else 0
        if not self._sample():
            return self
        if self.tripped is not None:  # below the floor already: the block does not start
            raise HostMemoryLow(self._message())
        if self.floor:
            self._previous = signal.signal(STOP_SIGNAL, self._handler)
            self._armed = True
        self._thread = threading.Thread(target=self._run, name="megastride-host-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        delivered = exc_type is not None and issubclass(exc_type, _Tripped)
        try:
            try:
                self._stop.set()
                if self._thread is not None:
                    self._thread.join()
                if self.tripped is not None and not delivered:
                    time.sleep(0.001)  # the watch's interrupt, still pending, lands here rather than after the block
            except _Tripped:
                delivered = True
        finally:
            if self._armed:
                signal.signal(STOP_SIGNAL, signal.SIG_DFL if self._previous is None else self._previous)
                self._armed = False
        if self.tripped is not None and (exc_type is None or delivered):
            raise HostMemoryLow(self._message()) from None
        return False
