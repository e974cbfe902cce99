"""The block-sparse kernels on a CUDA GPU, where the interpreter cannot look: how much memory a first
call's autotuning adds, the auto dQ mode's timed choice, replay from a CUDA graph. Skipped without a
GPU (``-m gpu``).

``blocksparse`` (and with it triton) is imported inside the tests: imported while the suite is being
collected, before tests/test_kernels_triton.py sets TRITON_INTERPRET, it would compile the kernels for
a GPU instead of the interpreter in every later CPU test."""

import importlib

import pytest
import torch

from megastride.kernels import patterns as P
from megastride.kernels import reference_attention
from layout_workspaces import layout_workspaces

pytestmark = pytest.mark.gpu

GB = 1e9
# triton.testing.do_bench allocates a 256 MB buffer to flush the L2 cache between its calls
DO_BENCH_FLUSH = 0.3 * GB


def _blocksparse():
    return importlib.import_module("megastride.kernels.blocksparse")


def _untuned(monkeypatch):
    """Every autotuned kernel as if never tuned: no in-memory choices, no disk cache."""
    B = _blocksparse()
    for tuned in (B._fwd_tuned, B._dq_tuned, B._dkdv_tuned, B._merged_tuned):
        monkeypatch.setattr(tuned, "cache", {})
        monkeypatch.setattr(tuned, "cache_results", False)


def _grads(fn, q, k, v, do) -> list:
    """``fn(q, k, v)``'s output and its three gradients under the upstream gradient ``do``, on fresh leaves."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, do)]


def _assert_near(got: list, want: list, label: str = "") -> None:
    """Output and three gradients within the GPU bound of the fp32 reference (bf16/fp16 inputs)."""
    for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
        err = (g.float() - w.float()).abs().max().item()
        assert err <= 2e-2 * max(1.0, w.abs().max().item()), f"{label}{name}: max error {err:.3g}"


def _peak_of(call) -> float:
    """Bytes the allocator's peak rose above what was allocated before ``call()``."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.parametrize("pattern, block, saved_per_element", [
    (P.fixed(4096, 128), 128, 0),  # one part: nothing read back, nothing saved
    # the permuted part runs first and (PARTIALS "output", the default) writes its partial gradients into
    # dK and dV themselves, which the local part, last, reads and completes in place: its dK/dV trials save
    # and restore those two bf16 tensors, 4 bytes per element (the planner's autotune_saved_bytes: 2 x
    # compute bytes); its dQ trials save dQ alone (2 bytes), freed before the dK/dV launch. Under
    # PARTIALS "fp32" the last part reads fp32 sums it does not write: nothing saved
    (P.strided(512), 64, "dkdv"),
])
def test_first_call_autotuning_saves_only_the_outputs_later_parts_add_to(monkeypatch, pattern, block, saved_per_element):
    """The first forward+backward at an untuned length (separate dQ; the model's fused q/k/v path,
    whose (B, T, 3HD) gradient exists before the kernels run) peaks above a tuned one by the outputs
    the trials save (kernels.blocksparse._read_back, engine.plan.autotune_saved_bytes) and do_bench's
    flush buffer, not by a copy of every output (Triton's restore_value: dQ too, 0.54 GB more here)."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "0")  # the Triton dQ and dK/dV kernels' trials
    _untuned(monkeypatch)
    B = _blocksparse()
    n, heads, dim = 262144, 8, 64
    layout = P.build_layout(P.same_for_all_heads(pattern, heads), n, block, device="cuda")
    if saved_per_element == "dkdv":
        saved_per_element = 2 * 2 if B.partials_in_outputs(layout) else 0
    qkv = torch.randn(1, n, 3 * heads * dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(1, n, heads * dim, device="cuda", dtype=torch.bfloat16)

    def call():
        out = B.blocksparse_attention_qkv(qkv, heads, layout)
        torch.autograd.grad(out, qkv, do.view_as(out))

    first, tuned = _peak_of(call), _peak_of(call)
    expected = saved_per_element * n * heads * dim
    extra = first - tuned
    assert expected - 0.05 * GB <= extra <= expected + DO_BENCH_FLUSH, (first / GB, tuned / GB, expected / GB)


def test_auto_mode_times_both_modes_at_a_short_length_and_matches_the_reference(monkeypatch):
    """On the GPU "auto" times separate and merged where a backward is short, remembers the faster
    with both timings, and its gradients match the reference on sampled rows' worth of tolerance."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "auto")
    B = _blocksparse()
    n, heads, dim = 4096, 2, 64
    layout = P.build_layout(P.same_for_all_heads(P.fixed(512, 128), heads), n, 128, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.float16, generator=gen) for _ in range(4))

    got = _grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)
    key = B.auto_mode_key((1, heads, n, dim), torch.float16)
    assert layout.kernel_cache[key] in B.AUTO_MODES
    assert set(layout.kernel_cache[key + ("seconds",)]) == set(B.AUTO_MODES)
    _assert_near(got, _grads(lambda *x: reference_attention(*(t.float() for t in x), layout), q, k, v, do))


