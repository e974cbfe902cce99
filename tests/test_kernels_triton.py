"""The Triton block-sparse kernels, run by the Triton interpreter on CPU, against the reference.

Every test compares the output and all three gradients three ways (STYLE.md):
|kernel - ref_fp64| <= 2 * |ref_lowprec - ref_fp64| + atol, with every output buffer poisoned with
NaN first so an unwritten element fails. bf16 and long lengths are covered on the GPU by
``python -m megastride.kernels.gpu_check``.
"""

import math
import os
import subprocess
import sys

import pytest

# the interpreter is chosen before triton is first imported: tests/conftest.py sets it where torch sees no
# GPU. Setting it here would switch every other module of a GPU session (`pytest -m gpu tests/`) to the
# interpreter too, so on a GPU host these tests run only in a session of their own that asks for it.
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the block-sparse kernels' interpreter tests: run them with TRITON_INTERPRET=1 in a session of their own "
                "on a GPU host", allow_module_level=True)

import torch  # noqa: E402

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter on numpy 2

from megastride.kernels import patterns as P  # noqa: E402
from megastride.kernels import reference_attention, sparse_attention, sparse_attention_qkv  # noqa: E402
from megastride.kernels import blocksparse  # noqa: E402
from megastride.kernels.blocksparse import _natural_tile  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from layout_workspaces import layout_workspaces  # noqa: E402 - the kernels' tests' shared reader

ATOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def SLOW(*values):  # noqa: N802 - reads as a marker in the parameter lists
    """One parameter set of a test that also runs, faster, on the sets left unmarked: skipped in the
    default suite (over 20 minutes on 2 cores otherwise), run with MEGASTRIDE_SLOW_TESTS=1 (conftest)."""
    return pytest.param(*values, marks=pytest.mark.slow)

# name -> (pattern factory(heads), n, block, heads, head dim, dtype, batch)
CASES = {
    "dense": (lambda h: P.dense(), 256, 64, 2, 32, torch.float32, 2),
    "local": (lambda h: P.local(40), 256, 32, 2, 64, torch.float16, 1),
    "strided_permuted_full_tiles": (lambda h: P.strided(16), 512, 32, 2, 32, torch.float16, 1),  # n/l = 32
    "strided_permuted_straddling": (lambda h: P.strided(32), 256, 32, 2, 32, torch.float32, 1),  # n/l = 8
    "strided_natural_fallback": (lambda h: P.strided(24), 256, 64, 2, 32, torch.float32, 1),  # 24 does not divide n
    "fixed_d128": (lambda h: P.fixed(64, 16), 256, 64, 2, 128, torch.float32, 1),
    "fixed_block128": (lambda h: P.fixed(128, 32), 512, 128, 2, 64, torch.float16, 1),  # summary-first part
    # summary-first with windows of 48 across 32-blocks: both parts' tiles straddle windows
    "fixed_summary_first_odd_window": (lambda h: P.fixed(48, 8), 384, 32, 2, 32, torch.float16, 1),
    "strided_block128": (lambda h: P.strided(4), 512, 128, 2, 32, torch.float32, 1),  # n/l = 128
    "fixed_per_head": (lambda h: P.fixed_per_head(64, 16, h, 3), 256, 16, 3, 32, torch.float16, 1),
    "merged_fixed_strided": (lambda h: P.merged(P.fixed(64, 16), P.strided(32)), 256, 32, 2, 64, torch.float32, 1),
    "multi_head_mix": (lambda h: P.multi_head([P.fixed(32, 8), P.strided(16), P.strided_half(32)], h),
                       256, 32, 3, 32, torch.float16, 2),
    "summary_only_empty_rows": (lambda h: P.summary(64, 16), 256, 32, 2, 32, torch.float32, 1),
    # head 0's local part runs first, its stride-16 part (with head 1) merges in place; the stride-32 part
    # (heads 2, 3), as wide, is launched last (_schedule's order on a tie) and writes final outputs
    "merge_before_the_last_part": (lambda h: P.multi_head([P.strided(16), P.strided_half(16), P.strided_half(32),
                                                           P.strided_half(32)], h), 256, 32, 4, 32, torch.float16, 1),
}

SLOW_CASES = {
    "strided_d128_fp16": (lambda h: P.strided(16), 256, 64, 2, 128, torch.float16, 1),
    "multi_head_block128_d64": (lambda h: P.multi_head([P.fixed(128, 32), P.strided(8), P.local(100)], h),
                                512, 128, 3, 64, torch.float32, 1),
    "fixed_per_head_d64_fp16": (lambda h: P.fixed_per_head(32, 8, h, 2), 256, 32, 2, 64, torch.float16, 2),
}


def _inputs(batch, heads, n, head_dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, head_dim, generator=gen).to(dtype) for _ in range(4)]


def _attention_and_grads(fn, q, k, v, do):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, do.to(out.dtype))]


def _check_three_way(got, low, exact, dtype, what):
    for name, g, lo, ex in zip(["out", "dq", "dk", "dv"], got, low, exact):
        assert torch.isfinite(g).all(), f"{what}: {name} has non-finite (unwritten?) elements"
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[dtype] * max(1.0, ex.abs().max().item())
        worst = (err - bound).argmax()
        assert (err <= bound).all(), (
            f"{what}: {name} off by {err.flatten()[worst]:.3g} (allowed {bound.flatten()[worst]:.3g}) "
            f"at flat index {worst.item()}")


def _case_layout(case):
    """The layout of a test case (make, n, block, heads, ...): ``make(heads)`` for every head where it gives one
    head's pattern."""
    make, n, block, heads = case[:4]
    pattern = P.same_for_all_heads(p, heads) if isinstance(p := make(heads), P.HeadPattern) else p
    return P.build_layout(pattern, n, block)


def _check_layout(layout, inputs, dtype, what):
    """Our output and gradients on ``inputs`` (q, k, v, dO) under ``layout`` within the three-way tolerance of the
    reference in the inputs' dtype and in float64."""
    q, k, v, do = inputs
    got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    _check_three_way(got, low, exact, dtype, what)


def _run_case(case, monkeypatch, seed=0):
    make, n, block, heads, head_dim, dtype, batch = case
    pattern = P.same_for_all_heads(p, heads) if isinstance(p := make(heads), P.HeadPattern) else p
    layout = P.build_layout(pattern, n, block)
    monkeypatch.setattr(blocksparse, "POISON", True)
    _check_layout(layout, _inputs(batch, heads, n, head_dim, dtype, seed), dtype,
                  f"{pattern.heads[0].name} n={n} block={block} D={head_dim} {dtype}")


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(name, monkeypatch):
    """Output, dq, dk, dv equal the token-level reference for each pattern (three-way tolerance)."""
    _run_case(CASES[name], monkeypatch)


@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_kernel_matches_reference_more_shapes(name, monkeypatch):
    """More head-dim / block / dtype combinations of the patterns above."""
    _run_case(SLOW_CASES[name], monkeypatch)


@triton.jit
def _natural_tile_probe(OUT, perm_g, perm_l, seq, TILE: tl.constexpr, RUN: tl.constexpr):
    start = tl.program_id(0) * TILE
    tl.store(OUT + start + tl.arange(0, TILE), _natural_tile(start, TILE, perm_g, perm_l, 2, RUN, seq))


