"""The Triton LayerNorm (kernels/layernorm.py), run by the Triton interpreter on CPU, against torch's.

Output and the three gradients are compared three ways (STYLE.md): |kernel - fp64| <= 2 *
|torch_lowprec - fp64| + atol, torch_lowprec being torch's layer_norm in the kernel's dtypes, with
every output buffer poisoned with NaN first so an unwritten element fails. bf16 (wrong in the
interpreter), long rows and timing are covered on the GPU by ``python -m megastride.kernels.ln_check``.
"""

import os

import pytest

# the interpreter is chosen before triton is first imported: tests/conftest.py sets it where torch sees no
# GPU. Setting it here would switch every other module of a GPU session (`pytest -m gpu tests/`) to the
# interpreter too, so on a GPU host these tests run only in a session of their own that asks for it.
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the LayerNorm interpreter tests: run them with TRITON_INTERPRET=1 in a session of their own "
                "on a GPU host", allow_module_level=True)

import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter on numpy 2

from megastride.engine import model as model_module  # noqa: E402
from megastride.engine.config import config_from_dict  # noqa: E402
from megastride.kernels import FusedLayerNorm, layer_norm, norm  # noqa: E402
from megastride.kernels import layernorm  # noqa: E402

ATOL = {torch.float32: 2e-5, torch.float16: 2e-3}
EPS = 1e-5


@pytest.fixture(autouse=True)
def _kernel(monkeypatch):
    """Every test here runs the kernel on CPU (MEGASTRIDE_LAYERNORM=triton) with poisoned buffers."""
    monkeypatch.setenv("MEGASTRIDE_LAYERNORM", "triton")
    monkeypatch.setattr(layernorm, "POISON", True)


def _inputs(shape, x_dtype, out_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = shape[-1]
    x = (torch.randn(shape, generator=gen) * 2.0 + 0.5).to(x_dtype)  # a mean far from 0
    w, b = torch.randn(width, generator=gen), torch.randn(width, generator=gen)
    dy = torch.randn(shape, generator=gen).to(out_dtype)
    return x, w, b, dy


def _with_grads(fn, x, w, b, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy.to(y.dtype))]


def _check_three_way(got, low, exact, what):
    for name, g, lo, ex in zip(["y", "dx", "dweight", "dbias"], got, low, exact):
        assert g.dtype == lo.dtype, f"{what}: {name} is {g.dtype}, torch gives {lo.dtype}"
        assert torch.isfinite(g).all(), f"{what}: {name} has non-finite (unwritten?) elements"
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[g.dtype] * max(1.0, ex.abs().max().item())
        worst = (err - bound).argmax()
        assert (err <= bound).all(), (
            f"{what}: {name} off by {err.flatten()[worst]:.3g} (allowed {bound.flatten()[worst]:.3g}) "
            f"at flat index {worst.item()}")


def _run_case(shape, x_dtype, out_dtype, seed=0):
    x, w, b, dy = _inputs(shape, x_dtype, out_dtype, seed)
    got = _with_grads(lambda *a: layernorm.triton_layer_norm(*a, EPS, out_dtype), x, w, b, dy)
    low = _with_grads(lambda *a: norm.reference_layer_norm(*a, EPS, out_dtype), x, w, b, dy)
    exact = _with_grads(lambda *a: F.layer_norm(a[0], a[0].shape[-1:], a[1], a[2], EPS),
                        *(t.double() for t in (x, w, b, dy)))
    _check_three_way(got, low, exact, f"{tuple(shape)} {x_dtype} -> {out_dtype}")