@pytest.mark.parametrize("mode", ["separate", "merged"])
def test_tma_loads_match_the_reference_in_bf16_on_the_model_layout(mode, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_TMA=1 on the H200: the kernels take their full lists' tiles from tensor
    descriptors over the model's head views of one (B, T, 3D) product (row stride 3D) and give the
    reference's output and gradients, bf16, fixed and strided (whose permuted part keeps pointer loads)."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TMA", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
    B = _blocksparse()
    n, heads, dim = 16384, 2, 64
    for pattern in (P.fixed(1024, 128), P.strided(128)):
        layout = P.build_layout(P.same_for_all_heads(pattern, heads), n, 128, device="cuda")
        gen = torch.Generator(device="cuda").manual_seed(0)
        qkv = torch.randn(1, n, 3 * heads * dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        do = torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        seen = []
        real = B._desc_loads
        monkeypatch.setattr(B, "_desc_loads", lambda meta, *t: seen.append(real(meta, *t)) or seen[-1])

        def grads(fn):
            leaf = qkv.clone().requires_grad_()
            q, k, v = leaf.view(1, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
            out = fn(q, k, v)
            return [out, *torch.autograd.grad(out, leaf, do)[0].view(1, n, 3, heads, dim).unbind(2)]

        got = grads(lambda *x: B.blocksparse_attention(*x, layout))
        monkeypatch.setattr(B, "_desc_loads", real)
        assert True in seen  # the natural part(s) took the TMA path
        want = grads(lambda *x: reference_attention(*(t.float() for t in x), layout))
        for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
            err = (g.float() - w.float()).abs().max().item()
            assert err <= 2e-2 * max(1.0, w.abs().max().item()), f"{pattern.name} {name}: max error {err:.3g}"


@pytest.mark.parametrize("mode, gluon, split", [("separate", "0", "0"), ("merged", "0", "0"), ("separate", "1", "0"),
                                               ("separate", "1", "auto"), ("default", "", "")])
def test_forward_backward_replays_from_a_cuda_graph_at_262k_tokens_with_two_heads_of_128(monkeypatch, mode, gluon,
                                                                                        split):
    """Captured the way the attention bench captures (kernels.bench._graphed: warm-up on a side stream,
    then one capture), fixed(4096,128) at 262,144 tokens, 2 heads of 128, bf16: the replay gives the eager
    call's gradients. The bench's capture failed at exactly this case in two H200 runs of 2026-11-30
    (the merged backward: forced in one, chosen by "auto" in the other), while 65,536 and 1M captured.
    The Triton backward in both deterministic modes, and the Gluon one (gluon_bwd: dQ on a second stream,
    forked from and joined to the captured one) with whole dK/dV columns give the same bits; the Gluon one
    with its default column segments (373 query blocks here) adds them in fp32 in a varying order, so
    there the replay is within the sums' rounding of eager (as split Triton columns are). Those four keep the
    dQ kernel (MEGASTRIDE_BLOCKSPARSE_GLUON_DQ=0): the default since b26e6fb at head dim 128 from 65,536 tokens
    has no dQ kernel, the halves kernel adding each step's dQ into fp16 sums in no fixed order (``gluon_dq_sums``),
    so the "default" case, every switch as shipped, asks dK and dV within the fp32 sums' rounding (bits where
    its columns are whole) and dQ within 2^-6 of its largest value (two bf16 units there): a replay that left the
    sums unzeroed or unfinished differs by whole values."""
    if mode == "default":
        for name in ("DQ", "GLUON", "GLUON_SPLIT", "GLUON_DQ"):
            monkeypatch.delenv(f"MEGASTRIDE_BLOCKSPARSE_{name}", raising=False)
    else:
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON", gluon)
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", split)
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "0")
    B = _blocksparse()
    from megastride.kernels.bench import _graphed

    n, heads, dim = 262144, 2, 128
    layout = P.build_layout(P.same_for_all_heads(P.fixed(4096, 128), heads), n, 128, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def fwdbwd():
        B.blocksparse_attention(*leaves, layout).backward(do)

    fwdbwd()  # eager: compiles and autotunes
    eager = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    replay = _graphed(fwdbwd, leaves)
    replay()
    torch.cuda.synchronize()
    eps = torch.finfo(torch.bfloat16).eps
    if mode == "default":
        assert B.gluon_dq_sums(layout, q, k, v, do) == torch.float16  # the fused dQ is what this case replays
    for name, t, want in zip(["dq", "dk", "dv"], leaves, eager):
        if mode == "default" and name == "dq":
            diff = (t.grad.float() - want.float()).abs().max().item()
            assert diff <= 2**-6 * want.float().abs().max().item(), f"dq replayed differs from eager by {diff:.3g}"
        elif split == "0" or name == "dq":
            assert torch.equal(t.grad, want), f"{name} replayed differs from eager"
        else:
            if split == "auto":
                assert B.gluon_split(layout, 1, B.gpu_sms(q)) == 373
            g, w = t.grad.float(), want.float()
            assert ((g - w).abs() <= 2 * eps * w.abs() + 1e-3).all(), f"{name} replayed differs from eager"


@pytest.mark.parametrize("runs", ["0", "1"])
def test_tile_sweep_times_each_config_and_checks_it(runs, monkeypatch):
    """`megastride bench tiles` on the GPU: every config of the forward's list (and a forced extra one)
    is launched as asked, checked against the reference and timed, and a tile wider than the block is left
    out; with the lists walked as runs too."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_RUNS", runs)
    S = importlib.import_module("megastride.kernels.tile_sweep")
    Bn = importlib.import_module("megastride.kernels.bench")
    B = _blocksparse()
    case = Bn.Case("fixed", 12288, 8, 64)
    rows = S.run([case], "fwd", "list,64x64w4s3,256x64w4s3", flex=False, log=lambda s: None)
    listed = [S.tile_name(e) for e in B.tile_list(B._FWD_TILES, 128, 64)]
    assert [r["tile"] for r in rows] == listed + ["64x64w4s3"]
    assert all(r["runs"] == (runs == "1") for r in rows)
    for r in rows:
        assert "error" not in r and r["ms"] > 0 and r["max_err"] < 2e-2, r


def test_a_backward_tile_sweep_checks_each_configs_dq_rows():
    """`megastride bench tiles --kernel dkdv` on the GPU: every listed dK/dV config's forward+backward is
    checked on sampled rows, output and dQ (bench.check_dq_rows), and none of today's fails."""
    S = importlib.import_module("megastride.kernels.tile_sweep")
    rows = S.run([importlib.import_module("megastride.kernels.bench").Case("fixed", 12288, 8, 64)], "dkdv", "list",
                 flex=False, log=lambda s: None)
    assert rows and all("error" not in r and "check_failed" not in r and r["dq_max_err"] < 2e-2 for r in rows), rows


def test_tile_sweep_replays_each_config_from_a_cuda_graph():
    """`megastride bench tiles --graphs` at a short length: each merged-backward config and Flex also timed
    replayed from a CUDA graph, under that config's tiles; the replay is the kernels alone, so it is
    shorter than the host-bound eager call there."""
    S = importlib.import_module("megastride.kernels.tile_sweep")
    Bn = importlib.import_module("megastride.kernels.bench")
    rows = S.run([Bn.Case("fixed", 3072, 8, 64)], "merged", "list", flex=True, log=lambda s: None, graphs=True)
    assert len(rows) >= 2 and rows[-1]["impl"] == "flex"
    for r in rows:
        assert "error" not in r and "graph_error" not in r, r
        assert 0 < r["graph_ms"] < r["ms"], r
    assert "replayed vs Flex" in S.table(rows).splitlines()[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_partials_in_the_outputs_match_the_reference_and_drop_the_fp32_sums(dtype, monkeypatch):
    """PARTIALS "output" on the GPU (bf16, which the interpreter gets wrong, and fp16): the strided pattern's
    permuted half writes its partial output and gradients into the final tensors, the local half completes
    them in place. Output and gradients match the fp32 reference as closely as with the fp32 sums (within
    1.5x their error, plus one rounding of the inputs' dtype), and a warm forward+backward's peak is lower by
    at least the backward's three fp32 sums (12 bytes per element) less a tenth."""
    B = _blocksparse()
    n, heads, dim = 16384, 2, 64
    layout = P.build_layout(P.same_for_all_heads(P.strided(128), heads), n, 128, device="cuda")
    assert layout.two_launch_merge()
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=dtype, generator=gen) for _ in range(4))

    def grads(fn, *inputs):
        leaves = [t.clone().requires_grad_() for t in inputs[:3]]
        out = fn(*leaves)
        return [out, *torch.autograd.grad(out, leaves, inputs[3])]

    want = grads(lambda *x: reference_attention(*x, layout), q.float(), k.float(), v.float(), do.float())
    results, peaks = {}, {}
    for mode in ("fp32", "output"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", mode)
        grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)  # autotuning, the dQ mode's timing
        peaks[mode] = _peak_of(lambda: grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do))
        results[mode] = grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)
    eps = torch.finfo(dtype).eps
    for name, a, b, w in zip(["out", "dq", "dk", "dv"], results["fp32"], results["output"], want):
        err_fp32 = (a.float() - w).abs().max().item()
        err_out = (b.float() - w).abs().max().item()
        assert err_out <= 1.5 * err_fp32 + eps * w.abs().max().item(), f"{name}: {err_out:.3g} vs {err_fp32:.3g}"
    assert peaks["output"] <= peaks["fp32"] - 0.9 * 12 * n * heads * dim, peaks


