"""Forty-first run, call 2: why ffn_check's three-way check failed in call 1 (dx 0.0283, dweight 3.27, dbias
0.77 max errors). Isolates the bias + SiLU backward kernel: its dz and bias gradient against float64 computed
from the same bf16 product z0 and fp32 bias (so only the kernel's own arithmetic and dz's rounding count), then
the whole layer's relative L2 errors (ours, torch's) against float64."""
import torch
import torch.nn.functional as F

from megastride.kernels import bias_silu as K
from megastride.kernels.ffn_check import _grads, _inputs, _ours, _torch

for rows in (4096, 65536):
    x, w, b, da = _inputs(rows)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z0 = F.linear(x, w)
    z = z0.double() + b.double()
    sg = torch.sigmoid(z)
    dz_ref = da.double() * sg * (1 + z * (1 - sg))
    a_ref = z * sg
    a = K._forward(z0, b, torch.bfloat16)
    dz, db = K._backward(da, z0, b)
    rel = lambda g, r: ((g.double() - r).norm() / r.norm()).item()  # noqa: E731
    print(f"rows {rows}: kernel a rel {rel(a, a_ref):.2e} max {(a.double() - a_ref).abs().max().item():.3g}; "
          f"dz rel {rel(dz, dz_ref):.2e} max {(dz.double() - dz_ref).abs().max().item():.3g} "
          f"(bf16 rounding of dz_ref: {rel(dz_ref.to(torch.bfloat16), dz_ref):.2e}); db rel {rel(db, dz_ref.sum((0, 1))):.2e} "
          f"max {(db.double() - dz_ref.sum((0, 1))).abs().max().item():.3g}, |db| max {dz_ref.sum((0, 1)).abs().max().item():.3g}")
    bad = (dz.double() - dz_ref).abs() > 0.05 * dz_ref.abs().max()
    if bad.any():
        idx = bad.nonzero()
        print(f"  {int(bad.sum())} dz elements off by > 5% of max; first at {idx[:5].tolist()}, rows {idx[:, 1].unique()[:10].tolist()}")
    got, low = _grads(_ours, x, w, b, da), _grads(_torch, x, w, b, da)
    exact = _grads(lambda *t: F.silu(F.linear(*t)), x.double(), w.double(), b.double(), da.double())
    for name, g, lo, ex in zip(("a", "dx", "dweight", "dbias"), got, low, exact):
        print(f"  {name}: rel L2 ours {rel(g, ex):.2e} torch {rel(lo, ex):.2e}; max ours {(g.double() - ex).abs().max().item():.3g} "
              f"torch {(lo.double() - ex).abs().max().item():.3g}; |exact| max {ex.abs().max().item():.3g}")
