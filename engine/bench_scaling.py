"""Training-step cost vs sequence length: dense vs fixed vs strided (`megastride bench scaling`).

Each measurement builds the model for one (attention kind, length), runs real optimizer steps --
forward, backward, gradient clipping, fused AdamW -- in a plain torch loop (bf16 autocast on CUDA,
every block recomputed in backward as ``train.checkpoint_activations`` says; with
``train.cuda_graph`` the step is captured after warm-up and replayed, ``engine.graphs``), and records the
median step time of the timed steps after warm-up, tokens/s, the allocator's peak, MFU and the
planner's prediction of that peak (``engine.plan``, runtime "torch"). DeepSpeed is not needed.

A series stops at an out-of-memory error, at a length the planner says will not fit, or when the
series' time budget cannot cover the next length at the step time extrapolated from the last.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch

from . import baseline
from . import plan as planner
from megastride.kernels.profiling import gpu_state, profile_calls, summary

from .config import Config, ConfigError, config_from_dict, graph_problem, load_config
from .hostmem import HostMemoryLow, HostWatch, room_bytes
from .loglog import plot_loglog, tail_slope
from .memtrace import allocator_counts
from .model import SparseTransformer
from .parallel import apply_activation_checkpointing, build_optimizer

# the SPEC's sweep patterns; fixed: l ~ sqrt(c n) with one summary block (c = the block size)
KINDS = {"dense": "dense", "fixed": "fixed(auto,{block})", "strided": "strided(auto)"}
# issue 5's baseline (engine.baseline, --baseline): the plain PyTorch script a user would write, dense SDPA
# or compiled Flex under the fixed pattern's BlockMask; its FLOPs (MFU) are those of the pattern it computes
BASELINE_KINDS = {"baseline-dense": KINDS["dense"], "baseline-flex": KINDS["fixed"]}
DEFAULT_LENGTHS = (1024, 4096, 16384, 65536, 262144, 1048576)
SLOPE_FROM = 16384  # slopes are fitted where attention, not per-step overhead, dominates
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Paper Table 2: each data set's own config at its own context, three attention patterns
TABLE2 = {
    "enwik8": ("enwik8.yaml", {"dense": "dense", "fixed": "fixed(128,32)", "strided": "strided(128)"}),
    "cifar10": ("cifar10.yaml", {"dense": "dense", "fixed": "fixed(96,16)", "strided": "strided(96)"}),
}
# --validate-plan: (label, kind, index into the lengths, overrides). Only the kept-attention case keeps
# attention outputs: train.keep_attention "auto" (the default) would keep them wherever they fit
PLAIN = "train.keep_attention=false"
VALIDATION = (
    ("fixed", "fixed", 0, [PLAIN]),
    ("fixed", "fixed", 1, [PLAIN]),
    ("fixed", "fixed", 2, [PLAIN]),
    ("strided", "strided", 1, [PLAIN]),
    ("dense", "dense", 0, [PLAIN]),
    ("fixed, no recompute", "fixed", 0, ["train.checkpoint_activations=false", PLAIN]),
    ("fixed, fp32", "fixed", 0, ["train.precision=fp32", PLAIN]),
    ("fixed, 2 sequences", "fixed", 1, ["train.micro_batch_size=2", PLAIN]),
    ("fixed, half recomputed", "fixed", 1, ["train.checkpoint_blocks={half}", PLAIN]),  # {half}: n_layers // 2
    ("fixed, kept attention", "fixed", 1, ["train.keep_attention=true"]),
)
VALIDATION_LENGTHS = (12288, 65536, 262144)


@dataclass
class Options:
    device: str = "cuda"
    steps: int = 3  # timed steps (the median is reported)
    warmup: int = 1  # untimed steps first: autotuning, optimizer state allocation
    budget_s: float = 100.0  # wall time per series
    memory_fraction: float = 0.95  # skip lengths the planner puts above this share of the GPU
    batch: int | None = None  # sequences per step (default: the config's micro-batch size)
    log: Callable[[str], None] = print
    profile: bool = False  # also profile one step per point (CUDA): filled into ``profiles``
    profiles: dict = field(default_factory=dict)  # "<label> n=<len>" -> kernels.profiling.profile_calls
    # a folder: record the allocator's history over each point's measured steps (CUDA) and write there what
    # its peak was made of (engine.memtrace; the recording slows the steps: their times are not comparable)
    memory_trace: str | None = None
    # a point is stopped ("stopped (host memory)") where the host's available memory falls below this many bytes
    # (engine.hostmem.HostWatch; None: 3% of its memory, at least 2 GB; 0: never)
    host_floor_bytes: float | None = None
    # (an environment variable, two or more values): each point's timed steps alternate the variable's values in
    # rotated order, one row a value (``timed_calls``), so an A/B of a switch read at call time shares one process,
    # one warm-up and one machine's drift (``parse_alternate``)
    alternate: tuple[str, tuple[str, ...]] | None = None


@dataclass
class Row:
    """One measurement (or a skipped one: status says why)."""

    kind: str
    pattern: str
    seq_len: int
    batch: int
    status: str  # ok | oom | stopped (host memory) | skipped (memory) | skipped (host memory) | skipped (time)
    step_s: float | None = None
    tokens_per_s: float | None = None
    peak_gb: float | None = None
    plan_gb: float | None = None
    plan_error_pct: float | None = None
    mfu: float | None = None
    tflops: float | None = None
    density: float | None = None
    params: int | None = None
    non_embedding_params: int | None = None
    layers: int | None = None
    d_model: int | None = None
    precision: str = ""
    recompute: bool | None = None
    cuda_graph: bool = False
    recomputed_blocks: int | None = None  # of ``layers`` (train.checkpoint_blocks, "auto" resolved)
    keep_attention: int = 0  # first recomputed blocks keeping their attention outputs (train.keep_attention resolved)
    label: str = ""
    # the GPU right after the timed steps (nvidia-smi; None off a GPU): SM clock, power, and whether a power
    # or thermal cap held the clock down; at long lengths the H200 runs at its 700 W cap (docs/benchmarks.md,
    # twentieth run), so an MFU is also a statement about the clock it ran at
    sm_mhz: float | None = None
    power_w: float | None = None
    capped: bool | None = None
    # the CUDA caching allocator over the timed steps (``allocator_window``; None off a GPU): its reserved
    # peak, and per step the cache flushes after a failed cudaMalloc (each synchronises the device and
    # frees every cached block) and the cudaMalloc / cudaFree calls made (none once the cache is warm)
    reserved_gb: float | None = None
    alloc_retries: float | None = None
    device_mallocs: float | None = None
    device_frees: float | None = None
    # host memory: the planner's pinned bytes (block inputs, host-kept attention outputs), torch's pinned
    # allocator's peak over the point (CUDA; its blocks rounded up to powers of two, cached ones included), and
    # the machine's memory in use at its fullest while the point ran (MemTotal less the least MemAvailable)
    host_plan_gb: float | None = None
    host_pinned_gb: float | None = None
    host_peak_gb: float | None = None
    variant: str = ""  # NAME=VALUE: this row's value of Options.alternate


# ---------------------------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------------------------


def config_for(base: Config, spec: str, seq_len: int, overrides: list[str] = ()) -> Config:
    """``base`` at ``seq_len`` with every layer on ``spec``, run as a plain one-GPU loop."""
    from .config import apply_overrides

    tree = apply_overrides(base.model_dump(), list(overrides))
    m = tree["model"]
    m["seq_len"], m["attention"]["layers"] = seq_len, [spec.format(block=m["attention"]["block"])]
    if m["embedding"]["kind"] == "image" and math.prod(m["embedding"]["image_shape"]) != seq_len:
        m["embedding"] = {"kind": "window", "window": "auto", "image_shape": None}
    # a plain one-GPU loop: no ZeRO or DeepSpeed checkpointing; the engine's own memory options
    # (cpu_checkpointing, checkpoint_group, model.ffn_chunk) apply as set
    tree["train"].update(zero_stage=0, offload_optimizer=False, offload_params=False,
                         partition_activations=False, compile=False)
    return config_from_dict(tree, source=f"bench config {spec} at {seq_len}")


def _autocast(cfg: Config, device: torch.device):
    if cfg.train.precision == "fp16":
        raise ConfigError("bench scaling times bf16 or fp32 steps (fp16 needs loss scaling): set train.precision")
    if cfg.train.cuda_graph and device.type != "cuda":
        raise ConfigError(f"train.cuda_graph needs a CUDA device, not {device.type}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")


def _step_fn(model, optimizer, autocast, clip: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward, backward, clipping and the optimizer step on one batch; the loss, not synchronised."""
    def step(batch: torch.Tensor) -> torch.Tensor:
        with autocast:
            loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return loss.detach()
    return step