def test_auto_timing_counts_the_gpu_work_not_the_hosts_issue(monkeypatch):
    """``_cuda_seconds`` (what DQ_MODE "auto" compares) holds the stream with a sleep kernel first, so a run
    whose host side takes 3 ms to issue 0.1 ms or less of GPU work is timed at its GPU work; without the lead
    the events would hold the host's 3 ms."""
    import time

    B = _blocksparse()
    x = torch.randn(1 << 20, device="cuda")

    def slow_host():
        time.sleep(0.003)
        x.mul_(1.0)

    torch.cuda.synchronize()
    monkeypatch.setattr(B, "AUTO_LEAD_CYCLES", 0)
    without = B._cuda_seconds(slow_host)
    monkeypatch.setattr(B, "AUTO_LEAD_CYCLES", 20_000_000)
    with_lead = B._cuda_seconds(slow_host)
    assert without >= 0.003 and with_lead < 0.001, (without, with_lead)


@pytest.mark.parametrize("heads, dim", [(2, 128), (8, 64)])
def test_split_columns_last_finish_matches_the_cast_finish_eager_and_replayed(heads, dim, monkeypatch):
    """Split dK/dV columns finished by their last segment (SPLIT_FINISH "last": concurrent segments count
    themselves with release/acquire atomics, which the interpreter runs one program at a time and so cannot
    test) on the fixed pattern at 12,288 tokens in bf16, columns in segments of 8: the same gradients as the
    "cast" finish within one rounding plus the fp32 sums' order, over eager calls and replays from one CUDA
    graph, the workspace zero after every one, and a warm forward+backward's peak lower by the cast finish's
    fp32 dK and dV (8 bytes per element) less a tenth."""
    B = _blocksparse()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "8")
    n = 12288
    layout = P.build_layout(P.same_for_all_heads(P.fixed(1024, 128), heads), n, 128, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(5)
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def step():
        for t in leaves:
            t.grad = None
        B.blocksparse_attention(*leaves, layout).backward(do)
        return [t.grad for t in leaves]

    results, peaks = {}, {}
    for finish in ("cast", "last"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH", finish)
        step()  # autotuning, the dQ mode's timing
        peaks[finish] = _peak_of(step)
        results[finish] = [g.clone() for g in step()]
    spaces = [w for _, w in layout_workspaces(layout)]
    assert spaces and all(not ws.any() and not c.any() for ws, c in spaces)
    eps = torch.finfo(torch.bfloat16).eps
    for name, a, b in zip(["dq", "dk", "dv"], results["cast"], results["last"]):
        assert ((a.float() - b.float()).abs() <= 2 * eps * a.float().abs() + 1e-3).all(), name
    # replays of one captured step, inputs changed in place between them: as eager calls of the same inputs
    from megastride.kernels.bench import _graphed

    replay = _graphed(lambda: B.blocksparse_attention(*leaves, layout).backward(do), leaves)
    captured = [t.grad for t in leaves]
    for seed in (6, 7):
        with torch.no_grad():
            for t in leaves:
                t.copy_(torch.randn(t.shape, device="cuda", generator=gen.manual_seed(seed)).to(t.dtype))
        replay()
        replayed = [g.clone() for g in captured]
        eager = [g.clone() for g in step()]
        for name, a, b in zip(["dq", "dk", "dv"], eager, replayed):
            assert ((a.float() - b.float()).abs() <= 2 * eps * a.float().abs() + 1e-3).all(), f"replay {seed}: {name}"
        assert all(not ws.any() and not c.any() for ws, c in spaces)
    assert peaks["last"] <= peaks["cast"] - 0.9 * 8 * n * heads * dim, peaks


@pytest.mark.parametrize("mode", ["separate", "merged", "streams"])
def test_direct_launches_give_triton_launches_bits(monkeypatch, mode):
    """MEGASTRIDE_BLOCKSPARSE_DIRECT=1 (the default) on the GPU: the launches after a specialisation's
    first go straight to the compiled kernel's launcher, and the forward and backward give exactly the
    bits Triton's own launches give, bf16, for the fixed pattern and for the strided one (a permuted
    part, then the local part adding to it: every kernel of both modes, the delta kernel's too), with
    fresh buffers at each call. Whole dK/dV columns, so no atomics make the sums' order vary."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")
    B = _blocksparse()
    direct = []
    real_stream = B._current_stream
    monkeypatch.setattr(B, "_current_stream", lambda device: direct.append(device) or real_stream(device))
    n, heads, dim = 8192, 2, 64
    for pattern, block in ((P.fixed(1024, 128), 128), (P.strided(128), 64)):
        layout = P.build_layout(P.same_for_all_heads(pattern, heads), n, block, device="cuda")
        gen = torch.Generator(device="cuda").manual_seed(1)
        q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                       for _ in range(4))

        def call():
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = B.blocksparse_attention(*leaves, layout)
            return [out, *torch.autograd.grad(out, leaves, do)]

        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DIRECT", "0")
        before = len(direct)
        want = call()
        assert len(direct) == before, "a launch went direct with the switch off"
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DIRECT", "1")
        for i in range(3):  # the first call files each compiled kernel, the later ones launch it directly
            got = call()
            for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
                assert torch.equal(g, w), f"{pattern.name} call {i}: {name} differs from Triton's launch"
        assert len(direct) > before, f"{pattern.name}: no launch went direct"


@pytest.mark.parametrize("mode", ["separate", "merged", "streams"])
def test_launch_plans_give_the_full_paths_bits(monkeypatch, mode):
    """Launch plans on the GPU (MEGASTRIDE_BLOCKSPARSE_PLANS "auto", the default there): from the third call
    of a key the forward and backward replay the launches two calls agreed on, and give exactly the full
    path's bits on new inputs every call, bf16: the fixed pattern with TMA tile loads (forced: the TMA
    scratch allocator), the strided pattern (a permuted part, then the local part completing it in the
    outputs), and the model's fused q/k/v product (gradients into head views of one tensor); also when a
    replayed call is captured in a CUDA graph and the graph replayed on other values."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")  # whole columns: no atomics to reorder sums
    B = _blocksparse()
    replays = []
    replay = B._Plan.replay
    monkeypatch.setattr(B._Plan, "replay", lambda self, slots: (replays.append(len(slots)), replay(self, slots)))
    cases = ((P.fixed(1024, 128), 8192, 128, False, "1"), (P.strided(128), 8192, 64, False, "0"),
             (P.fixed(1024, 128), 8192, 128, True, "0"))
    for pattern, n, block, fused, tma in cases:
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_TMA", tma)
        heads, dim = 2, 64
        layout = P.build_layout(P.same_for_all_heads(pattern, heads), n, block, device="cuda")
        gen = torch.Generator(device="cuda").manual_seed(3)

        def call(inputs):
            if fused:
                qkv, do = inputs
                leaf = qkv.clone().requires_grad_()
                out = B.blocksparse_attention_qkv(leaf, heads, layout)
                return [out, *torch.autograd.grad(out, [leaf], do)]
            q, k, v, do = inputs
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = B.blocksparse_attention(*leaves, layout)
            return [out, *torch.autograd.grad(out, leaves, do)]

        def inputs():
            if fused:
                return (torch.randn(1, n, 3 * heads * dim, device="cuda", dtype=torch.bfloat16, generator=gen),
                        torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen))
            return tuple(torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                         for _ in range(4))

        replays.clear()
        for i in range(4):
            x = inputs()
            monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "0")
            want = call(x)
            monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "auto")
            got = call(x)
            for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
                assert torch.equal(g, w), f"{pattern.name} n={n} call {i}: {name} differs from the full path's"
        assert replays.count(5) >= 1 and replays.count(10) >= 1, f"{pattern.name}: no call replayed a plan"

        static, x = inputs(), inputs()  # a replaying call captured in a CUDA graph, replayed on new values
        before = len(replays)
        captured = _replayed(call, static, x)
        # the warm-up and the captured call each replayed the forward's plan and the backward's
        assert len(replays) - before == 4, f"{pattern.name}: the captured call did not replay its plans"
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "0")
        want = call(x)
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PLANS", "auto")
        for name, g, w in zip(["out", "dq", "dk", "dv"], captured, want):
            assert torch.equal(g, w), f"{pattern.name} n={n}, graph replay: {name} differs from the full path's"


