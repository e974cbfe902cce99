"""The FFN's bias + SiLU kernels (kernels/bias_silu.py, kernels/ffn.py), run by the Triton interpreter on CPU.

Output and gradients against torch's ``F.silu(z0 + b)`` and float64, three ways (STYLE.md): |kernel - fp64|
<= 2 |torch_lowprec - fp64| + atol, every output buffer poisoned with NaN first so an unwritten element
fails. bf16 (wrong in the interpreter) and timing: ``python -m megastride.kernels.ffn_check`` on a GPU.
"""

import os
import subprocess
import sys

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":  # see tests/test_layernorm.py: the interpreter is chosen at import
    pytest.skip("the FFN kernel interpreter tests: run them with TRITON_INTERPRET=1 in a session of their own "
                "on a GPU host", allow_module_level=True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter on numpy 2

from megastride.engine import model as model_module  # noqa: E402
from megastride.engine.config import config_from_dict  # noqa: E402
from megastride.kernels import bias_silu, ffn, ffn_gemm  # noqa: E402

ATOL = {torch.float32: 2e-5, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _kernel(monkeypatch):
    """Every test here runs the kernels on CPU (MEGASTRIDE_FFN=triton) with poisoned buffers."""
    monkeypatch.setenv("MEGASTRIDE_FFN", "triton")
    monkeypatch.delenv("MEGASTRIDE_FFN_GEMM", raising=False)
    monkeypatch.setattr(bias_silu, "POISON", True)
    monkeypatch.setattr(ffn_gemm, "POISON", True)


def _mode(monkeypatch, mode: str) -> None:
    """ffn_gemm's interpreter launches by ``mode``: "pointers", "tma" (descriptors where the operands are aligned
    for them), "persistent" (three programs walking every tile, descriptors; where not aligned, pointers) or
    "warp-specialised" (those programs' loop marked for warp specialisation, as the GPU's WS configs)."""
    monkeypatch.setattr(ffn_gemm, "INTERPRET_DESC", mode == "tma")
    monkeypatch.setattr(ffn_gemm, "INTERPRET_PERSIST", 3 if mode in ("persistent", "warp-specialised") else 0)
    monkeypatch.setattr(ffn_gemm, "INTERPRET_WS", mode == "warp-specialised")


def _grads(fn, z0, b, da):
    leaves = [t.detach().clone().requires_grad_() for t in (z0, b)]
    a = fn(*leaves)
    return [a.detach(), *torch.autograd.grad(a, leaves, da.to(a.dtype))]


@pytest.mark.parametrize("shape, z_dtype", [
    ((2, 37, 100), torch.float32),  # one column block, padded; rows not a multiple of the tiles
    ((1, 45, 600), torch.float16),  # three column blocks of 256, the last partial; fp32 bias
    ((3, 13, 512), torch.float32),
])
def test_bias_silu_matches_torch(shape, z_dtype):
    """a = silu(z0 + b), dz and db (summed in the kernel over its row groups) equal torch's silu of the sum and
    its autograd in float64, three ways; a and dz in z0's dtype, db in the bias's."""
    gen = torch.Generator().manual_seed(0)
    z0 = (torch.randn(shape, generator=gen) * 3).to(z_dtype)
    b = torch.randn(shape[-1], generator=gen)
    da = torch.randn(shape, generator=gen).to(z_dtype)
    got = _grads(bias_silu.triton_bias_silu, z0, b, da)
    low = _grads(lambda z, c: F.silu((z + c).to(z_dtype)), z0, b, da)  # torch: the sum rounded, then silu
    exact = _grads(lambda z, c: F.silu(z + c), z0.double(), b.double(), da.double())
    assert [t.dtype for t in got] == [z_dtype, z_dtype, torch.float32]
    for name, g, lo, ex in zip(("a", "dz0", "db"), got, low, exact):
        assert torch.isfinite(g).all(), f"{name} has non-finite (unwritten?) elements"
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[z_dtype] * max(1.0, ex.abs().max().item())
        worst = (err - bound).argmax()
        assert (err <= bound).all(), f"{name} {shape}: off by {err.flatten()[worst]:.3g} (allowed {bound.flatten()[worst]:.3g})"


@pytest.mark.parametrize("groups", [1, 4])
def test_bias_gradient_over_row_groups(groups, monkeypatch):
    """One row group for all rows, and (four asked) three of two tiles, the last short: every row's share of db
    counted once."""
    monkeypatch.setattr(bias_silu, "INTERPRET_ROW_GROUPS", groups)
    assert bias_silu.row_groups(45, 1, torch.device("cpu")) == ((3, 16) if groups == 4 else (1, 48))
    gen = torch.Generator().manual_seed(1)
    z0, b, da = torch.randn(45, 64, generator=gen), torch.randn(64, generator=gen), torch.randn(45, 64, generator=gen)
    _, dz, db = _grads(bias_silu.triton_bias_silu, z0, b, da)
    want = _grads(lambda z, c: F.silu(z + c), z0, b, da)
    torch.testing.assert_close(dz, want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(db, want[2], rtol=1e-5, atol=1e-5)


def test_dispatch(monkeypatch):
    """linear_silu takes the kernels on CPU only under the interpreter with MEGASTRIDE_FFN=triton, and torch's
    silu of the biased product otherwise (MEGASTRIDE_FFN=torch, no bias, under torch.compile); a mistyped
    MEGASTRIDE_FFN is a one-line error naming it. (MEGASTRIDE_FFN_GEMM=0: no gradient is recorded here, where the
    default, nograd, would take the one-product layer instead: ``test_nograd_...``.)"""
    monkeypatch.setenv("MEGASTRIDE_FFN_GEMM", "0")
    calls = []
    real = bias_silu.triton_bias_silu
    monkeypatch.setattr(bias_silu, "triton_bias_silu", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 9, 16, generator=gen), torch.randn(40, 16, generator=gen), torch.randn(40, generator=gen)
    want = F.silu(F.linear(x, w, b))
    torch.testing.assert_close(ffn.linear_silu(x, w, b), want, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1
    assert torch.equal(ffn.linear_silu(x, w, None), F.silu(F.linear(x, w))) and len(calls) == 1
    for env, value in (("MEGASTRIDE_FFN", "torch"), ("MEGASTRIDE_FFN", ""), ("TRITON_INTERPRET", "0")):
        with monkeypatch.context() as m:
            m.setenv(env, value)
            assert torch.equal(ffn.linear_silu(x, w, b), want)
    assert len(calls) == 1
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        assert torch.equal(ffn.linear_silu(x, w, b), want) and len(calls) == 1
    monkeypatch.setenv("MEGASTRIDE_FFN", "fused")
    with pytest.raises(ValueError, match=r"^MEGASTRIDE_FFN must be unset, 'torch' or 'triton'; got 'fused'$"):
        ffn.linear_silu(x, w, b)


def test_bad_inputs_raise():
    """A bias of the wrong width and unsupported dtypes are clear errors."""
    z0 = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"the bias must be \(8,\)"):
        bias_silu.triton_bias_silu(z0, torch.randn(4))
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        bias_silu.triton_bias_silu(z0.double(), torch.randn(8))


def _three_way(got, low, exact, dtype, what, names=("a", "dx", "dweight", "dbias")):
    for name, g, lo, ex in zip(names, got, low, exact):
        assert torch.isfinite(g).all(), f"{what}: {name} has non-finite (unwritten?) elements"
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[dtype] * max(1.0, ex.abs().max().item())
        worst = (err - bound).argmax()
        assert (err <= bound).all(), (f"{what}: {name} off by {err.flatten()[worst]:.3g} "
                                      f"(allowed {bound.flatten()[worst]:.3g})")


def _layer_grads(fn, x, w, b, da):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    a = fn(*leaves)
    return [a.detach(), *torch.autograd.grad(a, leaves, da.to(a.dtype))]


@pytest.mark.parametrize("shape, width, dtype", [
    ((2, 37, 48), 80, torch.float32),  # rows, width and depth none a multiple of the interpreter's 32-tiles
    ((1, 45, 64), 100, torch.float16),  # fp32 bias on fp16 x and weight
    ((3, 20, 96), 64, torch.float32),  # three steps of the depth loop
])
@pytest.mark.parametrize("mode", ["pointers", "tma", "persistent", "warp-specialised"])
def test_gemm_epilogue_matches_torch(shape, width, dtype, mode, monkeypatch):
    """ffn_gemm.linear_bias_silu (the product, the bias and the SiLU in one kernel; its tiles loaded by pointers,
    by TMA descriptors, or by three persistent programs walking the tiles) gives torch's ``F.silu(F.linear(x, w,
    b))`` and its gradients, three ways against float64; a in x's dtype; without gradients the same a, with only
    a's buffer written."""
    _mode(monkeypatch, mode)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen).to(dtype)
    w = (torch.randn(width, shape[-1], generator=gen) * shape[-1] ** -0.5).to(dtype)
    b = torch.randn(width, generator=gen)
    da = torch.randn(*shape[:-1], width, generator=gen).to(dtype)
    got = _layer_grads(ffn_gemm.linear_bias_silu, x, w, b, da)
    low = _layer_grads(lambda x_, w_, b_: F.silu(F.linear(x_, w_, b_.to(dtype))), x, w, b, da)
    exact = _layer_grads(lambda *t: F.silu(F.linear(*t)), x.double(), w.double(), b.double(), da.double())
    assert got[0].dtype == dtype and got[3].dtype == torch.float32
    _three_way(got, low, exact, dtype, f"{shape} -> {width} {dtype}")
    made = []
    real = ffn_gemm.new_buffer
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ffn_gemm, "new_buffer", lambda *a: made.append(a[0]) or real(*a))
        with torch.no_grad():
            alone = ffn_gemm.linear_bias_silu(x, w, b)
    assert torch.equal(alone, got[0]) and len(made) == 1  # a only: no z0 where no backward reads it


def test_gemm_dispatch_and_errors(monkeypatch):
    """MEGASTRIDE_FFN_GEMM=1 sends linear_silu through the one-kernel layer where the kernels run (under autocast
    with x and the weight cast to its dtype), and not under MEGASTRIDE_FFN=torch; a mistyped switch and
    mismatched inputs are one-line errors naming the problem."""
    calls = []
    real = ffn_gemm.linear_bias_silu
    monkeypatch.setattr(ffn_gemm, "linear_bias_silu", lambda *a: calls.append([t.dtype for t in a]) or real(*a))
    gen = torch.Generator().manual_seed(6)
    x, w, b = torch.randn(2, 9, 16, generator=gen), torch.randn(40, 16, generator=gen), torch.randn(40, generator=gen)
    want = F.silu(F.linear(x, w, b))
    monkeypatch.setenv("MEGASTRIDE_FFN_GEMM", "1")
    torch.testing.assert_close(ffn.linear_silu(x, w, b), want, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.float16):
        half = ffn.linear_silu(x, w, b)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), want, rtol=1e-2, atol=1e-2)  # fp16 rounding of products near 5
    assert calls == [[torch.float32] * 3, [torch.float16, torch.float16, torch.float32]]
    with monkeypatch.context() as m:
        m.setenv("MEGASTRIDE_FFN", "torch")
        assert torch.equal(ffn.linear_silu(x, w, b), want) and len(calls) == 2
    monkeypatch.setenv("MEGASTRIDE_FFN_GEMM", "yes")
    with pytest.raises(ValueError, match=r"^MEGASTRIDE_FFN_GEMM must be unset, '0', '1' or 'nograd'; got 'yes'$"):
        ffn.linear_silu(x, w, b)
    with pytest.raises(ValueError, match=r"needs weight \(N, 16\) and bias \(N,\); got weight \(40, 8\)"):
        real(x, w[:, :8], b)
    with pytest.raises(ValueError, match="x and weight in one of float16, bfloat16, float32"):
        real(x, w.half(), b)