@pytest.mark.parametrize("n, l, c", [(12288, 128, 32), (3072, 96, 16), (1536, 96, 48), (1024, 64, 16), (1024, 32, 8)])
def test_summary_first_tiles_map_to_the_papers_positions(n, l, c):
    """A summary-first part's tiles of 16 to 128 positions, mapped to natural positions the way the kernels
    load them (``_natural_tile``: a scalar map of the tile's start plus a compare per run end it crosses;
    a division per position where the runs are too short for that, as with c = 8 and 128-tiles), equal the
    layout's own permutation (``patterns.part_permutation``). And ``_run_alignment`` is what it claims:
    every tile of that many positions is contiguous in natural order, and some tile of twice as many is not
    (below the cap of 128)."""
    perm = P.part_permutation(n, summary_first=(l, c))
    run = blocksparse._run_alignment(n, l, c)
    assert {(12288, 128): 32, (3072, 96): 16, (1536, 96): 16, (1024, 64): 16, (1024, 32): 8}[(n, l)] == run
    tiles = perm.view(-1, run)
    assert torch.equal(tiles - tiles[:, :1], torch.arange(run).expand_as(tiles))
    wider = perm.view(-1, 2 * run)
    assert not torch.equal(wider - wider[:, :1], torch.arange(2 * run).expand_as(wider))
    for tile in (16, 32, 64, 128):
        out = torch.full((n,), -1, dtype=torch.int64)
        _natural_tile_probe[(n // tile,)](out, c, l, n, TILE=tile, RUN=run)
        assert torch.equal(out, perm), (tile, (out != perm).nonzero()[:4].flatten().tolist())


@pytest.mark.parametrize("name", ["fixed_block128", SLOW("strided_permuted_straddling"), SLOW("merged_fixed_strided"),
                                  SLOW("multi_head_mix"), "summary_only_empty_rows"])
def test_atomic_dq_matches_reference(name, monkeypatch):
    """dQ added by the dK/dV kernel with atomics (no dQ kernel) equals the reference too, over
    permuted parts, parts merged into one head and rows without keys."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "atomic")
    launched = []
    monkeypatch.setattr(blocksparse, "_bwd_dq_kernel", _Recorder(blocksparse._bwd_dq_kernel, launched))
    _run_case(CASES[name], monkeypatch, seed=5)
    assert not launched, "the dQ kernel ran in atomic mode"


@pytest.mark.parametrize("name", ["fixed_block128", "strided_permuted_straddling", "merged_fixed_strided",
                                  "multi_head_mix", "summary_only_empty_rows", "merge_before_the_last_part"])
def test_merged_backward_matches_reference(name, monkeypatch):
    """The dQ and dK/dV programs in one launch (DQ_MODE "merged") give the reference's gradients too,
    and neither separate backward kernel runs."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "merged")
    launched = []
    monkeypatch.setattr(blocksparse, "_bwd_dq_kernel", _Recorder(blocksparse._bwd_dq_kernel, launched))
    monkeypatch.setattr(blocksparse, "_bwd_dkdv_kernel", _Recorder(blocksparse._bwd_dkdv_kernel, launched))
    merged = []
    monkeypatch.setattr(blocksparse, "_bwd_merged_kernel", _Recorder(blocksparse._bwd_merged_kernel, merged))
    _run_case(CASES[name], monkeypatch, seed=7)
    assert not launched and merged, "the merged mode ran the separate backward kernels"


@pytest.mark.parametrize("faster", ["separate", "merged"])
def test_auto_mode_keeps_the_faster_deterministic_mode(faster, monkeypatch):
    """DQ_MODE "auto" runs the separate and the merged backward on first use, keeps whichever its timer
    found faster for the layout and shape (later backwards launch only that one), and its gradients are
    the reference's. The timer is faked (no timing under the interpreter): a run that launched the merged
    kernel takes 1 ms if merged is to win, else 2 ms."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "auto")
    monkeypatch.setattr(blocksparse, "_timing_possible", lambda q: True)
    monkeypatch.setattr(blocksparse, "AUTO_REPEATS", 1)  # the faked timer gives every repeat the same time
    separate, merged = [], []
    monkeypatch.setattr(blocksparse, "_bwd_dq_kernel", _Recorder(blocksparse._bwd_dq_kernel, separate))
    monkeypatch.setattr(blocksparse, "_bwd_merged_kernel", _Recorder(blocksparse._bwd_merged_kernel, merged))

    def fake_seconds(run):
        before = len(merged)
        run()
        ran_merged = len(merged) > before
        return 1e-3 if ran_merged == (faster == "merged") else 2e-3

    monkeypatch.setattr(blocksparse, "_cuda_seconds", fake_seconds)
    # merged_fixed_strided's pattern at half its length: five backwards run here (two per mode, then the
    # chosen one), so it is the suite's slowest interpreter case at full length (45 s a mode on 2 cores)
    make, n, block, heads, head_dim, dtype, batch = CASES["merged_fixed_strided"]
    n //= 2
    layout = P.build_layout(P.same_for_all_heads(make(heads), heads), n, block)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, seed=11)
    fn = lambda *x: blocksparse.blocksparse_attention(*x, layout)  # noqa: E731
    got = _attention_and_grads(fn, q, k, v, do)
    assert separate and merged, "auto did not time both modes"
    assert layout.kernel_cache[blocksparse.auto_mode_key((batch, heads, n, head_dim), dtype)] == faster
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    _check_three_way(got, low, exact, dtype, f"auto ({faster} faster)")
    separate.clear(), merged.clear()
    _attention_and_grads(fn, q, k, v, do)
    assert (bool(merged), bool(separate)) == (faster == "merged", faster == "separate")


def test_auto_mode_times_only_the_first_mode_where_its_backward_is_long(monkeypatch):
    """A backward longer than AUTO_LONG_S (4M tokens: seconds) keeps the separate mode without
    running (and autotuning) the merged kernel at all."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "auto")
    monkeypatch.setattr(blocksparse, "_timing_possible", lambda q: True)
    monkeypatch.setattr(blocksparse, "_cuda_seconds", lambda run: (run(), 10 * blocksparse.AUTO_LONG_S)[1])
    merged = []
    monkeypatch.setattr(blocksparse, "_bwd_merged_kernel", _Recorder(blocksparse._bwd_merged_kernel, merged))
    layout = P.build_layout(P.same_for_all_heads(P.fixed(64, 16), 2), 256, 64)
    q, k, v, do = _inputs(1, 2, 256, 32, torch.float32, seed=4)
    _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    assert not merged and layout.kernel_cache[blocksparse.auto_mode_key((1, 2, 256, 32), torch.float32)] == "separate"


_BOTH = ["O", "O_PREV", "DQ", "DQ_PREV", "DK", "DK_PREV", "DV", "DV_PREV"]


@pytest.mark.parametrize("kernel,consts,in_place,read_back", [
    ("fwd", {"LOAD_PREV": False}, True, []),
    ("fwd", {"LOAD_PREV": True}, True, ["O", "O_PREV", "LSE"]), ("fwd", {"LOAD_PREV": True}, False, ["LSE"]),
    ("dq", {"LOAD_PREV": False}, True, []),
    ("dq", {"LOAD_PREV": True}, True, ["DQ", "DQ_PREV"]), ("dq", {"LOAD_PREV": True}, False, []),
    ("dkdv", {"LOAD_PREV": False, "FUSED_DQ": False, "SPLIT": False}, True, []),
    ("dkdv", {"LOAD_PREV": False, "FUSED_DQ": True, "SPLIT": False}, True, ["DQ", "DQ_PREV"]),
    ("dkdv", {"LOAD_PREV": False, "FUSED_DQ": False, "SPLIT": True}, True, ["DK", "DK_PREV", "DV", "DV_PREV"]),
    ("dkdv", {"LOAD_PREV": True, "FUSED_DQ": False, "SPLIT": False}, True, ["DK", "DK_PREV", "DV", "DV_PREV"]),
    ("dkdv", {"LOAD_PREV": True, "FUSED_DQ": False, "SPLIT": False}, False, []),
    ("merged", {"LOAD_PREV": False, "SPLIT": False}, True, []),
    ("merged", {"LOAD_PREV": False, "SPLIT": True}, True, ["DK", "DK_PREV", "DV", "DV_PREV"]),
    ("merged", {"LOAD_PREV": True, "SPLIT": False}, True, _BOTH[2:]),
    ("merged", {"LOAD_PREV": True, "SPLIT": False}, False, []),
])
def test_autotuning_restores_exactly_the_outputs_a_launch_reads_back(kernel, consts, in_place, read_back):
    """Autotuning trials save and restore an output only where the launch adds to it (a merging part
    writing its sums back in place, atomics); a first part's outputs, and a last part's final outputs
    (written beside the earlier parts' sums, *_PREV, which it only reads), are overwritten by the chosen
    config's real launch, so those trials copy nothing (fp32 dK, dV, dQ are 8.6 GB each at 4M tokens)."""
    outs = {name: torch.full((4,), float(i)) for i, name in enumerate(["O", "LSE", "DQ", "DK", "DV"])}
    # in place: the sums are the outputs themselves; else the outputs are final and the sums apart
    prevs = {f"{o}_PREV": outs[o] if in_place else torch.full((4,), 10.0 + i) for i, o in enumerate(["O", "DQ", "DK", "DV"])}
    tensors = {**outs, **prevs}
    originals = {name: t.clone() for name, t in tensors.items()}
    nargs = {**tensors, **consts}
    pre, post = blocksparse._restore_hooks(kernel)
    pre(nargs)
    for t in outs.values():
        t.add_(100.0)  # a trial's atomics / accumulation / final writes (the sums apart are only read)
    post(nargs, exception=None)
    restored = [name for name, t in tensors.items() if torch.equal(t, originals[name]) and (in_place or name in outs)]
    assert sorted(restored) == sorted(read_back)
    pre(nargs, reset_only=True)  # Triton's call after tuning: saves nothing, so nothing is restored later
    outs["DQ"].add_(1.0)
    before = outs["DQ"].clone()
    post(nargs, exception=None)
    assert torch.equal(outs["DQ"], before)


def _through_the_autotuner(monkeypatch, read_back):
    """The strided (two-part, the second accumulating) case run through Triton's real autotuner: every
    config the pruner keeps is tried twice per launch (a fake do_bench: no timing under the interpreter),
    with ``read_back`` deciding what the hooks restore."""
    def fake_bench(kernel_call, quantiles):
        kernel_call()
        kernel_call()
        return [1.0, 1.0, 1.0]

    monkeypatch.setattr(blocksparse, "_fixed_tiles", lambda block, names=None: None)
    monkeypatch.setattr(blocksparse, "_read_back", read_back)
    for tuned in (blocksparse._fwd_tuned, blocksparse._dq_tuned, blocksparse._dkdv_tuned):
        monkeypatch.setattr(tuned, "_do_bench", fake_bench)
        monkeypatch.setattr(tuned, "cache", {})
        monkeypatch.setattr(tuned, "cache_results", False)
    make, n, block, heads, head_dim, dtype, batch = CASES["strided_permuted_straddling"]
    layout = P.build_layout(P.same_for_all_heads(make(heads), heads), n, block)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, seed=9)
    got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    return got, layout, (q, k, v, do)


def test_autotuning_trials_leave_accumulated_outputs_as_they_were(monkeypatch):
    """Through the real autotuner (configs tried twice each) the two-part strided layout still gives the
    reference's output and gradients; with nothing restored the same run comes out wrong, so the
    trials do add to the outputs and the hooks are what undoes it."""
    real = blocksparse._read_back
    got, layout, (q, k, v, do) = _through_the_autotuner(monkeypatch, real)
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    _check_three_way(got, low, exact, torch.float32, "autotuned strided")
    broken, _, _ = _through_the_autotuner(monkeypatch, lambda kernel, nargs: [])
    assert any(not torch.allclose(b, g, atol=1e-3) for b, g in zip(broken, got))


def test_auto_mode_is_separate_where_it_cannot_time(monkeypatch):
    """On the CPU (or inside a graph capture) "auto" times nothing, runs the separate backward and
    remembers no choice."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "auto")
    merged = []
    monkeypatch.setattr(blocksparse, "_bwd_merged_kernel", _Recorder(blocksparse._bwd_merged_kernel, merged))
    layout = P.build_layout(P.same_for_all_heads(P.fixed(64, 16), 2), 256, 64)
    q, k, v, do = _inputs(1, 2, 256, 32, torch.float32, seed=3)
    _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    assert not merged and not any(isinstance(key, tuple) and key[0] == "dq_mode" for key in layout.kernel_cache)


SPLIT_CASES = {  # each has columns with more full entries than the split and partial entries besides
    "fixed_full_summary": (lambda h: P.fixed(64, 32), 512, 32, 2, 32, torch.float32, 1),  # summary = whole block
    "merged_local_strided": (lambda h: P.merged(P.local(100), P.strided(32)), 256, 16, 2, 32, torch.float16, 1),
    "multi_head_full": (lambda h: P.multi_head([P.fixed(64, 32), P.local(100), P.strided(16)], h),
                        256, 16, 3, 32, torch.float16, 2),  # per-head CSRs of different segment counts
}


@pytest.mark.parametrize("name,split,dq", [("fixed_full_summary", 2, "separate"), SLOW("fixed_full_summary", 1, "atomic"),
                                           ("merged_local_strided", 2, "atomic"), SLOW("multi_head_full", 1, "separate"),
                                           SLOW("multi_head_full", 2, "merged")])
def test_split_columns_match_reference(name, split, dq, monkeypatch):
    """dK/dV programs that take a segment of a column and add with atomics: still the reference,
    over columns split many ways, merged parts, per-head CSRs and empty rows."""
    make, n, block, heads = SPLIT_CASES[name][:4]
    pattern = P.same_for_all_heads(p, heads) if isinstance(p := make(heads), P.HeadPattern) else p
    layout = P.build_layout(pattern, n, block)
    longest = max(int(c.col_full_ptr.diff().max()) for part in layout.parts for c in part.csr)
    assert longest > split and any(int(c.col_part_ptr[-1]) for part in layout.parts for c in part.csr)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", str(split))
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH", "cast")  # the default "last": the test below
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", dq)
    _run_case(SPLIT_CASES[name], monkeypatch, seed=9)


@pytest.mark.parametrize("name,split,dq", [("fixed_full_summary", 2, "separate"), SLOW("merged_local_strided", 2, "atomic"),
                                           SLOW("multi_head_full", 2, "merged")])
def test_split_columns_last_finish_matches_reference_twice_and_leaves_its_workspace_zero(name, split, dq, monkeypatch):
    """The "last" finish: columns of one segment written whole, longer ones summed in the workspace and
    written by their last segment, which zeroes its share: the reference's gradients on two backward
    passes of one layout (the second reuses the workspace), the workspace zero after each."""
    layout, (_, n, _, heads, head_dim, dtype, batch) = _case_layout(SPLIT_CASES[name]), SPLIT_CASES[name]
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", str(split))
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH", "last")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", dq)
    monkeypatch.setattr(blocksparse, "POISON", True)
    for seed in (3, 4):
        _check_layout(layout, _inputs(batch, heads, n, head_dim, dtype, seed), dtype,
                      f"{name} split {split} last finish, pass {seed - 2}")
        spaces = [w for _, w in layout_workspaces(layout)]
        assert spaces, "no workspace: no column had more than one segment"
        assert all(not ws.any() and not counts.any() for ws, counts in spaces)


# delta in dQ is the default, so test_kernel_matches_reference covers it over every case (the CPU runs the
# separate backward); here the launches: no delta kernel with it, the delta kernel without it
@pytest.mark.parametrize("name,here", [("fixed_block128", "1"), ("merged_fixed_strided", "0")])
def test_delta_computed_in_the_dq_kernel_matches_reference_without_the_delta_kernel(name, here, monkeypatch):
    """DELTA_IN_DQ (the default): the separate dQ kernel computes each row's delta from the output and stores
    it for the dK/dV launch (over permuted parts, merged heads and a batch of 2): the reference's gradients,
    and the delta kernel is not launched; switched off ("0"), the delta kernel runs first, as before."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", here)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    launched = []
    monkeypatch.setattr(blocksparse, "_delta_kernel", _Recorder(blocksparse._delta_kernel, launched))
    _run_case(CASES[name], monkeypatch, seed=11)
    assert bool(launched) == (here == "0"), f"DELTA_IN_DQ={here}: delta kernel launches {len(launched)}"


def test_delta_kernel_stays_where_dk_dv_programs_start_first(monkeypatch):
    """The merged and atomic modes keep the delta kernel under DELTA_IN_DQ (their dK/dV programs read every
    row's delta from the start) and still match the reference."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", "1")
    real = blocksparse._delta_kernel
    for mode in ("merged", "atomic"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
        launched = []
        monkeypatch.setattr(blocksparse, "_delta_kernel", _Recorder(real, launched))
        _run_case(CASES["fixed_block128"], monkeypatch, seed=12)
        assert launched, f"{mode}: no delta kernel"


@pytest.mark.parametrize("name", ["fixed_block128", "merged_fixed_strided"])
def test_streams_mode_runs_the_delta_kernel_first_and_matches_reference(name, monkeypatch):
    """The dQ mode "streams" (on the CPU its launches in order on one stream): the delta kernel runs first,
    even with DELTA_IN_DQ on (dQ cannot make delta for a dK/dV launch it runs beside), and the output and the
    three gradients match the reference, over a summary-first part and a merged head of two launches."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "streams")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", "1")
    launched = []
    monkeypatch.setattr(blocksparse, "_delta_kernel", _Recorder(blocksparse._delta_kernel, launched))
    _run_case(CASES[name], monkeypatch, seed=14)
    assert launched, "no delta kernel: dQ would be computing delta beside the dK/dV launch that reads it"


class _Tagged:
    """A kernel whose launches append ``tag`` to ``events`` (``fail``: the launch raises instead)."""

    def __init__(self, kernel, tag, events, fail=False):
        self.kernel, self.tag, self.events, self.fail = kernel, tag, events, fail

    def __getitem__(self, grid):
        self.events.append(self.tag)
        if self.fail:
            raise RuntimeError(f"{self.tag} launch failed")
        return self.kernel[grid]


def _watch_streams(monkeypatch, events, fail_dq=False):
    """The "streams" backward's switches as if on a GPU (``streams_here`` true, each switch appended to
    ``events`` instead of done), and the delta, dQ and dK/dV launches tagged in the same list."""
    monkeypatch.setattr(blocksparse, "streams_here", lambda mode, q: mode == "streams")
    monkeypatch.setattr(blocksparse, "_cuda_stream_step", lambda kind: events.append(kind))
    for attr, tag in (("_delta_kernel", "delta"), ("_bwd_dq_kernel", "dq"), ("_bwd_dkdv_kernel", "dkdv")):
        monkeypatch.setattr(blocksparse, attr, _Tagged(getattr(blocksparse, attr), tag, events, tag == "dq" and fail_dq))


@pytest.mark.parametrize("name, parts", [("local", 1), ("fixed_block128", 2)])  # fixed: summary-first, then the rest
def test_streams_mode_puts_each_dq_launch_on_the_side_stream_and_plans_replay_the_switches(name, parts, monkeypatch):
    """Where the mode "streams" switches streams (a GPU; here the switches recorded): delta on the caller's
    stream, the side stream forked after it, then per part the side stream for its dQ launch and the caller's
    stream back for its dK/dV launch (the parts' dQ launches follow each other on the side stream, so the
    dK/dV launches do not hold them up), and one join before the backward returns; the third call replays a
    plan with the same switches in the same places; and the gradients are the bits of the separate mode with
    the delta kernel (the same launches on one stream)."""
    make, n, block, heads, dim, dtype, batch = CASES[name]
    layout = P.build_layout(P.same_for_all_heads(make(heads), heads), n, block)
    assert len(layout.parts) == parts
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", "0")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    q, k, v, do = _inputs(batch, heads, n, dim, dtype, 15)
    want = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    events, replays = [], []
    _watch_streams(monkeypatch, events)
    replay = blocksparse._Plan.replay
    monkeypatch.setattr(blocksparse._Plan, "replay", lambda self, slots: (replays.append(len(slots)), replay(self, slots)))
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "streams")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "1")
    expected = ["delta", "fork", *["side", "dq", "main", "dkdv"] * parts, "join"]  # one fork: no sums zeroed
    for call in range(3):
        events.clear()
        got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
        assert events == expected, (call, events)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), call
    assert replays == [5, 10], replays  # the third call's forward and backward replayed their plans