@pytest.mark.parametrize("heads, dim, n", [(8, 64, 3072), (2, 128, 12288), (8, 64, 12288)])
def test_dq_on_a_second_stream_gives_the_one_stream_bits_eager_and_replayed(heads, dim, n, monkeypatch):
    """The dQ mode "streams" on the GPU (dQ on the side stream beside dK/dV, joined before the backward returns):
    the output and dQ in exactly the bits of the same launches on one stream (the separate mode with the delta
    kernel first), dK and dV near them (split columns add in any order) and all four within the reference's
    bound, bf16, the bench's fixed pattern at its short lengths (with its split dK/dV columns), in eager calls
    (from the third, replaying a launch plan with its stream switches) and replayed from a CUDA graph on new
    values; and the switches were made."""
    B = _blocksparse()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", "0")
    layout, inputs, call = _bench_case("fixed", n, heads, dim, "MEGASTRIDE_BLOCKSPARSE_DQ", monkeypatch, seed=5)

    steps, real = [], B._cuda_stream_step
    monkeypatch.setattr(B, "_cuda_stream_step", lambda kind: (steps.append(kind), real(kind)))
    for i in range(4):
        x = inputs()
        want = call(x, "separate")
        got = call(x, "streams")
        _same_as_one_stream(got, want, f"call {i}: ")
    assert steps.count("side") >= 4 and steps.count("join") == 4, steps
    _assert_near(got, _grads(lambda *t: reference_attention(*(a.float() for a in t), layout), *x[:3], x[3]))

    static = inputs()
    before = len(steps)
    captured = _replayed(lambda x: call(x, "streams"), static, inputs())
    assert steps[before:].count("join") == 2, "the captured backward did not switch streams"  # warm-up, capture
    want = call(tuple(t.clone() for t in static), "separate")
    _same_as_one_stream(captured, want, "graph replay: ")


@pytest.mark.parametrize("pattern_name, n, heads, dim", [("fixed", 3072, 2, 128), ("fixed", 12288, 8, 64),
                                                          ("strided", 3072, 8, 64)])
