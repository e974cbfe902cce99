"""GPU check and timing of the LayerNorm kernel (``layernorm``), where the CPU interpreter cannot go.

``python -m megastride.kernels.ln_check`` on a CUDA machine:

* correctness, the training step's way: fp32 x (the residual stream) under bf16 autocast, y in bf16,
  at (1, 65536, 512) (``--long``: also 4,194,304 rows, 2**31 elements). Output, dx, dweight and
  dbias against torch's layer_norm in float64, three ways: |ours - fp64| <= 2 |torch - fp64| +
  atol * max(1, max |fp64|), torch being ``F.layer_norm(x.float()).to(bf16)`` and its autograd.
  The backward runs twice and must give bitwise-equal gradients (no atomics), and once more
  captured in a CUDA graph and replayed.
* timing (triton.testing.do_bench) of forward and forward+backward, ours against torch's
  ``F.layer_norm(x.float()).to(bfloat16)``, at (1, 65536, 512) and (1, 1048576, 512): one line per
  case with milliseconds, speedup and our effective bandwidth.
* the fused residual add (``add_layer_norm``: fp32 stream + bf16 branch, as in every block): s, y and
  the gradients of x, the branch, weight and bias against the add and torch's layer_norm and float64,
  three ways (s bitwise x + r, deterministic), and its forward+backward timed against the add
  followed by our ``layer_norm`` (what the block ran before).
* the block's first LayerNorm with its input kept for the stream (``layer_norm_keep``: the stream's
  gradient summed into dx in the kernel) checked the same way and timed against ``layer_norm`` with x
  used twice; the FFN's residual add (``residual_add``) bitwise torch's and timed against torch's
  mixed-dtype add.
* the backward with its loads a step ahead (``layernorm.BWD_PREFETCH``), whichever the default, against the
  backward without them: the three backwards' gradients bitwise equal at a ragged row count.

``--sweep`` also times the tile and row-group settings around the defaults (forward and backward
kernels alone); ``--compile`` (no GPU needed) compiles both kernels for sm_90 at several widths
and reports registers and spills. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import sys
from unittest import mock

import torch
import torch.nn.functional as F

from . import layernorm as L
from .norm import add_layer_norm, layer_norm, layer_norm_keep, residual_add

EPS = 1e-5
ATOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 2e-5}


def _inputs(rows: int, width: int, device="cuda", seed: int = 0):
    """x (1, rows, width) fp32 with a non-zero mean, weight and bias near (1, 0), dy in bf16."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((1, rows, width), device=device, generator=gen) * 2.0 + 0.5
    w = 1.0 + 0.1 * torch.randn(width, device=device, generator=gen)
    b = 0.1 * torch.randn(width, device=device, generator=gen)
    dy = torch.randn((1, rows, width), device=device, generator=gen).to(torch.bfloat16)
    return x, w, b, dy


def _ours(x, w, b):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return layer_norm(x, w, b, EPS)


def _torch(x, w, b):
    return F.layer_norm(x.float(), x.shape[-1:], w, b, EPS).to(torch.bfloat16)


def _with_grads(fn, x, w, b, dy):
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    y = fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy)]


def _exact_chunks(x, w, b, dy, chunk: int):
    """float64 (y, dx) row chunk by row chunk, and dweight, dbias summed over the chunks."""
    wd, bd = (t.double().requires_grad_() for t in (w, b))
    dw, db = torch.zeros_like(wd), torch.zeros_like(bd)
    for start in range(0, x.shape[1], chunk):
        xc = x[:, start : start + chunk].double().requires_grad_()
        y = F.layer_norm(xc, x.shape[-1:], wd, bd, EPS)
        dx, gw, gb = torch.autograd.grad(y, (xc, wd, bd), dy[:, start : start + chunk].double())
        dw += gw
        db += gb
        yield start, y.detach(), dx
    yield None, dw, db