# (shape, x dtype, y dtype); rows (74, 45, 39) are not multiples of the tiles' rows nor of the
# backward's row groups (3 programs under the interpreter)
CASES = {
    "d64_fp32": ((2, 37, 64), torch.float32, torch.float32),
    "d32_fp16": ((2, 37, 32), torch.float16, torch.float16),
    "d512_fp32_to_fp16": ((1, 45, 512), torch.float32, torch.float16),
    "d512_fp16": ((3, 13, 512), torch.float16, torch.float16),
    "d100_padded_fp32_to_fp16": ((2, 37, 100), torch.float32, torch.float16),  # width not a power of 2
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(name):
    """y, dx, dweight and dbias equal torch's layer_norm in float64 (three-way tolerance)."""
    _run_case(*CASES[name])


@pytest.mark.parametrize("programs", [1, 4])
def test_backward_row_groups(programs, monkeypatch):
    """Backward programs of several tiles each (and one program for all rows), the last group
    short: every row's dx and its share of dweight and dbias are there exactly once."""
    monkeypatch.setattr(layernorm, "BWD_TILE", 256)  # 4 rows of 64 a tile
    monkeypatch.setattr(layernorm, "INTERPRET_PROGRAMS", programs)
    block_m = layernorm.tiles(64, layernorm.BWD_TILE, layernorm.BWD_PER_THREAD)[0]
    assert block_m == 4
    assert layernorm.row_groups(45, block_m, torch.device("cpu")) == ((4, 12) if programs == 4 else (1, 48))
    _run_case((1, 45, 64), torch.float32, torch.float32, seed=1)


@pytest.mark.parametrize("programs", [1, 3])
def test_backward_loads_a_step_ahead_give_the_same_bits(programs, monkeypatch):
    """BWD_PREFETCH (each tile's loads issued a step before its arithmetic) changes when the backward loads, not
    what it computes: the plain, kept-input (the stream's gradient added) and fused-add (the branch's gradient
    too) LayerNorms' gradients are bitwise those without it, with several tiles a program and the last group
    short (a masked next tile past each group's end)."""
    monkeypatch.setattr(layernorm, "BWD_TILE", 256)  # 4 rows of 64 a tile
    monkeypatch.setattr(layernorm, "INTERPRET_PROGRAMS", programs)
    shape = (1, 45, 64)
    x, w, b, dy = _inputs(shape, torch.float32, torch.float16, seed=9)
    gen = torch.Generator().manual_seed(10)
    r, ds = torch.randn(shape, generator=gen).to(torch.float16), torch.randn(shape, generator=gen)
    calls = {
        "plain": (lambda x, w, b: (layernorm.triton_layer_norm(x, w, b, EPS, torch.float16),), (dy,)),
        "keep": (lambda x, w, b: layernorm.triton_layer_norm_keep(x, w, b, EPS, torch.float16), (dy, ds)),
        "add": (lambda x, w, b: layernorm.triton_add_layer_norm(x, r, w, b, EPS, torch.float16)[::-1], (dy, ds)),
    }
    assert layernorm.prefetches(512)  # the default at the model's width
    for name, (fn, upstream) in calls.items():
        got = {}
        for ahead in (False, True):
            monkeypatch.setattr(layernorm, "BWD_PREFETCH", ahead)
            assert layernorm.prefetches(64) is ahead
            leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
            got[ahead] = torch.autograd.grad(fn(*leaves), leaves, upstream)
        for a, c in zip(got[False], got[True]):
            assert torch.equal(a, c), name
    monkeypatch.setattr(layernorm, "BWD_PREFETCH", True)
    assert layernorm.prefetches(4096) and not layernorm.prefetches(4097)  # wider rows spill with two tiles held


def test_tiles_follow_the_width():
    """Tiles hold about FWD_TILE / BWD_TILE elements, one row at least, rows padded to a power of 2."""
    assert layernorm.tiles(512, 4096, 16) == (8, 512, 8)
    assert layernorm.tiles(512, 2048, 8) == (4, 512, 8)
    assert layernorm.tiles(100, 4096, 16) == (32, 128, 8)
    assert layernorm.tiles(8192, 2048, 8) == (1, 8192, 16)
    assert norm._KERNEL_MAX_WIDTH == layernorm.MAX_WIDTH


@pytest.mark.parametrize("affine,bias", [(False, False), (True, False)])
def test_without_weight_or_bias(affine, bias):
    """FusedLayerNorm without an affine transform or without a bias equals nn.LayerNorm so configured."""
    torch.manual_seed(2)
    fused = FusedLayerNorm(64, elementwise_affine=affine, bias=bias)
    plain = nn.LayerNorm(64, elementwise_affine=affine, bias=bias)
    if affine:
        nn.init.normal_(plain.weight)
        fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 19, 64, requires_grad=True)
    dy = torch.randn(2, 19, 64)
    got, want = fused(x), plain(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [x, *plain.parameters()]
    for g, w in zip(torch.autograd.grad(got, [x, *fused.parameters()], dy), torch.autograd.grad(want, params, dy)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_output_dtype_follows_autocast(monkeypatch):
    """Under autocast y comes in the autocast dtype, from the kernel and from torch's fallback alike;
    without autocast in x's dtype."""
    x, w, b, _ = _inputs((1, 9, 32), torch.float32, torch.float32)
    want = layernorm.triton_layer_norm(x, w, b, EPS, torch.float16)
    for choice in ("triton", "torch"):
        monkeypatch.setenv("MEGASTRIDE_LAYERNORM", choice)
        with torch.autocast("cpu", dtype=torch.float16):
            y = layer_norm(x, w, b, EPS)
        assert y.dtype == torch.float16
        torch.testing.assert_close(y, want, rtol=1e-3, atol=1e-3)  # torch may round 1 ulp the other way
        assert layer_norm(x, w, b, EPS).dtype == torch.float32
        assert layer_norm(x.half(), w, b, EPS).dtype == torch.float16


def test_dispatch(monkeypatch):
    """The kernel runs on CPU only under the interpreter with MEGASTRIDE_LAYERNORM=triton; torch's
    layer_norm otherwise, for float64 and under torch.compile."""
    calls = []
    real = layernorm.triton_layer_norm
    monkeypatch.setattr(layernorm, "triton_layer_norm", lambda *a: calls.append(1) or real(*a))
    x, w, b, _ = _inputs((1, 9, 32), torch.float32, torch.float32)
    want = F.layer_norm(x, (32,), w, b, EPS)
    torch.testing.assert_close(layer_norm(x, w, b, EPS), want, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1
    for env, value in (("MEGASTRIDE_LAYERNORM", "torch"), ("MEGASTRIDE_LAYERNORM", ""), ("TRITON_INTERPRET", "0")):
        with monkeypatch.context() as m:
            m.setenv(env, value)
            assert torch.equal(layer_norm(x, w, b, EPS), want)
    assert layer_norm(x.double(), w.double(), b.double(), EPS).dtype == torch.float64
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(layer_norm(x, w, b, EPS), want)
    assert len(calls) == 1


def _tiny_model(fused: bool, monkeypatch):
    tree = {"model": {"seq_len": 64, "d_model": 32, "n_layers": 2, "n_heads": 2,
                      "attention": {"block": 16, "layers": ["fixed(32,8)", "strided(16)"]}}}
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(model_module, "FusedLayerNorm", nn.LayerNorm)
        torch.manual_seed(3)
        return model_module.SparseTransformer(config_from_dict(tree).model)


def test_model_with_fused_layernorm_matches_nn_layernorm(monkeypatch):
    """The model's blocks and final LN use the kernel; loss and every gradient equal the same model
    with nn.LayerNorm (float32), given LayerNorm parameters away from their (1, 0) init."""
    fused, plain = _tiny_model(True, monkeypatch), _tiny_model(False, monkeypatch)
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    plain.load_state_dict(fused.state_dict())
    calls, add_calls, keep_calls = [], [], []
    real, real_add, real_keep = layernorm.triton_layer_norm, layernorm.triton_add_layer_norm, layernorm.triton_layer_norm_keep
    monkeypatch.setattr(layernorm, "triton_layer_norm", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(layernorm, "triton_add_layer_norm", lambda *a: add_calls.append(1) or real_add(*a))
    monkeypatch.setattr(layernorm, "triton_layer_norm_keep", lambda *a: keep_calls.append(1) or real_keep(*a))
    idx = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(4))
    targets = torch.roll(idx, -1, dims=1)
    losses, grads = [], []
    for model in (fused, plain):
        loss = model(idx, targets)
        losses.append(loss.detach())
        grads.append(dict(zip([n for n, _ in model.named_parameters()],
                              torch.autograd.grad(loss, list(model.parameters())))))
    assert len(calls) == 1 and len(add_calls) == 2  # ln_f; each block's add + ln2
    assert len(keep_calls) == 2  # each block's ln1, the residual stream's gradient added in its backward
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_state_dict_keys_unchanged(monkeypatch):
    """FusedLayerNorm is an nn.LayerNorm with its keys: checkpoints load both ways, strictly."""
    fused, plain = _tiny_model(True, monkeypatch), _tiny_model(False, monkeypatch)
    assert isinstance(fused.blocks[0].ln1, FusedLayerNorm) and isinstance(fused.ln_f, FusedLayerNorm)
    assert isinstance(fused.blocks[0].ln1, nn.LayerNorm) and type(plain.ln_f) is nn.LayerNorm
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert list(FusedLayerNorm(8).state_dict()) == ["weight", "bias"]
    fused.load_state_dict(plain.state_dict())
    plain.load_state_dict(fused.state_dict())


@pytest.mark.parametrize("x_dtype, r_dtype, out_dtype, shape", [
    (torch.float32, torch.float16, torch.float16, (2, 37, 64)),  # the autocast block: fp32 stream, 16-bit branch
    (torch.float32, torch.float32, torch.float32, (1, 45, 100)),  # one dtype (dr is dx), padded width
    (torch.float16, torch.float16, torch.float16, (3, 13, 512)),
])
def test_add_layer_norm_matches_the_add_then_layer_norm(x_dtype, r_dtype, out_dtype, shape):
    """(s, y) = (x + r, LayerNorm(x + r)) in one kernel each way: s bitwise x + r; y and the gradients of
    x, r, weight and bias (with a gradient of s from the residual stream beside y's) equal torch's add
    and layer_norm in float64, three ways, dr in r's dtype."""
    x, w, b, dy = _inputs(shape, x_dtype, out_dtype, seed=5)
    gen = torch.Generator().manual_seed(6)
    r = torch.randn(shape, generator=gen).to(r_dtype)
    s_dtype = torch.result_type(x, r)
    ds = torch.randn(shape, generator=gen).to(s_dtype)

    def grads(fn, *t):
        leaves = [u.detach().clone().requires_grad_() for u in t[:4]]
        s, y = fn(*leaves)
        return [s.detach(), y.detach(), *torch.autograd.grad((s, y), leaves, (t[4].to(s.dtype), t[5].to(y.dtype)))]

    def unfused(x, r, w, b, out=out_dtype):
        s = x + r
        return s, norm.reference_layer_norm(s, w, b, EPS, out)

    rounding = ((x + r).double() - (x.double() + r.double()))  # s as stored: the kernel normalises that

    def exact_fn(x, r, w, b):  # float64, of the stored sum (its rounding a constant: gradient 1)
        s = x + r + rounding
        return s, F.layer_norm(s, s.shape[-1:], w, b, EPS)

    got = grads(lambda *a: layernorm.triton_add_layer_norm(*a, EPS, out_dtype), x, r, w, b, ds, dy)
    low = grads(unfused, x, r, w, b, ds, dy)
    exact = grads(exact_fn, *(t.double() for t in (x, r, w, b, ds, dy)))
    assert torch.equal(got[0], x + r)
    assert got[3].dtype == r_dtype and got[2].dtype == x_dtype
    _check_three_way(got[1:2] + got[2:3] + got[4:], low[1:2] + low[2:3] + low[4:], exact[1:2] + exact[2:3] + exact[4:],
                     f"add+ln {shape} {x_dtype}+{r_dtype}")
    err = (got[3].double() - exact[3]).abs()
    assert (err <= 2 * (low[3].double() - exact[3]).abs() + ATOL[r_dtype] * max(1.0, exact[3].abs().max().item())).all()


def test_add_layer_norm_dispatch(monkeypatch):
    """add_layer_norm takes the kernels where layer_norm does, and the add then layer_norm elsewhere
    (MEGASTRIDE_LAYERNORM=torch, mismatched shapes), with the same results."""
    x, w, b, _ = _inputs((1, 9, 32), torch.float32, torch.float32)
    r = torch.randn(1, 9, 32)
    calls = []
    real = layernorm.triton_add_layer_norm
    monkeypatch.setattr(layernorm, "triton_add_layer_norm", lambda *a: calls.append(1) or real(*a))
    s, y = norm.add_layer_norm(x, r, w, b, EPS)
    assert len(calls) == 1 and torch.equal(s, x + r)
    monkeypatch.setenv("MEGASTRIDE_LAYERNORM", "torch")
    s2, y2 = norm.add_layer_norm(x, r, w, b, EPS)
    assert len(calls) == 1 and torch.equal(s2, s)
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5)
    s3, _ = norm.add_layer_norm(x, r[:, :1], w, b, EPS)  # broadcast residual: the plain add
    assert len(calls) == 1 and torch.equal(s3, x + r[:, :1])


@pytest.mark.parametrize("x_dtype, out_dtype, shape", [
    (torch.float32, torch.float16, (2, 37, 64)),  # the autocast block: fp32 stream, 16-bit y
    (torch.float32, torch.float32, (1, 45, 100)),  # padded width
    (torch.float16, torch.float16, (3, 13, 512)),
])
def test_layer_norm_keep_adds_the_stream_gradient(x_dtype, out_dtype, shape):
    """(y, x2) = (LayerNorm(x), x): x2 is x (a view of it); y and the gradients of x (y's and x2's,
    summed in the kernel), weight and bias equal torch's layer_norm with x used twice, in float64,
    three ways."""
    x, w, b, dy = _inputs(shape, x_dtype, out_dtype, seed=7)
    dx2 = torch.randn(shape, generator=torch.Generator().manual_seed(8)).to(x_dtype)

    def grads(fn, x, w, b, dy, dx2):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        y, x2 = fn(*leaves)
        return [y.detach(), *torch.autograd.grad((y, x2), leaves, (dy.to(y.dtype), dx2.to(x2.dtype)))]

    got = grads(lambda *a: layernorm.triton_layer_norm_keep(*a, EPS, out_dtype), x, w, b, dy, dx2)
    low = grads(lambda x, w, b: (norm.reference_layer_norm(x, w, b, EPS, out_dtype), x), x, w, b, dy, dx2)
    exact = grads(lambda x, w, b: (F.layer_norm(x, x.shape[-1:], w, b, EPS), x), *(t.double() for t in (x, w, b, dy, dx2)))
    _check_three_way(got, low, exact, f"ln keep {shape} {x_dtype} -> {out_dtype}")
    y, x2 = layernorm.triton_layer_norm_keep(x, w, b, EPS, out_dtype)
    assert torch.equal(x2, x) and x2.data_ptr() == x.data_ptr()


def test_layer_norm_keep_with_one_gradient():
    """Only y's gradient (the stream's unused): dx is the LayerNorm's; only the stream's (y unused): dx is
    the stream's gradient itself and no parameter gradient."""
    x, w, b, dy = _inputs((2, 9, 64), torch.float32, torch.float32, seed=9)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y, x2 = layernorm.triton_layer_norm_keep(*leaves, EPS)
    want = torch.autograd.grad(F.layer_norm(leaves[0], (64,), leaves[1], leaves[2], EPS), leaves, dy)
    for g, wg in zip(torch.autograd.grad(y, leaves, dy), want):
        torch.testing.assert_close(g, wg, rtol=1e-5, atol=1e-5)
    y, x2 = layernorm.triton_layer_norm_keep(*leaves, EPS)
    dx, dw = torch.autograd.grad(x2 * 3.0, leaves[:2], torch.ones_like(x), allow_unused=True)
    assert torch.equal(dx, torch.full_like(x, 3.0)) and dw is None


@pytest.mark.parametrize("x_dtype, r_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float32),
                                               (torch.float16, torch.float16)])
def test_residual_add_is_torch_add(x_dtype, r_dtype):
    """The residual add kernel writes torch's x + r bitwise (promoted dtype), over lengths that are not
    a multiple of its block; the gradient reaches both in their own dtypes."""
    gen = torch.Generator().manual_seed(10)
    shape = (2, 37, 100)  # 7,400 elements: one full block of 4,096 and a partial one
    x, r = (torch.randn(shape, generator=gen) * 3).to(x_dtype), torch.randn(shape, generator=gen).to(r_dtype)
    xl, rl = x.clone().requires_grad_(), r.clone().requires_grad_()
    s = layernorm.triton_residual_add(xl, rl)
    assert s.dtype == torch.result_type(x, r) and torch.equal(s, x + r)
    ds = torch.randn(shape, generator=gen).to(s.dtype)
    dx, dr = torch.autograd.grad(s, (xl, rl), ds)
    assert dx.dtype == x_dtype and dr.dtype == r_dtype
    assert torch.equal(dx, ds.to(x_dtype)) and torch.equal(dr, ds.to(r_dtype))


def test_residual_dispatch(monkeypatch):
    """residual_add takes the kernel where the LayerNorm kernels run and the dtypes differ; torch's add for
    one dtype, broadcasts, non-contiguous operands, MEGASTRIDE_RESIDUAL=plain and under torch.compile
    (same sums). layer_norm_keep gives back x itself where its kernel does not run. A bad
    MEGASTRIDE_RESIDUAL is an error naming it."""
    calls, keep_calls = [], []
    real, real_keep = layernorm.triton_residual_add, layernorm.triton_layer_norm_keep
    monkeypatch.setattr(layernorm, "triton_residual_add", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(layernorm, "triton_layer_norm_keep", lambda *a: keep_calls.append(1) or real_keep(*a))
    x, r = torch.randn(1, 9, 32), torch.randn(1, 9, 32).half()
    w, b = torch.randn(32), torch.randn(32)
    assert torch.equal(norm.residual_add(x, r), x + r) and len(calls) == 1
    for other in (r.float(), r[:, :1], r.transpose(0, 1).contiguous().transpose(0, 1)[:, :, :16]):
        if other.shape == x.shape:
            assert torch.equal(norm.residual_add(x, other), x + other)
    assert torch.equal(norm.residual_add(x[:, :, :16], r[:, :, :16]), x[:, :, :16] + r[:, :, :16])  # strided
    assert torch.equal(norm.residual_add(x, r[:, :1]), x + r[:, :1])
    assert len(calls) == 1
    y, x2 = norm.layer_norm_keep(x, w, b, EPS)
    assert len(keep_calls) == 1 and x2 is not x and torch.equal(x2, x)
    monkeypatch.setenv("MEGASTRIDE_RESIDUAL", "plain")
    assert torch.equal(norm.residual_add(x, r), x + r) and len(calls) == 1
    y2, x3 = norm.layer_norm_keep(x, w, b, EPS)
    assert x3 is x and len(keep_calls) == 1 and torch.equal(y2, y)
    monkeypatch.setenv("MEGASTRIDE_RESIDUAL", "fast")
    with pytest.raises(ValueError, match="MEGASTRIDE_RESIDUAL must be"):
        norm.residual_add(x, r)
    monkeypatch.setenv("MEGASTRIDE_RESIDUAL", "")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(norm.residual_add(x, r), x + r) and len(calls) == 1
    assert norm.layer_norm_keep(x, w, b, EPS)[1] is x and len(keep_calls) == 1


def test_model_residual_kernels_match_plain_under_autocast(monkeypatch):
    """Under fp16 autocast (the fp32 stream plus 16-bit branches, as bf16 on a GPU) the model with the
    residual kernels (ln1's kept input, the FFN's add by the kernel) gives the loss and gradients of the
    same model with torch's adds and autograd's sums (MEGASTRIDE_RESIDUAL=plain)."""
    model = _tiny_model(True, monkeypatch)
    idx = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(11))
    targets = torch.roll(idx, -1, dims=1)
    calls = []
    real = layernorm.triton_residual_add
    monkeypatch.setattr(layernorm, "triton_residual_add", lambda *a: calls.append(1) or real(*a))
    results = []
    for choice in ("fused", "plain"):
        monkeypatch.setenv("MEGASTRIDE_RESIDUAL", choice)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(idx, targets)
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    assert len(calls) == 2  # each block's FFN add, in the fused pass only
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)  # the forward: the same sums
    for (name, _), g, w in zip(model.named_parameters(), results[0][1], results[1][1]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_bad_inputs_raise():
    """Wrong parameter shapes, unsupported dtypes and multi-dim normalized shapes are clear errors."""
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="weight must be"):
        layernorm.triton_layer_norm(x, torch.ones(8), None, EPS)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        layernorm.triton_layer_norm(x.double(), None, None, EPS)
    with pytest.raises(ValueError, match="last dim only"):
        FusedLayerNorm((5, 16))
    with pytest.raises(ValueError, match="one shape"):
        layernorm.triton_residual_add(x, x[:, :1])
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        layernorm.triton_residual_add(x.double(), x.double())


def test_kernels_compile_for_sm90():
    """The LayerNorm kernels and the residual add compile for Hopper at our width without register spills (no
    GPU needed): each as launched, ln1's backward with the stream's gradient alone among them, and each backward
    with its loads a step ahead (BWD_PREFETCH)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.ln_check", "--compile", "--widths", "512"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # 3 dtype pairs x (2 forwards + 3 backwards: plain, +residual, +stream, each also prefetching), and the
    # residual add's 2 dtype pairs
    assert sum(line.startswith("ok ") for line in proc.stdout.splitlines()) == 24 + 2, proc.stdout
    assert sum(" +stream D=512" in line for line in proc.stdout.splitlines()) == 3, proc.stdout
    assert sum(" +stream prefetch D=512" in line for line in proc.stdout.splitlines()) == 3, proc.stdout