def test_row_segments_match_the_reference_and_keep_their_bits(pattern_name, n, heads, dim, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT=2 and _DQ_SPLIT=2 on the GPU (the forward's and the dQ kernel's rows in
    segments of two full entries, merged by each row's last segment through L2, with acquire/release counts):
    bf16 output and gradients within the reference's bound at the bench's short points (the strided one: a
    permuted part, then the local part merging with it), the output and dQ in the same bits in every eager call
    and the output replayed from a CUDA graph (the merges run in slot order), and the counters zero after each."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT", "2")
    layout, inputs, call = _bench_case(pattern_name, n, heads, dim, "MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT", monkeypatch,
                                       seed=9)
    x = inputs()
    first = call(x, "2")
    _assert_near(first, _grads(lambda *t: reference_attention(*(a.float() for a in t), layout), *x[:3], x[3]),
                 f"{pattern_name} {n} {heads}x{dim}: ")
    for i in range(3):
        again = call(x, "2")
        for name, g, w in zip(["out", "dq"], again, first):  # dK and dV: split columns add in any order
            assert torch.equal(g, w), f"call {i}: {name} differs between calls"
    counters = [w[-1] for _, w in layout_workspaces(layout, ("fwd", "dq"))]
    assert counters and all(not c.any() for c in counters), "a row segment counter was left set"
    captured = _replayed(lambda t: call(t, "2"), inputs(), x)  # captured on other values, replayed on x
    assert torch.equal(captured[0], first[0]), "graph replay: the output differs from the eager call's"


def _bench_case(pattern_name: str, n: int, heads: int, dim: int, switch: str, monkeypatch, seed: int):
    """(layout, inputs, call) for the bench's ``pattern_name`` pattern (kernels.bench.case_pattern) on the GPU:
    ``inputs()`` new random bf16 (q, k, v, dO) of (1, heads, n, dim) each call; ``call(x, value)`` the output and
    three gradients of our attention on x with the environment variable ``switch`` set to ``value``."""
    B = _blocksparse()
    Bn = importlib.import_module("megastride.kernels.bench")
    pattern, _, block, _ = Bn.case_pattern(Bn.Case(pattern_name, n, heads, dim))
    layout = P.build_layout(pattern, n, block, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def inputs():
        return tuple(torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))

    def call(x, value):
        monkeypatch.setenv(switch, value)
        q, k, v, do = x
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = B.blocksparse_attention(*leaves, layout)
        return [out, *torch.autograd.grad(out, leaves, do)]

    return layout, inputs, call


def _replayed(call, static: tuple, fresh: tuple) -> list:
    """``call(static)`` captured in a CUDA graph as the bench captures it (kernels.bench._graphed: a warm-up on a
    side stream first), ``static`` then overwritten with ``fresh`` and the graph replayed: the captured outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call(static)
    for t, value in zip(static, fresh):
        t.copy_(value)
    graph.replay()
    return captured


@pytest.mark.parametrize("mode", ["separate", "merged", "streams"])
def test_dependent_launches_give_the_same_bits_eager_and_replayed(mode, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_PDL=1 (the Triton kernels as programmatic dependent launches, each waiting for the
    launch before it first): the output and three gradients in exactly the bits of the launches without it, bf16,
    the bench's fixed pattern at 3,072 tokens and the strided one at 12,288 (a permuted part, then the local part
    adding to it), over repeated eager calls (from the third replaying a launch plan) and replayed from a CUDA
    graph on new values; and the kernels went out as dependent launches. Whole dK/dV columns: no atomics to
    reorder sums."""
    B = _blocksparse()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")
    for pattern_name, n, heads, dim in (("fixed", 3072, 8, 64), ("strided", 12288, 2, 128)):
        _, inputs, call = _bench_case(pattern_name, n, heads, dim, "MEGASTRIDE_BLOCKSPARSE_PDL", monkeypatch, seed=7)
        for i in range(4):
            x = inputs()
            want, got = call(x, "0"), call(x, "1")
            for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
                assert torch.equal(g, w), f"{pattern_name} call {i}: {name} differs with dependent launches"
        dependent = [c for c in B._DIRECT.values() if getattr(c.metadata, "launch_pdl", False)]
        assert dependent, f"{pattern_name}: no kernel went out as a dependent launch"

        static = inputs()
        captured = _replayed(lambda x: call(x, "1"), static, inputs())
        want = call(tuple(t.clone() for t in static), "0")
        for name, g, w in zip(["out", "dq", "dk", "dv"], captured, want):
            assert torch.equal(g, w), f"{pattern_name} graph replay: {name} differs with dependent launches"


def _same_as_one_stream(got: list, want: list, label: str) -> None:
    """out and dQ bit for bit, dK and dV within bf16 rounding of their largest value (split columns' atomics)."""
    for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
        if name in ("out", "dq"):
            assert torch.equal(g, w), f"{label}{name} differs from the one-stream launches'"
        else:
            err = (g.float() - w.float()).abs().max().item()
            assert err <= 1e-2 * max(1.0, w.float().abs().max().item()), f"{label}{name}: {err:.3g} from one stream's"


def _head_view_grads(batch, n, heads, dim, dtype, seed):
    """``grads(fn)``: [out, dq, dk, dv] of ``fn(q, k, v)`` on the model's head views of one random (B, T, 3HD)
    product (row stride 3HD) and a random dO, the same inputs each call."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(batch, n, 3 * heads * dim, device="cuda", dtype=dtype, generator=gen)
    do = torch.randn(batch, heads, n, dim, device="cuda", dtype=dtype, generator=gen)

    def grads(fn):
        leaf = qkv.clone().requires_grad_()
        q, k, v = leaf.view(batch, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
        out = fn(q, k, v)
        return [out, *torch.autograd.grad(out, leaf, do)[0].view(batch, n, 3, heads, dim).unbind(2)]

    return grads


def _assert_like_the_reference(pattern, layout, grads, got, again, same_bits=None):
    """``got`` (out and the three gradients) within the three-way tolerance of the fp32 reference (twice the
    inputs' dtype reference's error, plus 1% of the largest value), and the same bits as ``again`` (a second
    call) for every tensor, or only for those named in ``same_bits``."""
    want = grads(lambda *x: reference_attention(*(t.float() for t in x), layout))
    low = grads(lambda *x: reference_attention(*x, layout))  # the reference in the inputs' dtype
    for name, g, a, w, lo in zip(["out", "dq", "dk", "dv"], got, again, want, low):
        if same_bits is None or name in same_bits:
            assert torch.equal(g, a), f"{pattern.heads[0].name} {name}: two calls differ"
        err = (g.float() - w.float()).abs()
        bound = 2 * (lo.float() - w.float()).abs() + 1e-2 * max(1.0, w.abs().max().item())
        assert (err <= bound).all(), f"{pattern.heads[0].name} {name}: max error {err.max().item():.3g}"


@pytest.mark.parametrize("dtype, dim, launches, split, tiles", [
    (torch.bfloat16, 128, "2", "3", ""), (torch.float16, 128, "1", "0", ""), (torch.bfloat16, 64, "1", "3", ""),
    (torch.float16, 64, "2", "0", ""),
    # 128 rows a program on two warpgroups: the fixed pattern's 128-blocks hold them, the 64-block cases keep Triton
    (torch.bfloat16, 64, "1", "3", "dkdv:128x64s3w8,dq:128x64s3w8"),
    # 32-row steps under a register cap (three dK/dV and four dQ programs an SM)
    (torch.float16, 64, "1", "3", "dkdv:64x32s4w4r168,dq:64x32s4w4r128")])
def test_gluon_backward_matches_the_reference_on_the_model_layout(dtype, dim, launches, split, tiles, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON=1 on the H200: the backward of natural-order parts in Gluon
    (kernels/gluon_bwd.py; dK/dV in one launch or in two, whole columns or segments of 3 query blocks, the
    default tiles, 128 rows on eight warps or 32-row steps under a register cap) gives the reference's gradients on the model's head views of
    one (B, T, 3HD) product (row stride 3HD), batch 2, for the fixed pattern (one part: its window and
    summary blocks, the causal diagonal masked), the strided one on 64-blocks (its permuted part in Triton
    first, then the local band in Gluon adding to it) and fixed_per_head (several CSRs in one launch);
    whole columns give the same bits on a second call (no atomics); segments leave their workspace zeroed
    for the next call."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_TILES", tiles)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES", launches)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", split)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")  # split columns keep the Triton kernels
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")  # "auto" would run the strided case's modes
    B = _blocksparse()
    G = importlib.import_module("megastride.kernels.gluon_bwd")
    taken = []
    real = G.backward_part
    monkeypatch.setattr(G, "backward_part", lambda *a, **kw: taken.append(a[12]) or real(*a, **kw))  # load_prev
    batch, n, heads = 2, 8192, 4
    cases = ((P.same_for_all_heads(P.fixed(1024, 128), heads), 128, [False]),
             (P.same_for_all_heads(P.strided(128), heads), 64, [True]),
             (P.fixed_per_head(1024, 64, heads, 2), 64, [False]))
    for pattern, block, load_prev in cases:
        layout = P.build_layout(pattern, n, block, device="cuda")
        grads = _head_view_grads(batch, n, heads, dim, dtype, seed=2)
        taken.clear()
        got = grads(lambda *x: B.blocksparse_attention(*x, layout))
        if any(block % t for kern in ("dkdv", "dq") for t in G.tiles(kern, dim)[:2]):
            load_prev = []  # 64-blocks do not hold 128-row tiles: the Triton backward
        assert taken == load_prev, (pattern, taken)  # the natural part took Gluon, adding to an earlier one's sums
        again = grads(lambda *x: B.blocksparse_attention(*x, layout))
        spaces = [ws for part in layout.parts for m in part.kernel_cache.values() if hasattr(m, "workspaces")
                  for ws in m.workspaces.values()]
        assert bool(spaces) == (split != "0" and bool(taken)) and all(not w.any() and not c.any() for w, c in spaces)
        _assert_like_the_reference(pattern, layout, grads, got, again, same_bits=("out",) if split != "0" else None)


def _fused_dq_settings(monkeypatch, sums: str, split: str) -> None:
    """The fused-dQ tests' switches: dQ summed by the Gluon dK/dV kernel in ``sums``, its programs taking column
    segments of ``split`` query blocks ("0": whole columns), the Triton kernels' own split off, dQ mode separate."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", sums)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", split)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")


@pytest.mark.parametrize("sums, dtype, split", [("fp32", torch.bfloat16, "0"), ("fp16", torch.bfloat16, "3"),
                                                ("fp16", torch.float16, "0")])
def test_dq_summed_by_the_dkdv_kernel_matches_the_reference(sums, dtype, split, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON_DQ on the H200: no dQ kernel; the Gluon dK/dV kernel adds each step's dQ
    into fp32 or fp16 sums by TMA reduces (whole columns, or segments of 3 query blocks), on the model's head
    views, batch 2, for the fixed pattern (one part) and fixed_per_head (several CSRs). All three gradients
    within the three-way tolerance of the fp32 reference, also with a small upstream gradient, the tolerance
    then relative to the largest value: 1e-7 with bf16 inputs (the fp16 sums' scale: unscaled, such a dQ is
    below fp16's smallest normal number), 1e-3 with fp16 inputs (whose own dO and dS cannot hold 1e-7: fp16
    training scales its loss). dK, dV and the output come out the same as without it."""
    _fused_dq_settings(monkeypatch, sums, split)
    B = _blocksparse()
    G = importlib.import_module("megastride.kernels.gluon_bwd")
    taken = []
    real = G.backward_part
    monkeypatch.setattr(G, "backward_part", lambda *a, **kw: taken.append(a[14][0].dtype) or real(*a, **kw))
    batch, n, heads, dim = 2, 8192, 4, 64
    for pattern in (P.same_for_all_heads(P.fixed(1024, 128), heads), P.fixed_per_head(1024, 128, heads, 2)):
        layout = P.build_layout(pattern, n, block=128, device="cuda")
        for magnitude in (1.0, 1e-7 if dtype == torch.bfloat16 else 1e-3):
            gen = torch.Generator(device="cuda").manual_seed(3)
            qkv = torch.randn(batch, n, 3 * heads * dim, device="cuda", dtype=dtype, generator=gen)
            do = (torch.randn(batch, heads, n, dim, device="cuda", generator=gen) * magnitude).to(dtype)

            def grads(fn):
                leaf = qkv.clone().requires_grad_()
                q, k, v = leaf.view(batch, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
                out = fn(q, k, v)
                return [out, *torch.autograd.grad(out, leaf, do)[0].view(batch, n, 3, heads, dim).unbind(2)]

            taken.clear()
            got = grads(lambda *x: B.blocksparse_attention(*x, layout))
            want_sums = torch.float32 if sums == "fp32" else torch.float16
            label = f"{pattern.heads[0].name} x{magnitude}"
            assert taken and set(taken) == {want_sums}, (label, taken)
            want = grads(lambda *x: reference_attention(*(t.float() for t in x), layout))
            low = grads(lambda *x: reference_attention(*x, layout))
            for name, g, w, lo in zip(["out", "dq", "dk", "dv"], got, want, low):
                err = (g.float() - w.float()).abs()
                bound = 2 * (lo.float() - w.float()).abs() + 1e-2 * w.abs().max().item()
                assert (err <= bound).all(), f"{label} {name}: max error {err.max().item():.3g}, bound {bound.min():.3g}"
            monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "0")
            plain = grads(lambda *x: B.blocksparse_attention(*x, layout))
            monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", sums)
            for name, g, p in zip(["out", "dk", "dv"], got[:1] + got[2:], plain[:1] + plain[2:]):
                assert torch.allclose(g.float(), p.float(), rtol=2e-2, atol=1e-2 * p.abs().max().item()), (label, name)


def _two_ws_kinds(monkeypatch, dim, dtype, seed, first, second):
    """The warp-specialised tests' cases (the fixed pattern at batch 2 x 4 heads, one head of 1,152 tokens: nine
    columns, and fixed_per_head: several CSRs; the model's head views) with MEGASTRIDE_BLOCKSPARSE_GLUON_WS
    ``first``, checked against the fp32 reference within the three-way tolerance (dK and dV the same bits on a
    second call), then ``second``; each value must have taken the kernel it names (``warp_specialized``).
    [(pattern name, n, results with first, results with second)]."""
    B = _blocksparse()
    G = importlib.import_module("megastride.kernels.gluon_bwd")
    taken = []
    real = G.warp_specialized
    monkeypatch.setattr(G, "warp_specialized", lambda *a: taken.append(real(*a)) or taken[-1])
    cases = ((P.same_for_all_heads(P.fixed(1024, 128), 4), 2, 8192),
             (P.same_for_all_heads(P.fixed(1024, 128), 1), 1, 1152),
             (P.fixed_per_head(1024, 128, 4, 2), 2, 8192))
    out = []
    for pattern, batch, n in cases:
        layout = P.build_layout(pattern, n, 128, device="cuda")
        grads = _head_view_grads(batch, n, len(pattern.heads), dim, dtype, seed=seed)
        runs = []
        for value in (first, second):
            monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", value)
            taken.clear()
            runs.append(grads(lambda *x: B.blocksparse_attention(*x, layout)))
            assert taken == [None if value == "0" else value], (pattern.heads[0].name, value, taken)
            if value == first:
                again = grads(lambda *x: B.blocksparse_attention(*x, layout))
                _assert_like_the_reference(pattern, layout, grads, runs[0], again, same_bits=("out", "dk", "dv"))
        out.append((pattern.heads[0].name, n, *runs))
    return out


@pytest.mark.parametrize("sums, dtype, dim", [("fp16", torch.bfloat16, 64), ("fp32", torch.float16, 64),
                                             ("fp16", torch.bfloat16, 128)])
def test_the_warp_specialised_dkdv_kernel_matches_the_fused_one(sums, dtype, dim, monkeypatch):
    """The fused backward over whole columns on the H200 with the two-columns warp-specialised kernel (two
    consumer warpgroups a program, loader and dQ sender warps: ``gluon_bwd._dkdv_ws_kernel``, asked for by
    MEGASTRIDE_BLOCKSPARSE_GLUON_WS=columns) and without it ("0": ``_dkdv_kernel``): the same output, dK and dV
    to the bit (the same products in the same order), on the model's head views, for the fixed pattern (one
    part; batch 2 x 4 heads, and one head of 1,152 tokens: nine columns, so the last program's second consumer
    has no column) and fixed_per_head (several CSRs); all within the three-way tolerance of the fp32 reference,
    dK and dV the same bits on a second call. At head dim 128 (64-key tiles; the fused dQ asked for, "auto" leaves
    it off there) the same against ``_dkdv_kernel``'s fused form at its tiles."""
    _fused_dq_settings(monkeypatch, sums, "0")
    for name, n, got, plain in _two_ws_kinds(monkeypatch, dim, dtype, 5, "columns", "0"):
        for grad, g, p in zip(["out", "dk", "dv"], got[:1] + got[2:], plain[:1] + plain[2:]):
            assert torch.equal(g, p), (name, n, grad, (g.float() - p.float()).abs().max().item())


@pytest.mark.parametrize("sums, dtype, tiles, dim", [("fp16", torch.bfloat16, "", 64), ("fp32", torch.float16, "", 64),
                                                    ("fp16", torch.bfloat16, "s2g2d2m1", 64),
                                                    ("fp16", torch.bfloat16, "s2g2d2m2", 64),
                                                    ("fp32", torch.float16, "s2g1d2m2", 64),
                                                    ("fp16", torch.bfloat16, "", 128), ("fp32", torch.float16, "", 128),
                                                    ("fp16", torch.bfloat16, "s2g1d2m0", 128)])
def test_the_halves_kernel_matches_the_reference(sums, dtype, tiles, dim, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON_WS=halves on the H200: the fused backward over whole columns with one column
    a program, its keys split between two consumer warpgroups that exchange dS^T through shared memory
    (``gluon_bwd._dkdv_halves_kernel``), on the model's head views, for the fixed pattern (batch 2 x 4 heads, and
    one head of 1,152 tokens: an odd column count) and fixed_per_head (several CSRs): the output and all three
    gradients within the three-way tolerance of the fp32 reference, dK and dV the same bits on a second call,
    and dK, dV within rounding of the two-columns kernel's (this kernel's dK and dV products sum over 128 queries
    at once, that one's over 32); also with the exponentials under dP^T (m1) and with the consumers taking turns
    (m2, dQ a step late; one staging buffer). At head dim 128 (asked for: 64 queries a step, two steps a block,
    each consumer's dQ all the step's queries and half the head dim, added at its columns), also with the score
    products waited for together (m0) and one staging buffer."""
    _fused_dq_settings(monkeypatch, sums, "0")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES", tiles)
    for name, n, got, other in _two_ws_kinds(monkeypatch, dim, dtype, 7, "halves", "columns"):
        assert torch.equal(got[0], other[0]), (name, n)
        for grad, g, o in zip(["dk", "dv"], got[2:], other[2:]):
            bound = 1e-2 * o.float().abs().max().item()
            assert torch.allclose(g.float(), o.float(), rtol=2e-2, atol=bound), (name, n, grad)


@pytest.mark.parametrize("sums, dtype, dim", [("fp16", torch.bfloat16, 64), ("fp16", torch.bfloat16, 128),
                                             ("fp32", torch.float16, 128)])
def test_the_halves_kernel_on_column_segments_matches_the_reference(sums, dtype, dim, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT=1 on the H200: with the dK/dV columns cut into segments of 3 query
    blocks, the halves kernel takes the segments (each consumer's keys finished by the column's last segment to
    count, through the fp32 workspace), on the model's head views (the fixed pattern at batch 2 x 4 heads, and
    fixed_per_head): the output and all three gradients within the three-way tolerance of the fp32 reference on
    two calls (the second after the first left the workspace zeroed), and dK, dV within rounding of the same
    kernel on whole columns."""
    _fused_dq_settings(monkeypatch, sums, "3")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", "halves")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT", "1")
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES", raising=False)
    B = _blocksparse()
    G = importlib.import_module("megastride.kernels.gluon_bwd")
    launched = []
    real = G._dkdv_halves_kernel

    class Spy:  # records each launch's SPLIT
        def __getitem__(self, grid):
            return lambda *a, **kw: launched.append(kw["SPLIT"]) or real[grid](*a, **kw)

    monkeypatch.setattr(G, "_dkdv_halves_kernel", Spy())
    for pattern in (P.same_for_all_heads(P.fixed(1024, 128), 4), P.fixed_per_head(1024, 128, 4, 2)):
        layout = P.build_layout(pattern, 8192, 128, device="cuda")
        grads = _head_view_grads(2, 8192, 4, dim, dtype, seed=11)
        launched.clear()
        got = grads(lambda *x: B.blocksparse_attention(*x, layout))
        again = grads(lambda *x: B.blocksparse_attention(*x, layout))
        assert launched and all(launched), (pattern.heads[0].name, launched)
        spaces = [ws for part in layout.parts for m in part.kernel_cache.values() if hasattr(m, "workspaces")
                  for ws in m.workspaces.values()]
        assert spaces and all(not w.any() and not c.any() for w, c in spaces), pattern.heads[0].name
        _assert_like_the_reference(pattern, layout, grads, got, again, same_bits=("out", ))
        _assert_like_the_reference(pattern, layout, grads, again, got, same_bits=("out", ))  # the second call too
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", "0")
        launched.clear()
        whole = grads(lambda *x: B.blocksparse_attention(*x, layout))
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", "3")
        assert launched and not any(launched), (pattern.heads[0].name, launched)
        for name, g, w in zip(["dk", "dv"], got[2:], whole[2:]):
            assert torch.allclose(g.float(), w.float(), rtol=2e-2, atol=1e-2 * w.float().abs().max().item()), \
                (pattern.heads[0].name, name)