def test_streams_mode_switches_back_to_the_callers_stream_when_a_dq_launch_fails(monkeypatch):
    """A dQ launch that raises on the side stream leaves the caller's stream current again (the error
    passes on)."""
    events = []
    _watch_streams(monkeypatch, events, fail_dq=True)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "streams")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "0")
    make, n, block, heads, dim, dtype, batch = CASES["fixed_block128"]
    layout = P.build_layout(P.same_for_all_heads(make(heads), heads), n, block)
    with pytest.raises(RuntimeError, match="dq launch failed"):
        _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), *_inputs(1, heads, n, dim, dtype, 16))
    assert events == ["delta", "fork", "side", "dq", "main"], events


def test_streams_mode_forks_again_after_sums_zeroed_on_the_callers_stream(monkeypatch):
    """Per-head layouts whose later part meets heads for the first time zero those heads' sums on the caller's
    stream: that part's dQ launch waits for it (a second fork before it), and the gradients match the
    reference."""
    events = []
    _watch_streams(monkeypatch, events)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "streams")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", "fp32")  # the strided head's first part into fp32 sums
    case = SPLIT_CASES["multi_head_full"]
    make, n, block, heads = case[:4]
    layout = P.build_layout(make(heads), n, block)
    zeroing = [i for i, (_, load_prev, fresh, _) in enumerate(blocksparse._schedule(layout)) if load_prev and fresh]
    assert zeroing, "no part zeroes sums: the case does not test the second fork"
    _run_case(case, monkeypatch, seed=17)
    dq_at = [i for i, e in enumerate(events) if e == "dq"]
    assert len(dq_at) == len(layout.parts) and events[-1] == "join", events
    for part in zeroing:  # a fork after the previous dQ launch, before this part's
        assert "fork" in events[dq_at[part - 1]:dq_at[part]], (part, events)


def test_a_plan_replay_switches_back_when_a_launch_fails_on_the_side_stream(monkeypatch):
    """A replayed plan that raises between a "side" switch and its "main" switches back before the error
    passes on."""
    events = []
    monkeypatch.setattr(blocksparse, "_cuda_stream_step", lambda kind: events.append(kind))
    failing = _Tagged(None, "dq", events, fail=True)
    plan = blocksparse._Plan([("side", None, [], (), None), (failing, (1, 1, 1), [], (), {}),
                              ("main", None, [], (), None)], False, False)
    with pytest.raises(RuntimeError, match="dq launch failed"):
        plan.replay(())
    assert events == ["side", "dq", "main"], events


def test_dependent_launches_only_on_a_hopper_gpu_and_the_switch_takes_0_or_1(monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_PDL=1 on a CPU (the interpreter): no dependent launch (GDC off, no launch option) and
    the reference's gradients; a value other than 0 or 1 is a one-line error naming the variable."""
    q = torch.zeros(1, 1, 64, 16)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PDL", "1")
    assert blocksparse._pdl_consts(q) == {"GDC": False} and not blocksparse.use_pdl(q)
    _run_case(CASES["local"], monkeypatch, seed=18)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PDL", "yes")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_PDL must be 0 or 1, got 'yes'"):
        blocksparse.use_pdl(q)


ROW_SPLIT_CASES = {  # rows of several full entries: dense over a batch of 2 (3 a row), a permuted part (3), a
    # natural part merging into a permuted one (5), per-head CSRs (up to 9), summary columns of whole blocks (8)
    "dense": CASES["dense"],
    "strided_permuted_long_rows": (lambda h: P.strided(8), 512, 16, 2, 32, torch.float16, 1),
    "merged_local_strided": SPLIT_CASES["merged_local_strided"],
    "multi_head_full": SPLIT_CASES["multi_head_full"],
    "fixed_full_summary": SPLIT_CASES["fixed_full_summary"],
}


@pytest.mark.parametrize("name, seg_len, kinds, delta_in_dq", [
    ("dense", 1, ("fwd",), "1"), ("strided_permuted_long_rows", 2, ("fwd", "dq"), "1"),
    ("merged_local_strided", 2, ("fwd",), "1"), ("multi_head_full", 4, ("dq",), "1"), ("dense", 2, ("dq",), "0"),
    SLOW("merged_local_strided", 3, ("dq",), "0"), SLOW("fixed_full_summary", 3, ("fwd", "dq"), "1")])
def test_row_segments_match_reference_twice_and_leave_their_counters_zero(name, seg_len, kinds, delta_in_dq,
                                                                          monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT / _DQ_SPLIT: the forward's (dQ kernel's) rows cut into segments of seg_len
    full entries, a program each, each row's last segment merging the others' softmax states (summing their dQ):
    the reference's output and gradients (poisoned outputs: every row written once) over a batch of two, a
    permuted part, a natural part merging with the permuted one before it, per-head CSRs, delta computed in the
    dQ segments or by the delta kernel; twice on one layout (the counters the launches reset are reused), the
    counters zero after each; and some row did take several segments."""
    layout, (_, n, _, heads, head_dim, dtype, batch) = _case_layout(ROW_SPLIT_CASES[name]), ROW_SPLIT_CASES[name]
    for kind in kinds:
        monkeypatch.setenv(f"MEGASTRIDE_BLOCKSPARSE_{kind.upper()}_SPLIT", str(seg_len))
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", delta_in_dq)
    monkeypatch.setattr(blocksparse, "POISON", True)
    for seed in (19, 20):
        _check_layout(layout, _inputs(batch, heads, n, head_dim, dtype, seed), dtype,
                      f"{name} {kinds} rows in segments of {seg_len}, pass {seed - 18}")
        spaces = [w for _, w in layout_workspaces(layout, kinds)]
        assert {key[-1] for key, _ in layout_workspaces(layout, ("fwd", "dq"))} == set(kinds)
        assert all(not w[-1].any() for w in spaces), "a counter was left set"
    tables = [meta.extra[key] for part in layout.parts for meta in part.kernel_cache.values() for key in meta.extra
              if key[0] == "segments" and key[-1] == "row"]
    assert any(int(t["seg_count"].max()) > 1 for t in tables), "no row had more than one segment"


def test_row_segments_refuse_a_workspace_past_the_bound_and_bad_values(monkeypatch):
    """A FWD_SPLIT whose slots would pass FWD_SPLIT_MAX_BYTES is refused in one line naming the variable, before
    any launch; a value that is not an integer >= 0 too."""
    layout = P.build_layout(P.same_for_all_heads(P.dense(), 2), 256, 64)
    q, k, v, _ = _inputs(1, 2, 256, 32, torch.float32, 21)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT", "1")
    monkeypatch.setattr(blocksparse, "FWD_SPLIT_MAX_BYTES", 1000)
    with pytest.raises(ValueError, match=r"MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT=1: the row segments' slots would take"):
        blocksparse.blocksparse_attention(q, k, v, layout)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT", "-1")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT must be an integer >= 0"):
        blocksparse.blocksparse_attention(q, k, v, layout)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT", "0")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT", "1")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = blocksparse.blocksparse_attention(*leaves, layout)  # the forward is not split: it runs
    with pytest.raises(ValueError, match=r"MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT=1: the row segments' slots would take"):
        out.sum().backward()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT", "x")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT must be an integer >= 0"):
        blocksparse.dq_split()


def test_spec_key_tells_apart_what_triton_specialises_on():
    """_spec_key (the direct launch's cache key) differs wherever Triton's specialisation can: a tensor's
    dtype or 16-byte alignment, an int of 1, divisible by 16, or past 32 bits; it is equal for arguments
    Triton compiles alike."""
    base = torch.zeros(64)
    assert blocksparse._spec_key([base, 32, 0.5]) == blocksparse._spec_key([torch.zeros(8), 48, 2.0])
    assert blocksparse._spec_key([base, -32, 0.5]) == blocksparse._spec_key([base, 32, 0.5])  # Triton: -32 % 16 == 0
    for other in ([base[1:], 32, 0.5], [base.half(), 32, 0.5], [base, 1, 0.5], [base, 33, 0.5], [base, 1 << 31, 0.5],
                  [base, True, 0.5], [base, 32, torch.zeros(1)]):
        assert blocksparse._spec_key(other) != blocksparse._spec_key([base, 32, 0.5]), other
    # the three int widths, each divisible by 16 or not
    widths = [16, 17, 1 << 40, (1 << 40) + 1, 1 << 63, (1 << 63) + 1]
    assert len({blocksparse._spec_key([w]) for w in widths}) == len(widths)


def test_direct_launch_reuses_the_compiled_kernel_for_alike_arguments(monkeypatch):
    """With MEGASTRIDE_BLOCKSPARSE_DIRECT=1 the first launch of a specialisation goes through Triton
    (kernel[grid]) and later ones call the kernel it compiled with every parameter in order (positional
    arguments, then the constexprs by name), the grid from the tiles, the current stream and no hooks;
    a differently aligned tensor goes through Triton again; without the switch every launch does."""

    class Compiled:
        function, packed_metadata = "function", "metadata"

        def __init__(self):
            self.runs = []

        def run(self, *launch):
            self.runs.append(launch)

    class Kernel:
        arg_names = ["X", "n", "BLOCK", "BLOCK_M"]

        def __init__(self):
            self.compiled, self.through_triton = Compiled(), []

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                self.through_triton.append((grid(kwargs), args))
                return self.compiled
            return launch

    monkeypatch.setattr(blocksparse, "_INTERPRET", False)
    monkeypatch.setattr(blocksparse, "_current_device", lambda: 0)
    monkeypatch.setattr(blocksparse, "_current_stream", lambda device: 7 + device)
    grid = lambda m: (256 // m["BLOCK_M"], 2)  # noqa: E731
    x, kernel = torch.zeros(64), Kernel()
    kwargs = {"BLOCK": 64, "BLOCK_M": 32, "num_warps": 4}
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DIRECT", "1")
    blocksparse._launch_chosen(kernel, grid, (x, 5), kwargs)
    blocksparse._launch_chosen(kernel, grid, (x[16:], 6), kwargs)  # 64 bytes on: aligned alike
    assert len(kernel.through_triton) == 1
    (run,) = kernel.compiled.runs
    assert run[:9] == (8, 2, 1, 7, "function", "metadata", None, None, None) and run[10:] == (6, 64, 32)
    assert run[9].data_ptr() == x[16:].data_ptr()
    blocksparse._launch_chosen(kernel, grid, (x[1:], 5), kwargs)  # 4 bytes on: another specialisation
    assert len(kernel.through_triton) == 2 and len(kernel.compiled.runs) == 1
    monkeypatch.setattr(blocksparse, "_current_device", lambda: 1)  # another device: compiled there first
    blocksparse._launch_chosen(kernel, grid, (x, 5), kwargs)
    assert len(kernel.through_triton) == 3 and len(kernel.compiled.runs) == 1
    blocksparse._launch_chosen(kernel, grid, (x, 5), kwargs)
    assert len(kernel.compiled.runs) == 2 and kernel.compiled.runs[-1][3] == 8  # that device's stream
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DIRECT", "0")
    blocksparse._launch_chosen(kernel, grid, (x, 5), kwargs)
    assert len(kernel.through_triton) == 4 and len(kernel.compiled.runs) == 2


def _qkv_attention_and_grad(fn, qkv, do):
    leaf = qkv.detach().clone().requires_grad_()
    out = fn(leaf)
    return [out.detach(), *torch.autograd.grad(out, [leaf], do)]


def _plans_on_and_off(monkeypatch, fn, inputs, run=_attention_and_grads):
    """run(fn, *inputs) (output and gradients) with launch plans allowed (MEGASTRIDE_BLOCKSPARSE_PLANS=1),
    and with them off, on the same inputs."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "1")
    got = run(fn, *inputs)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "0")
    want = run(fn, *inputs)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "1")
    return got, want


