"""The host-memory watch of `megastride bench scaling` (engine.hostmem): /proc/meminfo read, the least
available memory recorded, and a point stopped with a one-line error before the machine runs out."""

import _thread
import time

import pytest

from megastride.engine import hostmem
from megastride.engine.hostmem import HostMemoryLow, HostWatch

GIB = 1024**3


def wait_out(seconds: float) -> None:
    """Sleep in short slices, so an interrupt from a watch lands promptly."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


def _meminfo(path, total_gib: float, avail_gib: float) -> None:
    path.write_text(f"MemTotal:       {int(total_gib * GIB / 1024)} kB\nMemFree:        1 kB\n"
                    f"MemAvailable:   {int(avail_gib * GIB / 1024)} kB\nHugePages_Total:       0\n")


def test_meminfo_reads_bytes_and_an_unreadable_file_is_empty(tmp_path):
    f = tmp_path / "meminfo"
    _meminfo(f, 128, 100)
    info = hostmem.meminfo(str(f))
    assert info["MemTotal"] == 128 * GIB and info["MemAvailable"] == 100 * GIB and info["HugePages_Total"] == 0
    assert hostmem.meminfo(str(tmp_path / "none")) == {}
    assert hostmem.default_floor(128 * GIB) == pytest.approx(0.03 * 128 * GIB)
    assert hostmem.default_floor(16 * GIB) == hostmem.FLOOR_MIN_BYTES


def test_the_watch_records_the_fullest_the_host_got(tmp_path):
    f = tmp_path / "meminfo"
    _meminfo(f, 128, 100)
    with HostWatch(interval=0.01, path=str(f)) as w:
        wait_out(0.05)
        _meminfo(f, 128, 40)  # the step pins 60 GB
        wait_out(0.1)
        _meminfo(f, 128, 90)  # and lets most of it go
        wait_out(0.1)
    assert w.used_peak_bytes == pytest.approx(88 * GIB)
    assert w.floor == pytest.approx(0.03 * 128 * GIB) and w.tripped is None


def test_the_watch_stops_a_call_below_its_floor_with_one_line(tmp_path):
    f = tmp_path / "meminfo"
    _meminfo(f, 128, 100)
    reached = []
    with pytest.raises(HostMemoryLow, match=r"^host memory: 1\.1 GB available of 137 GB, below the 4\.1 GB floor"):
        with HostWatch(interval=0.01, path=str(f)):
            _meminfo(f, 128, 1)
            wait_out(5.0)  # interrupted long before this ends
            reached.append("the end")
    assert not reached
    # floor 0: never stops; no /proc/meminfo: nothing recorded, nothing stopped
    with HostWatch(0, interval=0.01, path=str(f)) as w:
        wait_out(0.05)
    assert w.used_peak_bytes == pytest.approx(127 * GIB)
    with HostWatch(interval=0.01, path=str(tmp_path / "none")) as w:
        wait_out(0.05)
    assert w.used_peak_bytes is None and w._thread is None


def test_off_the_main_thread_the_watch_records_and_never_stops(tmp_path):
    import threading

    f = tmp_path / "meminfo"
    _meminfo(f, 128, 100)
    seen = {}

    def work():
        with HostWatch(interval=0.01, path=str(f)) as w:
            _meminfo(f, 128, 1)
            wait_out(0.1)
        seen["peak"], seen["floor"] = w.used_peak_bytes, w.floor

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == {"peak": 127 * GIB, "floor": 0}


def test_an_interrupt_still_pending_at_the_end_is_taken_in_and_other_errors_pass(tmp_path):
    """The watch's interrupt may land after the block's last statement: it becomes HostMemoryLow there, not a
    stray exception after the block; another error of the block propagates as itself, as does a user's Ctrl-C."""
    f = tmp_path / "meminfo"
    _meminfo(f, 128, 100)
    with pytest.raises(HostMemoryLow):
        with HostWatch(path=str(f)) as w:
            w.tripped = 1.0 * GIB
            _thread.interrupt_main(hostmem.STOP_SIGNAL)  # as the thread does, at the block's very end
    with pytest.raises(ValueError, match="its own"):
        with HostWatch(path=str(f)) as w:
            w.tripped = 1.0 * GIB
            try:
                _thread.interrupt_main(hostmem.STOP_SIGNAL)
                wait_out(1.0)
            except BaseException:
                pass  # the block swallowed it: its own error still comes out
            raise ValueError("its own")
    with pytest.raises(KeyboardInterrupt):
        with HostWatch(path=str(f)):
            raise KeyboardInterrupt


def test_the_watch_stops_a_call_whatever_sigint_does_and_gives_its_signal_back(tmp_path):
    """A launcher or library may have replaced SIGINT's handler (the stop was lost that way once under pytest-xdist):
    the watch raises through a handler of its own, passes a real signal of that kind to the handler before it,
    and restores that one after. Already below the floor, the block does not start."""
    import signal

    f = tmp_path / "meminfo"
    _meminfo(f, 128, 100)
    calls = []
    sigint = signal.signal(signal.SIGINT, lambda *a: calls.append("sigint"))
    before = signal.signal(hostmem.STOP_SIGNAL, lambda *a: calls.append("theirs"))
    try:
        with pytest.raises(HostMemoryLow):
            with HostWatch(interval=0.01, path=str(f)) as w:
                _thread.interrupt_main(hostmem.STOP_SIGNAL)  # not a trip: theirs
                wait_out(0.05)
                _meminfo(f, 128, 1)
                wait_out(5.0)
        assert calls == ["theirs"] and w._raised
        assert signal.getsignal(hostmem.STOP_SIGNAL) is not None and not w._armed
        signal.raise_signal(hostmem.STOP_SIGNAL)
        assert calls == ["theirs", "theirs"]  # theirs again
        started = []
        with pytest.raises(HostMemoryLow, match="1.1 GB available"):
            with HostWatch(path=str(f)):
                started.append(1)
        assert not started
    finally:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(hostmem.STOP_SIGNAL, before)