@pytest.mark.parametrize("dtype, dim, launches, tiles", [
    (torch.bfloat16, 128, "2", ""), (torch.float16, 128, "1", ""), (torch.bfloat16, 64, "2", ""),
    # 64 rows on one warpgroup with the next scores ahead, three slots
    (torch.float16, 64, "2", "64x128s3w4a1")])
def test_gluon_forward_matches_the_reference_on_the_model_layout(dtype, dim, launches, tiles, monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON_FWD=1 on the H200: the forward of natural-order parts in Gluon
    (kernels/gluon_fwd.py; the partial blocks and then the full ones merged with them, or both in one launch;
    the default tiles or 64 rows with the scores ahead) gives the reference's output, and with it the
    backward the reference's gradients (they read its output and lse), on the model's head views of one
    (B, T, 3HD) product (row stride 3HD), batch 2: the fixed pattern (one part), the strided one on
    128-blocks (its permuted part in Triton first, then the local band in Gluon merging with it through the
    two lse) and fixed_per_head (several CSRs in one launch); the same bits on a second call."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_LAUNCHES", launches)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES", tiles)
    B = _blocksparse()
    G = importlib.import_module("megastride.kernels.gluon_fwd")
    taken = []
    real = G.forward_part
    monkeypatch.setattr(G, "forward_part", lambda *a, **kw: taken.append(a[10]) or real(*a, **kw))  # load_prev
    batch, n, heads = 2, 8192, 4
    cases = ((P.same_for_all_heads(P.fixed(1024, 128), heads), [False]),
             (P.same_for_all_heads(P.strided(128), heads), [True]),
             (P.fixed_per_head(1024, 128, heads, 2), [False]))
    for pattern, load_prev in cases:
        layout = P.build_layout(pattern, n, 128, device="cuda")
        grads = _head_view_grads(batch, n, heads, dim, dtype, seed=3)
        taken.clear()
        got = grads(lambda *x: B.blocksparse_attention(*x, layout))
        assert taken == load_prev, (pattern, taken)  # the natural part took Gluon, merging with an earlier one
        again = grads(lambda *x: B.blocksparse_attention(*x, layout))
        _assert_like_the_reference(pattern, layout, grads, got, again)