def test_launch_plans_replay_a_calls_launches_with_each_calls_own_tensors(monkeypatch):
    """After two calls of one key launch alike, a third replays their launches: new inputs (each call's
    own values) give bit for bit what the full path gives, forward and backward, for the (B, H, T, D) and
    the fused q/k/v entry points; a changed switch is another key (the full path again, then its own plan);
    the strided head, merged from two launches, plans where the kernels do all of it (partial results in the
    outputs) and never with fp32 sums filled and cast beside them."""
    replays = []
    replay = blocksparse._Plan.replay
    monkeypatch.setattr(blocksparse._Plan, "replay", lambda self, slots: (replays.append(len(slots)), replay(self, slots)))
    heads, n, dim = 2, 128, 32
    layout = P.build_layout(P.same_for_all_heads(P.local(40), heads), n, 32)
    for seed in range(3):
        got, want = _plans_on_and_off(monkeypatch, lambda *x: blocksparse.blocksparse_attention(*x, layout),
                                      _inputs(1, heads, n, dim, torch.float32, seed))
        assert all(torch.equal(g, w) for g, w in zip(got, want)), seed
        assert replays == ([5, 10] if seed == 2 else []), (seed, replays)  # q k v out lse; do q k v out lse delta dq dk dv
    plans = [v for v in layout.kernel_cache.values() if isinstance(v, blocksparse._Plan)]
    assert len(plans) == 2 and all(len(p.launches) >= 1 for p in plans)

    replays.clear()  # the fused q/k/v product: its backward writes into views of one gradient ("into")
    for seed in range(3):
        qkv = torch.randn(1, n, 3 * heads * dim, generator=torch.Generator().manual_seed(10 + seed))
        do = torch.randn(1, heads, n, dim, generator=torch.Generator().manual_seed(20 + seed))
        got, want = _plans_on_and_off(
            monkeypatch, lambda x: blocksparse.blocksparse_attention_qkv(x, heads, layout), (qkv, do),
            _qkv_attention_and_grad)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), seed
    assert replays == [5, 10]  # the backward's dq, dk, dv: the three head views of one gradient

    replays.clear()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "merged")  # the two plans above would replay next
    for seed in range(2):
        got, want = _plans_on_and_off(monkeypatch, lambda *x: blocksparse.blocksparse_attention(*x, layout),
                                      _inputs(1, heads, n, dim, torch.float32, 30 + seed))
        assert all(torch.equal(g, w) for g, w in zip(got, want)), seed
    assert replays == []  # every switch is in the key: the full path, twice, then a plan of its own

    # the strided head, merged from two launches: the later one adds to what the first wrote into the outputs
    # (partials_in_outputs), all inside the kernels, so it plans; with fp32 sums beside the outputs (filled
    # and cast outside the kernels) it never does
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DQ")
    monkeypatch.setattr(blocksparse, "PLAN_TRIES", 2)
    merging = P.build_layout(P.same_for_all_heads(P.strided(16), 1), n, 32)  # local, then the permuted half
    q, k, v, do = _inputs(1, 1, n, dim, torch.float32, 40)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, merging), *(t.double() for t in (q, k, v, do)))
    for partials, planned in (("output", True), ("fp32", False)):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", partials)
        replays.clear()
        for _ in range(3):
            got, want = _plans_on_and_off(monkeypatch, lambda *x: blocksparse.blocksparse_attention(*x, merging),
                                          (q, k, v, do))
            assert all(torch.equal(g, w) for g, w in zip(got, want)), partials
            assert all((g.double() - e).abs().max() < 1e-4 for g, e in zip(got, exact)), partials
        assert (replays == [5, 10]) == planned, (partials, replays)
    assert len([v for v in merging.kernel_cache.values() if isinstance(v, blocksparse._Plan)]) == 2


def test_launches_alike_only_with_the_same_tensor_objects_outside_the_calls_own():
    """A plan keeps the arguments that are not the call's own tensors: two calls launch alike only where
    those are the same objects (a layout's metadata), so a temporary made per call is never replayed."""
    meta, own = torch.zeros(4), torch.zeros(4)

    def template(extra, slot, value=3):
        record = blocksparse._Record((slot,))
        record.launches.append(("kernel", (2, 1, 1), [slot, extra, value], None))
        return record.template()

    a = template(meta, own)
    assert a[0][2] == [None, meta, 3] and a[0][3] == ((0, 0),)
    assert blocksparse._same_launches(a, template(meta, torch.zeros(4)))  # another call's own tensor: its slot
    assert not blocksparse._same_launches(a, template(torch.zeros(4), own))  # a new tensor outside the slots
    assert not blocksparse._same_launches(a, template(meta, own, 4))
    assert not blocksparse._same_launches(a, template(meta, own, 3.0))


@pytest.mark.parametrize("dq", ["separate", "merged"])
def test_every_chosen_launch_names_each_later_parameter(dq, monkeypatch):
    """The direct launch passes a kernel's parameters as the positional arguments, then the keyword
    arguments in the kernel's order: so every launch of ours must give each parameter after its positional
    ones by name (run here under the interpreter, over the forward, the delta kernel's users and the backward
    kernels of a two-part head)."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", dq)
    seen, real = [], blocksparse._launch_chosen

    def record(kernel, grid, args, kwargs):
        seen.append((kernel.arg_names, len(args), set(kwargs)))
        return real(kernel, grid, args, kwargs)

    monkeypatch.setattr(blocksparse, "_launch_chosen", record)  # the interpreter's tiles take this path too
    _run_case(CASES["strided_permuted_full_tiles"], monkeypatch, seed=13)  # a permuted part, then the local one
    assert len(seen) >= 4
    for names, positional, given in seen:
        assert set(names[positional:]) <= given, set(names[positional:]) - given


def _launched_consts(monkeypatch, kernel, name: str) -> list:
    """The constexpr ``name`` of every launch of ``kernel`` from here on, in order (the launches themselves
    unchanged)."""
    launched = []
    real = blocksparse._launch

    def launch(tuned, k, grid, args, consts, names=blocksparse._TILE_NAMES, **kw):
        if k is kernel:
            launched.append(consts[name])
        return real(tuned, k, grid, args, consts, names, **kw)

    monkeypatch.setattr(blocksparse, "_launch", launch)
    return launched


def test_split_finish_rejects_unknown(monkeypatch):
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH", "atomic")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH must be one of cast, last; got 'atomic'"):
        blocksparse.split_finish()


def test_column_segments_count_each_columns_segments_and_index_the_long_ones():
    """seg_count: the number of segments of each segment's column (0 in the padding); seg_cidx: one index per
    column of more than one segment, 0 .. (such columns in the CSR) - 1, within ws_cols."""
    layout = P.build_layout(P.multi_head([P.fixed(64, 32), P.local(100), P.strided(16)], 3), 256, 16)
    widths = []
    for part in layout.parts:
        meta = blocksparse._part_meta(part, 256, torch.device("cpu"))
        seg = blocksparse._column_segments(meta.lists, layout.num_blocks, 2)
        ws_cols = int(seg["ws_cols"][0])
        for c in range(seg["seg_col"].shape[0]):
            cols, counts, cidx = (seg[k][c].tolist() for k in ("seg_col", "seg_count", "seg_cidx"))
            real = [(col, cnt, ci) for col, cnt, ci in zip(cols, counts, cidx) if cnt]
            assert all(cnt == 0 for cnt in counts[len(real):])  # padding comes last
            per_column = {}
            for col, cnt, ci in real:
                per_column.setdefault(col, []).append((cnt, ci))
            for col, entries in per_column.items():
                assert all(cnt == len(entries) for cnt, _ in entries)  # the column's own count
                assert len({ci for _, ci in entries}) == 1
            long_ones = sorted(entries[0][1] for entries in per_column.values() if len(entries) > 1)
            assert long_ones == list(range(len(long_ones))) and len(long_ones) <= ws_cols
        widths.append(ws_cols)
    assert max(widths) > 0  # some part has columns of more than one segment


def test_column_segments_cover_each_column_once():
    """Every full entry of every column lies in exactly one segment; one segment per column takes
    its partial entries; segments are in descending work; padding adds nothing."""
    for pattern, n, block, heads in ((P.fixed(64, 16), 512, 32, 2), (P.fixed_per_head(64, 16, 3, 3), 256, 16, 3)):
        layout = P.build_layout(P.same_for_all_heads(pattern, heads) if isinstance(pattern, P.HeadPattern) else pattern,
                                n, block)
        for part in layout.parts:
            meta = blocksparse._part_meta(part, n, torch.device("cpu"))
            nb = layout.num_blocks
            seg = blocksparse._column_segments(meta.lists, nb, 3)
            full = meta.lists["col_full_ptr"].long().view(-1, nb + 1)
            parts = meta.lists["col_part_ptr"].long().view(-1, nb + 1).diff(dim=1)
            for c in range(full.shape[0]):
                covered = torch.zeros(int(full[c, -1]), dtype=torch.long)
                firsts = torch.zeros(nb, dtype=torch.long)
                work = []
                for col, lo, hi, first in zip(*(seg[k][c].tolist() for k in ("seg_col", "seg_lo", "seg_hi", "seg_first"))):
                    assert hi - lo <= 3
                    covered[lo:hi] += 1
                    firsts[col] += first
                    work.append(hi - lo + first * int(parts[c, col]))
                assert (covered[int(full[c, 0]):] == 1).all()
                assert (firsts == 1).all()
                real = work[: int(torch.clamp((full[c].diff() + 2) // 3, min=1).sum())]
                assert real == sorted(real, reverse=True)
                assert all(w == 0 for w in work[len(real):])


def test_column_work_counts_each_columns_blocks_from_the_row_lists():
    """Layout.column_work: the longest key-block column and the sum of all, over parts and heads, in full
    and partial blocks; recounted here from the row lists (each row's key blocks), not the column lists."""
    for pattern, n, block in ((P.same_for_all_heads(P.fixed(64, 16), 2), 512, 32),
                              (P.multi_head([P.fixed(64, 32), P.local(100), P.strided(16)], 3), 256, 16)):
        layout = P.build_layout(pattern, n, block)
        longest = total = 0
        for part in layout.parts:
            for h in range(len(part.heads)):
                csr = part.csr[part.head_csr[h]]
                keys = torch.cat([csr.row_full_idx[: int(csr.row_full_ptr[-1])],
                                  csr.row_part_idx[: int(csr.row_part_ptr[-1])]]).long()
                per_column = torch.bincount(keys, minlength=layout.num_blocks)
                longest, total = max(longest, int(per_column.max())), total + int(per_column.sum())
        assert layout.column_work() == (longest, total) and longest > 1


def test_dkdv_split_auto_splits_where_one_column_outweighs_a_fair_share(monkeypatch):
    """"auto": SPLIT_SEGMENT where the longest column times the SM count reaches SPLIT_RATIO times all columns'
    work (times the batch), else 0; 0 without an SM count (interpreter); an integer setting wins."""
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", raising=False)
    assert blocksparse.dkdv_split_setting() == "auto"
    layout = P.build_layout(P.same_for_all_heads(P.fixed(64, 16), 2), 512, 32)
    longest, total = layout.column_work()
    at = math.ceil(blocksparse.SPLIT_RATIO * total / longest)  # the fewest SMs that split one sequence
    assert blocksparse.dkdv_split(layout, 1, at) == blocksparse.SPLIT_SEGMENT
    assert blocksparse.dkdv_split(layout, 1, at - 1) == 0
    assert blocksparse.dkdv_split(layout, 2, at) == 0  # twice the work: no longer one column's
    assert blocksparse.dkdv_split(layout, 2, 2 * at) == blocksparse.SPLIT_SEGMENT
    assert blocksparse.dkdv_split(layout, 1, None) == blocksparse.dkdv_split() == 0
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")
    assert blocksparse.dkdv_split(layout, 1, 10 * at) == 0
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "3")
    assert blocksparse.dkdv_split(layout, 1, 1) == 3


@pytest.mark.parametrize("sms,splits", [(10_000, True), (1, False)])
def test_backward_splits_columns_as_the_rule_says_and_matches_the_reference(sms, splits, monkeypatch):
    """The backward asks dkdv_split with the layout, the batch and the GPU's SM count (here given to the
    interpreter): its dK/dV launches take segments exactly where the rule says, and the result is exact."""
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", raising=False)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    monkeypatch.setattr(blocksparse, "gpu_sms", lambda q: sms)
    launched = _launched_consts(monkeypatch, blocksparse._bwd_dkdv_kernel, "SPLIT")
    _run_case(SPLIT_CASES["fixed_full_summary"], monkeypatch, seed=5)
    assert launched == [(1 if blocksparse.split_finish() == "cast" else 2) if splits else 0]  # SPLIT: the finish's


def test_two_launch_merge_is_the_strided_layouts():
    """Two launches, the last holding every head of the first: the strided pattern (permuted half, then the
    local half) and the fixed pattern whose summary columns are not whole blocks (summary-first part, then the
    windows), not one-part layouts (the fixed pattern with block-aligned summaries) nor the three-launch
    multi-head mixes."""
    assert P.build_layout(P.same_for_all_heads(P.strided(16), 2), 256, 32).two_launch_merge()
    assert P.build_layout(P.same_for_all_heads(P.fixed(64, 16), 2), 256, 32).two_launch_merge()
    assert not P.build_layout(P.same_for_all_heads(P.fixed(64, 32), 2), 256, 32).two_launch_merge()
    for name in ("multi_head_mix", "merge_before_the_last_part"):
        make, n, block, heads = CASES[name][:4]
        assert not P.build_layout(make(heads), n, block).two_launch_merge()


@pytest.mark.parametrize("name,dq,split", [("strided_permuted_full_tiles", "separate", "0"),
                                           ("strided_permuted_straddling", "merged", "0"),
                                           SLOW("merged_fixed_strided", "separate", "2"),
                                           SLOW("strided_permuted_full_tiles", "atomic", "0"),
                                           SLOW("multi_head_mix", "separate", "0")])