def _three_way(report: dict, name: str, got, low, exact) -> None:
    atol = ATOL[got.dtype]
    err = (got.double() - exact).abs()
    bound = 2 * (low.double() - exact).abs() + atol * max(1.0, exact.abs().max().item())
    ok = bool(torch.isfinite(got).all()) and bool((err <= bound).all())
    entry = report.setdefault(name, {"max_err": 0.0, "ok": True})
    entry["max_err"] = max(entry["max_err"], err.max().item())
    entry["ok"] &= ok
    report["ok"] &= ok


def check(rows: int = 65536, width: int = 512, chunk: int = 65536) -> dict:
    """Ours (autocast fp32 -> bf16) vs torch vs float64 at (1, rows, width); deterministic; graph-safe."""
    x, w, b, dy = _inputs(rows, width)
    got = _with_grads(_ours, x, w, b, dy)
    report = {"name": f"check (1, {rows}, {width}) fp32 -> bf16 autocast", "ok": got[0].dtype == torch.bfloat16,
              "y_dtype": str(got[0].dtype)}
    again = _with_grads(_ours, x, w, b, dy)
    report["deterministic"] = all(torch.equal(a, c) for a, c in zip(got, again))
    report["ok"] &= report["deterministic"]
    del again
    low_dw = torch.zeros_like(w)
    low_db = torch.zeros_like(b)
    for start, first, second in _exact_chunks(x, w, b, dy, chunk):
        if start is None:
            _three_way(report, "dweight", got[2], low_dw, first)
            _three_way(report, "dbias", got[3], low_db, second)
            break
        rows_ = slice(start, start + chunk)
        low = _with_grads(_torch, x[:, rows_], w, b, dy[:, rows_])
        low_dw += low[2]
        low_db += low[3]
        _three_way(report, "y", got[0][:, rows_], low[0], first)
        _three_way(report, "dx", got[1][:, rows_], low[1], second)
    report["graph_replay_equal"] = _graph_replay_equal(x, w, b, dy, got) if rows <= 1 << 20 else None
    report["ok"] &= report["graph_replay_equal"] is not False
    return report


def _graph_replay_equal(x, w, b, dy, eager) -> bool:
    """Forward and backward captured in one CUDA graph and replayed equal the eager results bitwise."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compile, SM count) off the capture
        y = _ours(*leaves)
        torch.autograd.grad(y, leaves, dy)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = _ours(*leaves)
        grads = torch.autograd.grad(y, leaves, dy)
    graph.replay()
    torch.cuda.synchronize()
    return all(torch.equal(a, c) for a, c in zip([y.detach(), *grads], eager))


def _add_inputs(rows: int, width: int, seed: int = 1):
    """The pre-LN block's second LayerNorm: x the fp32 residual stream, r the bf16 attention branch,
    ds the fp32 gradient of their sum from the rest of the stream, dy bf16."""
    x, w, b, dy = _inputs(rows, width, seed=seed)
    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    r = torch.randn((1, rows, width), device="cuda", generator=gen).to(torch.bfloat16)
    ds = torch.randn((1, rows, width), device="cuda", generator=gen)
    return x, r, w, b, ds, dy


def _add_grads(fn, x, r, w, b, ds, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, r, w, b)]
    s, y = fn(*leaves)
    return [s.detach(), y.detach(), *torch.autograd.grad((s, y), leaves, (ds.to(s.dtype), dy.to(y.dtype)))]


def _fused(x, r, w, b):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return add_layer_norm(x, r, w, b, EPS)


def _unfused_ours(x, r, w, b):  # what the block ran before: the add, then our layer_norm
    s = x + r
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return s, layer_norm(s, w, b, EPS)


def _unfused_torch(x, r, w, b, out_dtype=torch.bfloat16):
    s = x + r
    return s, F.layer_norm(s, s.shape[-1:], w, b, EPS).to(out_dtype or s.dtype)


def check_add(rows: int = 65536, width: int = 512) -> dict:
    """The fused add + LayerNorm (fp32 x + bf16 r, y bf16) against the add and torch's layer_norm and
    against float64: s, y, dx, dr, dweight, dbias three ways; s bitwise x + r; deterministic."""
    x, r, w, b, ds, dy = _add_inputs(rows, width)
    got = _add_grads(_fused, x, r, w, b, ds, dy)
    low = _add_grads(_unfused_torch, x, r, w, b, ds, dy)
    exact = _add_grads(lambda *t: _unfused_torch(*t, out_dtype=None), x.double(), r.double(), w.double(), b.double(),
                       ds.double(), dy.double())
    report = {"name": f"check add+ln (1, {rows}, {width}) fp32 + bf16 -> bf16 autocast", "ok": True,
              "y_dtype": str(got[1].dtype)}
    report["ok"] &= [t.dtype for t in got[:4]] == [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
    for name, g, lo, ex in zip(["s", "y", "dx", "dr", "dweight", "dbias"], got, low, exact):
        _three_way(report, name, g, lo, ex)
    report["s_bitwise"] = torch.equal(got[0], x + r)
    report["deterministic"] = all(torch.equal(a, c) for a, c in zip(got, _add_grads(_fused, x, r, w, b, ds, dy)))
    report["ok"] &= report["s_bitwise"] and report["deterministic"]
    return report


def time_add(rows: int, width: int = 512) -> dict:
    """Forward+backward of the block's add and LayerNorm: fused against the add and our layer_norm."""
    x, r, w, b, ds, dy = _add_inputs(rows, width)
    leaves = [t.detach().requires_grad_() for t in (x, r, w, b)]
    out = {"name": f"time add+ln (1, {rows}, {width}) fp32 + bf16 -> bf16"}
    for who, fn in (("fused", _fused), ("unfused", _unfused_ours)):
        out[f"{who}_fwdbwd_ms"] = _bench(lambda: torch.autograd.grad(fn(*leaves), leaves, (ds, dy)))
    return out