@pytest.mark.parametrize("dim", [64, 128])
def test_every_listed_tile_config_gives_the_reference_output_and_gradients(dim, monkeypatch):
    """Each config of each kernel's autotuning list at block 128 (the autotuner may pick any of them at
    some length), forced in turn, on a short fixed pattern in bf16, and each of block 64's on the strided
    pattern (a permuted part merging into the natural one; block 64 is the strided pattern's at short
    lengths, kernels.bench.strided_block): output and all three gradients within the three-way tolerance's
    GPU bound of the fp32 reference (the tile sweep checks only the forward's output)."""
    B = _blocksparse()
    n, heads = 3072, 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    tables = {"fwd": B._FWD_TILES, "dq": B._DQ_TILES, "dkdv": B._DKDV_TILES, "merged": B._MERGED_TILES}
    modes = {"fwd": "separate", "dq": "separate", "dkdv": "separate", "merged": "merged"}
    checked = {}  # (block, kernel) -> configs checked
    for pattern, block in ((P.fixed(512, 128), 128), (P.strided(768), 64)):
        layout = P.build_layout(P.same_for_all_heads(pattern, heads), n, block, device="cuda")
        want = _grads(lambda *x: reference_attention(*(t.float() for t in x), layout), q, k, v, do)
        for kernel, table in tables.items():
            monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", modes[kernel])
            for entry in B.tile_list(table, block, dim, B._KERNEL_NAMES[kernel]):
                with B.forced_tiles(kernel, entry):
                    got = _grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)
                _assert_near(got, want, f"block {block}, {kernel} {entry} ")
                checked[block, kernel] = checked.get((block, kernel), 0) + 1
    assert len(checked) == 8, checked  # every kernel at both blocks
    if dim == 64:  # block 64 lists the 64x64 backward tiles beside its own config there
        assert all(checked[64, kernel] >= 2 for kernel in ("dq", "dkdv", "merged")), checked