def test_partials_in_the_outputs_match_the_reference_without_fp32_sums(name, dq, split, monkeypatch):
    """PARTIALS "output": a two-launch head's first part writes its partial output and gradients into the
    output tensors in the inputs' dtype, the last part completes them in place: the reference still (fp16
    and fp32, every dQ mode, split columns), with no fp32 tensor of the outputs' size except the atomic
    gradients' (dK/dV of split columns, dQ of the atomic mode); three-launch layouts keep the fp32 sums."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", "output")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", dq)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", split)
    make, n, block, heads, head_dim, dtype, batch = CASES[name]
    pattern = P.same_for_all_heads(p, heads) if isinstance(p := make(heads), P.HeadPattern) else p
    layout = P.build_layout(pattern, n, block)
    monkeypatch.setattr(blocksparse, "POISON", True)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, seed=13)
    big = []

    def record(real):
        def make_tensor(*args, **kw):
            t = real(*args, **kw)
            if t.dtype == torch.float32 and t.numel() == batch * heads * n * head_dim:
                big.append(t.shape)
            return t
        return make_tensor

    with monkeypatch.context() as m:  # fp32 tensors of the outputs' size made during the kernels' call only
        m.setattr(torch, "empty", record(torch.empty))
        m.setattr(torch, "empty_strided", record(torch.empty_strided))
        m.setattr(torch, "full", record(torch.full))  # POISON's NaN-filled buffers
        got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    _check_three_way(got, low, exact, dtype, f"{name} partials in the outputs, dQ {dq}, split {split}")
    atomics = (dq == "atomic") + 2 * (split != "0")
    assert blocksparse.partials_in_outputs(layout) == layout.two_launch_merge()
    if dtype == torch.float32:  # the outputs themselves are fp32 tensors of that size: nothing to count
        return
    if layout.two_launch_merge():
        assert len(big) == atomics, big
    else:  # the forward's running output and the backward's three sums (separate dQ, whole columns here)
        assert (dq, split) == ("separate", "0") and len(big) == 4, big


def test_partials_setting_rejects_unknown(monkeypatch):
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", "bf16")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_PARTIALS must be one of fp32, output"):
        blocksparse.partials_setting()


def test_dkdv_split_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "-2")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT"):
        blocksparse.dkdv_split()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "many")
    with pytest.raises(ValueError, match="integer"):
        blocksparse.dkdv_split()


def _with_env(env: dict, *command) -> "subprocess.CompletedProcess":
    return subprocess.run([sys.executable, *command], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)


def test_backward_steps_issue_both_score_products_first_by_default():
    # the switch is read at import; this process has it unset
    if "MEGASTRIDE_BLOCKSPARSE_DOTS_FIRST" not in os.environ:
        assert blocksparse.DOTS_FIRST


@pytest.mark.slow
def test_the_earlier_product_order_still_matches_the_reference():
    # MEGASTRIDE_BLOCKSPARSE_DOTS_FIRST=0 compiles the backward with dP after the exponentials: the same
    # three-way checks, in a process of its own (the order is fixed at import), on a masked 128-block case,
    # a merged two-launch head, and the merged backward kernel
    done = _with_env({"MEGASTRIDE_BLOCKSPARSE_DOTS_FIRST": "0"}, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     __file__, "-k", "test_kernel_matches_reference and (fixed_block128 or merged_fixed_strided) "
                     "or test_merged_backward_matches_reference and fixed")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "deselected" in done.stdout


def test_product_order_switch_rejects_other_values():
    done = _with_env({"MEGASTRIDE_BLOCKSPARSE_DOTS_FIRST": "yes"}, "-c", "import megastride.kernels.blocksparse")
    assert done.returncode != 0
    assert "MEGASTRIDE_BLOCKSPARSE_DOTS_FIRST must be 0 or 1, got 'yes'" in done.stderr


def test_dq_mode_rejects_unknown(monkeypatch):
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "fast")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_DQ"):
        blocksparse.dq_mode()


class _Recorder:
    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.kernel[grid]


def test_forced_full_block_tiles(monkeypatch):
    """Whole-block tiles (the production default for block 64) give the same answer as sub-tiles."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TILES", "64,64")
    _run_case((lambda h: P.strided(8), 256, 64, 2, 32, torch.float32, 1), monkeypatch, seed=3)


@pytest.mark.parametrize("name", ["fixed_block128", "strided_block128"])
def test_forward_masked_tiles_narrower_than_its_key_tiles(name, monkeypatch):
    """Key tiles of 128 (the tiles of FlexAttention's Hopper forward): the forward's masked (partial)
    blocks then run as 64-wide sub-tiles, its full blocks as 128-wide ones; same answer."""
    assert CASES[name][2] == 128
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TILES", "128,128")
    forward_tiles = []
    real = blocksparse._launch

    def launch(tuned, kernel, grid, args, consts, names=blocksparse._TILE_NAMES, **kw):
        if kernel is blocksparse._fwd_kernel:
            forward_tiles.append(blocksparse._fixed_tiles(consts["BLOCK"], names)["BLOCK_N"])
        return real(tuned, kernel, grid, args, consts, names, **kw)

    monkeypatch.setattr(blocksparse, "_launch", launch)
    _run_case(CASES[name], monkeypatch)
    assert forward_tiles and set(forward_tiles) == {128}


@pytest.mark.parametrize("partials", ["fp32", "output"])
@pytest.mark.parametrize("mode", ["separate", "merged"])
def test_a_split_head_s_last_part_writes_the_final_outputs(mode, partials, monkeypatch):
    """A strided head's permuted part runs first, into fp32 sums (PARTIALS "fp32") or into the output
    tensors themselves ("output", the default), and its local (natural-order) part last, merging them as it
    writes the output and gradients in the inputs' dtype: the tensors handed back are the ones the last
    launches wrote (no cast pass), and the answer is the reference's."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", partials)
    launches = []
    real = blocksparse._launch

    def launch(tuned, kernel, grid, args, consts, names=blocksparse._TILE_NAMES, **kw):
        named = dict(zip(kernel.arg_names, args))
        launches.append((kernel, consts["PERMUTED"], consts["LOAD_PREV"], named))
        return real(tuned, kernel, grid, args, consts, names, **kw)

    monkeypatch.setattr(blocksparse, "_launch", launch)
    make, n, block, heads, head_dim, dtype, batch = CASES["strided_permuted_full_tiles"]
    assert dtype == torch.float16
    layout = P.build_layout(P.same_for_all_heads(make(heads), heads), n, block)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, seed=11)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = blocksparse.blocksparse_attention(*leaves, layout)
    fwd = [x for x in launches if x[0] is blocksparse._fwd_kernel]
    assert [(p, prev) for _, p, prev, _ in fwd] == [(True, False), (False, True)]
    first_dtype = torch.float32 if partials == "fp32" else torch.float16
    assert fwd[0][3]["O"].dtype == first_dtype and fwd[1][3]["O"].data_ptr() == out.data_ptr()
    assert fwd[1][3]["O_PREV"] is fwd[0][3]["O"]
    assert (fwd[0][3]["O"].data_ptr() == out.data_ptr()) == (partials == "output")
    launches.clear()
    grads = torch.autograd.grad(out, leaves, do)
    last = {name: launches[-1][3][name] for name in ("DK", "DV")}
    last["DQ"] = launches[-1 if mode == "merged" else -2][3]["DQ"]
    assert not launches[-1][1] and launches[-1][2]  # the natural part, merging
    for name, g in zip(("DQ", "DK", "DV"), grads):
        assert last[name].dtype == torch.float16 and last[name].data_ptr() == g.data_ptr(), name
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    _check_three_way([out.detach(), *grads], low, exact, dtype, f"strided, last part direct, {mode}")


@pytest.mark.parametrize("mode", ["separate", "merged"])
def test_forced_tiles_launch_the_named_configs_and_match_the_reference(mode, monkeypatch):
    """blocksparse.forced_tiles (the tile sweep's hook): forward and backward kernels forced to tiles
    other than the interpreter's default (half the block) still give the reference answer; a forced
    tile wider than the block is refused at launch, naming the kernel; leaving the block restores the
    autotuned path."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
    case = CASES["merged_fixed_strided"]  # block 32, two parts per head (LOAD_PREV paths too)
    backward = ("merged", (16, 32, 32, 16, 4, 2)) if mode == "merged" else ("dkdv", (16, 32, 4, 2))
    with blocksparse.forced_tiles("fwd", (32, 16, 4, 3)), blocksparse.forced_tiles(*backward), \
            blocksparse.forced_tiles("dq", (32, 32, 4, 2)):
        assert set(blocksparse._FORCED) == {"fwd", backward[0], "dq"}
        _run_case(case, monkeypatch)
    assert blocksparse._FORCED == {}
    layout = P.build_layout(P.same_for_all_heads(P.fixed(32, 8), 1), 64, 32)
    q = torch.randn(1, 1, 64, 16)
    with blocksparse.forced_tiles("fwd", (64, 32, 4, 2)), pytest.raises(ValueError, match="forced fwd tiles"):
        blocksparse.blocksparse_attention(q, q, q, layout)
    with pytest.raises(ValueError, match="unknown kernel"):
        blocksparse.forced_tiles("bwd", (32, 32, 4, 2)).__enter__()
    with pytest.raises(ValueError, match="6 positive integers"):
        blocksparse.forced_tiles("merged", (32, 32, 4, 2)).__enter__()


@pytest.mark.parametrize("kernel", ["dq", "dkdv", "merged"])
def test_block_64s_head_dim_64_configs_match_the_reference(kernel, monkeypatch):
    """The configs listed for block 64 at head dim 64 beyond the block's own (whole-block 64x64 tiles: the
    strided pattern's block at short lengths), each forced in its backward mode on a strided pattern whose
    permuted part has groups of 8 (tiles straddling groups) and merges into the natural part: the reference's
    output and gradients."""
    names = blocksparse._KERNEL_NAMES[kernel]
    table = {"dq": blocksparse._DQ_TILES, "dkdv": blocksparse._DKDV_TILES, "merged": blocksparse._MERGED_TILES}[kernel]
    added = [e for e in blocksparse.tile_list(table, 64, 64, names) if e not in blocksparse.tile_list(table, 64, 128, names)]
    assert added and all(max(e[: len(names)]) == 64 for e in added)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "merged" if kernel == "merged" else "separate")
    case = (lambda h: P.strided(64), 512, 64, 1, 64, torch.float32, 1)  # n / l = 8
    for entry in added:
        with blocksparse.forced_tiles(kernel, entry):
            _run_case(case, monkeypatch)


@pytest.mark.parametrize("pattern", ["fixed", "merged"])
def test_gradients_come_in_the_memory_order_of_the_inputs(pattern, monkeypatch):
    """Contiguous (B, H, T, D) inputs get (B, H, T, D) gradients, time-major head views (the model's)
    get time-major ones: a leaf's AccumulateGrad then keeps the gradient instead of copying it into the
    leaf's layout. Values equal the reference's either way (one part, and two parts in fp32)."""
    monkeypatch.setattr(blocksparse, "POISON", True)
    make = {"fixed": P.fixed(32, 8), "merged": P.merged(P.fixed(32, 8), P.strided(16))}[pattern]
    layout = P.build_layout(P.same_for_all_heads(make, 2), 128, 32)
    q, k, v, do = _inputs(1, 2, 128, 32, torch.float32, 7)
    time_major = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    want = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    for inputs, head_major in (((q, k, v), True), (time_major, False)):
        got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), *inputs, do)
        for g, w in zip(got[1:], want[1:]):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
            assert (g.is_contiguous() if head_major else g.transpose(1, 2).is_contiguous()), g.stride()


