"""Attention benchmark: our block-sparse kernels, FlexAttention and dense causal SDPA in one process.

For every (pattern, length, heads x head dim) case: build our layout and Flex's BlockMask for exactly
the same token predicate (Flex's mask_mod written in natural order, as a user would write it),
check our output and Flex's, and their dQ, against the reference on sampled rows, then time forward and
forward+backward with ``triton.testing.do_bench`` (median), then (``rounds``) forward+backward in rounds
alternating between the implementations, with the GPU's clock and power after each: from 262,144 tokens
the H200 runs at its power cap and heats through a run, so the fair comparison is within the same rounds
(docs/benchmarks.md, twentieth run). TFLOP/s count only attended pairs: forward 4 * pairs * D,
forward+backward 3.5x that (SPEC.md section 3).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from unittest import mock

import torch

from . import patterns as P
from .profiling import gpu_energy_mj, gpu_state, profile_calls, summary
from .reference import reference_attention
from .variants import OUR_VARIANTS  # the bench's --peers of our own kernels (also read here by its tests)

# SPEC.md section 3's strided table (l per n); other lengths use the cost-optimal stride
SPEC_STRIDES = {3072: 96, 12288: 128, 65536: 256, 262144: 512, 1048576: 1024}
FIXED_SUMMARY = 128  # "one summary block per window" with 128-blocks


@dataclass
class Case:
    pattern: str  # "fixed", "strided", "strided_matched", or a paper pattern given in full: "fixed(l,c)", "strided(l)"
    seq_len: int
    heads: int
    head_dim: int
    batch: int = 1
    block: int | None = None  # the layout's block; None: the pattern's own choice (case_pattern)


@dataclass
class Result:
    case: Case
    stride: int
    block: int
    density: float
    pairs: int
    timings: dict = field(default_factory=dict)  # "<impl>_<fwd|fwdbwd>_ms", "..._tflops", "<impl>_peak_mb"
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**asdict(self.case), "stride": self.stride, "block": self.block, "density": self.density,
                "pairs": self.pairs, **self.timings, "notes": self.notes}


def fixed_mask_mod(stride: int, width: int):
    """Flex's mask_mod of ``P.fixed(stride, width)``: own window, or the last ``width`` keys of a window."""
    l, c = stride, width

    def mask_mod(b, h, q, kv):
        return (kv <= q) & ((q // l == kv // l) | (kv % l >= l - c))

    return mask_mod


def _density(pattern: P.AttentionPattern, n: int) -> float:
    """Attended share of the n (n + 1) / 2 causal pairs of one head, in closed form (O(1))."""
    return P.closed_form_pairs(pattern.heads[0], n) / (n * (n + 1) / 2)


def matched_stride(n: int) -> int:
    """The strided pattern's stride whose density is nearest (in ratio) the fixed case's at length n,
    among the strides its permuted path takes (divisors of n, at least one 128-block wide where n allows
    it): the pairing issue 3's "strided within 15% of fixed TFLOP/s at equal density" is measured on.
    Groups (n / l positions) narrower than a block are allowed: the permuted half's tiles then hold
    several groups, masked inside (``patterns._split_head``), and that half is n / l keys per query
    against the band's l. (Until 2026-12-01 only strides whose groups fill whole 64-blocks were
    candidates; at 65,536 tokens that paired a strided pattern of 0.35x the fixed density.)"""
    l_f = P.optimal_stride(n, "fixed", FIXED_SUMMARY, 128)
    target = _density(P.same_for_all_heads(P.fixed(l_f, FIXED_SUMMARY), 1), n)
    strides = [l for l in range(16, n // 2 + 1, 16) if n % l == 0]
    # a local window of at least one 128-block where n allows it (below that it is barely "local")
    strides = [l for l in strides if l >= 128] or strides
    if not strides:
        raise ValueError(f"no stride of a multiple of 16 divides n = {n}")
    ratio = lambda l: abs(math.log(_density(P.same_for_all_heads(P.strided(l), 1), n) / target))  # noqa: E731
    return min(strides, key=ratio)


# local bands at least this many 128-blocks wide take 128-blocks even where the strided groups are narrower
WIDE_BAND_BLOCKS = 20


def strided_block(n: int, stride: int) -> int:
    """The strided pattern's block at length n: 128 where its groups (n / l) fill whole 128-blocks (the
    permuted half's tiles are then dense) or where the local band spans ``WIDE_BAND_BLOCKS`` 128-blocks
    or more, else 64. With groups of 64 a 128-block's permuted tiles hold two of them (half their pairs
    masked), but the permuted half is then about n / l keys per query against the band's l: the band's
    larger tiles gain more (H200, 2026-12-01, strided_matched 8x64: at 262,144 tokens, l = 4,096, 32
    128-blocks, 25.0 ms against 26.5 with 64-blocks; at 65,536, l = 1,024, 8 blocks, 3.02 ms against 2.93)."""
    if (n // stride) % 128 == 0 or stride // 128 >= WIDE_BAND_BLOCKS:
        return 128
    return 64


_EXPLICIT = re.compile(r"^(fixed)\((\d+),(\d+)\)$|^(strided)\((\d+)\)$")


def split_patterns(raw: str) -> list[str]:
    """Comma-separated bench patterns, where "fixed(l,c)" keeps its own comma: "fixed,fixed(128,32)" ->
    ["fixed", "fixed(128,32)"]. Spaces are dropped."""
    out, depth, cur = [], 0, ""
    for ch in raw.replace(" ", ""):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in out + [cur] if p]


def pattern_family(pattern: str) -> str:
    """"fixed" or "strided" for any bench pattern ("strided_matched" and "strided(l)" are strided)."""
    return "strided" if pattern.startswith("strided") else "fixed"


def case_pattern(case: Case) -> tuple[P.AttentionPattern, int, int, object]:
    """(pattern, stride, block, Flex mask_mod) of a benchmark case: ``fixed`` (l ~ sqrt(128 n), one
    summary block), ``strided`` (the SPEC's strides), ``strided_matched`` (strided at about the fixed
    case's density, ``matched_stride``), or the paper's patterns with their own parameters, "fixed(l,c)"
    (every head summary slot 0, as the paper's enwik8 fixed(128, 32) and CIFAR-10 fixed(96, 16)) and
    "strided(l)". The block is ``case.block`` where given, else 128 (strided: ``strided_block``)."""
    n = case.seq_len
    if case.block is not None and (case.block <= 0 or n % case.block):
        raise ValueError(f"block {case.block} does not divide the sequence length {n}")
    explicit = _EXPLICIT.match(case.pattern)
    if case.pattern == "fixed" or (explicit and explicit.group(1)):
        if explicit:
            l, c = int(explicit.group(2)), int(explicit.group(3))
            if not 0 < c < l:
                raise ValueError(f"pattern {case.pattern}: needs 0 < c < l")
        else:
            l, c = P.optimal_stride(n, "fixed", FIXED_SUMMARY, 128), FIXED_SUMMARY
        pattern = P.same_for_all_heads(P.fixed(l, c), case.heads)
        return pattern, l, case.block or 128, fixed_mask_mod(l, c)
    if case.pattern in ("strided", "strided_matched") or (explicit and explicit.group(4)):
        if explicit:
            l = int(explicit.group(5))
            if l < 1:
                raise ValueError(f"pattern {case.pattern}: needs l >= 1")
        elif case.pattern == "strided_matched":
            l = matched_stride(n)
        else:
            l = SPEC_STRIDES.get(n) or P.optimal_stride(n, "strided", block=64)
        block = case.block or strided_block(n, l)
        pattern = P.same_for_all_heads(P.strided(l), case.heads)

        def mask_mod(b, h, q, kv):
            return (kv <= q) & (((q - kv) < l) | ((q - kv) % l == 0))

        return pattern, l, block, mask_mod
    raise ValueError(f"unknown benchmark pattern {case.pattern!r} (fixed, strided, strided_matched, fixed(l,c), "
                     "strided(l))")


def count_pairs(layout: P.Layout) -> int:
    """Attended (i, j) pairs summed over heads (uniform layouts count one head)."""
    heads = layout.pattern.heads
    if all(h == heads[0] for h in heads):
        return layout.count_pairs(0) * len(heads)
    return sum(layout.count_pairs(h) for h in range(len(heads)))


def _tflops(pairs: int, head_dim: int, ms: float, backward: bool) -> float:
    flops = 4.0 * pairs * head_dim * (3.5 if backward else 1.0)
    return flops / (ms * 1e-3) / 1e12


def _bench(fn, leaves=()) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=list(leaves), return_mode="median"))


def _peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _sample_rows(n: int, count: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n)
    rows = torch.cat([torch.tensor([0, n - 1]), torch.randint(0, n, (count - 2,), generator=gen)])
    return rows.unique().to(device)


def _row_chunk(q: torch.Tensor) -> int:
    """Query rows a reference chunk takes: (B, H, chunk, n) fp32 scores under 1 GiB."""
    return max(1, 2**28 // (q.shape[0] * q.shape[1] * q.shape[2]))


def _errors(got: torch.Tensor, ref: torch.Tensor, low: torch.Tensor) -> dict:
    """A check's record: ``got``'s max error against the fp32 reference, the bf16 reference's own, and the
    reference's largest magnitude (what ``check_failed`` weighs)."""
    return {"max_err": (got - ref).abs().max().item(), "ref_lowprec_max_err": (low.float() - ref).abs().max().item(),
            "max_abs": ref.abs().max().item()}


def check_rows(out: torch.Tensor, q, k, v, layout, rows: torch.Tensor) -> dict:
    """Max error of ``out`` on sampled rows vs the fp32 reference, beside the bf16 reference's own."""
    chunk = _row_chunk(q)
    ref = reference_attention(q.float(), k.float(), v.float(), layout, rows=rows, query_chunk=chunk)
    low = reference_attention(q, k, v, layout, rows=rows, query_chunk=chunk)
    return _errors(out[:, :, rows].float(), ref, low)


def check_dq_rows(fn, q, k, v, do, layout, rows: torch.Tensor) -> dict:
    """Max error of ``fn``'s dQ on sampled rows vs the fp32 reference's, beside the bf16 reference's own.
    A query row's dQ depends on that row alone (its scores against its keys), so the reference computes
    the sampled rows and takes their gradient with those rows of dO: exact, without the whole backward.
    (dK and dV sum over every query of a key, so they have no such cheap check; the GPU tests compare all
    three gradients at shorter lengths.)"""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    fn(*leaves).backward(do)
    got = leaves[0].grad[:, :, rows].float()
    del leaves

    def reference_dq(dtype):
        x = q.detach().to(dtype).requires_grad_()
        out = reference_attention(x, k.to(dtype), v.to(dtype), layout, rows=rows, query_chunk=_row_chunk(q))
        (dq,) = torch.autograd.grad(out, x, do[:, :, rows].to(dtype))
        return dq[:, :, rows].float()

    return _errors(got, reference_dq(torch.float32), reference_dq(q.dtype))


def check_failed(check: dict, atol: float = 1e-2) -> bool:
    """Whether a sampled-row check (``check_rows``, ``check_dq_rows``) is outside the three-way tolerance of
    the tests: twice the low-precision reference's own error, plus ``atol`` times max(1, the largest
    magnitude) (looser than the tests' bf16 2e-3: a bench row sums over up to a million keys); a
    non-finite error fails. A wrong kernel is far outside it (the swapped atomic dQ of the twenty-third
    run: relative error 3)."""
    err, low, top = check["max_err"], check["ref_lowprec_max_err"], check["max_abs"]
    return not math.isfinite(err) or err > 2 * low + atol * max(1.0, top)


def _our_fn(layout):
    from .blocksparse import blocksparse_attention

    return lambda q, k, v: blocksparse_attention(q, k, v, layout)


def block_mask_bytes(block_mask) -> int:
    """Bytes held by a Flex BlockMask's tensors (block counts and indices, both directions), each storage
    counted once. Summed from the tensors, not from allocator deltas: a build that runs the garbage
    collector frees earlier cases' leftovers in between (the delta once came out at -1,032 MB)."""
    seen: dict[int, int] = {}
    for t in block_mask.as_tuple(flatten=True):
        if isinstance(t, torch.Tensor):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


# Flex's BlockMask is built by its eager path up to this length (the dense mask: n^2 bools and its index
# arithmetic, 0.15 G elements at 12,288) and by its compiled path beyond. On a fresh H200 (torch 2.11,
# 2026-12-01) the compiled path's cold build at 12,288 tokens spent 214 s, in Triton's LLVM and ptxas passes
# over one generated kernel (stacks dumped from a bare script), against 4 s eager; at 65,536 it then took 20 s.
FLEX_EAGER_MASK_MAX = 16384


def flex_block_mask(mask_mod, n: int, device, block: int):
    """Flex's own ``create_block_mask`` of ``mask_mod`` over n queries and keys (``FLEX_EAGER_MASK_MAX``:
    eager or compiled build; the BlockMask is the same either way)."""
    from torch.nn.attention.flex_attention import create_block_mask

    device = torch.device(device)
    compiled = device.type == "cuda" and n > FLEX_EAGER_MASK_MAX
    return create_block_mask(mask_mod, None, None, n, n, device=device, BLOCK_SIZE=block, _compile=compiled)


def _flex_fn(mask_mod, n, device, result: Result):
    torch.cuda.synchronize()
    start = time.perf_counter()
    block_mask = flex_block_mask(mask_mod, n, device, 128)
    torch.cuda.synchronize()
    result.timings["flex_mask_build_ms"] = (time.perf_counter() - start) * 1e3
    result.timings["flex_mask_mb"] = block_mask_bytes(block_mask) / 2**20
    compiled = flex_compiled(fresh=True)  # static shapes for this case alone (see flex_compiled)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


_FLEX = None


def flex_compiled(fresh: bool = False):
    """``torch.compile(flex_attention)``; ``fresh`` resets dynamo first, so the next call compiles for its
    shapes alone, as a script run at one shape does.

    A compiled function shared across shapes recompiles the second one with dynamic shapes, and those
    Flex kernels are slower: at 1,048,576 tokens (H=8, D=64, fixed pattern; H200, 2026-11-30) the static
    forward took 66 ms and the backward 221 ms inside the baseline's model, the dynamic ones 83 and 299 ms
    in the attention bench, whose every case after the first shared one compile until then. The bench
    and the baseline both compile fresh per case or length.
    """
    global _FLEX
    import torch._dynamo

    if fresh:
        torch._dynamo.reset()
        _FLEX = None
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        # past the default 8 recompiles Flex silently falls back to its unfused eager path
        torch._dynamo.config.recompile_limit = 512
        torch._dynamo.config.accumulated_recompile_limit = 4096
        _FLEX = torch.compile(flex_attention)
    return _FLEX


def _sdpa_fn():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return run




def _graphed(call, leaves=()):
    """``call`` captured in a CUDA graph after a warm-up on a side stream: the graph's replay. The
    leaves' gradients are None before capture, so each replay writes them afresh (no accumulation)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay


def _time_graphed(name, fwd, fwdbwd, leaves, result: Result, pairs: int, head_dim: int) -> None:
    """Replay-only timings (``{name}_graph_*``): the kernels without the host's cost of issuing them,
    which at short lengths exceeds the GPU's (docs/benchmarks.md). A failed capture is a note."""
    t = result.timings
    try:
        t[f"{name}_graph_fwd_ms"] = _bench(_graphed(fwd))
        t[f"{name}_graph_fwdbwd_ms"] = _bench(_graphed(fwdbwd, leaves))
        t[f"{name}_graph_fwdbwd_tflops"] = _tflops(pairs, head_dim, t[f"{name}_graph_fwdbwd_ms"], True)
    except Exception as err:  # noqa: BLE001 - a peer that cannot be captured is a result
        result.notes.append(f"{name} CUDA graph failed: {type(err).__name__}: {str(err)[:200]}")
    finally:
        torch.cuda.synchronize()


def _flag_failed_checks(result: "Result", name: str) -> list[str]:
    """A note for each of ``name``'s sampled-row checks outside the tolerance (returned too, for the log): its
    timings are then of a kernel that computes something else, and the note says so beside them."""
    notes = []
    for what in ("check", "dq_check"):
        check = result.timings.get(f"{name}_{what}")
        if check is not None and check_failed(check):
            note = (f"{name} {'output' if what == 'check' else 'dQ'} check FAILED: max error {check['max_err']:.3g} "
                    f"against the bf16 reference's {check['ref_lowprec_max_err']:.3g} (max |ref| {check['max_abs']:.3g})")
            result.notes.append(note)
            notes.append(note)
    return notes


def _time_impl(name, fn, q, k, v, do, result: Result, pairs: int, graphs: bool = False) -> None:
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def fwd():
        with torch.no_grad():
            fn(q, k, v)

    def fwdbwd():
        fn(*leaves).backward(do)

    fwdbwd()  # compile / autotune outside the timings
    fwd()
    t = result.timings
    t[f"{name}_fwd_ms"] = _bench(fwd)
    t[f"{name}_fwdbwd_ms"] = _bench(fwdbwd, leaves)
    t[f"{name}_fwd_tflops"] = _tflops(pairs, q.shape[-1], t[f"{name}_fwd_ms"], False)
    t[f"{name}_fwdbwd_tflops"] = _tflops(pairs, q.shape[-1], t[f"{name}_fwdbwd_ms"], True)
    t[f"{name}_peak_mb"] = _peak_mb(fwdbwd)
    if graphs:
        # fresh leaves for the capture: AccumulateGrad nodes of the eager calls' leaves, made on the
        # default stream, can be alive still and then meet the side-stream warm-up and the capture (torch
        # warned of exactly that in the one case whose capture failed, fixed 262,144 2x128, twice)
        graph_leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        leaves.clear()  # the eager leaves (and their gradients) go

        def graph_fwdbwd():
            fn(*graph_leaves).backward(do)

        _time_graphed(name, fwd, graph_fwdbwd, graph_leaves, result, pairs, q.shape[-1])


def alternate(entries: list[tuple[str, object, int, dict]], rounds: int, timer, state=None) -> dict:
    """Each of ``rounds`` rounds times every entry (name, step, calls, env) in turn: one untimed ``step()``,
    then ``timer(step, calls)`` (ms a call), under ``env`` (environment variables for our own variants),
    then ``state()`` (default ``gpu_state``). Alternating puts each implementation through the same heating of the
    GPU, where timing one after the other times the first cool and the last hot. Returns per name the
    rounds' ms, their median, and each round's SM clock, power and cap after it."""
    state = gpu_state if state is None else state
    out = {name: {"ms": [], "sm_mhz": [], "power_w": [], "capped": []} for name, *_ in entries}
    for _ in range(rounds):
        for name, step, calls, env in entries:
            with mock.patch.dict(os.environ, env):
                step()
                out[name]["ms"].append(timer(step, calls))
            now = state()
            for key in ("sm_mhz", "power_w", "capped"):
                out[name][key].append(now.get(key))
    for row in out.values():
        row["median_ms"] = statistics.median(row["ms"]) if row["ms"] else None
    return out


def _event_timer(step, calls: int) -> float:
    """ms a call of ``calls`` back-to-back ``step()`` calls, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


# an alternated round times each implementation for at least this long (a few calls at short lengths,
# one at 1M tokens)
ROUND_MS = 250.0


def round_calls(ms: float) -> int:
    """Calls of ``ms`` each that make up an alternated round (``ROUND_MS``), 1 to 50."""
    return max(1, min(50, round(ROUND_MS / ms)))
# each implementation's energy is read over one window of at least this long after the rounds: NVML's counter
# moves every 20-100 ms
ENERGY_MS = 2000.0


def energy_per_call(step, calls: int, energy=None, sync=None) -> float | None:
    """Joules a call of ``step``: the GPU's energy counter (``energy``, default ``gpu_energy_mj``) read
    around ``calls`` calls (after one untimed call, synchronised by ``sync``, default the CUDA device's);
    None where the counter cannot be read or went backwards."""
    energy = gpu_energy_mj if energy is None else energy
    sync = torch.cuda.synchronize if sync is None else sync
    step()
    sync()
    before = energy()
    if before is None:
        return None
    for _ in range(calls):
        step()
    sync()
    after = energy()
    return (after - before) / 1e3 / calls if after is not None and after >= before else None


def _alternated(result: Result, timed: list[tuple[str, object, dict]], q, k, v, do, rounds: int) -> None:
    """``alternate`` over the implementations ``timed`` (name, fn, env) on this case, into ``result``:
    ``{name}_alt_fwdbwd_ms`` (each round), ``_alt_median_ms``, ``_alt_sm_mhz``, ``_alt_power_w``, ``_alt_capped``,
    and ``alt_vs_flex``, the median over rounds of Flex's time over ours in the same round; then each one's
    ``{name}_fwdbwd_joules`` (``energy_per_call`` over ``ENERGY_MS``; None without NVML)."""
    entries = []
    for name, fn, env in timed:
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]

        def step(fn=fn, leaves=leaves):
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(do)

        entries.append((name, step, round_calls(result.timings.get(f"{name}_fwdbwd_ms") or ROUND_MS), env))
    rows = alternate(entries, rounds, _event_timer)
    for name, step, _, env in entries:
        row, t = rows[name], result.timings
        t[f"{name}_alt_fwdbwd_ms"] = [round(x, 4) for x in row["ms"]]
        t[f"{name}_alt_median_ms"] = round(row["median_ms"], 4)
        t[f"{name}_alt_sm_mhz"], t[f"{name}_alt_power_w"] = row["sm_mhz"], row["power_w"]
        t[f"{name}_alt_capped"] = row["capped"]
        with mock.patch.dict(os.environ, env):  # joules a forward+backward, over one window of ENERGY_MS
            joules = energy_per_call(step, max(1, math.ceil(ENERGY_MS / row["median_ms"])))
        t[f"{name}_fwdbwd_joules"] = None if joules is None else round(joules, 4)
    if "ours" in rows and "flex" in rows:
        result.timings["alt_vs_flex"] = round(statistics.median(
            f / o for f, o in zip(rows["flex"]["ms"], rows["ours"]["ms"])), 4)


def _graph_note(result: Result, name: str) -> str:
    ms = result.timings.get(f"{name}_graph_fwdbwd_ms")
    return "" if ms is None else f", {ms:.3f} ms replayed from a CUDA graph"


def profile_fwdbwd(fn, q, k, v, do, iters: int = 10) -> dict:
    """Where one forward+backward spends its time (``profiling.profile_calls``)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def call():
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(do)

    return profile_calls(call, iters)


def tuned_configs() -> dict:
    """The config the autotuner chose for each of our kernels and key seen so far."""
    from . import blocksparse as B

    return {name: {str(key): str(cfg) for key, cfg in tuned.cache.items()}
            for name, tuned in (("fwd", B._fwd_tuned), ("dq", B._dq_tuned), ("dkdv", B._dkdv_tuned),
                                ("merged", B._merged_tuned))}


def tile_record(clear: bool = True) -> dict[str, dict]:
    """Per kernel of ours launched since the last clear: the configs the autotuner chose ("chosen", tile
    names) and, for the tuning keys it timed in that time, its median ms for each config ("timed", one dict
    per key; ``blocksparse.tuning_timings``); kernels it did not serve are left out."""
    from . import blocksparse as B

    out = {}
    for name in B._KERNEL_NAMES:
        timed = [{B.tile_name(e): round(ms, 4) for e, ms in t.items()} for t in B.tuning_timings(name)]
        chosen = [B.tile_name(e) for e in B.chosen_tiles(name, clear=clear)]
        if chosen:
            out[name] = {"chosen": chosen, "timed": timed}
    return out


def tile_choices(clear: bool = True) -> list[str]:
    """``tile_record`` as one note per kernel: what the autotuner chose, and the medians it chose from."""
    notes = []
    for name, rec in tile_record(clear).items():
        note = f"{name} tiles {', '.join(rec['chosen'])}"
        if rec["timed"]:
            note += " (tuned " + "; ".join(", ".join(f"{tile} {ms * 1e3:.1f} us" for tile, ms in t.items())
                                          for t in rec["timed"]) + ")"
        notes.append(note)
    return notes


def auto_choices(layout) -> list[str]:
    """What DQ_MODE "auto" chose at this layout, per shape, with the backward times it compared."""
    notes = []
    for key, mode in layout.kernel_cache.items():
        if isinstance(key, tuple) and key[0] == "dq_mode" and key[-1] != "seconds":
            timed = layout.kernel_cache.get(key + ("seconds",), {})
            notes.append(f"dQ mode auto chose {mode} at {list(key[1])}, order {key[4]} ("
                         + ", ".join(f"{m} {s * 1e3:.3f} ms" for m, s in timed.items()) + " backward)")
    return notes


def flat_choices(layout, clear: bool = False) -> list[str]:
    """What the flat forward, dQ and dK/dV (kernels/flat.py) chose at this layout so far: a config or "default", with the
    times it chose from; ``clear`` forgets the choices (a later variant times afresh)."""
    from . import flat

    kinds = ("fwd", "dq", "dkdv")
    notes = [f"{kind} {note}" for kind in kinds for note in flat.choices(layout, kind)]
    if clear:
        for key in [k for k in layout.kernel_cache if isinstance(k, tuple) and k and k[0] in [f"flat_{x}" for x in kinds]]:
            del layout.kernel_cache[key]
    return notes


def run_case(case: Case, peers: set[str], dtype=torch.bfloat16, check_rows_count: int = 32,
             flex_max: dict | None = None, dense_max: int = 262144, log=print, profile: bool = False,
             graphs: bool = False, rounds: int = 0) -> Result:
    """Check, then time our kernel and the peers on one case (``graphs``: also replayed from CUDA graphs;
    ``rounds``: then that many rounds of forward+backward alternating between them, ``alternate``)."""
    device = torch.device("cuda")
    pattern, stride, block, mask_mod = case_pattern(case)
    n = case.seq_len
    torch.cuda.synchronize()
    start = time.perf_counter()
    layout = P.build_layout(pattern, n, block, device=device)
    torch.cuda.synchronize()
    build_ms = (time.perf_counter() - start) * 1e3
    pairs = count_pairs(layout) * case.batch
    density = pairs / (case.batch * case.heads * n * (n + 1) / 2)
    result = Result(case, stride, block, density, pairs)
    result.timings["layout_build_ms"] = build_ms
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (case.batch, case.heads, n, case.head_dim)
    q, k, v, do = (torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(4))
    rows = _sample_rows(n, check_rows_count, device)

    ours = _our_fn(layout)
    tile_choices(clear=True)  # forget earlier cases' launches: this case's notes name its own tiles
    t_case = time.perf_counter()
    stage = lambda what: log(f"  [{time.perf_counter() - t_case:7.1f} s] {what}")  # noqa: E731 - where a slow case spends it
    with torch.no_grad():
        result.timings["ours_check"] = check_rows(ours(q, k, v), q, k, v, layout, rows)
    result.timings["ours_dq_check"] = check_dq_rows(ours, q, k, v, do, layout, rows)
    for note in _flag_failed_checks(result, "ours"):
        stage(note)
    stage("ours checked against the reference (output and dQ rows)")
    from .blocksparse import dkdv_split, gpu_sms, metadata_bytes

    result.timings["ours_layout_mb"] = metadata_bytes(layout) / 2**20
    _time_impl("ours", ours, q, k, v, do, result, pairs, graphs)
    timed = [("ours", ours, {})]  # what the alternated rounds take
    stage(f"ours  {result.timings['ours_fwdbwd_ms']:.3f} ms f+b" + _graph_note(result, "ours"))
    split = dkdv_split(layout, case.batch, gpu_sms(q))
    for note in auto_choices(layout) + [f"dK/dV columns {f'in segments of {split} query blocks' if split else 'whole'}"] \
            + tile_choices(clear=True):
        result.notes.append(note)
        stage(note)
    if profile:
        prof = result.timings["ours_profile"] = profile_fwdbwd(ours, q, k, v, do)
        stage(f"ours profiled: {summary(prof)}")
    for variant in [p for p in OUR_VARIANTS if p in peers]:  # our kernels again in another backward mode
        with mock.patch.dict(os.environ, OUR_VARIANTS[variant]):
            with torch.no_grad():  # a variant may change the forward too (flat)
                result.timings[f"ours_{variant}_check"] = check_rows(ours(q, k, v), q, k, v, layout, rows)
            result.timings[f"ours_{variant}_dq_check"] = check_dq_rows(ours, q, k, v, do, layout, rows)
            for note in _flag_failed_checks(result, f"ours_{variant}"):
                stage(note)
            _time_impl(f"ours_{variant}", ours, q, k, v, do, result, pairs, graphs)
        timed.append((f"ours_{variant}", ours, OUR_VARIANTS[variant]))
        stage(f"ours, {variant}  {result.timings[f'ours_{variant}_fwdbwd_ms']:.3f} ms f+b"
              + _graph_note(result, f"ours_{variant}"))
        for note in [f"{variant}: flat {c}" for c in flat_choices(layout, clear=True)]:
            result.notes.append(note)
            stage(note)
    flex_limit = (flex_max or {}).get(pattern_family(case.pattern), 1 << 62)
    if "flex" in peers and n <= flex_limit:
        try:
            flex = _flex_fn(mask_mod, n, device, result)
            stage(f"flex block mask built ({result.timings['flex_mask_build_ms']:.0f} ms)")
            with torch.no_grad():
                result.timings["flex_check"] = check_rows(flex(q, k, v), q, k, v, layout, rows)
            result.timings["flex_dq_check"] = check_dq_rows(flex, q, k, v, do, layout, rows)
            for note in _flag_failed_checks(result, "flex"):
                stage(note)
            stage("flex compiled and checked (output and dQ rows)")
            _time_impl("flex", flex, q, k, v, do, result, pairs, graphs)
            timed.append(("flex", flex, {}))
            stage(f"flex  {result.timings['flex_fwdbwd_ms']:.3f} ms f+b" + _graph_note(result, "flex"))
            if profile:
                prof = result.timings["flex_profile"] = profile_fwdbwd(flex, q, k, v, do)
                stage(f"flex profiled: {summary(prof)}")
        except Exception as err:  # a peer failing is a result, not a crash
            result.notes.append(f"flex failed: {type(err).__name__}: {str(err)[:300]}")
            log(f"  flex failed: {err!r}"[:400])
        finally:
            torch.cuda.empty_cache()
    elif "flex" in peers:
        result.notes.append(f"flex skipped above n={flex_limit} for {case.pattern} (minutes per step)")
    if "sdpa" in peers and n <= dense_max:
        dense_pairs = case.batch * case.heads * n * (n + 1) // 2
        sdpa = _sdpa_fn()
        _time_impl("sdpa", sdpa, q, k, v, do, result, dense_pairs, graphs)
        timed.append(("sdpa", sdpa, {}))
        stage(f"sdpa  {result.timings['sdpa_fwdbwd_ms']:.3f} ms f+b" + _graph_note(result, "sdpa"))
    elif "sdpa" in peers:
        result.notes.append(f"dense SDPA skipped above n={dense_max}")
    if rounds and len(timed) > 1:
        try:
            _alternated(result, timed, q, k, v, do, rounds)
            ratio = result.timings.get("alt_vs_flex")
            stage(f"{rounds} alternated rounds: " + ", ".join(
                f"{name} {result.timings[f'{name}_alt_median_ms']:.3f} ms" for name, *_ in timed)
                + (f"; Flex / ours {ratio:.3f}" if ratio else ""))
        finally:
            torch.cuda.empty_cache()
    return result


def run_bench(cases: list[Case], peers: set[str], out_dir: str | None = None, log=print, **kw) -> list[Result]:
    """Run every case; write JSON and a markdown table after each (partial results survive a timeout)."""
    results = []
    for case in cases:
        log(f"{case.pattern} n={case.seq_len} H={case.heads} D={case.head_dim}")
        try:
            results.append(run_case(case, peers, log=log, **kw))
        except torch.cuda.OutOfMemoryError as err:
            log(f"  out of memory: {str(err)[:200]}")
        torch.cuda.empty_cache()
        if out_dir:
            write_outputs(results, out_dir)
    return results


def environment() -> dict:
    """Device, versions, date, and the kernels' switches (dQ mode, split columns, runs walk, the backward
    step's product order) the run had."""
    import triton

    from . import blocksparse as B

    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d"), "dtype": "bfloat16", "batch": 1,
            "dq_mode": B.dq_mode(), "dkdv_split": B.dkdv_split_setting(), "runs": B.use_runs(),
            "order": B.block_order(), "tma_loads": B.use_tma_loads(), "partials": B.partials_setting(),
            "dots_first": bool(B.DOTS_FIRST), "split_finish": B.split_finish(), "delta_in_dq": B.delta_in_dq(),
            "direct_launch": B.use_direct_launch(), "gluon_backward": B.gluon_setting(),
            "gluon_dq": B.gluon_dq_setting(), "gluon_ahead": _gluon_ahead(), "gluon_forward": B.gluon_fwd_setting(),
            "plans": os.environ.get("MEGASTRIDE_BLOCKSPARSE_PLANS", B.PLANS)}


def _gluon_ahead() -> bool | None:
    """``gluon_bwd.look_ahead`` for whole columns into fp16 sums (None on a Triton without Gluon)."""
    try:
        from . import gluon_bwd
    except ImportError:
        return None
    return gluon_bwd.look_ahead(torch.float16, False, False)


def _fmt(x, digits=2) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}f}" if x < 1000 else f"{x:,.0f}"


def table(results: list[Result]) -> str:
    """Markdown table: one row per case, ours beside Flex and dense SDPA."""
    head = ("| pattern | n | H×D | density | ours fwd ms | ours f+b ms | ours f+b TFLOP/s | Flex fwd ms | Flex f+b ms "
            "| Flex f+b TFLOP/s | SDPA dense f+b ms | f+b speed-up vs Flex | ours peak MB | Flex peak MB "
            "| our layout MB | Flex BlockMask MB |")
    # our other backward modes (OUR_VARIANTS) that were timed: one column each
    variants = sorted({k[:-len("_fwdbwd_ms")] for r in results for k in r.timings
                       if k.startswith("ours_") and k.endswith("_fwdbwd_ms") and k != "ours_fwdbwd_ms"
                       and "_graph_" not in k and "_alt_" not in k})
    head = head[:-1] + "".join(f"| {v} f+b ms " for v in variants) + "|"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        t = r.timings.get
        speedup = t("flex_fwdbwd_ms") / t("ours_fwdbwd_ms") if t("flex_fwdbwd_ms") else None
        lines.append(
            f"| {r.case.pattern} (l={r.stride}, block {r.block}) | {r.case.seq_len:,} | {r.case.heads}×{r.case.head_dim} "
            f"| {r.density:.4f} | {_fmt(t('ours_fwd_ms'), 3)} | {_fmt(t('ours_fwdbwd_ms'), 3)} "
            f"| {_fmt(t('ours_fwdbwd_tflops'), 0)} | {_fmt(t('flex_fwd_ms'), 3)} | {_fmt(t('flex_fwdbwd_ms'), 3)} "
            f"| {_fmt(t('flex_fwdbwd_tflops'), 0)} | {_fmt(t('sdpa_fwdbwd_ms'), 3)} "
            f"| {_fmt(speedup)}{'×' if speedup else ''} | {_fmt(t('ours_peak_mb'), 0)} | {_fmt(t('flex_peak_mb'), 0)} "
            f"| {_fmt(t('ours_layout_mb'))} | {_fmt(t('flex_mask_mb'))} |"
            + "".join(f" {_fmt(t(v + '_fwdbwd_ms'), 3)} |" for v in variants))
    graphed = [r for r in results if "ours_graph_fwdbwd_ms" in r.timings]
    if graphed:  # --graphs: the same cases replayed from CUDA graphs (no host issue cost)
        graph_head = ("| pattern | n | H×D | ours fwd ms | ours f+b ms | ours f+b TFLOP/s | Flex fwd ms | Flex f+b ms "
                      "| SDPA dense f+b ms | f+b speed-up vs Flex |" + "".join(f" {v} f+b ms |" for v in variants))
        lines += ["", "Replayed from CUDA graphs (`--graphs`):", "", graph_head, "|" + "---|" * (graph_head.count("|") - 1)]
        for r in graphed:
            t = r.timings.get
            flex = t("flex_graph_fwdbwd_ms")
            speedup = flex / t("ours_graph_fwdbwd_ms") if flex else None
            lines.append(
                f"| {r.case.pattern} (l={r.stride}, block {r.block}) | {r.case.seq_len:,} | {r.case.heads}×{r.case.head_dim} "
                f"| {_fmt(t('ours_graph_fwd_ms'), 3)} | {_fmt(t('ours_graph_fwdbwd_ms'), 3)} "
                f"| {_fmt(t('ours_graph_fwdbwd_tflops'), 0)} | {_fmt(t('flex_graph_fwd_ms'), 3)} | {_fmt(flex, 3)} "
                f"| {_fmt(t('sdpa_graph_fwdbwd_ms'), 3)} | {_fmt(speedup)}{'×' if speedup else ''} |"
                + "".join(f" {_fmt(t(v + '_graph_fwdbwd_ms'), 3)} |" for v in variants))
    alternated = [r for r in results if "ours_alt_median_ms" in r.timings]
    if alternated:  # --rounds: forward+backward alternating between the implementations, round by round
        lines += ["", "Alternated rounds (`--rounds`; ms: the rounds' median; MHz and W: nvidia-smi after each "
                  "round, median; capped: rounds that ended under a power or thermal cap; J: NVML's energy counter "
                  "over one window of at least 2 s after the rounds):", "",
                  "| pattern | n | H×D | rounds | ours f+b ms | Flex f+b ms "
                  "| Flex / ours (same rounds: median, lowest-highest) "
                  "| SDPA dense f+b ms | ours SM MHz | Flex SM MHz | ours W | Flex W | capped (ours, Flex) "
                  "| J per f+b, ours / Flex |",
                  "|" + "---|" * 14]
        for r in alternated:
            t = r.timings.get

            def med(key):
                vals = [x for x in (t(key) or []) if x is not None]
                return statistics.median(vals) if vals else None

            def capped(name):
                vals = t(f"{name}_alt_capped")
                return "—" if not vals or None in vals else f"{sum(vals)}/{len(vals)}"

            ratio = t("alt_vs_flex")
            each = [f / o for f, o in zip(t("flex_alt_fwdbwd_ms") or [], t("ours_alt_fwdbwd_ms") or []) if f and o]
            spread = f" ({min(each):.3f}-{max(each):.3f})" if ratio and len(each) > 1 else ""
            lines.append(
                f"| {r.case.pattern} (l={r.stride}, block {r.block}) | {r.case.seq_len:,} | {r.case.heads}×{r.case.head_dim} "
                f"| {len(t('ours_alt_fwdbwd_ms'))} | {_fmt(t('ours_alt_median_ms'), 3)} | {_fmt(t('flex_alt_median_ms'), 3)} "
                f"| {_fmt(ratio, 3)}{'×' if ratio else ''}{spread} | {_fmt(t('sdpa_alt_median_ms'), 3)} "
                f"| {_fmt(med('ours_alt_sm_mhz'), 0)} | {_fmt(med('flex_alt_sm_mhz'), 0)} "
                f"| {_fmt(med('ours_alt_power_w'), 0)} | {_fmt(med('flex_alt_power_w'), 0)} "
                f"| {capped('ours')}, {capped('flex')} "
                f"| {_fmt(t('ours_fwdbwd_joules'), 3)} / {_fmt(t('flex_fwdbwd_joules'), 3)} |")
    return "\n".join(lines)


def write_outputs(results: list[Result], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_attention.json"), "w") as f:
        json.dump({"environment": environment(), "tuned_configs": tuned_configs(),
                   "results": [r.as_dict() for r in results]}, f, indent=1)
    with open(os.path.join(out_dir, "bench_attention.md"), "w") as f:
        env = environment()
        f.write(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
                f"{env['date']}, bf16, B=1, dQ mode {env['dq_mode']}{', runs' if env['runs'] else ''}, order {env['order']}"
                f"{', split ' + str(env['dkdv_split']) if env['dkdv_split'] else ''}\n\n{table(results)}\n")
        notes = [f"- {r.case.pattern} n={r.case.seq_len} {r.case.heads}x{r.case.head_dim}: {n}"
                 for r in results for n in r.notes]
        if notes:
            f.write("\n" + "\n".join(notes) + "\n")


def flop_floor_ms(pairs: int, head_dim: int, rate_tflops: float = 790.0) -> float:
    """Forward+backward time at the H200's measured bf16 matrix rate (a floor, not a target)."""
    return 4.0 * pairs * head_dim * 3.5 / (rate_tflops * 1e12) * 1e3 if pairs else math.nan