def _keep_grads(fn, x, w, b, dx2, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y, x2 = fn(*leaves)
    return [y.detach(), *torch.autograd.grad((y, x2), leaves, (dy.to(y.dtype), dx2.to(x2.dtype)))]


def _kept(x, w, b):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return layer_norm_keep(x, w, b, EPS)


def _kept_unfused_ours(x, w, b):  # what the block ran before: our layer_norm, x used twice (autograd sums)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return layer_norm(x, w, b, EPS), x


def _kept_torch(x, w, b, out_dtype=torch.bfloat16):
    return F.layer_norm(x, x.shape[-1:], w, b, EPS).to(out_dtype or x.dtype), x


def check_keep(rows: int = 65536, width: int = 512) -> dict:
    """The block's first LayerNorm with its input kept for the stream (``layer_norm_keep``: fp32 x, y bf16):
    y, and dx with the stream's gradient summed in the kernel, dweight, dbias against torch's layer_norm with
    x used twice and against float64, three ways; deterministic."""
    x, _, w, b, dx2, dy = _add_inputs(rows, width, seed=3)
    got = _keep_grads(_kept, x, w, b, dx2, dy)
    low = _keep_grads(_kept_torch, x, w, b, dx2, dy)
    exact = _keep_grads(lambda *t: _kept_torch(*t, out_dtype=None), x.double(), w.double(), b.double(), dx2.double(),
                        dy.double())
    report = {"name": f"check ln keep (1, {rows}, {width}) fp32 -> bf16 autocast", "ok": True,
              "y_dtype": str(got[0].dtype)}
    report["ok"] &= [t.dtype for t in got[:2]] == [torch.bfloat16, torch.float32]
    for name, g, lo, ex in zip(["y", "dx", "dweight", "dbias"], got, low, exact):
        _three_way(report, name, g, lo, ex)
    report["deterministic"] = all(torch.equal(a, c) for a, c in zip(got, _keep_grads(_kept, x, w, b, dx2, dy)))
    report["ok"] &= report["deterministic"]
    return report


def check_residual(rows: int = 65536, width: int = 512) -> dict:
    """The FFN's residual add (``residual_add``: fp32 stream + bf16 branch): the sum bitwise torch's x + r, the
    gradients torch's (the stream's as it came, the branch's cast to bf16)."""
    x, r, _, _, ds, _ = _add_inputs(rows, width, seed=5)
    leaves = [t.detach().clone().requires_grad_() for t in (x, r)]
    s = residual_add(*leaves)
    dx, dr = torch.autograd.grad(s, leaves, ds)
    ok = torch.equal(s, x + r) and torch.equal(dx, ds) and torch.equal(dr, ds.to(torch.bfloat16))
    return {"name": f"check residual add (1, {rows}, {width}) fp32 + bf16", "ok": bool(ok)}


def check_prefetch(rows: int = 65536 + 37, width: int = 512) -> dict:
    """The backward with its loads a step ahead (``layernorm.BWD_PREFETCH``) against the backward without them:
    the plain, the fused add's and the kept LayerNorm's gradients bitwise equal (the same sums in the same order),
    at a row count no tile divides (the last tile's rows masked)."""
    x, r, w, b, ds, dy = _add_inputs(rows, width, seed=7)
    cases = {"plain": lambda: _with_grads(_ours, x, w, b, dy),
             "add+ln": lambda: _add_grads(_fused, x, r, w, b, ds, dy),
             "keep": lambda: _keep_grads(_kept, x, w, b, ds, dy)}
    report = {"name": f"check loads a step ahead (1, {rows}, {width})", "ok": L.prefetch_fits(width)}
    for name, run in cases.items():
        off, on = (_with_setting(prefetch, run) for prefetch in (False, True))
        report[name] = all(torch.equal(a, c) for a, c in zip(off, on))
        report["ok"] &= report[name]
    return report


def _with_setting(prefetch: bool, run):
    """``run()`` with ``layernorm.BWD_PREFETCH`` set to ``prefetch``, the setting as it was after."""
    with mock.patch.object(L, "BWD_PREFETCH", prefetch):
        return run()


def time_keep(rows: int, width: int = 512) -> dict:
    """Forward+backward of the block's first LayerNorm and the stream's gradient: kept (summed in the kernel)
    against our layer_norm with x used twice (autograd's add)."""
    x, _, w, b, dx2, dy = _add_inputs(rows, width, seed=3)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    out = {"name": f"time ln keep (1, {rows}, {width}) fp32 -> bf16"}
    for who, fn in (("fused", _kept), ("unfused", _kept_unfused_ours)):
        out[f"{who}_fwdbwd_ms"] = _bench(lambda: torch.autograd.grad(fn(*leaves), leaves, (dy, dx2)))
    return out


def time_residual(rows: int, width: int = 512) -> dict:
    """The FFN's residual add, forward and forward+backward: the kernel against torch's mixed-dtype add."""
    x, r, _, _, ds, _ = _add_inputs(rows, width, seed=5)
    leaves = [t.detach().requires_grad_() for t in (x, r)]
    out = {"name": f"time residual add (1, {rows}, {width}) fp32 + bf16"}
    for who, fn in (("fused", residual_add), ("unfused", lambda a, c: a + c)):
        with torch.no_grad():
            out[f"{who}_fwd_ms"] = _bench(lambda: fn(*leaves))
        out[f"{who}_fwdbwd_ms"] = _bench(lambda: torch.autograd.grad(fn(*leaves), leaves, ds))
    out["fused_fwd_gbps"] = rows * width * (4 + 2 + 4) / (out["fused_fwd_ms"] * 1e-3) / 1e9
    return out


def _bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200)


