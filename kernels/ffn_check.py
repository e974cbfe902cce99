"""GPU check and timing of the FFN's first layer with the bias in the SiLU's kernels (``ffn.linear_silu``).

``python -m megastride.kernels.ffn_check`` on a CUDA machine:

* correctness, the training step's way: fp32 x (LayerNorm output cast by autocast) and fp32 weights under
  bf16 autocast at (1, 65536, 512) -> 2048: a, dx, dweight and dbias against torch's
  ``F.silu(F.linear(x, w, b))`` and float64, three ways (|ours - fp64| <= 2 |torch - fp64| + atol x
  max(1, max |fp64|)); the backward twice, bitwise equal (no atomics);
* timing (triton.testing.do_bench) of forward and forward+backward, ours against torch's, at 65,536 and
  1,048,576 rows.

``--gemm`` also checks the one-kernel layer (``ffn_gemm``, ``MEGASTRIDE_FFN_GEMM=1``: the product, the bias and
the SiLU in one Triton kernel) the same way and times it beside the default (cuBLAS, then the bias + SiLU kernel)
and torch's, forward with and without gradients and forward+backward, alternated in rounds.

``--every-config`` checks only the one-kernel FFN, with each config of its two autotuning lists forced in turn (the
autotuner's choice is one of them, and may differ by length and machine).

``--compile`` (no GPU needed) compiles both kernels for sm_90 at width 2048 and reports registers, spills
and the width of their global accesses (a spill, or a scalar access, is a failure), and the one-kernel
layer's product at each of its tiles (registers, spills, shared memory, whether its products are wgmma).
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

import torch
import torch.nn.functional as F

from . import bias_silu as K
from . import ffn_gemm as G
from .ffn import linear_silu

ATOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 2e-5}


def _inputs(rows: int, d: int = 512, width: int = 2048, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn((1, rows, d), device="cuda", generator=gen)
    w = torch.randn((width, d), device="cuda", generator=gen) * d ** -0.5
    b = torch.randn(width, device="cuda", generator=gen) * 0.5
    da = torch.randn((1, rows, width), device="cuda", generator=gen).to(torch.bfloat16)
    return x, w, b, da


def _ours(x, w, b):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return linear_silu(x, w, b)


def _torch(x, w, b):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return F.silu(F.linear(x, w, b))


def _grads(fn, x, w, b, da):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    a = fn(*leaves)
    return [a.detach(), *torch.autograd.grad(a, leaves, da.to(a.dtype))]


def _three_way(report: dict, names, got, low, exact) -> None:
    """Each of ``got`` within 2 |torch's - fp64| + atol x max(1, max |fp64|) of float64's, in torch's dtype, into
    ``report`` (its "ok" and one entry a name). The atol is the dtype the layer computes in (bf16 autocast), not
    the gradient's (fp32 for fp32 leaves): on the H200 (2026-12-05) fp32's atol failed dweight and dbias where
    ours was the closer of the two."""
    for name, g, lo, ex in zip(names, got, low, exact):
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[torch.bfloat16] * max(1.0, ex.abs().max().item())
        ok = bool((err <= bound).all()) and g.dtype == lo.dtype
        report[name] = {"max_err": err.max().item(), "ok": ok}
        report["ok"] &= ok


def _gemm(on: bool):
    """Inside: MEGASTRIDE_FFN_GEMM=1 (``on``), else 0; the environment as it was after."""
    return mock.patch.dict(os.environ, {"MEGASTRIDE_FFN_GEMM": "1" if on else "0"})


def _gemm_ours(x, w, b):
    with _gemm(True):
        return _ours(x, w, b)


def check(rows: int = 65536, gemm: bool = False) -> dict:
    x, w, b, da = _inputs(rows)
    fn = _gemm_ours if gemm else _ours
    with _gemm(gemm):
        got = _grads(fn, x, w, b, da)
    low = _grads(_torch, x, w, b, da)
    exact = _grads(lambda *t: F.silu(F.linear(*t)), x.double(), w.double(), b.double(), da.double())
    which = "one-kernel layer (ffn_gemm)" if gemm else "linear_silu"
    report = {"name": f"check {which} (1, {rows}, 512) -> 2048 bf16 autocast", "ok": True}
    _three_way(report, ("a", "dx", "dweight", "dbias"), got, low, exact)
    with torch.no_grad():
        alone = fn(x, w, b)  # a alone, where no backward needs z0
    report["no_grad_equal"] = torch.equal(alone, got[0])
    report["ok"] &= _same_to_rounding(alone, got[0])
    report["deterministic"] = all(torch.equal(a, c) for a, c in zip(got, _grads(fn, x, w, b, da)))
    report["ok"] &= report["deterministic"]
    return report


def _same_to_rounding(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b (bf16) are one computation to its rounding: within 2^-7 of b's scale element by element. The
    forward without gradients may be tuned to other tiles than the one with them (the autotuner keys on whether it
    keeps z0), whose fp32 sums can round an element to the next bf16 value."""
    return bool(((a.float() - b.float()).abs() <= 2.0 ** -7 * (b.float().abs() + b.float().abs().max())).all())