def test_a_bench_point_that_fills_the_host_is_stopped_and_its_series_ends(tmp_path, monkeypatch):
    from megastride.engine import bench_scaling as B
    from megastride.engine.config import config_from_dict

    f = tmp_path / "meminfo"
    _meminfo(f, 128, 100)
    monkeypatch.setattr(hostmem, "MEMINFO", str(f))

    def fake(cfg, device, batch, steps, warmup, profile=None, trace=None, allocator=None, alternate=None,
             medians=None):
        if cfg.model.seq_len >= 128 and cfg.model.attention.layers[0] == "dense":
            try:
                _meminfo(f, 128, 0.5)  # pinning past the floor
                wait_out(5.0)
            finally:
                _meminfo(f, 128, 100)  # the stopped step's memory given back
        _meminfo(f, 128, 100 - cfg.model.seq_len / 64)
        wait_out(0.3)
        return 0.001 * cfg.model.seq_len, None

    monkeypatch.setattr(B, "time_steps", fake)
    lines = []
    base = config_from_dict({"model": {"seq_len": 128, "d_model": 32, "n_layers": 1, "n_heads": 2,
                                       "attention": {"block": 32, "layers": ["fixed(64,16)"]}}})
    rows = B.sweep(base, ["dense", "fixed"], [64, 128, 256], B.Options(device="cpu", steps=1, warmup=1, log=lines.append))
    assert [(r.kind, r.seq_len, r.status) for r in rows] == [
        ("dense", 64, "ok"), ("dense", 128, "stopped (host memory)"), ("fixed", 64, "ok"), ("fixed", 128, "ok"),
        ("fixed", 256, "ok")]
    assert any("stopped: host memory: 0.5 GB available of 137 GB" in line for line in lines)
    assert rows[1].host_peak_gb == pytest.approx(127.5 * GIB / 1e9)
    assert rows[4].host_peak_gb == pytest.approx(32 * GIB / 1e9)  # the fullest the point saw: 96 of 128 available
    assert rows[0].host_plan_gb == 0.0 and rows[0].host_pinned_gb is None  # nothing pinned; no CUDA here
    assert "host in use at most" in B.describe(rows[4])


def _offload_config():
    from megastride.engine.config import config_from_dict

    return config_from_dict({"model": {"seq_len": 512, "d_model": 64, "n_layers": 3, "n_heads": 4,
                                       "attention": {"block": 32, "layers": ["fixed(64,16)"]}},
                             "train": {"precision": "bf16", "cpu_checkpointing": True}})


def test_a_point_is_skipped_where_its_pinned_memory_exceeds_what_is_available_above_the_floor(tmp_path, monkeypatch):
    """Within the RAM but not within what other processes leave available now: skipped before it runs."""
    from types import SimpleNamespace

    import torch

    from megastride.engine import bench_scaling as B
    from megastride.engine import plan as planner

    cfg = _offload_config()
    need = B.predicted(cfg, 1).host_bytes
    assert need > 0
    f = tmp_path / "meminfo"
    monkeypatch.setattr(hostmem, "MEMINFO", str(f))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=1e12))
    monkeypatch.setattr(B, "time_steps", lambda cfg, *a, **k: (1.0, None))
    monkeypatch.setattr(B, "_free", lambda device: None)
    monkeypatch.setattr(planner, "physical_memory_bytes", lambda: 1e12)  # the RAM would hold it
    lines = []
    opts = B.Options(device="cuda", steps=1, warmup=1, log=lines.append, host_floor_bytes=1e6)
    f.write_text(f"MemTotal: {int(1e12 / 1024)} kB\nMemAvailable: {int((need + 0.5e6) / 1024)} kB\n")
    assert B.measure("fixed", cfg, opts).status == "skipped (host memory)"
    assert "skipped, the plan pins" in lines[-1]
    f.write_text(f"MemTotal: {int(1e12 / 1024)} kB\nMemAvailable: {int((need + 2e6) / 1024)} kB\n")
    assert B.measure("fixed", cfg, opts).status == "ok"


def test_the_trainer_warns_where_other_processes_leave_too_little_host_memory(tmp_path, monkeypatch, capsys):
    from megastride.engine import plan as planner
    from megastride.engine import trainer

    cfg = _offload_config()
    need = planner.plan(cfg).host_bytes
    f = tmp_path / "meminfo"
    monkeypatch.setattr(hostmem, "MEMINFO", str(f))
    monkeypatch.setattr(planner, "physical_memory_bytes", lambda: 1e12)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    f.write_text(f"MemTotal: {int(1e12 / 1024)} kB\nMemAvailable: {int(1.5 * need / 1024)} kB\n")
    trainer.check_host_memory(cfg, 2)
    assert "warning: host memory: this node's ranks plan" in capsys.readouterr().err  # two ranks: 2x the need
    f.write_text(f"MemTotal: {int(1e12 / 1024)} kB\nMemAvailable: {int(2.5 * need / 1024)} kB\n")
    trainer.check_host_memory(cfg, 2)
    assert "warning" not in capsys.readouterr().err