@pytest.mark.parametrize("mode", ["pointers", "tma", "persistent", "warp-specialised"])
@pytest.mark.parametrize("shape, width, dtype", [((2, 37, 48), 80, torch.float32), ((1, 45, 64), 100, torch.float16),
                                                 ((1, 70, 32), 96, torch.float16)])
def test_feed_forward_in_one_product_each_way_matches_torch(shape, width, dtype, mode, monkeypatch):
    """ffn_gemm.feed_forward (the first layer's bias and SiLU in its product's epilogue, dz from dy and proj's
    weight in one product, da never stored; pointers, TMA descriptors, or persistent programs) gives torch's
    ``F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)`` and the gradients of all five, three ways against float64;
    ``unread`` leaves y uncomputed and the gradients the same bits; without gradients the same y."""
    _mode(monkeypatch, mode)
    gen = torch.Generator().manual_seed(7)
    d = shape[-1]
    x = torch.randn(shape, generator=gen).to(dtype)
    w1 = (torch.randn(width, d, generator=gen) * d ** -0.5).to(dtype)
    b1 = torch.randn(width, generator=gen)
    w2 = (torch.randn(d, width, generator=gen) * width ** -0.5).to(dtype)
    b2 = (torch.randn(d, generator=gen) * 0.1).to(dtype)
    dy = torch.randn(shape, generator=gen).to(dtype)

    def grads(fn, *t):
        leaves = [u.detach().clone().requires_grad_() for u in t]
        y = fn(*leaves)
        return [y.detach(), *torch.autograd.grad(y, leaves, dy.to(y.dtype))]

    got = grads(ffn_gemm.feed_forward, x, w1, b1, w2, b2)
    low = grads(lambda x_, w1_, b1_, w2_, b2_: F.linear(F.silu(F.linear(x_, w1_, b1_.to(dtype))), w2_, b2_),
                x, w1, b1, w2, b2)
    exact = grads(lambda *t: F.linear(F.silu(F.linear(*t[:3])), *t[3:]), *(u.double() for u in (x, w1, b1, w2, b2)))
    assert [t.dtype for t in got] == [dtype, dtype, dtype, torch.float32, dtype, dtype]
    _three_way(got, low, exact, dtype, f"{shape} -> {width} -> {d} {dtype}", ("y", "dx", "dw1", "db1", "dw2", "db2"))
    unread = grads(lambda *t: ffn_gemm.feed_forward(*t, unread=True), x, w1, b1, w2, b2)
    assert all(torch.equal(a, c) for a, c in zip(unread[1:], got[1:]))  # y's value unread: the gradients' bits
    with torch.no_grad():
        assert torch.equal(ffn_gemm.feed_forward(x, w1, b1, w2, b2), got[0])