def _bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200)


def time_case(rows: int) -> dict:
    x, w, b, da = _inputs(rows)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    out = {"name": f"time linear_silu (1, {rows}, 512) -> 2048 bf16"}
    for who, fn in (("ours", _ours), ("torch", _torch)):
        with torch.no_grad():
            out[f"{who}_fwd_ms"] = _bench(lambda: fn(*leaves))
        out[f"{who}_fwdbwd_ms"] = _bench(lambda: torch.autograd.grad(fn(*leaves), leaves, da))
    return out


def _ffn_inputs(rows: int, d: int = 512, width: int = 2048, seed: int = 1):
    """The whole FFN's: x, fc's weight and bias, proj's weight and bias (fp32 leaves), dy in bf16."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn((1, rows, d), device="cuda", generator=gen)
    w1 = torch.randn((width, d), device="cuda", generator=gen) * d ** -0.5
    b1 = torch.randn(width, device="cuda", generator=gen) * 0.5
    w2 = torch.randn((d, width), device="cuda", generator=gen) * width ** -0.5
    b2 = torch.randn(d, device="cuda", generator=gen) * 0.1
    dy = torch.randn((1, rows, d), device="cuda", generator=gen).to(torch.bfloat16)
    return x, w1, b1, w2, b2, dy


def _ffn_default(x, w1, b1, w2, b2):  # the model's FFN without MEGASTRIDE_FFN_GEMM: cuBLAS, bias_silu, cuBLAS
    with _gemm(False), torch.autocast("cuda", dtype=torch.bfloat16):
        return F.linear(linear_silu(x, w1, b1), w2, b2)


def _ffn_gemm(x, w1, b1, w2, b2):
    from .ffn import feed_forward

    with _gemm(True), torch.autocast("cuda", dtype=torch.bfloat16):
        return feed_forward(x, w1, b1, w2, b2)


def _ffn_torch(x, w1, b1, w2, b2):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)


def _ffn_grads(fn, t, dy):
    leaves = [u.detach().clone().requires_grad_() for u in t]
    y = fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy.to(y.dtype))]


def check_ffn(rows: int = 65536) -> dict:
    """The whole FFN through ``ffn_gemm.feed_forward`` (bf16 autocast) against torch's layers and float64, three
    ways, for y and the five gradients; under no_grad the same y; deterministic."""
    *t, dy = _ffn_inputs(rows)
    got, low = _ffn_grads(_ffn_gemm, t, dy), _ffn_grads(_ffn_torch, t, dy)
    exact = _ffn_grads(lambda x, w1, b1, w2, b2: F.linear(F.silu(F.linear(x, w1, b1)), w2, b2),
                       [u.double() for u in t], dy.double())
    report = {"name": f"check feed_forward in one product each way (1, {rows}, 512) -> 2048 -> 512 bf16 autocast",
              "ok": True}
    _three_way(report, ("y", "dx", "dw1", "db1", "dw2", "db2"), got, low, exact)
    with torch.no_grad():
        alone = _ffn_gemm(*t)
    report["no_grad_equal"] = torch.equal(alone, got[0])
    report["deterministic"] = all(torch.equal(a, c) for a, c in zip(got, _ffn_grads(_ffn_gemm, t, dy)))
    report["ok"] &= _same_to_rounding(alone, got[0]) and report["deterministic"]
    return report


def check_every_config(rows: int = 8195) -> list[dict]:
    """``check_ffn`` with each config of the one-product layer's two autotuning lists forced in turn
    (``ffn_gemm.FORCED``; the forward's and dz's paired by index, the shorter list repeated), the autotuner's
    choice only ever one of them; at ``rows`` that no tile divides. Each report names its two configs."""
    fwd, dz = G.configs(G._linear_silu_kernel), G.configs(G._silu_grad_kernel)
    reports = []
    for i in range(max(len(fwd), len(dz))):
        pair = {G._linear_silu_kernel: fwd[i % len(fwd)], G._silu_grad_kernel: dz[i % len(dz)]}
        with mock.patch.dict(G.FORCED, pair):
            r = check_ffn(rows)
        r["name"] += f" forward [{pair[G._linear_silu_kernel]}] dz [{pair[G._silu_grad_kernel]}]"
        reports.append(r)
    return reports


def _print_check(r: dict, names=("y", "dx", "dw1", "db1", "dw2", "db2")) -> None:
    """One line of a ``check`` or ``check_ffn`` report: each of ``names``' error, no_grad and determinism."""
    parts = [f"{k} max err {r[k]['max_err']:.3g}{'' if r[k]['ok'] else ' FAIL'}" for k in names]
    print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}: {', '.join(parts)}, no_grad equal {r['no_grad_equal']}, "
          f"deterministic {r['deterministic']}", flush=True)


