"""GPU correctness check of the block-sparse kernels where the CPU interpreter cannot go.

``python -m megastride.kernels.gpu_check --out DIR`` runs on a CUDA machine:

* bf16 / fp16 at long lengths (65K to 1M, and 4,194,304 tokens with H=8, D=64) against the
  reference on sampled rows. The gradient is driven by a dO that is non-zero only on those rows, so
  dq, dk and dv are all exactly comparable with the reference restricted to the same rows. Three-way
  test: |kernel - ref_fp32| <= 2 |ref_lowprec - ref_fp32| + atol * max|ref_fp32|.
* torch.compile of a function using the op (forward and backward) against eager.
* layout build time on the GPU at 1M tokens and the metadata bytes.

Prints one line per check and writes gpu_check.json; exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from . import patterns as P
from .blocksparse import (DQ_MODES, _part_meta, blocksparse_attention, delta_in_dq, dkdv_split, dkdv_split_setting, dq_mode,
                          gluon_backward, gluon_dq_sums, gluon_setting, gpu_sms, metadata_bytes, split_finish)
from .reference import reference_attention

ATOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _rows(n: int, count: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n + count)
    rows = torch.cat([torch.tensor([0, 1, n // 2, n - 1]), torch.randint(0, n, (count - 4,), generator=gen)])
    return rows.unique().to(device)


def _grads(fn, q, k, v, do):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]  # no copy: 4M-token tensors are 4 GB each
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, do.to(out.dtype))]


def check_sampled(name: str, pattern, n: int, block: int, heads: int, head_dim: int, dtype,
                  rows: int = 48, batch: int = 1, device: str = "cuda") -> dict:
    """Kernel vs reference on sampled query rows at length n: output and all three gradients."""
    device = torch.device(device)
    start = time.perf_counter()
    layout = P.build_layout(pattern, n, block, num_heads=heads, device=device)
    gen = torch.Generator(device=device).manual_seed(n)
    shape = (batch, heads, n, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(3))
    sel = _rows(n, rows, device)
    do = torch.zeros(shape, device=device, dtype=dtype)
    do[:, :, sel] = torch.randn((batch, heads, sel.numel(), head_dim), device=device, dtype=dtype, generator=gen)
    _sync(device)
    t0 = time.perf_counter()
    got = _grads(lambda *x: blocksparse_attention(*x, layout), q, k, v, do)
    _sync(device)
    kernel_s = time.perf_counter() - t0
    got[0] = got[0][:, :, sel]
    got[1] = got[1][:, :, sel]
    chunk = max(1, 2**27 // (batch * heads * n))

    def ref(*x):
        return reference_attention(*x, layout, rows=sel, query_chunk=chunk)

    want = _grads(ref, q.float(), k.float(), v.float(), do[:, :, sel].float())
    low = _grads(ref, q, k, v, do[:, :, sel])
    want[1], low[1] = want[1][:, :, sel], low[1][:, :, sel]
    report = {"name": name, "n": n, "block": block, "heads": heads, "head_dim": head_dim, "dtype": str(dtype),
              "rows": sel.numel(), "kernel_fwd_bwd_s_first_call": kernel_s,
              "dkdv_split": dkdv_split(layout, batch, gpu_sms(q)),
              # the parts whose backward took the Gluon kernels (where columns are whole: blocksparse._backward)
              "gluon_parts": sum(gluon_backward(_part_meta(p, n, device), layout, q, k, v, do) for p in layout.parts)
              if not dkdv_split(layout, batch, gpu_sms(q)) else 0,
              # the dtype of the fused backward's dQ sums (no dQ kernel: blocksparse.gluon_dq_sums), or None
              "dq_sums": str(gluon_dq_sums(layout, q, k, v, do)), "ok": True}
    for what, g, lo, ex in zip(["out", "dq", "dk", "dv"], got, low, want):
        err = (g.float() - ex).abs()
        bound = 2 * (lo.float() - ex).abs() + ATOL[dtype] * max(1.0, ex.abs().max().item())
        finite = bool(torch.isfinite(g).all())
        ok = finite and bool((err <= bound).all())
        rel = ((g.float() - ex).norm() / ex.norm().clamp_min(1e-30)).item()
        report[what] = {"max_err": err.max().item(), "rel_l2": rel, "lowprec_rel_l2":
                        ((lo.float() - ex).norm() / ex.norm().clamp_min(1e-30)).item(), "ok": ok}
        report["ok"] &= ok
    report["seconds"] = time.perf_counter() - start
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_compile() -> dict:
    """torch.compile of a small attention function (forward + backward) equals eager."""
    device = torch.device("cuda")
    layout = P.build_layout(P.strided(64), 4096, 64, num_heads=4, device=device)
    w = torch.randn(64, 64, device=device, dtype=torch.bfloat16, requires_grad=True)

    def f(x):
        q = (x @ w).view(1, 4096, 4, 16).transpose(1, 2)  # (B, H, T, 16): padded to 16 exactly
        return blocksparse_attention(q, q, q, layout).float().square().sum()

    x = torch.randn(4096, 64, device=device, dtype=torch.bfloat16)
    eager = f(x)
    (g_eager,) = torch.autograd.grad(eager, w)
    compiled = torch.compile(f, fullgraph=False)
    got = compiled(x)
    (g_got,) = torch.autograd.grad(got, w)
    rel = ((g_got.float() - g_eager.float()).norm() / g_eager.float().norm()).item()
    ok = abs(got.item() - eager.item()) <= 1e-2 * abs(eager.item()) and rel < 1e-2
    return {"name": "torch.compile", "loss_eager": eager.item(), "loss_compiled": got.item(), "grad_rel": rel, "ok": ok}


def layout_build_times(n: int = 1 << 20, heads: int = 8) -> list[dict]:
    """Build time (warm: second build) and metadata bytes of the 1M-token layouts on the GPU."""
    out = []
    for name, pattern, block in [("fixed", P.fixed(P.optimal_stride(n, "fixed", 128), 128), 128),
                                 ("strided", P.strided(1024), 128),
                                 ("fixed_per_head", P.fixed_per_head(P.optimal_stride(n, "fixed", 128), 128, heads, 4), 128)]:
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            layout = P.build_layout(pattern, n, block, num_heads=heads, device="cuda")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out.append({"name": f"layout {name} n={n} H={heads}", "build_ms_first": times[0] * 1e3,
                    "build_ms_warm": min(times[1:]) * 1e3, "csr_mb": layout.nbytes / 2**20,
                    "ok": layout.nbytes < 16 * 2**20 or name == "fixed_per_head"})
    return out


def checks(long: bool = True):
    """(name, thunk) of every check, cheapest first."""
    fixed = lambda n: P.fixed(P.optimal_stride(n, "fixed", 128), 128)  # noqa: E731
    bf16, fp16 = torch.bfloat16, torch.float16
    yield "compile", check_compile
    yield "layouts", layout_build_times
    cases = [
        # two heads at 12,288: dkdv_split's "auto" splits the dK/dV columns here (fp32 atomics, then a cast)
        ("fixed bf16 D=128 12288 (dK/dV split auto)", fixed(12288), 12288, 128, 2, 128, bf16),
        ("strided bf16 D=128 block 64", P.strided(256), 65536, 64, 2, 128, bf16),
        ("fixed_per_head bf16", P.fixed_per_head(2048, 64, 4, 4), 65536, 64, 4, 64, bf16),
        ("multi_head fixed+strided+local bf16 D=32", P.multi_head([fixed(65536), P.strided(256), P.local(300)], 3),
         65536, 64, 3, 32, bf16),
        # l = 1000 does not divide n: the strided half runs in natural order, each shift's few key blocks
        ("strided natural order bf16 (l=1000 does not divide n)", P.strided(1000), 65536, 128, 2, 64, bf16),
        ("fixed fp16 D=128", fixed(262144), 262144, 128, 2, 128, fp16),
        ("fixed bf16 1M", fixed(1 << 20), 1 << 20, 128, 8, 64, bf16),
        ("strided bf16 1M", P.strided(1024), 1 << 20, 128, 8, 64, bf16),
    ]
    if long:
        cases.append(("fixed bf16 4M (B*H*T*D = 2^31)", fixed(1 << 22), 1 << 22, 128, 8, 64, bf16))
    for name, pattern, n, block, heads, head_dim, dtype in cases:
        yield name, (lambda a=(name, pattern, n, block, heads, head_dim, dtype): check_sampled(*a))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megastride.kernels.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="folder for gpu_check.json")
    parser.add_argument("--no-long", action="store_true", help="skip the 4,194,304-token run")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only checks whose name has one")
    parser.add_argument("--dq-mode", choices=list(DQ_MODES), default=None,
                        help="the backward's dQ mode to check (default: blocksparse.DQ_MODE)")
    parser.add_argument("--dkdv-split", default=None,
                        help="query blocks per dK/dV program: \"auto\" or an integer (0 = whole columns; "
                             "default: blocksparse.DKDV_SPLIT)")
    parser.add_argument("--gluon", choices=["0", "1", "auto"], default=None,
                        help="the backward of natural-order parts in Gluon (blocksparse.gluon_backward; default: "
                             "blocksparse.GLUON_BWD)")
    args = parser.parse_args(argv)
    if args.gluon is not None:
        os.environ["MEGASTRIDE_BLOCKSPARSE_GLUON"] = args.gluon
    if args.dq_mode:
        os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] = args.dq_mode
    if args.dkdv_split is not None:
        os.environ["MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT"] = str(args.dkdv_split)
    if not torch.cuda.is_available():
        print("gpu_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    results, failed = [], False
    only = [x for x in args.only.split(",") if x]
    for name, run in checks(long=not args.no_long):
        if only and not any(x in name for x in only):
            continue
        try:
            got = run()
        except Exception as err:  # report and go on: one broken case should not hide the others
            got = {"name": name, "ok": False, "error": f"{type(err).__name__}: {str(err)[:500]}"}
        for r in got if isinstance(got, list) else [got]:
            failed |= not r["ok"]
            results.append(r)
            print(json.dumps(r), flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                           "dq_mode": dq_mode(), "dkdv_split": dkdv_split_setting(), "split_finish": split_finish(),
                           "delta_in_dq": delta_in_dq(), "gluon": gluon_setting(), "results": results}, f, indent=1)
    print(f"gpu_check (dQ {dq_mode()}, dK/dV split {dkdv_split_setting()}, finish {split_finish()}, "
          f"Gluon backward {gluon_setting()}"
          f"{', delta in dQ' if delta_in_dq() else ''}):", "FAILED" if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