def test_the_models_ffn_takes_the_one_product_layer(monkeypatch):
    """With MEGASTRIDE_FFN_GEMM=1 the model's FeedForward runs ffn_gemm.feed_forward (under autocast with x and the
    weights cast, fc's bias not), also as the recompute's unread FFN, whose gradients are the read one's bits."""
    calls = []
    real = ffn_gemm.feed_forward
    monkeypatch.setattr(ffn_gemm, "feed_forward", lambda *a: calls.append([t.dtype for t in a[:5]]) or real(*a))
    monkeypatch.setenv("MEGASTRIDE_FFN_GEMM", "1")
    module = _tiny_model().blocks[0].ffn
    x = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(8))
    dy = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(9))
    grads = {}
    for unread in (False, True):
        leaves = [x.clone().requires_grad_(), *module.parameters()]
        with torch.autocast("cpu", dtype=torch.float16):
            y = module(leaves[0], unread=unread)
        grads[unread] = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    assert calls == [[torch.float16, torch.float16, torch.float32, torch.float16, torch.float16]] * 2
    assert all(torch.equal(a, c) for a, c in zip(grads[False], grads[True]))
    monkeypatch.setenv("MEGASTRIDE_FFN", "torch")
    module(x)
    assert len(calls) == 2


def test_nograd_takes_the_one_product_layer_only_where_no_gradient_is_recorded(monkeypatch):
    """MEGASTRIDE_FFN_GEMM=nograd (the default; 0 turns it off): the model's FFN through ffn_gemm.feed_forward
    under torch.no_grad (a recomputed block's first forward) and on inputs and parameters that need no gradient,
    giving the default path's output; where a gradient is recorded (of x, or of a parameter, the bias alone
    included), the default path (the SiLU kernel after cuBLAS's product); the first layer alone
    (``ffn.linear_silu``) alike."""
    gemm, silu = [], []
    real_ff, real_silu = ffn_gemm.feed_forward, bias_silu.triton_bias_silu
    monkeypatch.setattr(ffn_gemm, "feed_forward", lambda *a: gemm.append(1) or real_ff(*a))
    monkeypatch.setattr(bias_silu, "triton_bias_silu", lambda *a: silu.append(1) or real_silu(*a))
    module = _tiny_model().blocks[0].ffn
    x = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(8))
    want = module(x)  # MEGASTRIDE_FFN_GEMM unset (nograd), a gradient recorded: the default path
    assert (len(gemm), len(silu)) == (0, 1)
    monkeypatch.setenv("MEGASTRIDE_FFN_GEMM", "nograd")
    with torch.no_grad():
        got = module(x)
    assert (len(gemm), len(silu)) == (1, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    y = module(x.requires_grad_())
    assert (len(gemm), len(silu)) == (1, 2) and y.requires_grad
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    for p in module.parameters():
        p.requires_grad_(False)
    module(x.detach())
    assert (len(gemm), len(silu)) == (2, 2)
    layer = []  # the first layer alone (ffn.linear_silu) dispatches alike
    real_layer = ffn_gemm.linear_bias_silu
    monkeypatch.setattr(ffn_gemm, "linear_bias_silu", lambda *a: layer.append(1) or real_layer(*a))
    ffn.linear_silu(x.detach(), module.fc.weight, module.fc.bias)
    assert (layer, len(silu)) == ([1], 2)
    ffn.linear_silu(x.detach().requires_grad_(), module.fc.weight, module.fc.bias)
    assert (layer, len(silu)) == ([1], 3)
    module.fc.bias.requires_grad_(True)  # a bias alone needing its gradient records one
    module(x.detach())
    assert (len(gemm), len(silu)) == (2, 4)
    monkeypatch.delenv("MEGASTRIDE_FFN_GEMM")  # nograd is the default
    assert ffn_gemm.mode() == "nograd"
    with torch.no_grad():
        torch.testing.assert_close(module(x), want, rtol=1e-5, atol=1e-6)
    module(x)
    assert (len(gemm), len(silu)) == (3, 5)
    monkeypatch.setenv("MEGASTRIDE_FFN_GEMM", "0")  # and 0 turns it off
    with torch.no_grad():
        module(x)
    assert (len(gemm), len(silu)) == (3, 6)


def _tiny_model():
    tree = {"model": {"seq_len": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_chunk": 0,
                      "attention": {"block": 16, "layers": ["fixed(32,8)", "strided(16)"]}}}
    torch.manual_seed(3)
    model = model_module.SparseTransformer(config_from_dict(tree).model)
    with torch.no_grad():  # biases away from their zero init, so a lost bias gradient shows
        for block in model.blocks:
            block.ffn.fc.bias.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_model_with_the_kernels_matches_torch(autocast, gemm, monkeypatch):
    """The model's FFNs through the kernels give torch's loss and gradients (fp32; and under fp16 autocast, where
    the kernel adds the bias to the unrounded product, to the 16-bit rounding), the product from cuBLAS or, with
    MEGASTRIDE_FFN_GEMM=1, from the one-kernel layer."""
    model = _tiny_model()
    calls = []
    if gemm:
        monkeypatch.setenv("MEGASTRIDE_FFN_GEMM", "1")
        real = ffn_gemm.feed_forward
        monkeypatch.setattr(ffn_gemm, "feed_forward", lambda *a: calls.append(1) or real(*a))
    else:
        real = bias_silu.triton_bias_silu
        monkeypatch.setattr(bias_silu, "triton_bias_silu", lambda *a: calls.append(1) or real(*a))
    idx = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(4))
    targets = torch.roll(idx, -1, dims=1)
    results = []
    for choice in ("triton", "torch"):
        monkeypatch.setenv("MEGASTRIDE_FFN", choice)
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            loss = model(idx, targets)
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    assert len(calls) == 2  # each block's FFN, in the kernels' pass only
    tol = dict(rtol=2e-3, atol=2e-4) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    for (name, _), g, w in zip(model.named_parameters(), results[0][1], results[1][1]):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{name}: {m}")