def step_runner(cfg: Config, model, optimizer, autocast, warmup: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The plain loop's step: eager, or with ``train.cuda_graph`` eager for ``warmup`` steps, then
    captured once and replayed (``engine.graphs.GraphedStep``)."""
    step = _step_fn(model, optimizer, autocast, cfg.train.grad_clip)
    if cfg.train.cuda_graph:
        from .graphs import GraphedStep

        return GraphedStep(step, optimizer, warmup=warmup)

    def eager(batch: torch.Tensor) -> torch.Tensor:
        loss = step(batch)
        optimizer.zero_grad(set_to_none=True)
        return loss
    return eager


def parse_alternate(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=V1,V2[,...]`` (an environment variable and two or more distinct values) as (NAME, values)."""
    name, _, values = text.partition("=")
    parts = tuple(v.strip() for v in values.split(","))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or len(parts) < 2 or len(set(parts)) != len(parts):
        raise ConfigError(f"--alternate must be NAME=VALUE,VALUE[,...] (an environment variable and two or more "
                          f"distinct values); got {text!r}")
    return name, parts


@contextmanager
def _env(name: str, value: str | None):
    """``name`` set to ``value`` inside (None: left as it is), restored (or unset again) after."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(cfg: Config, device: torch.device, batch: int, steps: int, warmup: int,
               profile: dict | None = None, trace: Path | None = None,
               allocator: dict | None = None, alternate: tuple[str, tuple[str, ...]] | None = None,
               medians: dict | None = None) -> tuple[float, float | None]:
    """(median step seconds, peak allocated bytes over the timed steps or None off CUDA); with a
    ``profile`` dict on CUDA, also where 2 more steps spend their time (``profile_calls``) into it;
    with a ``trace`` path, what the peak was made of; an ``allocator`` dict gets the allocator's
    counts over the timed steps; ``alternate`` and ``medians`` as ``timed_calls``'s."""
    torch.manual_seed(cfg.run.seed)
    model = SparseTransformer(cfg.model).to(device)
    apply_activation_checkpointing(model, cfg.train)
    optimizer = build_optimizer(model, cfg.train, device)
    data = torch.randint(0, cfg.model.vocab_size, (batch, cfg.model.seq_len + 1), device=device)
    if cfg.train.cuda_graph:
        warmup = max(1, warmup)
    run = step_runner(cfg, model, optimizer, _autocast(cfg, device), warmup)
    # with a graph, the capture follows the warm-up: its memory pool holds the step's peak (replays allocate nothing)
    return timed_calls(lambda: run(data), device, steps, warmup, profile, settle=int(cfg.train.cuda_graph),
                       trace=trace, allocator=allocator, alternate=alternate, medians=medians)


def allocator_window(before: dict[str, int], after: dict[str, int], steps: int, reserved_peak: int) -> dict:
    """The allocator over ``steps`` calls from the counts ``before`` and ``after`` them: per call, the cache
    flushes (``alloc_retries``), cudaMalloc and cudaFree calls; ``reserved_gb``, the reserved peak in GB."""
    per = {"alloc_retries": "num_alloc_retries", "device_mallocs": "num_device_alloc", "device_frees": "num_device_free"}
    out = {k: (after.get(v, 0) - before.get(v, 0)) / max(1, steps) for k, v in per.items()}
    out["reserved_gb"] = reserved_peak / planner.GB
    return out


def timed_calls(call: Callable[[], object], device: torch.device, steps: int, warmup: int,
                profile: dict | None = None, settle: int = 0, trace: Path | None = None,
                allocator: dict | None = None, alternate: tuple[str, tuple[str, ...]] | None = None,
                medians: dict | None = None) -> tuple[float, float | None]:
    """The bench's timing protocol (our kinds and the baseline alike): ``warmup`` untimed calls, the
    allocator's peak reset, ``settle`` more untimed calls, then ``steps`` synchronised timed ones.
    (median seconds, peak allocated bytes since the reset or None off CUDA); with a ``profile`` dict
    on CUDA, ``profile_calls`` of 2 more calls into it; with a ``trace`` path on CUDA, the allocator's
    history from the reset to the last timed call, and what its peak was made of, written there
    (``engine.memtrace.Recorder``); with an ``allocator`` dict on CUDA, ``allocator_window`` over the timed
    calls into it (the reserved peak from the reset). With ``alternate`` (NAME, values), every untimed call and
    every timed one is made once for each value, the environment variable set to it around the call (and
    restored after): ``steps`` rounds, each round's order rotated by one (so no value always follows the same
    one), and ``medians`` gets each value's median; the median returned (and the profile's calls) the first
    value's; the peak and the allocator's counts over all the timed calls."""
    values = alternate[1] if alternate else (None,)
    name = alternate[0] if alternate else ""

    def each(rounds: int) -> None:
        for _ in range(rounds):
            for value in values:
                with _env(name, value):
                    call()

    each(warmup)
    _sync(device)
    recorder = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        if trace is not None:
            from .memtrace import Recorder

            recorder = Recorder(device)
            recorder.start()
    try:
        each(settle)
        _sync(device)
        counts = allocator_counts(device)
        times: dict = {value: [] for value in values}
        for r in range(steps):
            for j in range(len(values)):
                value = values[(r + j) % len(values)]
                with _env(name, value):
                    start = time.perf_counter()
                    call()
                    _sync(device)
                    times[value].append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        if allocator is not None and device.type == "cuda":
            allocator.update(allocator_window(counts, allocator_counts(device), steps * len(values),
                                              torch.cuda.max_memory_reserved(device)))
        if recorder is not None:
            recorder.stop(trace, peak)
            recorder = None
    finally:
        if recorder is not None:  # an error (out of memory) while recording: stop, keep what was recorded
            recorder.abandon(trace)
    if profile is not None and device.type == "cuda":
        with _env(name, values[0]):
            profile.update(profile_calls(call, iters=2, top=16))
    if medians is not None and alternate:
        medians.update({value: statistics.median(t) for value, t in times.items()})
    return statistics.median(times[values[0]]), peak


def _pinned_stats(reset: bool = False) -> float | None:
    """torch's pinned host allocator: its peak bytes (cached blocks included) since the last reset (``reset``:
    reset it); None where this torch has no such statistics (before 2.7, or built without CUDA)."""
    try:
        if reset:
            torch.cuda.reset_peak_host_memory_stats()
            return None
        return float(torch.cuda.host_memory_stats().get("allocated_bytes.peak", 0))
    except (AttributeError, RuntimeError, AssertionError):
        return None


def _free(device: torch.device) -> None:
    """Between points: the GPU's cached blocks and torch's cached pinned host blocks given back (a sweep's
    shorter points would otherwise leave pinned blocks of their sizes cached beside the longer points' own)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        getattr(torch._C, "_host_emptyCache", lambda: None)()
        torch.cuda.reset_peak_memory_stats(device)


def batch_of(cfg: Config, opts: Options) -> int:
    """Sequences a step: ``opts.batch`` (--batch), or the config's micro-batch where it is not given."""
    return cfg.train.micro_batch_size if opts.batch is None else opts.batch


def predicted(cfg: Config, batch: int) -> planner.Plan:
    """The planner's view of one bench step (plain torch loop, one GPU)."""
    return planner.plan(cfg, cfg.model.seq_len, 1, runtime="torch", micro_batch=batch)


def _base_row(kind: str, cfg: Config, batch: int, status: str, p: planner.Plan, label: str = "") -> Row:
    m = cfg.model
    return Row(kind=kind, pattern=m.attention.layers[0], seq_len=m.seq_len, batch=batch, status=status,
               plan_gb=p.peak_bytes / planner.GB, density=p.density, params=p.params,
               non_embedding_params=p.non_embedding_params, layers=m.n_layers, d_model=m.d_model,
               precision=cfg.train.precision, recompute=cfg.train.checkpoint_activations,
               cuda_graph=cfg.train.cuda_graph, recomputed_blocks=p.checkpoint_blocks,
               keep_attention=p.keep_attention, label=label or kind)


def measure(kind: str, cfg: Config, opts: Options, label: str = "") -> Row:
    """Time one (kind, length) configuration; out-of-memory and plan-says-no become statuses (with
    ``opts.alternate``, the first value's row: ``measure_rows`` gives them all)."""
    return measure_rows(kind, cfg, opts, label)[0]


def measure_rows(kind: str, cfg: Config, opts: Options, label: str = "") -> list[Row]:
    """``measure``'s row, or with ``opts.alternate`` one row a value (their ``variant``) where the point ran."""
    if kind in BASELINE_KINDS:
        return measure_baseline(kind, cfg, opts, label)
    device = torch.device(opts.device)
    batch = batch_of(cfg, opts)
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    asked = cfg  # before the autos are resolved: a hint fits them again
    if "auto" in (cfg.train.checkpoint_blocks, cfg.train.keep_attention):
        # on a GPU the recompute with the least work that fits (engine.plan.choose_recompute); off one
        # every block, no attention outputs kept
        fitted = planner.plan(cfg, cfg.model.seq_len, 1, runtime="torch", micro_batch=batch, gpu_bytes=total)
        cfg = planner.with_resolved(cfg, fitted)
        problem = graph_problem(cfg) if total else None
        if problem:
            raise ConfigError(problem)
    p = predicted(cfg, batch)
    if total:
        if p.first_step_peak_bytes > opts.memory_fraction * total:  # the warm-up steps autotune
            hint = planner.offload_hint(asked, asked.model.seq_len, 1, "torch", batch, gpu_bytes=total,
                                        limit_bytes=opts.memory_fraction * total)
            if hint:
                opts.log(f"{label or kind:>8} n={cfg.model.seq_len:>9,}: {hint}")
            return [_base_row(kind, cfg, batch, "skipped (memory)", p, label)]
        if planner.check_host_memory(p, ranks_per_node=1):  # pinned block inputs beyond the RAM
            return [_base_row(kind, cfg, batch, "skipped (host memory)", p, label)]
        room = room_bytes(opts.host_floor_bytes)
        if room is not None and p.host_bytes > room:
            # within the RAM, but not within what is available now above the watch's floor (it would stop the point)
            opts.log(f"{label or kind:>8} n={cfg.model.seq_len:>9,}: skipped, the plan pins {p.host_bytes / 1e9:.1f} GB "
                     f"of host memory and {room / 1e9:.1f} GB is available above the watch's floor")
            return [_base_row(kind, cfg, batch, "skipped (host memory)", p, label)]
    return _timed_rows(kind, cfg, batch, p, label, opts,
                       lambda prof, trace, alloc, medians: time_steps(
                           cfg, device, batch, opts.steps, opts.warmup, prof, trace, alloc, opts.alternate, medians))


def trace_path(opts: Options, label: str, seq_len: int) -> Path | None:
    """Where ``--memory-trace`` writes one point's trace: FOLDER/memory_<label>_n<length> (.txt, .json, .pickle)."""
    if not opts.memory_trace or torch.device(opts.device).type != "cuda":
        return None
    slug = "".join(ch if ch.isalnum() else "_" for ch in label).strip("_") or "point"
    return Path(opts.memory_trace) / f"memory_{slug}_n{seq_len}"


def _timed_rows(kind: str, cfg: Config, batch: int, p: planner.Plan, label: str, opts: Options,
                timer) -> list[Row]:
    """The row of ``timer(profile, trace, allocator, medians) -> (step s, peak bytes)``: ok (its profile kept and
    logged, the allocator's counts in its columns) or oom; with ``opts.alternate`` and the point run, one row a
    value, each its own median (``medians``), labelled and ``variant`` NAME=VALUE, the rest shared."""
    prof = {} if opts.profile else None
    trace = trace_path(opts, label or kind, cfg.model.seq_len)
    alloc: dict = {}
    medians: dict = {}
    cuda = torch.device(opts.device).type == "cuda"
    if cuda:
        _pinned_stats(reset=True)
    watch = HostWatch(opts.host_floor_bytes)
    try:
        with watch:
            step_s, peak = timer(prof, trace, alloc, medians)
    except torch.cuda.OutOfMemoryError:
        row = _row(kind, cfg, batch, "oom", p, label)
    except HostMemoryLow as err:
        opts.log(f"{label or kind:>8} n={cfg.model.seq_len:>9,} stopped: {err}")
        row = _row(kind, cfg, batch, "stopped (host memory)", p, label)
    else:
        row = replace(_finish(_row(kind, cfg, batch, "ok", p, label), p, step_s, peak), **alloc)
        if cuda:
            state = gpu_state()
            row.sm_mhz, row.power_w, row.capped = state.get("sm_mhz"), state.get("power_w"), state.get("capped")
        if prof:
            opts.profiles[f"{row.label} n={row.seq_len}"] = prof
            opts.log(f"{row.label:>8} n={row.seq_len:>9,} profiled: {summary(prof, kernels=5)}")
        if trace is not None:
            opts.log(f"{row.label:>8} n={row.seq_len:>9,} memory at the peak (times slowed by the recording): "
                     + "; ".join(trace.with_suffix(".txt").read_text().splitlines()[:4]))
    if row.plan_gb is not None:  # a baseline row has no plan
        row.host_plan_gb = p.host_bytes / planner.GB
    pinned = _pinned_stats() if cuda else None
    if pinned is not None:
        row.host_pinned_gb = pinned / planner.GB
    if watch.used_peak_bytes is not None:
        row.host_peak_gb = watch.used_peak_bytes / planner.GB
    _free(torch.device(opts.device))
    if not medians:  # not run (oom, stopped), or nothing alternated: one row, no variant
        return [row]
    name = opts.alternate[0]
    return [_finish(replace(row, label=f"{row.label} {name}={value}", variant=f"{name}={value}"), p, step_s, peak)
            for value, step_s in medians.items()]


def _finish(row: Row, p: planner.Plan, step_s: float, peak: float | None) -> Row:
    row.step_s, row.tokens_per_s = step_s, row.batch * row.seq_len / step_s
    row.mfu, row.tflops = p.mfu(step_s), p.flops / step_s / 1e12
    if peak is not None:
        row.peak_gb = peak / planner.GB
        if row.plan_gb is not None:
            row.plan_error_pct = 100.0 * (row.plan_gb - row.peak_gb) / row.peak_gb
    return row


def _row(kind: str, cfg: Config, batch: int, status: str, p: planner.Plan, label: str = "") -> Row:
    """``_base_row`` for any kind; a baseline row has no memory plan and counts the baseline's parameters."""
    row = _base_row(kind, cfg, batch, status, p, label)
    if kind in BASELINE_KINDS:
        row.plan_gb, row.cuda_graph = None, False  # the baseline runs eagerly, whatever train.cuda_graph says
        row.recomputed_blocks = cfg.model.n_layers if cfg.train.checkpoint_activations else 0  # all or none
        row.keep_attention = 0  # its checkpoint keeps nothing
        row.params, row.non_embedding_params = baseline.count_params(cfg.model)
    return row


def measure_baseline(kind: str, cfg: Config, opts: Options, label: str = "") -> list[Row]:
    """Time issue 5's baseline (``engine.baseline``) as ``measure`` times ours: same steps, MFU from the
    planner's FLOPs of the same shape and pattern; no memory plan. Flex has no CPU backward: skipped."""
    device = torch.device(opts.device)
    batch = batch_of(cfg, opts)
    p = predicted(cfg, batch)
    attention = "flex" if kind == "baseline-flex" else "dense"
    if attention == "flex" and device.type != "cuda":
        return [_row(kind, cfg, batch, "skipped (flex: no backward on CPU)", p, label)]
    return _timed_rows(kind, cfg, batch, p, label, opts,
                       lambda prof, trace, alloc, medians: baseline.time_steps(
                           cfg, attention, device, batch, opts.steps, opts.warmup, prof, trace, alloc,
                           opts.alternate, medians))


# ---------------------------------------------------------------------------------------------
# Series, sweep, Table 2, plan validation
# ---------------------------------------------------------------------------------------------


def _predict_step(done: list[Row], seq_len: int, kind: str) -> float | None:
    slowest: dict[int, float] = {}  # a length's step time (where alternated values gave several, the slowest)
    for r in done:
        if r.status == "ok":
            slowest[r.seq_len] = max(slowest.get(r.seq_len, 0.0), r.step_s)
    if not slowest:
        return None
    lengths = sorted(slowest)
    times = [slowest[n] for n in lengths]
    slope = tail_slope(lengths, times, SLOPE_FROM) if len(lengths) > 1 else None
    exponent = max(1.0, slope if slope is not None else (2.0 if kind in ("dense", "baseline-dense") else 1.5))
    return times[-1] * (seq_len / lengths[-1]) ** exponent


def run_series(base: Config, kind: str, spec: str, lengths: list[int], opts: Options) -> list[Row]:
    """One attention kind over increasing lengths, within the series' time budget."""
    rows: list[Row] = []
    start = time.perf_counter()
    for n in sorted(lengths):
        cfg = config_for(base, spec, n)
        guess = _predict_step(rows, n, kind)
        left = opts.budget_s - (time.perf_counter() - start)
        calls = (opts.steps + opts.warmup) * (len(opts.alternate[1]) if opts.alternate else 1)  # a step a value
        if guess is not None and guess * calls > left:
            batch = batch_of(cfg, opts)
            rows.append(_row(kind, cfg, batch, "skipped (time)", predicted(cfg, batch)))
            opts.log(f"{kind:>8} n={n:>9,}: skipped, ~{guess:.1f} s/step would exceed the series budget")
            continue
        new = measure_rows(kind, cfg, opts)
        rows += new
        for row in new:
            opts.log(describe(row))
        if new[0].status in ("oom", "stopped (host memory)", "skipped (memory)", "skipped (host memory)"):
            break
    return rows


def describe(row: Row) -> str:
    """One log line per measurement."""
    head = f"{row.label:>8} n={row.seq_len:>9,} x{row.batch}"
    plan_gb = "?" if row.plan_gb is None else f"{row.plan_gb:.2f}"
    if row.status != "ok" or row.step_s is None:
        return f"{head}: {row.status}" + ("" if row.plan_gb is None else f" (plan {plan_gb} GB)")
    peak = f"peak {row.peak_gb:.2f} GB " if row.peak_gb is not None else ""
    err = f" ({row.plan_error_pct:+.1f}%)" if row.plan_error_pct is not None else ""
    how = ""
    if row.recomputed_blocks is not None and row.layers:
        kept = row.keep_attention
        how = (f", {row.recomputed_blocks}/{row.layers} blocks recomputed"
               f"{', attention kept' if kept else ''}{f' in {kept}' if 0 < kept < row.recomputed_blocks else ''}"
               f"{', CUDA graph' if row.cuda_graph else ''}")
    alloc = ""
    if row.reserved_gb is not None:
        alloc = f", reserved {row.reserved_gb:.2f} GB"
        if row.alloc_retries or row.device_mallocs:
            alloc += (f", allocator per step: {row.alloc_retries:g} cache flushes, {row.device_mallocs:g} cudaMalloc, "
                      f"{row.device_frees:g} cudaFree")
    host = ""
    if row.host_pinned_gb or row.host_plan_gb:
        host = f", host pinned {row.host_pinned_gb or 0:.1f} GB (plan {row.host_plan_gb or 0:.1f})"
    if row.host_peak_gb is not None:
        host += f", host in use at most {row.host_peak_gb:.1f} GB"
    return (f"{head}: {row.step_s:.4f} s/step, {row.tokens_per_s:,.0f} tok/s, MFU {row.mfu:.3f}, "
            f"{peak}" + ("" if row.plan_gb is None else f"plan {plan_gb} GB{err}")).rstrip(", ") + host + how + alloc


def sweep(base: Config, kinds: list[str], lengths: list[int], opts: Options) -> list[Row]:
    """Every kind over the lengths; an out-of-memory error ends that kind's series only."""
    rows = []
    for kind in kinds:
        rows += run_series(base, kind, (KINDS | BASELINE_KINDS)[kind], lengths, opts)
    return rows


def table2(opts: Options, config_dir: Path = CONFIGS, overrides: list[str] = ()) -> list[Row]:
    """Paper Table 2's shape: each data set's config at its context, dense vs fixed vs strided."""
    rows = []
    for name, (file, specs) in TABLE2.items():
        base = load_config(config_dir / file, list(overrides))
        for kind, spec in specs.items():
            cfg = config_for(base, spec, base.model.seq_len)
            row = measure(kind, cfg, opts, label=f"{name} {kind}")
            rows.append(row)
            opts.log(describe(row))
    return rows


def validation_cases(labels: list[str], cases=VALIDATION) -> tuple:
    """The cases whose label is one of ``labels`` (every length a label has), in their order; all of them
    for no labels. An unknown label is a ConfigError listing the known ones."""
    known = list(dict.fromkeys(case[0] for case in cases))
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ConfigError(f"--case: unknown label {unknown[0]!r} (known: {', '.join(map(repr, known))})")
    return tuple(case for case in cases if not labels or case[0] in labels)


def validate_plan(base: Config, opts: Options, lengths: list[int] = VALIDATION_LENGTHS,
                  cases=VALIDATION) -> list[Row]:
    """Measured vs predicted peak memory over configurations differing in length, pattern,
    recomputation, precision and batch."""
    rows = []
    for label, kind, index, overrides in cases:
        n = lengths[min(index, len(lengths) - 1)]
        cfg = config_for(base, KINDS[kind], n, [o.format(half=base.model.n_layers // 2) for o in overrides])
        row = measure(kind, cfg, replace(opts, batch=None), label=label)
        rows.append(row)
        opts.log(describe(row))
    return rows


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def _series(row: Row) -> str:
    """The series a row belongs to: its kind, and its variant where the steps alternated (``Options.alternate``)."""
    return f"{row.kind} {row.variant}" if row.variant else row.kind


def slopes(rows: list[Row], min_len: int = SLOPE_FROM) -> dict[str, float | None]:
    """Fitted log-log slope of step time vs length per series (kind, and variant where alternated; over lengths
    >= min_len if >= 2)."""
    out = {}
    for series in dict.fromkeys(_series(r) for r in rows):
        ok = [r for r in rows if _series(r) == series and r.status == "ok"]
        out[series] = tail_slope([r.seq_len for r in ok], [r.step_s for r in ok], min_len) if len(ok) > 1 else None
    return out


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def write_json(rows: list[Row], path: Path, meta: dict) -> None:
    path.write_text(json.dumps({"meta": meta, "slopes": slopes(rows), "rows": [asdict(r) for r in rows]}, indent=2))


def write_tensorboard(rows: list[Row], log_dir: Path, prefix: str = "scaling") -> None:
    """Scalars per kind with the sequence length as the step: step_s, tokens_per_s, mfu, peak/plan GB."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    for r in (r for r in rows if r.status == "ok"):
        for key in ("step_s", "tokens_per_s", "mfu", "peak_gb", "plan_gb"):
            value = getattr(r, key)
            if value is not None:
                writer.add_scalar(f"{prefix}/{r.label}/{key}", value, r.seq_len)
    writer.close()


def plot(rows: list[Row], path: Path) -> str:
    """Log-log step time vs length per kind, fitted slopes in the legend; returns the backend."""
    fitted = slopes(rows)
    series = {}
    for kind, slope in fitted.items():
        ok = [r for r in rows if _series(r) == kind and r.status == "ok"]
        label = f"{kind} (slope {slope:.2f})" if slope is not None else kind
        series[label] = ([r.seq_len for r in ok], [r.step_s for r in ok])
    return plot_loglog(series, str(path), "training step time vs sequence length",
                       "sequence length (tokens)", "seconds per step")


def write_outputs(rows: list[Row], out: Path, name: str, meta: dict, with_plot: bool) -> list[Path]:
    """CSV, JSON and TensorBoard scalars (and the PNG for sweeps) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.csv", out / f"{name}.json"]
    write_csv(rows, paths[0])
    write_json(rows, paths[1], meta)
    write_tensorboard(rows, out / "tensorboard", prefix=name)
    if with_plot:
        paths.append(out / f"{name}.png")
        meta["plot_backend"] = plot(rows, paths[-1])
    return paths


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (what goes into docs/scaling.md); with the GPU's state after the timed
    steps where any row has it (SM clock, power, capped)."""
    gpu = any(r.sm_mhz is not None for r in rows)
    head = "| config | n | batch | status | s/step | tokens/s | MFU | peak GB | plan GB | plan error |" + \
        (" SM MHz | W | capped |" if gpu else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f"| {r.label} | {r.seq_len:,} | {r.batch} | {r.status} | {fmt(r.step_s, '.4f')} | "
                     f"{fmt(r.tokens_per_s, ',.0f')} | {fmt(r.mfu, '.3f')} | {fmt(r.peak_gb, '.2f')} | "
                     f"{fmt(r.plan_gb, '.2f')} | {fmt(r.plan_error_pct, '+.1f')}{'' if r.plan_error_pct is None else '%'} |"
                     + (f" {fmt(r.sm_mhz, ',.0f')} | {fmt(r.power_w, '.0f')} | "
                        f"{'—' if r.capped is None else 'yes' if r.capped else 'no'} |" if gpu else ""))
    return "\n".join(lines)


def environment() -> dict:
    """What ran the benchmark: torch version and the device."""
    meta = {"torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
    return meta