def test_sparse_attention_dispatches_to_triton(monkeypatch):
    """kernels.sparse_attention uses the kernels under the interpreter with MEGASTRIDE_ATTENTION=triton."""
    monkeypatch.setenv("MEGASTRIDE_ATTENTION", "triton")
    calls = []
    real = blocksparse.blocksparse_attention
    monkeypatch.setattr(blocksparse, "blocksparse_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    layout = P.build_layout(P.fixed(32, 8), 128, 32, num_heads=2)
    q, k, v, _ = _inputs(1, 2, 128, 16, torch.float32, 5)  # head dim 16 is padded
    out = sparse_attention(q, k, v, layout)
    assert calls
    torch.testing.assert_close(out, reference_attention(q, k, v, layout), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pattern,env", [
    ("fixed", {}),  # one part per head: dq, dk, dv written straight into the fused gradient
    ("merged", {}),  # two parts per head: fp32 accumulation, then copied in
    SLOW("fixed", {"MEGASTRIDE_BLOCKSPARSE_DQ": "atomic", "MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "1"}),  # zeroed fp32 buffers
    SLOW("fixed", {"MEGASTRIDE_BLOCKSPARSE_DQ": "merged"}),
], ids=["one-part", "merged-parts", "atomic-split", "merged-launch"])
def test_fused_qkv_attention_matches_the_split_one(pattern, env, monkeypatch):
    """sparse_attention_qkv over a (B, T, 3HD) product: the output and the one gradient equal the
    reference on the split q, k, v, and on the Triton path the fused autograd function ran."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MEGASTRIDE_ATTENTION", "triton")
    heads, d, n = 2, 32, 256
    spec = P.merged(P.fixed(64, 16), P.strided(32)) if pattern == "merged" else P.fixed(64, 16)
    layout = P.build_layout(P.same_for_all_heads(spec, heads), n, 32)
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(2, n, 3 * heads * d, generator=gen)
    do = torch.randn(2, heads, n, d, generator=gen)
    applied = []
    real = blocksparse._EagerQKV.apply
    monkeypatch.setattr(blocksparse._EagerQKV, "apply", lambda *a: applied.append(1) or real(*a))

    def split(x):
        return [t.view(2, n, heads, d).transpose(1, 2) for t in x.split(heads * d, -1)]

    leaf = qkv.clone().requires_grad_()
    out = sparse_attention_qkv(leaf, heads, layout)
    (grad,) = torch.autograd.grad(out, leaf, do)
    assert applied, "the fused path did not run"
    ref_leaf = qkv.double().requires_grad_()
    ref = reference_attention(*split(ref_leaf), layout)
    (ref_grad,) = torch.autograd.grad(ref, ref_leaf, do.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=2e-5)
    assert grad.is_contiguous() and out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("qk_mult", [1.0, 0.5], ids=["fused-qkv", "narrow-qk"])
def test_model_through_the_kernels_equals_the_reference_path(qk_mult, monkeypatch):
    """A small model's loss and every parameter gradient through the Triton kernels (the fused q/k/v
    path, and the padded one when q and k are narrower) equal the same model on the reference path."""
    from megastride.engine.config import config_from_dict
    from megastride.engine.model import SparseTransformer

    cfg = config_from_dict({"model": {"seq_len": 128, "d_model": 64, "n_layers": 2, "n_heads": 2, "qk_mult": qk_mult,
                                      "attention": {"block": 32, "layers": ["fixed(64,16)", "strided(16)"]}}}).model
    torch.manual_seed(0)
    model = SparseTransformer(cfg)
    idx = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(1))

    def loss_and_grads(backend):
        monkeypatch.setenv("MEGASTRIDE_ATTENTION", backend)
        model.zero_grad()
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = loss_and_grads("triton")
    ref_loss, ref_grads = loss_and_grads("reference")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_fused_qkv_refuses_a_width_that_does_not_split():
    layout = P.build_layout(P.fixed(64, 16), 128, 32, num_heads=2)
    with pytest.raises(ValueError, match="does not split into 3 x 2 heads"):
        sparse_attention_qkv(torch.zeros(1, 128, 100), 2, layout)


def test_padded_head_dim_and_custom_scale():
    """A head dim outside the kernels' set (24) is zero-padded; an explicit scale is honoured."""
    layout = P.build_layout(P.strided(16), 256, 32, num_heads=2)
    q, k, v, do = _inputs(1, 2, 256, 24, torch.float32, 7)
    got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout, scale=0.3), q, k, v, do)
    want = _attention_and_grads(lambda *x: reference_attention(*x, layout, scale=0.3), q, k, v, do)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_custom_op_registration():
    """The torch.library op passes opcheck (schema, fake tensor, autograd registration)."""
    layout = P.build_layout(P.strided(8), 128, 32, num_heads=2)
    q, k, v, _ = _inputs(1, 128, 2, 16, torch.float32, 9)  # (B, T, H, D) viewed as (B, H, T, D), as the model does
    args = [t.transpose(1, 2).requires_grad_() for t in (q, k, v)] + [blocksparse.layout_id(layout), 0.25]
    torch.library.opcheck(blocksparse.blocksparse_fwd, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_bad_inputs_raise():
    """Shape, dtype and layout mismatches are clear errors."""
    layout = P.build_layout(P.fixed(32, 8), 128, 32, num_heads=2)
    q = torch.randn(1, 2, 128, 32)
    with pytest.raises(ValueError, match="positions"):
        blocksparse.blocksparse_attention(q[:, :, :64], q[:, :, :64], q[:, :, :64], layout)
    with pytest.raises(ValueError, match="dtype"):
        blocksparse.blocksparse_attention(q, q, q.double(), layout)


def test_bench_variants_are_valid_modes_and_get_columns(monkeypatch):
    """Each backward variant `megastride bench attention` can time sets valid modes, and the table
    gives every timed variant its own column beside ours and Flex."""
    from megastride.kernels.bench import OUR_VARIANTS, Case, Result, table

    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DQ", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_RUNS", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_ORDER", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_TMA", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DIRECT", raising=False)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_PLANS", raising=False)
    for name in ("GLUON", "GLUON_DKDV_LAUNCHES", "GLUON_STREAMS", "GLUON_SPLIT", "GLUON_FWD", "GLUON_FWD_LAUNCHES",
                 "GLUON_DQ", "GLUON_AHEAD", "GLUON_WS", "GLUON_HALVES_SPLIT", "FLAT", "FLAT_DQ", "FLAT_DKDV", "PDL",
                 "FWD_SPLIT", "DQ_SPLIT"):
        monkeypatch.delenv(f"MEGASTRIDE_BLOCKSPARSE_{name}", raising=False)
    from megastride.kernels import gluon_bwd, gluon_fwd

    layout = P.build_layout(P.same_for_all_heads(P.fixed(256, 64), 2), 1024, 128)
    switches = lambda: (blocksparse.dq_mode(), blocksparse.dkdv_split_setting(), blocksparse.use_runs(),  # noqa: E731
                        blocksparse.block_order(), blocksparse.use_tma_loads(), blocksparse.partials_setting(),
                        blocksparse.split_finish(), blocksparse.delta_in_dq(), blocksparse.use_direct_launch(),
                        blocksparse.gluon_setting(), gluon_bwd.dkdv_launches(128), gluon_bwd.dkdv_launches(64),
                        gluon_bwd.use_streams(), blocksparse.gluon_split(layout, 1, 132),
                        blocksparse.gluon_fwd_setting(), gluon_fwd.launches(), blocksparse.gluon_dq_setting(),
                        gluon_bwd.look_ahead(torch.float16, False, False), gluon_bwd.look_ahead(torch.float16, True, False),
                        gluon_bwd.warp_specialized(64, 128, torch.zeros(1, 1, 256), torch.zeros(1, 1, 256)),
                        gluon_bwd.warp_specialized(128, 128, torch.zeros(1, 1, 256), torch.zeros(1, 1, 256)),
                        gluon_bwd.halves_split(64), gluon_bwd.halves_split(128),
                        os.environ.get("MEGASTRIDE_BLOCKSPARSE_PLANS", blocksparse.PLANS), blocksparse.flat_setting(),
                        blocksparse.use_flat_dq(), blocksparse.use_flat_dkdv(),
                        blocksparse._switch("MEGASTRIDE_BLOCKSPARSE_PDL", blocksparse.PDL),  # use_pdl: off on a CPU
                        blocksparse.fwd_split(), blocksparse.dq_split())
    ours = switches()  # what the bench's "ours" runs
    for env in OUR_VARIANTS.values():
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            assert switches() != ours
    r = Result(Case("fixed", 1024, 8, 64), 64, 128, 0.1, 10)
    r.timings.update(ours_fwdbwd_ms=1.0, ours_atomic_fwdbwd_ms=0.8, ours_split_fwdbwd_ms=0.7, flex_fwdbwd_ms=1.2)
    head, _, row = table([r]).splitlines()
    assert head.endswith("| ours_atomic f+b ms | ours_split f+b ms |") and row.endswith("| 0.800 | 0.700 |")
    assert "| 1.20× |" in row


def test_autotune_lists_follow_block_and_head_dim():
    """The pruner offers the configs listed for (block, head dim) where there is such a list (in place of
    the block's: dK/dV 32x128 w4 s5 leads at head dim 64 and trails at 128), else the block's."""
    prune = blocksparse._pruner(blocksparse._DKDV_TILES)
    configs = blocksparse._configs(blocksparse._DKDV_TILES)
    tiles = lambda **kw: {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)  # noqa: E731
                          for c in prune(configs, {}, **kw)}
    assert tiles(BLOCK=128, HEAD_DIM=64) == {(32, 128, 4, 5), (64, 64, 4, 5), (64, 128, 8, 5)}
    assert tiles(BLOCK=128, HEAD_DIM=32) == set(blocksparse._DKDV_TILES[128])
    assert tiles(BLOCK=128, HEAD_DIM=128) == {(64, 64, 4, 3), (64, 128, 8, 5), (64, 128, 8, 3)}
    assert (32, 128, 4, 5) in blocksparse._DKDV_TILES[128]
    assert tiles(BLOCK=64, HEAD_DIM=128) == {(32, 64, 4, 4)}
    assert tiles(BLOCK=64, HEAD_DIM=64) == {(32, 64, 4, 4), (64, 64, 4, 5)}  # block 64's own list at head dim 64
    assert tiles(BLOCK=32, HEAD_DIM=64) == {(32, 32, 4, 2)}  # no list: one safe config


def test_autotune_buckets_are_4x_wide():
    """Lengths within a factor of 4 share an autotuning entry; the issue's bench lengths get one each."""
    b = blocksparse._bucket
    assert [b(n) for n in (1, 8192, 8193, 32768, 32769, 131072, 131073)] == [0, 0, 1, 1, 2, 2, 3]
    lengths = (3072, 12288, 65536, 262144, 1048576, 4194304)
    assert [b(n) for n in lengths] == sorted({b(n) for n in lengths})  # distinct, in order
    assert all(b(n) <= b(n + 1) for n in range(1, 70000, 97))  # monotone


def test_extra_tiles_join_the_lists_where_they_fit(monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES adds configs to one kernel's list at every block they fit;
    a malformed entry is refused, named."""
    extra = blocksparse._extra_tiles("fwd:128x128w8s2, dkdv:64x128w8s2,dkdv:32x32w4s2")
    assert extra == {"fwd": [(128, 128, 8, 2)], "dq": [], "dkdv": [(64, 128, 8, 2), (32, 32, 4, 2)]}
    table = {**blocksparse._DKDV_TILES, "extra": extra["dkdv"]}
    prune = blocksparse._pruner(table)
    tiles = lambda **kw: {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)  # noqa: E731
                          for c in prune(blocksparse._configs(table), {}, **kw)}
    assert tiles(BLOCK=128, HEAD_DIM=32) == set(blocksparse._DKDV_TILES[128]) | {(64, 128, 8, 2), (32, 32, 4, 2)}
    assert tiles(BLOCK=64, HEAD_DIM=64) == {(32, 64, 4, 4), (64, 64, 4, 5), (32, 32, 4, 2)}
    with pytest.raises(ValueError, match="'fwd:128x128'"):
        blocksparse._extra_tiles("fwd:128x128")
    with pytest.raises(ValueError, match="KERNEL one of"):
        blocksparse._extra_tiles("bwd:64x64w4s2")


def test_eager_path_and_compiled_op_path_agree(monkeypatch):
    """Eager calls skip the custom op's dispatch (autograd.Function); under torch.compile the op is
    traced. Both give the same output and gradients, and each path is the one taken."""
    layout = P.build_layout(P.fixed(64, 32), 256, 32, num_heads=2)
    q, k, v, do = _inputs(1, 2, 256, 32, torch.float32, 11)
    calls = []
    real_op = blocksparse.blocksparse_fwd
    monkeypatch.setattr(blocksparse, "blocksparse_fwd", lambda *a: calls.append(1) or real_op(*a))
    eager = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    assert not calls
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    assert calls
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)


def test_q_k_v_as_views_of_one_projection(monkeypatch):
    """The model hands the kernels q, k and v as (B, H, T, D) views of one (B, T, 3 H D) projection
    (time stride 3 H D, batch stride 3 T H D), over a merged fixed+strided head (a permuted part):
    output and all three gradients equal the reference on the same views."""
    monkeypatch.setattr(blocksparse, "POISON", True)
    batch, heads, n, d = 2, 2, 256, 32
    layout = P.build_layout(P.same_for_all_heads(P.merged(P.fixed(64, 16), P.strided(32)), heads), n, 32)
    gen = torch.Generator().manual_seed(13)
    fused = torch.randn(batch, n, 3 * heads * d, generator=gen, requires_grad=True)
    do = torch.randn(batch, heads, n, d, generator=gen)

    def run(attention):
        q, k, v = (t.view(batch, n, heads, d).transpose(1, 2) for t in fused.split(heads * d, -1))
        assert q.stride(2) == 3 * heads * d and not q.is_contiguous()
        out = attention(q, k, v, layout)
        return [out.detach(), torch.autograd.grad(out, fused, do)[0]]

    got, want = run(blocksparse.blocksparse_attention), run(reference_attention)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("multi", [False, True], ids=["fixed", "fixed-and-strided"])
def test_output_is_laid_out_time_major_so_the_model_reshapes_without_a_copy(multi):
    """The output lives in (B, T, H, D) memory order, so the model's out.transpose(1, 2).reshape(B, T, H*D)
    is a view; the custom op's fake tensor has the same strides as the real one (torch.compile trusts it)."""
    pattern = P.merged(P.fixed(64, 16), P.strided(32)) if multi else P.fixed(64, 16)
    n = 128  # strides, not lengths, are what this checks (at 256 the interpreter took 40 s on 2 cores)
    layout = P.build_layout(P.same_for_all_heads(pattern, 2), n, 32)
    q, k, v, _ = _inputs(2, 2, n, 32, torch.float32, 5)
    out = blocksparse.blocksparse_attention(q, k, v, layout)
    flat = out.transpose(1, 2).reshape(2, n, 64)
    assert flat.data_ptr() == out.data_ptr() and out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out, reference_attention(q, k, v, layout), rtol=1e-4, atol=2e-5)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake_out, fake_lse = blocksparse.blocksparse_fwd(mode.from_tensor(q), mode.from_tensor(k), mode.from_tensor(v),
                                                         blocksparse.layout_id(layout), 0.1)
    real_out, real_lse = blocksparse.blocksparse_fwd(q, k, v, blocksparse.layout_id(layout), 0.1)
    assert fake_out.stride() == real_out.stride() and fake_lse.stride() == real_lse.stride()
    # the gradients come in the inputs' memory order: time-major for the model's q, k, v (views of one
    # (B, T, 3D) product, whose backward then takes them without a copy into (B, T, D) order each),
    # (B, H, T, D) for contiguous inputs; the fake tensors' strides follow the same rule
    do = torch.randn_like(q)
    time_major = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    for inputs, head_major in (((q, k, v), True), (time_major, False)):
        grads = blocksparse.blocksparse_bwd(do, *inputs, real_out, real_lse, blocksparse.layout_id(layout), 0.1)
        assert all((g.is_contiguous() if head_major else g.transpose(1, 2).is_contiguous()) for g in grads)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fakes = blocksparse.blocksparse_bwd(*(mode.from_tensor(t) for t in (do, *inputs, real_out, real_lse)),
                                                blocksparse.layout_id(layout), 0.1)
        assert [f.stride() for f in fakes] == [g.stride() for g in grads]