def test_kernels_compile_for_sm90():
    """Both kernels compile for Hopper at width 2048 without register spills, their tiles' accesses 16-byte
    vectors, and the one-product layer's forward (z0 stored and not) and backward dz kernels at each of their
    tiles, by pointer and TMA loads, without spills and with their products as wgmma (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.ffn_check", "--compile"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    tma_only = len(ffn_gemm.GRAD_TMA_TILES)
    ws = 2 * len(ffn_gemm.WS_TILES) + len(ffn_gemm.GRAD_WS_TILES)
    persistent = 2 * len(ffn_gemm.PERSIST_TILES) + len(ffn_gemm.GRAD_PERSIST_TILES) + ws  # all by TMA
    gemm_lines = 4 * len(ffn_gemm.TILES) + 2 * len(ffn_gemm.GRAD_TILES) + tma_only + persistent
    assert sum(line.startswith("ok ") for line in proc.stdout.splitlines()) == 6 + gemm_lines, proc.stdout
    gemm = [line for line in proc.stdout.splitlines() if line.startswith("ok   ffn_gemm ") and "wgmma True" in line]
    tma = 2 * len(ffn_gemm.TILES) + len(ffn_gemm.GRAD_TILES) + tma_only + persistent
    assert len(gemm) == gemm_lines and sum(", TMA" in line for line in gemm) == tma
    assert sum(", persistent " in line for line in gemm) == persistent
    assert sum(", warp-specialised" in line and "12 warps in groups True" in line for line in gemm) == ws
    assert sum(" backward (dz) " in line for line in gemm) == (2 * len(ffn_gemm.GRAD_TILES) + tma_only
                                                              + len(ffn_gemm.GRAD_PERSIST_TILES)
                                                              + len(ffn_gemm.GRAD_WS_TILES))


def test_the_autotuner_keeps_warp_specialised_configs_only_at_two_depth_steps_or_more():
    """At a depth of one BLOCK_K step or less (a small model's d_model) the pruner drops every warp-specialised
    config and keeps the rest; from two steps it keeps them all, and a forced one at one step is a clear error."""
    for kernel in (ffn_gemm._linear_silu_kernel, ffn_gemm._silu_grad_kernel):
        every = ffn_gemm.configs(kernel)
        ws = [c for c in every if c.kwargs["WS"]]
        assert ws and all(c.kwargs["BLOCK_K"] == 64 for c in ws)
        for depth, dropped in ((32, ws), (64, ws), (65, []), (128, [])):
            kept = ffn_gemm._prune(every, {}, TMA_OK=1, K=depth)
            assert kept == [c for c in every if c not in dropped], depth
        assert ffn_gemm._prune(every, {}, TMA_OK=0, K=128) == [c for c in every if not c.kwargs["DESC"]]


def test_warp_specialised_configs_the_autotuner_keeps_compile_for_sm90_at_small_depths():
    """Every warp-specialised config the pruner keeps compiles for sm_90 (no GPU needed) at a model of d_model 64
    (one depth step, where Triton 3.6's partitioning pass aborts the 128-row forward: none kept) and 128 (two
    steps: all kept and compiled, groups and all), FFN width 128. Before the pruner knew the depth, the GPU
    tests' tiny models failed to compile here (2026-12-06)."""
    code = ("from megastride.kernels import ffn_check as C\n"
            "for depth in (64, 128):\n"
            "    for line, ok in C.gemm_compile_report(width=128, depth=depth, select=lambda c: c.kwargs['WS'],"
            " compiled_only=True):\n"
            "        print(depth, line)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = proc.stdout.splitlines()
    ws = 2 * len(ffn_gemm.WS_TILES) + len(ffn_gemm.GRAD_WS_TILES)
    assert not [line for line in lines if line.startswith("64 ")], proc.stdout
    assert len(lines) == ws and all(line.startswith("128 ok ") and "warp-specialised" in line for line in lines), \
        proc.stdout
    assert sum("12 warps in groups True" in line for line in lines) == ws, proc.stdout
