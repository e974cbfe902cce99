"""Where a GPU call spends its time: wall vs host issue vs GPU kernel time, per kernel and per host op; the
GPU's SM count, which the kernels size their work by (layernorm's backward grid, blocksparse's split rule);
and the GPU's clock, power and caps as nvidia-smi reports them (``gpu_state``), which the benches record
beside their times."""

from __future__ import annotations

import functools
import re
import time
from typing import Callable

import torch


@functools.lru_cache(maxsize=None)
def sm_count(index: int | None) -> int:
    """Streaming multiprocessors of CUDA device ``index`` (None: the current one), asked once per device."""
    return torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index).multi_processor_count


def _device_us(event) -> float:
    return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))


def profile_calls(call: Callable[[], object], iters: int = 10, top: int = 12) -> dict:
    """Profile ``iters`` calls of ``call`` (after one warm call) with torch.profiler.

    Returns per call: ``wall_ms`` (synchronised), ``host_ms`` (time to issue the work with no sync
    inside the loop: near wall_ms means the host, not the GPU, sets the pace), ``gpu_ms`` (sum of
    kernel times; below wall_ms = the GPU idles), ``kernels_ms`` (each kernel, largest first),
    ``groups_ms`` (``kernel_groups``: the same by kind: attention, products, copies, ...) and
    ``host_ops_ms`` (self host time of the ``top`` costliest host ops and runtime calls); on CUDA also
    ``idle`` (``idle_gaps``: where between kernels the GPU idled, and what the host was doing then).
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    call()
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            call()
        sync()
        wall = (time.perf_counter() - start) * 1e3 / iters
    kernels: dict[str, float] = {}
    host: dict[str, float] = {}
    for e in prof.key_averages():
        name = e.key[:90]
        us = _device_us(e)
        if us > 0 and str(getattr(e, "device_type", "")).endswith("CUDA"):
            kernels[name] = kernels.get(name, 0.0) + us / 1e3 / iters
        elif e.self_cpu_time_total > 0:
            host[name] = host.get(name, 0.0) + e.self_cpu_time_total / 1e3 / iters
    idle = _idle_of(prof, iters, top) if cuda else None
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    issue = (time.perf_counter() - start) * 1e3 / iters
    sync()
    by_time = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1]))  # noqa: E731
    out = {"wall_ms": wall, "host_ms": issue, "gpu_ms": sum(kernels.values()), "kernels_ms": by_time(kernels),
           "groups_ms": kernel_groups(kernels), "host_ops_ms": dict(list(by_time(host).items())[:top])}
    if idle is not None:
        out["idle"] = idle
    return out


def _idle_of(prof, iters: int, top: int) -> dict | None:
    """``idle_gaps`` of a torch.profiler run from its kineto events (None where they cannot be read)."""
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return None
    kernels, copies, runtime, ops = [], [], [], []
    for e in events:
        span = (e.start_ns() / 1e6, e.end_ns() / 1e6, e.name())
        if "CUDA" in str(e.device_type()):
            (copies if e.name().startswith(("Memcpy", "Memset")) else kernels).append(span)
        else:
            (runtime if e.name().startswith("cu") else ops).append(span)
    return idle_gaps(kernels, copies, runtime, calls=iters, top=top, ops=ops)


def idle_gaps(kernels: list, copies: list = (), runtime: list = (), calls: int = 1, top: int = 12,
              min_ms: float = 0.005, ops: list = (), largest: int = 3) -> dict:
    """Where the GPU's compute engines idle inside a profiled window, from (start_ms, end_ms, name) spans.

    ``kernels`` are the compute kernels (all streams: busy where any runs), ``copies`` the host<->device
    copies (side streams: a gap they overlap is a wait on a copy), ``runtime`` the host's CUDA runtime
    calls (a gap under cudaEventSynchronize, cudaFree or cudaHostAlloc is one the host left by blocking).
    A gap is a stretch of at least ``min_ms`` with no kernel between the window's first kernel start and
    its last kernel end. Returns per call (divided by ``calls``): ``idle_ms`` (the gaps' sum),
    ``gaps`` (the ``top`` costliest (kernel before -> kernel after) pairs with ms and count),
    ``under_copy_ms`` (gap time a copy overlaps), ``under_runtime_ms`` (gap time each runtime call
    overlaps, the costliest ``top``); and ``largest``: the ``largest`` longest single gaps (not per call),
    each with its ms, where it starts (ms from the first kernel's start), the kernels around it, and the
    copies, runtime calls and host ops (``ops``: the profiler's CPU-side op spans) that overlap it, outermost
    (earliest start) first, each with the ms it overlaps and where it starts relative to the gap."""
    spans = sorted(kernels)
    pairs: dict[str, list] = {}
    under_runtime: dict[str, float] = {}
    idle = under_copy = 0.0
    gaps = []  # (start, end, "kernel before -> kernel after")
    if spans:
        end, last = spans[0][1], spans[0][2]
        for start, stop, name in spans[1:]:
            if start - end >= min_ms:
                key = f"{last[:50]} -> {name[:50]}"
                gaps.append((end, start, key))
                entry = pairs.setdefault(key, [0.0, 0])
                entry[0] += start - end
                entry[1] += 1
            if stop > end:
                end, last = stop, name
    overlap = lambda a, b, c, d: max(0.0, min(b, d) - max(a, c))  # noqa: E731
    for a, b, _ in gaps:
        idle += b - a
        under_copy += _covered(a, b, copies)
        for start, stop, name in runtime:
            if stop > a and start < b:
                under_runtime[name] = under_runtime.get(name, 0.0) + overlap(a, b, start, stop)
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1][0])[:top]

    def inside(a, b, spans, limit):  # the spans overlapping [a, b], outermost (earliest start) first
        hits = sorted((s, -e, n) for s, e, n in spans if e > a and s < b)
        return [{"name": n[:80], "ms": overlap(a, b, s, -e), "from_ms": s - a} for s, e, n in hits[:limit]]
    longest = sorted(gaps, key=lambda g: g[0] - g[1])[:largest]
    return {"idle_ms": idle / calls, "gaps": [{"between": k, "ms": v[0] / calls, "count": v[1] / calls}
                                              for k, v in ranked],
            "under_copy_ms": under_copy / calls,
            "under_runtime_ms": {k: v / calls for k, v in sorted(under_runtime.items(), key=lambda kv: -kv[1])[:top]},
            "largest": [{"ms": b - a, "at_ms": a - spans[0][0], "between": key, "copies": inside(a, b, copies, 6),
                         "runtime": inside(a, b, runtime, 6), "ops": inside(a, b, ops, 12)}
                        for a, b, key in longest]}


def _covered(a: float, b: float, spans: list) -> float:
    """How much of [a, b] the union of ``spans`` covers."""
    cut = sorted((max(a, s), min(b, e)) for s, e, _ in spans if e > a and s < b)
    total, reach = 0.0, a
    for s, e in cut:
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total


# (group, pattern of kernel names) in order, the first match taking a kernel: megastride's attention kernels and
# the peers' (FlexAttention's Triton templates, FlashAttention, cuDNN), cuBLAS's products, the LayerNorms, the
# loss's kernels, reductions, elementwise kernels (torch's and megastride's residual add and bias + SiLU), copies
KERNEL_GROUPS = (
    ("attention", re.compile(r"^_(fwd|dq|dkdv|delta|merged|bwd|attn|summed)|flash|fmha|cudnn|triton_tem_fused"
                             r"|attention", re.I)),
    ("products", re.compile(r"nvjet|gemm|cutlass|xmma|splitKreduce|cublas", re.I)),
    ("layernorm", re.compile(r"layer_?norm", re.I)),
    ("loss", re.compile(r"nll_loss|softmax|cross_entropy", re.I)),
    ("reductions", re.compile(r"reduce_kernel", re.I)),
    ("elementwise", re.compile(r"elementwise|_residual_add|_bias_silu|silu|CatArray|copy_kernel", re.I)),
    ("copies", re.compile(r"^(Memcpy|Memset)")),
    ("optimizer", re.compile(r"multi_tensor_apply|adam", re.I)),
)


def kernel_groups(kernels_ms: dict[str, float]) -> dict[str, float]:
    """Kernel milliseconds summed by kind (``KERNEL_GROUPS``; "other" for the rest), largest first. Copies run on
    their own streams beside the kernels, so the groups' sum is not the step's GPU-busy time."""
    out: dict[str, float] = {}
    for name, ms in kernels_ms.items():
        group = next((g for g, pattern in KERNEL_GROUPS if pattern.search(name)), "other")
        out[group] = out.get(group, 0.0) + ms
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def summary(prof: dict, kernels: int = 4) -> str:
    """One line: wall, host issue and GPU time per call and the largest kernels."""
    top = ", ".join(f"{name[:40]} {ms:.3f}" for name, ms in list(prof["kernels_ms"].items())[:kernels])
    line = (f"wall {prof['wall_ms']:.3f} ms, host issue {prof['host_ms']:.3f} ms, GPU kernels {prof['gpu_ms']:.3f} ms "
            f"per call ({top})")
    if prof.get("groups_ms"):
        line += "; by kind " + ", ".join(f"{g} {ms:.3f}" for g, ms in prof["groups_ms"].items())
    idle = prof.get("idle")
    if idle and idle["gaps"]:
        first = idle["gaps"][0]
        host = ", ".join(f"{k} {v:.3f}" for k, v in list(idle["under_runtime_ms"].items())[:2])
        line += (f"; GPU idle {idle['idle_ms']:.3f} ms (most between {first['between']}: {first['ms']:.3f}; "
                 f"under copies {idle['under_copy_ms']:.3f}; under {host or 'no runtime call'})")
    return line


# nvidia-smi's clocks_event_reasons bits that hold the SM clock down under load: software power cap (0x4),
# hardware slowdown (0x8), software and hardware thermal slowdown (0x20, 0x40), power brake (0x80)
CAP_REASONS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def parse_gpu_state(line: str) -> dict:
    """``nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active
    --format=csv,noheader,nounits`` output as a dict; {} where it does not parse."""
    parts = [x.strip() for x in line.strip().split(",")]
    try:
        clock, power, temp, reasons = float(parts[0]), float(parts[1]), float(parts[2]), int(parts[3], 16)
    except (ValueError, IndexError):
        return {}
    return {"sm_mhz": clock, "power_w": power, "temp_c": temp, "capped": bool(reasons & CAP_REASONS)}


def _uuid(device: int | None = None) -> str | None:
    """The CUDA device's UUID as NVML and nvidia-smi name it ("GPU-..."); None without one."""
    try:
        uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device() if device is None else device).uuid)
    except Exception:  # noqa: BLE001 - no CUDA device, or a build without UUIDs
        return None
    return uuid if uuid.startswith("GPU-") else "GPU-" + uuid


# NVML (libnvidia-ml, which comes with the driver) through ctypes: None until first asked, then the
# library or False where it cannot be loaded or initialised (the CPU machine)
_NVML = None
_HANDLES: dict[str, object] = {}


def _nvml():
    global _NVML
    if _NVML is None:
        import ctypes

        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            lib.nvmlInit_v2.restype = ctypes.c_int
            lib.nvmlDeviceGetHandleByUUID.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
            lib.nvmlDeviceGetHandleByUUID.restype = ctypes.c_int
            lib.nvmlDeviceGetTotalEnergyConsumption.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]
            lib.nvmlDeviceGetTotalEnergyConsumption.restype = ctypes.c_int
            _NVML = lib if lib.nvmlInit_v2() == 0 else False
        except (OSError, AttributeError):
            _NVML = False
    return _NVML or None