def _expand_runs(row):
    s0, c0, st0, s1, c1, st1 = (int(x) for x in row)
    return [s0 + t * st0 for t in range(c0)] + [s1 + t * st1 for t in range(c1)]


def test_block_runs_are_exact_or_refused():
    """blocksparse._block_runs: each list as at most two arithmetic runs that expand to exactly the list
    in order (the fixed pattern's rows: summaries of earlier windows, then the own window); a list
    needing three runs makes the side refuse (None), and the kernels keep the index lists."""
    lists = [[63, 127, 191, 192, 193], [], [5], [0, 1, 2, 3], [7, 3]]
    ptr = torch.tensor([0] + [len(x) for x in lists]).cumsum(0).to(torch.int32)
    idx = torch.tensor([b for x in lists for b in x], dtype=torch.int32)
    runs = blocksparse._block_runs(ptr, idx)
    assert runs.shape == (5, 6) and runs.dtype == torch.int32
    assert runs[0].tolist() == [63, 3, 64, 192, 2, 1]
    assert [_expand_runs(r) for r in runs] == lists
    three = [[0, 5, 6, 10]]
    assert blocksparse._block_runs(torch.tensor([0, 4], dtype=torch.int32), torch.tensor(three[0], dtype=torch.int32)) is None
    for n, block, l, c in ((4096, 128, 1024, 128), (2048, 32, 256, 32), (1024, 64, 128, 32)):
        layout = P.build_layout(P.same_for_all_heads(P.fixed(l, c), 1), n, block)
        for side in ("row", "col"):
            csr = layout.parts[0].csr[0]
            ptr, idx = getattr(csr, f"{side}_full_ptr"), getattr(csr, f"{side}_full_idx")
            runs = blocksparse._block_runs(ptr, idx)
            assert runs is not None, (n, block, side)
            want = [idx[ptr[r]:ptr[r + 1]].tolist() for r in range(ptr.numel() - 1)]
            assert [_expand_runs(r) for r in runs] == want


