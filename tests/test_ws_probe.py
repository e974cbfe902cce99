"""kernels/ws_probe.py (the device probe of the plainest block-list forward loop) computes attention over
its block lists: checked under the Triton interpreter against the same attention in fp32 PyTorch, with
and without the warp-specialisation flag and at both key tile widths it times."""

import pytest
import torch

from megastride.kernels import ws_probe


def test_block_lists_visit_the_blocks_just_before_each_row():
    ptr, idx = ws_probe.block_lists(6, 3)
    assert ptr.tolist() == [0, 0, 1, 3, 6, 9, 12]
    assert idx.tolist() == [0, 0, 1, 0, 1, 2, 1, 2, 3, 2, 3, 4]


@pytest.mark.parametrize("block_n,ws,poly", [(128, False, 0), (64, True, 0), (128, False, 1), (128, False, 2)])
def test_probe_matches_the_block_list_attention(block_n, ws, poly):
    """Exact in fp32 with the special-function exponentials; with a quarter or half of them from the
    polynomial, within its relative error (7.5e-5) of the reference, and not exact (the polynomial is used)."""
    gen = torch.Generator().manual_seed(0)
    heads, n, d = 2, 4 * ws_probe.BLOCK, 32
    q, k, v = (torch.randn(heads, n, d, generator=gen) for _ in range(3))
    ptr, idx = ws_probe.block_lists(n // ws_probe.BLOCK, 2)
    got = ws_probe.probe_attention(q, k, v, ptr, idx, block_n=block_n, warp_specialize=ws, poly=poly)
    want = ws_probe.reference(q, k, v, ptr, idx)
    assert torch.isnan(got[:, :ws_probe.BLOCK]).all() and torch.isnan(want[:, :ws_probe.BLOCK]).all()  # no keys
    err = (got[:, ws_probe.BLOCK:] - want[:, ws_probe.BLOCK:]).abs().max().item()
    scale = want[:, ws_probe.BLOCK:].abs().max().item()
    assert err <= (1e-5 if poly == 0 else 2e-4) * scale, err
    assert poly == 0 or err > 1e-6 * scale


def test_the_polynomial_exponential_is_within_its_error_bound():
    """ws_probe._exp2_poly on [-126, 0]: relative error at most 7.5e-5 (the fit's bound), integers included, and
    about 2^-126 below the clamp, -inf included (positive and finite, not NaN or garbage; a denormal there:
    within 2e-4 of it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(X, Y, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(Y + offs, ws_probe._exp2_poly(tl.load(X + offs)))

    x = torch.cat([torch.linspace(-125.9, 0, 4000), -torch.arange(0, 90, dtype=torch.float32),
                   torch.tensor([-126.5, -300.0, float("-inf"), -0.5, 0.5 - 1e-6, -1e-7])])
    x = torch.cat([x, torch.zeros(4096 - len(x))])
    y = torch.empty_like(x)
    kernel[(1,)](x, y, N=4096)
    inside = x >= -126
    rel = (y[inside].double() / torch.exp2(x[inside].double()) - 1).abs()
    assert rel.max() <= 7.6e-5, rel.max()
    assert ((y[~inside].double() / 2.0 ** -126 - 1).abs() <= 2e-4).all(), y[~inside]


def test_the_probe_says_it_needs_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        ws_probe.main([])
    assert "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ws_probe.main(["--kernels", "fwd,bwd"])
    assert "--kernels takes fwd, poly, dkdv and dkdvp, got 'fwd,bwd'" in capsys.readouterr().err


def test_column_lists_are_the_row_lists_transposed():
    ptr, idx = ws_probe.block_lists(6, 3)
    col_ptr, col_idx = ws_probe.column_lists(ptr, idx)
    assert col_ptr.tolist() == [0, 3, 6, 9, 11, 12, 12]
    assert col_idx.tolist() == [1, 2, 3, 2, 3, 4, 3, 4, 5, 4, 5, 5]


@pytest.mark.parametrize("block_m,reverse", [(32, False), (64, False), (32, True)])
def test_dkdv_probe_matches_autograd_of_the_block_list_attention(block_m, reverse):
    gen = torch.Generator().manual_seed(1)
    heads, n, d = 2, 4 * ws_probe.BLOCK, 32
    q, k, v, do = (torch.randn(heads, n, d, generator=gen) for _ in range(4))
    do[:, :ws_probe.BLOCK] = 0  # rows with no key
    ptr, idx = ws_probe.block_lists(n // ws_probe.BLOCK, 2)
    lse, delta = ws_probe.lse_and_delta(q, k, v, do, ptr, idx)
    dk, dv = ws_probe.probe_dkdv(q, k, v, do, lse, delta, *ws_probe.column_lists(ptr, idx), block_m=block_m,
                                 reverse=reverse)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = ws_probe.reference(*leaves, ptr, idx)
    (out[:, ws_probe.BLOCK:] * do[:, ws_probe.BLOCK:]).sum().backward()
    torch.testing.assert_close(dk, leaves[1].grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dv, leaves[2].grad, rtol=1e-4, atol=1e-4)
    assert dv.abs().sum() > 0 and dk.abs().sum() > 0


def test_persistent_dkdv_probe_matches_the_per_column_one():
    """Three programs walking the (column, head) items heaviest first give the per-column probe's dK and dV
    (columns of 0 to 3 query blocks, one head's first rows without a key)."""
    gen = torch.Generator().manual_seed(2)
    heads, n, d = 2, 5 * ws_probe.BLOCK, 32
    q, k, v, do = (torch.randn(heads, n, d, generator=gen) for _ in range(4))
    ptr, idx = ws_probe.block_lists(n // ws_probe.BLOCK, 3)
    lse, delta = ws_probe.lse_and_delta(q, k, v, do, ptr, idx)
    col_ptr, col_idx = ws_probe.column_lists(ptr, idx)
    order = ws_probe.heaviest_first(col_ptr, heads)
    assert sorted(order.tolist()) == list(range(heads * (n // ws_probe.BLOCK)))
    works = (col_ptr.diff()[order.long() // heads]).tolist()
    assert works == sorted(works, reverse=True) and works[0] == 3 and works[-1] == 0
    want = ws_probe.probe_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx, block_m=64)
    got = ws_probe.probe_dkdv_persistent(q, k, v, do, lse, delta, col_ptr, col_idx, order, 3, block_m=64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        assert (g[:, :-ws_probe.BLOCK].abs().amax(-1) > 0).all()  # every column with work was written