def time_case(rows: int, width: int = 512) -> dict:
    """Forward and forward+backward milliseconds, ours vs torch's fp32 layer_norm + bf16 cast."""
    x, w, b, dy = _inputs(rows, width)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    out = {"name": f"time (1, {rows}, {width}) fp32 -> bf16"}
    for who, fn in (("ours", _ours), ("torch", _torch)):
        with torch.no_grad():
            out[f"{who}_fwd_ms"] = _bench(lambda: fn(*leaves))
        out[f"{who}_fwdbwd_ms"] = _bench(lambda: torch.autograd.grad(fn(*leaves), leaves, dy))
    # bytes our two kernels must move: x read twice (fp32), y written and dy read (bf16), dx written (fp32)
    moved = rows * width * (4 + 2 + 4 + 2 + 4)
    out["ours_fwdbwd_gbps"] = moved / (out["ours_fwdbwd_ms"] * 1e-3) / 1e9
    return out


def sweep(rows: int, width: int = 512) -> list[str]:
    """Times of the forward and backward kernels alone over tile and row-group settings."""
    x, w, b, dy = _inputs(rows, width)
    lines = []
    saved = (L.FWD_TILE, L.FWD_PER_THREAD, L.BWD_TILE, L.BWD_PER_THREAD, L.BWD_PROGRAMS_PER_SM, L.BWD_PREFETCH)
    try:
        for tile, per_thread in ((1024, 8), (2048, 8), (4096, 16), (4096, 8), (8192, 16)):
            L.FWD_TILE, L.FWD_PER_THREAD = tile, per_thread
            ms = _bench(lambda: L._forward(x, w, b, EPS, torch.bfloat16))
            lines.append(f"sweep fwd (1, {rows}, {width}) tile {tile} x {per_thread}/thread "
                         f"{L.tiles(width, tile, per_thread)}: {ms:.3f} ms")
        L.FWD_TILE, L.FWD_PER_THREAD = saved[:2]
        _, mean, rstd, _ = L._forward(x, w, b, EPS, torch.bfloat16)
        ds = torch.randn_like(x)  # the stream's fp32 gradient: ln2's add (and its bf16 branch gradient), ln1's kept input
        variants = (("", {}), (" +stream", {"dx_more": ds}), (" +stream +branch", {"dx_more": ds, "branch_dtype": torch.bfloat16}))
        # every tile and row grouping as the loads come (the default), the loads a step ahead at the groupings that
        # leave a program rows enough to walk (PREFETCH)
        settings = [(t, p, s, False) for t, p in ((512, 4), (1024, 8), (1024, 4), (2048, 8), (2048, 4), (4096, 16))
                    for s in (1, 2, 3, 4, 8, 16)]
        settings += [(t, p, s, True) for t, p in ((1024, 8), (2048, 8), (2048, 4)) for s in (1, 2, 4, 8)]
        for tile, per_thread, per_sm, ahead in settings:
            L.BWD_TILE, L.BWD_PER_THREAD, L.BWD_PROGRAMS_PER_SM, L.BWD_PREFETCH = tile, per_thread, per_sm, ahead
            for what, extra in variants:
                ms = _bench(lambda: L._backward(dy, x, w, b, mean, rstd, **extra))
                moved = rows * width * (4 + 2 + 4 + 4 * ("dx_more" in extra) + 2 * ("branch_dtype" in extra))
                lines.append(f"sweep bwd{what} (1, {rows}, {width}) tile {tile} x {per_thread}/thread "
                             f"{L.tiles(width, tile, per_thread)}, {per_sm} programs/SM"
                             f"{', loads a step ahead' if ahead else ''}: {ms:.3f} ms, "
                             f"{moved / (ms * 1e-3) / 1e9:.0f} GB/s")
    finally:
        L.FWD_TILE, L.FWD_PER_THREAD, L.BWD_TILE, L.BWD_PER_THREAD, L.BWD_PROGRAMS_PER_SM, L.BWD_PREFETCH = saved
    return lines