@pytest.mark.parametrize("name,env", [
    ("fixed_block128", {}), SLOW("local", {}), SLOW("fixed_per_head", {}), SLOW("merged_fixed_strided", {}),
    SLOW("fixed_d128", {"MEGASTRIDE_BLOCKSPARSE_DQ": "merged"}),
    SLOW("fixed_per_head", {"MEGASTRIDE_BLOCKSPARSE_DQ": "atomic", "MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "1"}),
], ids=["fixed128", "local", "per-head", "merged-parts", "merged-launch", "atomic-split"])
def test_runs_walk_gives_the_reference_and_is_used(name, env, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_RUNS=1: the kernels walk full lists as runs (block by arithmetic) in the
    forward and every backward mode, with the reference's answer; the launches really had RUNS set."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_RUNS", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", env.get("MEGASTRIDE_BLOCKSPARSE_DQ", "separate"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    seen = {}
    real = blocksparse._launch

    def launch(tuned, kernel, grid, args, consts, names=blocksparse._TILE_NAMES, name=""):
        seen.setdefault(name, set()).add(consts["RUNS"])
        return real(tuned, kernel, grid, args, consts, names, name=name)

    monkeypatch.setattr(blocksparse, "_launch", launch)
    _run_case(CASES[name], monkeypatch)
    # expected: runs wherever every list of the launch's side(s) has at most two (else the index lists)
    make, n, block, heads = CASES[name][:4]
    pattern = P.same_for_all_heads(p, heads) if isinstance(p := make(heads), P.HeadPattern) else p
    layout = P.build_layout(pattern, n, block)
    ok = {side: {all(blocksparse._block_runs(getattr(c, f"{side}_full_ptr"), getattr(c, f"{side}_full_idx")) is not None
                     for c in part.csr) for part in layout.parts} for side in ("row", "col")}
    want = {"fwd": ok["row"], "dq": ok["row"], "dkdv": ok["col"], "merged": {r and c for r in ok["row"] for c in ok["col"]}}
    assert seen and all(seen[k] == want[k] for k in seen), (seen, want)
    assert any(True in v for v in seen.values())  # the case exercises the runs path somewhere


def test_runs_switch_is_validated(monkeypatch):
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_RUNS", "yes")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_RUNS must be 0 or 1"):
        blocksparse.use_runs()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_RUNS", "0")
    assert blocksparse.use_runs() is False


def test_chunked_order_takes_whole_chunks_heaviest_first(monkeypatch):
    """_work_order "chunked": a permutation in which each chunk of ORDER_CHUNK consecutive blocks is one
    contiguous run, chunks by their heaviest item descending, items in a chunk by work descending; "lpt"
    is plain descending work. The same for column segments, whose blocks are their columns."""
    monkeypatch.setattr(blocksparse, "ORDER_CHUNK", 4)
    gen = torch.Generator().manual_seed(3)
    work = torch.randint(0, 50, (37,), generator=gen)
    lpt = blocksparse._work_order(work, None, "lpt")
    assert work[lpt].tolist() == sorted(work.tolist(), reverse=True)
    order = blocksparse._work_order(work, None, "chunked")
    assert sorted(order.tolist()) == list(range(37))
    chunks = (order // 4).tolist()
    runs = [c for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]
    assert len(runs) == len(set(runs)) == 10  # each chunk contiguous
    tops = [int(work[i * 4:(i + 1) * 4].max()) for i in runs]
    assert tops == sorted(tops, reverse=True)
    for c in runs:
        inside = [int(work[i]) for i in order.tolist() if i // 4 == c]
        assert inside == sorted(inside, reverse=True)
    # segments: every full entry once, in whole chunks of their columns
    layout = P.build_layout(P.same_for_all_heads(P.fixed(64, 16), 2), 512, 32)
    meta = blocksparse._part_meta(layout.parts[0], 512, torch.device("cpu"))
    nb = layout.num_blocks
    seg = blocksparse._column_segments(meta.lists, nb, 3, "chunked")
    full = meta.lists["col_full_ptr"].long().view(-1, nb + 1)
    for c in range(full.shape[0]):
        covered = torch.zeros(int(full[c, -1]), dtype=torch.long)
        cols = []
        for col, lo, hi in zip(*(seg[k][c].tolist() for k in ("seg_col", "seg_lo", "seg_hi"))):
            covered[lo:hi] += 1
            if hi > lo:
                cols.append(col // 4)
        assert (covered[int(full[c, 0]):] == 1).all()
        runs = [x for i, x in enumerate(cols) if i == 0 or x != cols[i - 1]]
        assert len(runs) == len(set(runs))


@pytest.mark.parametrize("name,dq,split", [("fixed_per_head", "separate", "0"), ("strided_permuted_straddling", "merged", "0"),
                                           ("multi_head_mix", "separate", "2"), ("summary_only_empty_rows", "atomic", "0")])
def test_chunked_order_gives_the_reference_and_is_used(name, dq, split, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_ORDER=chunked (chunks of 2 blocks here, so the small layouts reorder): the
    reference's answer in each backward mode, with the launches' block orders really the chunked ones."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_ORDER", "chunked")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", dq)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", split)
    monkeypatch.setattr(blocksparse, "ORDER_CHUNK", 2)
    orders = []
    real = blocksparse._side_order

    def side_order(meta, side):
        got = real(meta, side)
        with monkeypatch.context() as m:
            m.setenv("MEGASTRIDE_BLOCKSPARSE_ORDER", "lpt")
            orders.append(not torch.equal(got, real(meta, side)))
        return got

    monkeypatch.setattr(blocksparse, "_side_order", side_order)
    _run_case(CASES[name], monkeypatch)
    assert orders and any(orders)  # some launch took its blocks in an order other than longest first


def test_order_switch_is_validated(monkeypatch):
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_ORDER", "random")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_ORDER must be one of lpt, chunked"):
        blocksparse.block_order()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_ORDER", "chunked")
    assert blocksparse.block_order() == "chunked"


@pytest.mark.parametrize("name,dq,tma", [("fixed_block128", "separate", None), SLOW("merged_fixed_strided", "merged", None),
                                         SLOW("multi_head_mix", "atomic", None), ("fixed_d128", "separate", None),
                                         ("fixed_block128", "merged", "0"), SLOW("multi_head_mix", "atomic", "0")])
def test_tma_loads_give_the_reference_and_are_used(name, dq, tma, monkeypatch):
    """By default where a part's rows hold TMA_MIN_BLOCKS full blocks on average (lowered here to any), and
    for every part with MEGASTRIDE_BLOCKSPARSE_TMA=1, the full lists' tiles come from in-kernel tensor
    descriptors (TMA boxes) where a part is in natural order, pointer loads in permuted parts; with
    MEGASTRIDE_BLOCKSPARSE_TMA=0 pointer loads everywhere. The reference's answer in the forward and each
    backward mode either way, and the launches really had DESC set where expected."""
    if tma is None:
        monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_TMA", raising=False)
        monkeypatch.setattr(blocksparse, "TMA_MIN_BLOCKS", 0)
    else:
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TMA", tma)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", dq)
    seen = {}
    real = blocksparse._launch

    def launch(tuned, kernel, grid, args, consts, names=blocksparse._TILE_NAMES, name=""):
        seen.setdefault(name, set()).add((consts["PERMUTED"], consts["DESC"]))
        return real(tuned, kernel, grid, args, consts, names, name=name)

    monkeypatch.setattr(blocksparse, "_launch", launch)
    _run_case(CASES[name], monkeypatch)
    on = tma != "0"
    assert seen and all(desc == (on and not permuted) for pairs in seen.values() for permuted, desc in pairs), seen
    assert any(desc for pairs in seen.values() for _, desc in pairs) == on


def test_tma_loads_need_aligned_rows_and_the_switch(monkeypatch):
    """_desc_loads: on by default where a part's rows hold TMA_MIN_BLOCKS full blocks on average (for every
    part when switched on), off when switched off, for permuted parts and for rows TMA cannot address (a row
    stride that is not a multiple of 16 bytes); the switch is validated."""
    layout = P.build_layout(P.same_for_all_heads(P.fixed(64, 16), 2), 256, 32)
    meta = blocksparse._part_meta(layout.parts[0], 256, torch.device("cpu"))
    q = torch.randn(1, 2, 256, 32)
    threshold = blocksparse.TMA_MIN_BLOCKS
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_TMA", raising=False)
    # 8 row blocks of 32 in 64-token windows: a window's second row block wholly attends its first, every
    # other entry is partial (diagonal blocks, 16-token summaries): 4 full entries over 8 rows
    full = 0.5
    assert meta.full_per_row == full and full < blocksparse.TMA_MIN_BLOCKS
    assert not blocksparse._desc_loads(meta, q, q, q)  # lists too short by default
    monkeypatch.setattr(blocksparse, "TMA_MIN_BLOCKS", full)
    assert blocksparse._desc_loads(meta, q, q, q)
    assert blocksparse.use_tma_loads(full) and not blocksparse.use_tma_loads(full - 0.01)
    monkeypatch.setattr(blocksparse, "TMA_MIN_BLOCKS", threshold)  # the switch overrides it both ways
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TMA", "0")
    assert not blocksparse._desc_loads(meta, q, q, q)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TMA", "1")
    assert blocksparse._desc_loads(meta, q, q, q)
    odd = torch.randn(1, 2, 256, 33)[..., :32]  # rows 132 bytes apart
    assert not blocksparse._desc_loads(meta, q, odd, q)
    strided = P.build_layout(P.same_for_all_heads(P.strided(16), 2), 256, 32)
    permuted = next(part for part in strided.parts if part.permute_stride)
    assert not blocksparse._desc_loads(blocksparse._part_meta(permuted, 256, torch.device("cpu")), q, q, q)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TMA", "on")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_TMA must be 0 or 1"):
        blocksparse.use_tma_loads()


def test_own_tuning_key_is_the_autotuners(monkeypatch):
    """_launch looks up the autotuner's choice under a key it computes itself (cheaper per launch): for
    every kernel a forward+backward launches, Triton's Autotuner.run, handed the same arguments, finds
    a config filed under our key (and so does not tune), i.e. the two keys are equal."""
    launches = []
    real = blocksparse._launch

    def spy(tuned, kernel, grid, args, consts, names=blocksparse._TILE_NAMES, name=""):
        launches.append((tuned, args, dict(consts)))
        return real(tuned, kernel, grid, args, consts, names, name=name)

    monkeypatch.setattr(blocksparse, "_launch", spy)
    for mode in ("separate", "merged", "atomic"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
        _run_case(CASES["merged_fixed_strided"], monkeypatch)
    assert {id(t) for t, _, _ in launches} == {id(t) for t in (blocksparse._fwd_tuned, blocksparse._dq_tuned,
                                                               blocksparse._dkdv_tuned, blocksparse._merged_tuned)}
    for tuned, args, consts in launches:
        sentinel = tuned.configs[0]
        ran = []
        monkeypatch.setattr(tuned, "cache", {blocksparse._tuning_key(tuned, args, consts): sentinel})
        monkeypatch.setattr(tuned, "fn", type("Fn", (), {"run": lambda self, *a, **kw: ran.append(kw)})())
        monkeypatch.setattr(tuned, "prune_configs", lambda *a, **kw: pytest.fail("keys differ: the autotuner would tune"))
        tuned.run(*args, **consts)
        assert ran and all(ran[0][k] == v for k, v in sentinel.all_kwargs().items())


def test_tma_scratch_allocator_is_set_only_where_none_is():
    """The TMA-reduce dQ builds descriptors on the device, which needs Triton's scratch allocator; it is
    per thread (autograd's backward thread starts without one), so it is set before such a launch where
    none is, and a user's own is left alone. CPU tensors and the interpreter never take the TMA path."""
    import contextvars

    import triton
    from triton.runtime import _allocation

    def run():
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        blocksparse._ensure_allocator()
        assert _allocation._allocator.get() is blocksparse._scratch
        mine = lambda size, alignment, stream: None  # noqa: E731
        triton.set_allocator(mine)
        blocksparse._ensure_allocator()
        assert _allocation._allocator.get() is mine

    contextvars.Context().run(run)  # a fresh context, like a new thread's
    assert not blocksparse._has_tma(torch.zeros(1))


# the plain recompute's (loss, gradients, forward launches) by its train settings: the reference of the True and
# "attention" cases is the same run (block inputs in host memory, in order, nothing kept)
_PLAIN_RECOMPUTES: dict = {}


@pytest.mark.parametrize("offload", [SLOW(False), SLOW(True), "attention", SLOW("attention-overlap")])
def test_recomputed_blocks_reuse_their_kept_attention_outputs(offload, monkeypatch):
    """train.keep_attention: recomputed blocks keep their attention outputs and log-sum-exps from the
    forward pass, and their recompute launches no attention forward; loss and every gradient equal the
    plain recompute's exactly (the same kernels on the same inputs). With train.offload_attention the kept
    pairs wait in host memory between the passes (the block's store emptied, host copies in the head view's
    strides) and come back with the block's input (prefetched under offload_overlap)."""
    from megastride.engine import parallel
    from megastride.engine.config import config_from_dict
    from megastride.engine.model import SparseTransformer
    from megastride.engine.parallel import apply_activation_checkpointing

    monkeypatch.setenv("MEGASTRIDE_ATTENTION", "triton")
    model_cfg = {"seq_len": 128, "d_model": 64, "n_layers": 3, "n_heads": 2,
                 "attention": {"block": 32, "layers": ["fixed(64,16)", "strided(16)"]}}
    idx = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(1))
    forwards, held = [], []
    real_forward, real_apply = blocksparse._forward, parallel.BlockCheckpoint.forward
    monkeypatch.setattr(blocksparse, "_forward", lambda *a: forwards.append(1) or real_forward(*a))

    def block_forward(ctx, *args):  # what each block holds between the passes
        out = real_apply(ctx, *args)
        held.append((ctx.kept, ctx.kept_host))
        return out

    monkeypatch.setattr(parallel.BlockCheckpoint, "forward", staticmethod(block_forward))
    host = offload in ("attention", "attention-overlap")
    train = {"cpu_checkpointing": bool(offload), "offload_attention": host,
             "offload_overlap": offload == "attention-overlap"}

    def run(keep):
        held.clear()
        cfg = config_from_dict({"model": model_cfg, "train": {"checkpoint_blocks": 2, "keep_attention": keep,
                                                               **(train if keep else train | {"offload_attention": False})}})
        torch.manual_seed(0)
        model = SparseTransformer(cfg.model)
        apply_activation_checkpointing(model, cfg.train)
        forwards.clear()
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(forwards)

    loss, grads, launched = run(keep=True)
    kept = list(held)
    plain = (train["cpu_checkpointing"], train["offload_overlap"])
    if plain not in _PLAIN_RECOMPUTES:
        _PLAIN_RECOMPUTES[plain] = run(keep=False)
    ref_loss, ref_grads, ref_launched = _PLAIN_RECOMPUTES[plain]
    assert (launched, ref_launched) == (3, 5)  # three layers' forwards; two recomputed ones again without keeping
    assert len(kept) == 2
    for store, on_host in kept:
        if host:  # an (output, lse) pair a block, in host memory: the output a (B, H, T, D) view of (B, T, H, D)
            assert store is None and len(on_host) == 2
            (out, out_order), (lse, lse_order) = on_host
            assert out.shape == (2, 128, 2, 32) and out_order == [0, 2, 1, 3] and lse.shape == (2, 2, 128)
        else:
            assert len(store) == 1 and on_host is None
    assert torch.equal(loss, ref_loss)
    for name, g in ref_grads.items():
        assert torch.equal(grads[name], g), name


def test_a_recompute_that_calls_attention_differently_is_refused():
    """A reuse context whose calls do not match what was kept is an error naming the mismatch."""
    from megastride.kernels.attention import attention_forward, kept_attention

    pair = (torch.zeros(1, 2, 64, 16), torch.zeros(1, 2, 64))
    store = []
    with kept_attention(store):
        attention_forward(lambda: pair, (1, 2, 64, 16))
    with kept_attention(store, reuse=True):
        out, lse = attention_forward(lambda: 1 / 0, (1, 2, 64, 16))  # the kept pair; nothing runs
        assert out is pair[0] and lse is pair[1]
        with pytest.raises(RuntimeError, match="attention call 2 of a recomputed block has no kept output"):
            attention_forward(lambda: pair, (1, 2, 64, 16))
    with kept_attention(store, reuse=True), pytest.raises(RuntimeError, match=r"of shape \(1, 2, 32, 16\)"):
        attention_forward(lambda: pair, (1, 2, 32, 16))


@pytest.mark.parametrize("spec", ["strided(64)", "fixed(64,16)", "strided_half(32)|strided_half(64)",
                                  "strided(64)|strided_half(32)|strided_half(32)|strided_half(32)",
                                  "strided(16)|strided_half(16)|strided_half(32)|strided_half(32)",
                                  "strided_half(32)|strided_half(32)|strided(16)|strided_half(16)"])
def test_the_planner_sees_the_merges_the_kernels_schedule(spec):
    """engine.plan's (some head merged, some part merged in place before the last launch), which sets the
    autotuning bytes of a first step, is what blocksparse._schedule does with the layer's layout."""
    from megastride.engine import plan as planner
    from megastride.engine.config import config_from_dict

    cfg = config_from_dict({"model": {"seq_len": 512, "d_model": 64, "n_layers": 1, "n_heads": 4,
                                      "attention": {"block": 32, "layers": [spec]}}, "train": {"precision": "bf16"}})
    layout = P.build_layout(planner.layer_patterns(cfg.model, 512)[0], 512, 32)
    schedule = list(blocksparse._schedule(layout))
    merged = any(prev for _, prev, _, _ in schedule)
    in_place = any(prev and not last for _, prev, _, last in schedule)
    stats = planner.layout_stats(cfg.model, 512)
    assert (stats.merged, stats.merged_in_place) == (merged, in_place)


def test_switch_typos_are_refused_in_one_line(monkeypatch):
    """A mistyped MEGASTRIDE_ATTENTION, MEGASTRIDE_LAYERNORM, MEGASTRIDE_RESIDUAL or MEGASTRIDE_BLOCKSPARSE_TILES
    stops the call with a one-line error naming the variable, instead of silently running the default path."""
    from megastride.kernels import layer_norm, residual_add, sparse_attention

    layout = P.build_layout(P.same_for_all_heads(P.local(32), 2), 64, 16)
    q = torch.randn(1, 2, 64, 16)
    monkeypatch.setenv("MEGASTRIDE_ATTENTION", "refernce")
    with pytest.raises(ValueError, match=r"^MEGASTRIDE_ATTENTION must be unset, 'reference' or 'triton'; got 'refernce'$"):
        sparse_attention(q, q, q, layout)
    monkeypatch.setenv("MEGASTRIDE_ATTENTION", "Reference")  # any case
    torch.testing.assert_close(sparse_attention(q, q, q, layout), reference_attention(q, q, q, layout))
    monkeypatch.setenv("MEGASTRIDE_LAYERNORM", "pytorch")
    with pytest.raises(ValueError, match=r"^MEGASTRIDE_LAYERNORM must be unset, 'torch' or 'triton'; got 'pytorch'$"):
        layer_norm(torch.randn(4, 8), None, None)
    monkeypatch.setenv("MEGASTRIDE_LAYERNORM", "")
    monkeypatch.setenv("MEGASTRIDE_RESIDUAL", "Plain ")
    with pytest.raises(ValueError, match=r"^MEGASTRIDE_RESIDUAL must be unset, 'fused' or 'plain'; got 'plain '$"):
        residual_add(torch.randn(4, 8), torch.randn(4, 8).half())
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TILES", "64")
    with pytest.raises(ValueError, match=r"^MEGASTRIDE_BLOCKSPARSE_TILES must be 'M,N' \(two integers >= 16\), got '64'$"):
        blocksparse._fixed_tiles(64)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TILES", "64,32")
    assert blocksparse._fixed_tiles(32)["BLOCK_M"] == 32


@pytest.mark.parametrize("acc_dtype, out_dtype", [(torch.float16, torch.float16), (torch.float32, torch.float32),
                                                  (torch.float16, torch.float32)])
def test_finish_dq_unscales_the_fused_sums_into_any_layout(acc_dtype, out_dtype):
    """``finish_dq`` (the fused-dQ backward's last step) writes acc x inverse into dQ's own strides: the
    model's (B, T, H, D) head view and a contiguous (B, H, T, D) one, a length not a multiple of its 64-row
    tiles; fp16 sums scaled by 2^20 come back exactly (a power of two), where scaling them in fp16 first
    would flush them to zero. A dQ whose rows are not contiguous takes the plain torch path, same values."""
    gen = torch.Generator().manual_seed(0)
    batch, heads, n, dim = 2, 3, 100, 32
    want = torch.randn(batch, heads, n, dim, generator=gen) * 1e-6
    acc = (want * 2.0 ** 20).to(acc_dtype)
    inverse = torch.tensor(2.0 ** -20)
    exact = acc.float() * 2.0 ** -20
    view = torch.empty(batch, n, heads, dim, dtype=out_dtype).transpose(1, 2)
    for dq in (view, torch.empty(batch, heads, n, dim, dtype=out_dtype),
               torch.empty(batch, heads, n, 2 * dim, dtype=out_dtype)[..., ::2]):
        dq.fill_(float("nan"))
        blocksparse.finish_dq(acc, dq, inverse)
        assert torch.equal(dq, exact.to(out_dtype)), dq.stride()
    assert torch.allclose(exact, want, rtol=1e-3, atol=0)
    if acc_dtype == out_dtype:  # the sums in dQ's own storage (dq_sums_buffer), rewritten in place
        for dq in (torch.empty(batch, n, heads, dim, dtype=out_dtype).transpose(1, 2),
                   torch.empty(batch, heads, n, dim, dtype=out_dtype)):
            sums = blocksparse.dq_sums_buffer(dq.fill_(float("nan")), acc_dtype)
            assert sums.data_ptr() == dq.data_ptr() and sums.stride() == dq.stride() and not sums.any()
            sums.copy_(acc)
            blocksparse.finish_dq(sums, dq, inverse)
            assert torch.equal(dq, exact.to(out_dtype)), dq.stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_backwards_first_launch_zeroes_the_sums_and_takes_the_maxima(dtype):
    """``_bwd_prep``: delta = rowsum(dO * O) in fp32 for every row of a length not a multiple of its 64-row
    tiles, the fused dQ's sums (the model's (B, T, H, D) head view of dQ's own storage, NaN before) zeroed
    and no element beyond them written, and the three maxima max|dO|, max|V|, max|K| exact, each tensor's
    largest magnitude in a different row (one of them negative), over a start above some programs' own
    maxima; without the sums and maxima only delta is written."""
    gen = torch.Generator().manual_seed(1)
    batch, heads, n, dim = 2, 3, 100, 32
    o, do, k, v = (torch.randn(batch, heads, n, dim, generator=gen).to(dtype) for _ in range(4))
    do[1, 2, 99, 5], v[0, 0, 3, 31], k[1, 0, 64, 0] = 7.0, -9.0, 5.5
    want = (o.float() * do.float()).sum(-1)
    storage = torch.full((batch, n, heads, dim + 8), float("nan"), dtype=dtype)
    sums = storage[..., :dim].transpose(1, 2)
    maxes = torch.tensor([0.0, 8.0, 0.0])
    delta = torch.full((batch, heads, n), float("nan"))
    blocksparse._bwd_prep(o, do, delta, k, v, sums, maxes)
    assert torch.allclose(delta, want, rtol=1e-5, atol=1e-5)
    assert not sums.any() and storage[..., dim:].isnan().all()
    assert maxes.tolist() == [7.0, 9.0, 5.5]
    delta.fill_(float("nan"))
    blocksparse._bwd_prep(o, do, delta)
    assert torch.allclose(delta, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="the maxima need k and v"):
        blocksparse._bwd_prep(o, do, delta, maxes=maxes)


def test_the_fused_dq_sums_live_in_dq_where_they_fit():
    """``dq_sums_buffer``: fp16 sums of a bf16 or fp16 dQ whose rows TMA can address take dQ's own storage
    (the model's head view included), zeroed; fp32 sums, rows of 8 bytes (not a multiple of TMA's 16) or a
    strided channel get a zeroed contiguous buffer of their own."""
    for dtype in (torch.bfloat16, torch.float16):
        dq = torch.full((1, 64, 2, 32), 1.0, dtype=dtype).transpose(1, 2)
        sums = blocksparse.dq_sums_buffer(dq, torch.float16)
        assert sums.dtype == torch.float16 and sums.data_ptr() == dq.data_ptr() and not dq.any()
    for dq, dtype in ((torch.ones(1, 2, 64, 32, dtype=torch.bfloat16), torch.float32),
                      (torch.ones(1, 2, 64, 4, dtype=torch.bfloat16), torch.float16),
                      (torch.ones(1, 2, 64, 64, dtype=torch.bfloat16)[..., ::2], torch.float16)):
        sums = blocksparse.dq_sums_buffer(dq, dtype)
        assert sums.data_ptr() != dq.data_ptr() and sums.is_contiguous() and sums.dtype == dtype
        assert sums.shape == dq.shape and not sums.any() and dq.all()