@pytest.mark.parametrize("dim, heads", [(64, 8), (128, 2)])
def test_the_flat_forward_gives_the_reference_output_and_gradients_in_bf16(dim, heads, monkeypatch):
    """The forward as flattened tiles (kernels/flat.py) at each listed config forced in turn, the flat dQ's (delta
    computed in it; its last config also with delta read) and dK/dV's likewise (dQ mode separate; long key tiles cut
    into pieces), then the forward as "auto" chose it, on the fixed pattern at 3,072 and 12,288 tokens and the
    strided one (a permuted part merging into the natural one) at 3,072, bf16: output and the gradients made from its
    lse within the GPU bound of the fp32 reference."""
    B = _blocksparse()
    from megastride.kernels import flat

    cases = [(P.fixed(512, 128), 3072), (P.fixed(1024, 128), 12288), (P.strided(64), 3072)]
    checked = 0
    for pattern, n in cases:
        layout = P.build_layout(P.same_for_all_heads(pattern, heads), n, 128, device="cuda")
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
        want = _grads(lambda *x: reference_attention(*(t.float() for t in x), layout), q, k, v, do)
        # each kernel's listed configs forced in turn, the earlier kernels left flat (the dQ and dK/dV ones with the
        # dQ mode separate; long key tiles cut into pieces, "auto")
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
        for kind, setting, table in (("fwd", "FLAT", flat.FLAT_TILES), ("dq", "FLAT_DQ", flat.FLAT_DQ_TILES),
                                     ("dkdv", "FLAT_DKDV", flat.FLAT_DKDV_TILES)):
            monkeypatch.setenv(f"MEGASTRIDE_BLOCKSPARSE_{setting}", "1")
            for entry in table[(128, dim)]:
                monkeypatch.setenv(f"MEGASTRIDE_BLOCKSPARSE_{setting}_TILES", flat.tile_name(entry))
                got = _grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)
                assert flat.tile_name(entry) in flat.choices(layout, kind)
                _assert_near(got, want, f"{pattern.name} n={n} flat {kind} {flat.tile_name(entry)} ")
                checked += 1
            if kind == "dq":  # the last config again with delta read from the delta kernel, not computed in it
                monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", "0")
                got = _grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)
                _assert_near(got, want, f"{pattern.name} n={n} flat dq {flat.tile_name(entry)}, delta loaded ")
                monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ")
            monkeypatch.delenv(f"MEGASTRIDE_BLOCKSPARSE_{setting}_TILES")
        for name in ("FLAT_DKDV", "FLAT_DQ", "DQ"):
            monkeypatch.delenv(f"MEGASTRIDE_BLOCKSPARSE_{name}")
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT", "auto")
        got = _grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)
        _assert_near(got, want, f"{pattern.name} n={n} flat auto ({flat.choices(layout)}) ")
    assert checked >= 18


@pytest.mark.parametrize("pattern, n, block, heads, dim", [
    (P.fixed(128, 32), 12288, 128, 8, 64),  # the paper's Enwik8 model
    (P.fixed(96, 16), 3072, 64, 2, 128),  # Table 2's CIFAR-10 fixed pattern
])
@pytest.mark.parametrize("mode", ["separate", "merged"])
def test_summary_first_fixed_patterns_match_the_reference_in_bf16(pattern, n, block, heads, dim, mode, monkeypatch):
    """The paper's own fixed patterns, whose summary columns are not whole blocks, run as a natural-order
    window part and a summary-first part (bf16, which the interpreter cannot check), and give the reference's
    output and gradients."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", mode)
    B = _blocksparse()
    layout = P.build_layout(P.same_for_all_heads(pattern, heads), n, block, device="cuda")
    assert [part.summary_first for part in layout.parts] == [None, (pattern.components[0].size,
                                                                    pattern.components[1].width)]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    got = _grads(lambda *x: B.blocksparse_attention(*x, layout), q, k, v, do)
    _assert_near(got, _grads(lambda *x: reference_attention(*(t.float() for t in x), layout), q, k, v, do),
                 f"{pattern.name} n={n} {mode}: ")