def compile_report(widths, arch: int = 90) -> list[tuple[str, bool]]:
    """(line, ok) per kernel, width and dtype pair: compiled for ``arch`` without a GPU, with the
    registers and spills ptxas reports; a spill is a failure."""
    from .compile_check import launch_attrs, report_line

    out = []
    for width in widths:
        for x_t, y_t in (("fp32", "bf16"), ("bf16", "bf16"), ("fp16", "fp32")):
            # plain; fused (the residual branch in, and in the backward the sum's and the branch's gradients:
            # ln2 after the add); keep (the backward adding the stream's gradient alone: ln1's kept input)
            # the backward also with its loads a step ahead (PREFETCH)
            variants = ((L._layer_norm_fwd_kernel, (L.FWD_TILE, L.FWD_PER_THREAD), "plain", None),
                        (L._layer_norm_fwd_kernel, (L.FWD_TILE, L.FWD_PER_THREAD), "fused", None),
                        *((L._layer_norm_bwd_kernel, (L.BWD_TILE, L.BWD_PER_THREAD), v, ahead)
                          for ahead in (False, True) for v in ("plain", "fused", "keep")
                          if not ahead or L.prefetch_fits(width)))
            for kernel, tile, variant, ahead in variants:
                block_m, block_n, warps = L.tiles(width, *tile)
                consts = dict(N=width, HAS_WEIGHT=True, HAS_BIAS=True, BLOCK_M=block_m, BLOCK_N=block_n)
                if ahead is not None:
                    consts["PREFETCH"] = ahead
                consts.update({k: variant == "fused" or (variant == "keep" and k == "HAS_DS")
                               for k in ("HAS_RES", "HAS_DS", "HAS_DR") if k in kernel.arg_names})
                # the residual branch and its gradient in y's dtype, the sum and its gradient in x's; strides as
                # launched (Python ints under 2^31: i32)
                types = {"X": x_t, "DX": x_t, "Y": y_t, "DY": y_t, "R": y_t, "S": x_t, "DS": x_t, "DR": y_t}
                sig = {p.name: "constexpr" if p.is_constexpr else f"*{types.get(p.name, 'fp32')}" if p.name.isupper()
                       else "fp32" if p.name == "eps" else "i32" for p in kernel.params}
                label = {"plain": "", "fused": " +residual", "keep": " +stream"}[variant] + (" prefetch" if ahead else "")
                name = f"{kernel.__name__}{label} D={width} x {x_t} y {y_t} {block_m}x{block_n} w{warps}"
                out.append(report_line(kernel, name, sig, consts, warps, arch=arch))
    # the residual add (no width: flat over the elements), as launched on a (T, D) stream with D a multiple
    # of 16: n divisible by 16, so the masked accesses are 16-byte vectors (a failure where they are not)
    kernel = L._residual_add_kernel
    n_at = kernel.arg_names.index("n")
    attrs = launch_attrs(kernel)
    if not {n_at, "n"} & set(kernel.do_not_specialize):  # a launch specialises n's divisibility unless told not to
        attrs[(n_at,)] = [["tt.divisibility", 16]]
    for x_t, r_t in (("fp32", "bf16"), ("bf16", "fp32")):
        sig = {"X": f"*{x_t}", "R": f"*{r_t}", "S": "*fp32", "n": "i32", "BLOCK": "constexpr"}
        name = f"{kernel.__name__} x {x_t} r {r_t} s fp32 block {L.ADD_BLOCK} w{L.ADD_WARPS}"
        out.append(report_line(kernel, name, sig, {"BLOCK": L.ADD_BLOCK}, L.ADD_WARPS, attrs, arch, vectors="all"))
    return out