def time_gemm(rows: int, rounds: int = 3) -> dict:
    """ms medians over ``rounds`` alternated rounds of the whole FFN (fc, SiLU, proj; bf16 autocast): the model's
    default (cuBLAS, bias_silu, cuBLAS), the one-product layer (``ffn_gemm.feed_forward``) and torch's layers, each
    forward under no_grad (a recomputed block's first forward), forward with gradients on (its recompute: z0
    kept) and forward+backward."""
    *t, dy = _ffn_inputs(rows)
    leaves = [u.detach().requires_grad_() for u in t]
    out = {"name": f"time ffn (1, {rows}, 512) -> 2048 -> 512 bf16"}
    who = {"default": _ffn_default, "gemm": _ffn_gemm, "torch": _ffn_torch}
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fn in who.items():
            with torch.no_grad():
                samples.setdefault(f"{name}_fwd_nograd_ms", []).append(_bench(lambda: fn(*leaves)))
            samples.setdefault(f"{name}_fwd_ms", []).append(_bench(lambda: fn(*leaves)))
            fwdbwd = _bench(lambda: torch.autograd.grad(fn(*leaves), leaves, dy))
            samples.setdefault(f"{name}_fwdbwd_ms", []).append(fwdbwd)
    for key, values in samples.items():
        out[key] = sorted(values)[len(values) // 2]
    out["gemm_tiles"] = G.chosen()
    return out


def gemm_compile_report(width: int = 2048, depth: int = 512, arch: int = 90, select=None,
                        compiled_only: bool = False) -> list[tuple[str, bool]]:
    """(line, ok) per config: the one-product layer's forward compiled for ``arch`` at (rows, depth) -> width in bf16
    at each config of its autotuning list (``ffn_gemm.configs``: tiles by pointers and by TMA descriptors, the
    persistent programs and the warp-specialised ones), with z0 stored (a recompute) and without, and its
    backward's dz kernel (width's gradient from dy of depth) at each of its list's; ok without spills, with wgmma,
    within sm_90's 227 KB of shared memory a block, and the warp-specialised ones with the loop partitioned into
    warp groups. Only the configs the autotuner keeps at ``depth`` (``ffn_gemm.compiles_at``), and of those the
    ones ``select(config)`` takes; ``compiled_only``: ok once it compiles (spills and the rest not asked, as at
    a small model's depth, where they cost nothing that matters)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .compile_check import launch_attrs, ptxas_usage

    types = {"X": "bf16", "W": "bf16", "B": "fp32", "Z0": "bf16", "A": "bf16", "DY": "bf16", "DZ": "bf16",
             "DB_PART": "fp32"}
    # every config of both autotuning lists (``ffn_gemm.configs``), the forward's with z0 stored and without
    variants = [(config, G._linear_silu_kernel, "forward", save) for config in G.configs(G._linear_silu_kernel)
                for save in (False, True)]
    variants += [(config, G._silu_grad_kernel, "backward (dz)", None) for config in G.configs(G._silu_grad_kernel)]
    variants = [v for v in variants if G.compiles_at(v[0], depth) and (select is None or select(v[0]))]
    out = []
    for config, kernel, what, save in variants:
        t = config.kwargs
        sig = {p.name: "constexpr" if p.is_constexpr else f"*{types[p.name]}" if p.name in types
               else "i64" if p.name.startswith("stride") else "i32" for p in kernel.params}
        consts = {"N": width, "K": depth, **({} if save is None else {"SAVE_Z": save}), "IEEE": False,
                  "GROUP": G.GROUP_M, **t}
        ws, occ = t["WS"], t["OCC"]
        name = (f"ffn_gemm {what} {t['BLOCK_M']}x{t['BLOCK_N']}x{t['BLOCK_K']} w{config.num_warps} "
                f"s{config.num_stages}{', TMA' if t['DESC'] else ''}{f', persistent {occ}/SM' if t['PERSIST'] else ''}"
                f"{', warp-specialised' if ws else ''}{', z0 stored' if save else ''}")
        try:
            c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=launch_attrs(kernel)),
                               target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": config.num_warps, "num_stages": config.num_stages})
        except Exception as err:  # report every tile, then fail
            out.append((f"FAIL {name}: {type(err).__name__}: {str(err).splitlines()[0][:300]}", False))
            continue
        u = ptxas_usage(c, arch)
        wgmma = "wgmma" in c.asm["ptx"]
        parted = "ttg.warp_specialize" in c.asm["ttgir"]
        ok = compiled_only or (u["spill_stores"] == 0 and u["spill_loads"] == 0 and wgmma
                               and c.metadata.shared <= 232448 and parted == ws)
        out.append((f"{'ok  ' if ok else 'FAIL'} {name}: {u['registers']} registers, spills {u['spill_stores']}/"
                    f"{u['spill_loads']} B stored/loaded, shared {c.metadata.shared} B, wgmma {wgmma}"
                    f"{f', {c.metadata.num_warps} warps in groups {parted}' if ws else ''}", ok))
    return out


def compile_report(width: int = 2048, arch: int = 90) -> list[tuple[str, bool]]:
    """(line, ok) per kernel and dtype: compiled for ``arch`` without a GPU as a launch on contiguous
    (T, width) tensors specialises it; registers, spills and the global accesses' widths."""
    from .compile_check import report_line

    out = []
    for z_t in ("bf16", "fp16", "fp32"):
        for kernel, consts, warps in (
                (K._bias_silu_fwd_kernel, {"BLOCK_M": K.FWD_BLOCK_M, "BLOCK_N": K.FWD_BLOCK_N}, K.FWD_WARPS),
                (K._bias_silu_bwd_kernel, {"BLOCK_M": K.BWD_BLOCK_M, "BLOCK_N": K.BWD_BLOCK_N}, K.BWD_WARPS)):
            consts = {**consts, "N": width}
            types = {"Z0": z_t, "A": z_t, "DA": z_t, "DZ": z_t, "B": "fp32", "DB_PART": "fp32"}
            sig = {p.name: "constexpr" if p.is_constexpr else f"*{types[p.name]}" if p.name.isupper()
                   else "i64" if p.name.startswith("stride") else "i32" for p in kernel.params}
            name = f"{kernel.__name__} width {width} z {z_t} {consts['BLOCK_M']}x{consts['BLOCK_N']} w{warps}"
            # the tiles' accesses vectors (the bias and the partial sums are single rows: any width)
            out.append(report_line(kernel, name, sig, consts, warps, arch=arch, vectors="any"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.ffn_check", description=__doc__.splitlines()[0])
    p.add_argument("--compile", action="store_true", help="only compile the kernels for sm_90 (no GPU needed)")
    p.add_argument("--gemm", action="store_true", help="also check and time the one-kernel layer (ffn_gemm)")
    p.add_argument("--every-config", action="store_true",
                   help="only check the one-kernel FFN with each of its autotuning configs forced in turn")
    args = p.parse_args(argv)
    if args.compile:
        from .compile_check import print_report

        return print_report(compile_report() + gemm_compile_report(), "ffn_check")
    if not torch.cuda.is_available():
        print("ffn_check needs a CUDA GPU (--compile runs without one)", file=sys.stderr)
        return 2
    if args.every_config:
        reports = check_every_config()
        for r in reports:
            _print_check(r)
        failed = sum(not r["ok"] for r in reports)
        print(f"ffn_check: {f'FAILED {failed} of {len(reports)}' if failed else f'all {len(reports)} configs passed'}")
        return 1 if failed else 0
    failed = 0
    for gemm in (False, True) if args.gemm else (False,):
        r = check(gemm=gemm)
        failed += not r["ok"]
        _print_check(r, ("a", "dx", "dweight", "dbias"))
    if args.gemm:
        r = check_ffn()
        failed += not r["ok"]
        _print_check(r)
    for rows in (65536, 1 << 20):
        t = time_case(rows)
        print(f"{t['name']}: fwd+bwd ours {t['ours_fwdbwd_ms']:.3f} ms, torch {t['torch_fwdbwd_ms']:.3f} ms, speedup "
              f"{t['torch_fwdbwd_ms'] / t['ours_fwdbwd_ms']:.3f}x | fwd ours {t['ours_fwd_ms']:.3f} ms, torch "
              f"{t['torch_fwd_ms']:.3f} ms", flush=True)
        if args.gemm:
            t = time_gemm(rows)
            print(f"{t['name']}, ms (median of 3 alternated rounds): " + ", ".join(
                f"{who} fwd no_grad {t[f'{who}_fwd_nograd_ms']:.3f} / fwd {t[f'{who}_fwd_ms']:.3f} / fwd+bwd "
                f"{t[f'{who}_fwdbwd_ms']:.3f}" for who in ("default", "gemm", "torch")) + f"; tiles {t['gemm_tiles']}",
                  flush=True)
    print(f"ffn_check: {'FAILED ' + str(failed) if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