def gpu_energy_mj(device: int | None = None) -> int | None:
    """The board's energy counter in millijoules since the driver loaded (NVML's
    nvmlDeviceGetTotalEnergyConsumption, Volta and later): two reads around a run give its energy, to the
    counter's update interval (20-100 ms, so over windows of a second or more). None without NVML or a
    CUDA device (the CPU machine)."""
    import ctypes

    lib, uuid = _nvml(), _uuid(device)
    if lib is None or uuid is None:
        return None
    handle = _HANDLES.get(uuid)
    if handle is None:
        handle = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByUUID(uuid.encode(), ctypes.byref(handle)) != 0:
            return None
        _HANDLES[uuid] = handle
    energy = ctypes.c_ulonglong()
    if lib.nvmlDeviceGetTotalEnergyConsumption(handle, ctypes.byref(energy)) != 0:
        return None
    return int(energy.value)


def gpu_state(device: int | None = None) -> dict:
    """The GPU's SM clock (MHz), power draw (W), temperature (C) and whether a power or thermal cap holds
    its clock down now (``CAP_REASONS``), read from nvidia-smi; {} where it cannot be read. At long lengths
    our kernels and Flex's run the H200 at its 700 W cap with the SM clock between about 1.4 and 1.97 GHz
    (docs/benchmarks.md, twentieth run), so a time means little without the clock it ran at."""
    import subprocess

    cmd = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active",
           "--format=csv,noheader,nounits"]
    uuid = _uuid(device)
    if uuid is not None:  # else the first GPU nvidia-smi lists
        cmd.append(f"--id={uuid}")
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_gpu_state(run.stdout.splitlines()[0]) if run.returncode == 0 and run.stdout.strip() else {}