def _time_line(r: dict) -> str:
    return (f"{r['name']}: fwd+bwd ours {r['ours_fwdbwd_ms']:.3f} ms, torch {r['torch_fwdbwd_ms']:.3f} ms, "
            f"speedup {r['torch_fwdbwd_ms'] / r['ours_fwdbwd_ms']:.2f}x ({r['ours_fwdbwd_gbps']:.0f} GB/s) | "
            f"fwd ours {r['ours_fwd_ms']:.3f} ms, torch {r['torch_fwd_ms']:.3f} ms, "
            f"speedup {r['torch_fwd_ms'] / r['ours_fwd_ms']:.2f}x")


def _check_line(r: dict, names=("y", "dx", "dweight", "dbias")) -> str:
    parts = [f"{k} max err {r[k]['max_err']:.3g}{'' if r[k]['ok'] else ' FAIL'}" for k in names]
    return (f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}: y {r['y_dtype']}, {', '.join(parts)}, "
            f"deterministic {r['deterministic']}"
            + (f", graph replay equal {r['graph_replay_equal']}" if "graph_replay_equal" in r else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.ln_check", description=__doc__.splitlines()[0])
    p.add_argument("--long", action="store_true", help="also check at 4,194,304 rows (2**31 elements)")
    p.add_argument("--sweep", action="store_true", help="also time tile and row-group settings")
    p.add_argument("--sweep-long-only", action="store_true", help="--sweep at 1,048,576 rows only")
    p.add_argument("--compile", action="store_true", help="only compile the kernels for sm_90 (no GPU needed)")
    p.add_argument("--widths", default="32,64,512,1024,4096,8192", help="widths for --compile")
    args = p.parse_args(argv)
    if args.compile:
        from .compile_check import print_report

        return print_report(compile_report([int(w) for w in args.widths.split(",")]), "ln_check")
    if not torch.cuda.is_available():
        print("ln_check needs a CUDA GPU (--compile runs without one)", file=sys.stderr)
        return 2
    failed = 0
    for rows in (65536, 1 << 22) if args.long else (65536,):
        r = check(rows)
        failed += not r["ok"]
        print(_check_line(r), flush=True)
    r = check_add()
    failed += not r["ok"]
    print(_check_line(r, ("s", "y", "dx", "dr", "dweight", "dbias")) + f", s bitwise x + r {r['s_bitwise']}", flush=True)
    r = check_keep()
    failed += not r["ok"]
    print(_check_line(r), flush=True)
    r = check_residual()
    failed += not r["ok"]
    print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}: sum and gradients torch's bitwise {r['ok']}", flush=True)
    r = check_prefetch()
    failed += not r["ok"]
    print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}: gradients bitwise those without, plain {r.get('plain')}, "
          f"add+ln {r.get('add+ln')}, keep {r.get('keep')}", flush=True)
    for rows in (65536, 1 << 20):
        print(_time_line(time_case(rows)), flush=True)
        t = time_add(rows)
        print(f"{t['name']}: fwd+bwd fused {t['fused_fwdbwd_ms']:.3f} ms, add then layer_norm "
              f"{t['unfused_fwdbwd_ms']:.3f} ms, speedup {t['unfused_fwdbwd_ms'] / t['fused_fwdbwd_ms']:.2f}x", flush=True)
        t = time_keep(rows)
        print(f"{t['name']}: fwd+bwd kept {t['fused_fwdbwd_ms']:.3f} ms, layer_norm with autograd's sum "
              f"{t['unfused_fwdbwd_ms']:.3f} ms, speedup {t['unfused_fwdbwd_ms'] / t['fused_fwdbwd_ms']:.2f}x", flush=True)
        t = time_residual(rows)
        print(f"{t['name']}: fwd kernel {t['fused_fwd_ms']:.3f} ms ({t['fused_fwd_gbps']:.0f} GB/s), torch "
              f"{t['unfused_fwd_ms']:.3f} ms, speedup {t['unfused_fwd_ms'] / t['fused_fwd_ms']:.2f}x | fwd+bwd "
              f"{t['fused_fwdbwd_ms']:.3f} / {t['unfused_fwdbwd_ms']:.3f} ms", flush=True)
    if args.sweep or args.sweep_long_only:
        for rows in (1 << 20,) if args.sweep_long_only else (65536, 1 << 20):
            for line in sweep(rows):
                print(line, flush=True)
    print(f"ln_check: {'FAILED ' + str(failed) if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
