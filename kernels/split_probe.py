"""Probe: the fixed pattern's two halves timed apart, ours beside fused dense attention on the same halves.

The fixed pattern (own window A1 of ``l`` positions, summary columns A2: the last ``c`` positions of every
window) splits into two dense problems. A1 is causal attention inside each window: the windows are a batch
of independent causal sequences of ``l`` tokens. A2 without the own window is, for the queries of window
``w``, non-causal attention to the summary keys of windows ``0 .. w-1``: a prefix of the ``n c / l``
summary keys gathered together. Dense fused kernels (cuDNN's, FlashAttention-2's, through
``torch.nn.functional.scaled_dot_product_attention``) can run both halves; the outputs combine exactly
through the two halves' log-sum-exps, and each half's backward needs only the combined output and
log-sum-exp. This probe answers whether that would be faster than our block-sparse kernels on the same
pairs: it times, forward and forward+backward,

* ``ours``: our kernels on the whole fixed layout, on A1 alone and on A2 alone;
* ``cudnn_window`` / ``flash_window``: the windows as a batch of causal sequences;
* ``cudnn_summary_G``: A2 without the own window, query windows in ``G`` groups, each group's key prefix
  as long as its last window needs, the rest of each window's row masked by an additive bias;
* ``cudnn_levels`` / ``flash_levels``: A2 without the own window as rectangles without masks (``_levels_fn``);
* ``cudnn_rect``: plain non-causal attention of one group's shape without a bias (what the bias costs).

TFLOP/s count only the pairs each half needs (4 pairs D for a forward, 3.5 times that for the
forward+backward), like ``megastride bench attention``.

    python -m megastride.kernels.split_probe --lengths 262144,1048576 --configs 8x64,2x128 --out OUT
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from . import patterns as P
from .bench import FIXED_SUMMARY, _bench, _tflops, count_pairs, environment
from .launch_ab import parse_cases


def _backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]


def _sdpa(name: str, q, k, v, causal: bool, bias=None):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_backend(name)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)


def _windows(t: torch.Tensor, l: int) -> torch.Tensor:
    """(1, n, H, D) time-major -> (W, H, l, D) view of the windows."""
    _, n, h, d = t.shape
    return t.view(n // l, l, h, d).transpose(1, 2)


def _summary_keys(t: torch.Tensor, l: int, c: int) -> torch.Tensor:
    """(1, n, H, D) -> (n c / l, H, D): the last ``c`` positions of every window, gathered (a copy)."""
    _, n, h, d = t.shape
    return t.view(n // l, l, h, d)[:, l - c:].reshape(n // l * c, h, d)


def _key_prefix(keys: torch.Tensor, length: int, batch: int) -> torch.Tensor:
    """The first ``length`` gathered keys (S, H, D) as a (batch, H, length, D) view shared by the batch."""
    return keys[:length].unsqueeze(0).expand(batch, length, *keys.shape[1:]).transpose(1, 2)


def _groups(windows: int, count: int) -> list[tuple[int, int]]:
    """Query windows 1 .. windows-1 (window 0 has no earlier summary) in ``count`` contiguous groups."""
    edges = [1 + round(i * (windows - 1) / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _summary_fn(l: int, c: int, groups: int, backend: str):
    """A2 without the own window in ``groups`` calls: each group of query windows against the summary-key
    prefix its last window needs, the keys past each window's own prefix masked by an additive bias."""
    def run(q, k, v):
        n = q.shape[1]
        w_count = n // l
        qw = _windows(q, l)
        ks, vs = _summary_keys(k, l, c), _summary_keys(v, l, c)
        outs = []
        for a, b in _groups(w_count, groups):
            sk = (b - 1) * c
            w = torch.arange(a, b, device=q.device).view(-1, 1, 1, 1)
            j = torch.arange(sk, device=q.device).view(1, 1, 1, -1)
            mask = torch.where(j >= w * c, float("-inf"), 0.0).to(q.dtype)
            outs.append(_sdpa(backend, qw[a:b], _key_prefix(ks, sk, b - a), _key_prefix(vs, sk, b - a),
                              causal=False, bias=mask))
        return torch.cat(outs)
    return run


def _summary_pairs(n: int, l: int, c: int, heads: int) -> int:
    w_count = n // l
    return heads * l * c * (w_count - 1) * w_count // 2


def _time(fn, q, k, v, pairs: int, head_dim: int) -> dict:
    row: dict = {"pairs": pairs}
    try:
        with torch.no_grad():
            row["fwd_ms"] = _bench(lambda: fn(q, k, v))
        grad = do_like(fn, q, k, v)
        row["fwdbwd_ms"] = _bench(lambda: fn(q, k, v).backward(grad), leaves=(q, k, v))
        row["fwd_tflops"] = _tflops(pairs, head_dim, row["fwd_ms"], False)
        row["fwdbwd_tflops"] = _tflops(pairs, head_dim, row["fwdbwd_ms"], True)
    except Exception as e:  # noqa: BLE001 -- a probe records what failed and goes on
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return row


_DO: dict = {}


def do_like(fn, q, k, v):
    """A fixed random output gradient of the output's shape."""
    with torch.no_grad():
        shape = tuple(fn(q, k, v).shape)
    if shape not in _DO:
        _DO[shape] = torch.randn(shape, device=q.device, dtype=q.dtype)
    return _DO[shape]


def level_shapes(windows: int) -> list[tuple[int, int]]:
    """(m, segments) of each level of ``_levels_fn`` for a power-of-two count of windows."""
    if windows < 2 or windows & (windows - 1):
        raise ValueError(f"the levels need a power-of-two count of windows of at least 2, got {windows}")
    out, m = [], windows // 2
    while m >= 1:
        out.append((m, windows // (2 * m)))
        m //= 2
    return out


def level_pairs(windows: int) -> list[tuple[int, int]]:
    """Every (query window, key window) pair the levels cover, with repeats: each must appear once."""
    return [(s * 2 * m + m + i, s * 2 * m + j) for m, seg in level_shapes(windows) for s in range(seg)
            for i in range(m) for j in range(m)]


def _levels_fn(l: int, c: int, backend: str):
    """A2 without the own window as rectangles: at each level, segments of ``2 m`` windows, the queries of the
    upper ``m`` windows against the summary keys of the lower ``m`` (``m`` = W/2, W/4, .., 1; one call a
    level, the segments its batch). Every (window, earlier window) pair is in exactly one rectangle. Returns
    the levels' outputs flattened together (no merge: the probe times the products)."""
    def run(q, k, v):
        _, n, h, d = q.shape
        w_count = n // l
        ks, vs = _summary_keys(k, l, c), _summary_keys(v, l, c)
        outs = []
        for m, seg in level_shapes(w_count):
            qq = q.view(seg, 2 * m * l, h, d)[:, m * l:]
            kk = ks.view(seg, 2 * m * c, h, d)[:, : m * c]
            vv = vs.view(seg, 2 * m * c, h, d)[:, : m * c]
            outs.append(_sdpa(backend, qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), causal=False)
                        .reshape(-1))
        return torch.cat(outs)
    return run


def _profile(fn, q, k, v) -> dict:
    """Per-kernel GPU ms of one forward+backward (``bench.profile_fwdbwd``), for where a half's time goes."""
    from .bench import profile_fwdbwd
    from .profiling import summary

    prof = profile_fwdbwd(fn, q, k, v, do_like(fn, q, k, v), iters=3)
    return {"summary": summary(prof, kernels=6), "kernels_ms": prof["kernels_ms"], "gpu_ms": prof["gpu_ms"]}


def probe(n: int, heads: int, head_dim: int, groups: list[int], log=print, profile: bool = False) -> dict:
    from .blocksparse import blocksparse_attention

    dev = torch.device("cuda")
    l, c = P.optimal_stride(n, "fixed", FIXED_SUMMARY, 128), FIXED_SUMMARY
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, head_dim, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
               for _ in range(3))
    bhtd = lambda t: t.transpose(1, 2)  # noqa: E731
    res: dict = {"n": n, "heads": heads, "head_dim": head_dim, "stride": l, "width": c, "windows": n // l, "rows": {}}
    layouts = {
        "ours_full": P.build_layout(P.same_for_all_heads(P.fixed(l, c), heads), n, 128, device=dev),
        "ours_window": P.build_layout(P.same_for_all_heads(P.fixed_window(l), heads), n, 128, device=dev),
        "ours_summary": P.build_layout(P.same_for_all_heads(P.summary(l, c), heads), n, 128, device=dev),
    }
    for name, layout in layouts.items():
        fn = (lambda lay: lambda q, k, v: blocksparse_attention(bhtd(q), bhtd(k), bhtd(v), lay))(layout)
        res["rows"][name] = _time(fn, q, k, v, count_pairs(layout), head_dim)
        if profile:
            res["rows"][name]["profile"] = _profile(fn, q, k, v)
        log(name, res["rows"][name])
    window_pairs = count_pairs(layouts["ours_window"])
    for backend in ("cudnn", "flash"):
        fn = (lambda b: lambda q, k, v: _sdpa(b, _windows(q, l), _windows(k, l), _windows(v, l), causal=True))(backend)
        res["rows"][f"{backend}_window"] = _time(fn, q, k, v, window_pairs, head_dim)
        if profile and backend == "cudnn":
            res["rows"][f"{backend}_window"]["profile"] = _profile(fn, q, k, v)
        log(f"{backend}_window", res["rows"][f"{backend}_window"])
    s_pairs = _summary_pairs(n, l, c, heads)
    if (n // l) & (n // l - 1) == 0:
        for backend in ("cudnn", "flash"):
            res["rows"][f"{backend}_levels"] = _time(_levels_fn(l, c, backend), q, k, v, s_pairs, head_dim)
            log(f"{backend}_levels", res["rows"][f"{backend}_levels"])
    for count in groups:
        name = f"cudnn_summary_{count}"
        res["rows"][name] = _time(_summary_fn(l, c, count, "cudnn"), q, k, v, s_pairs, head_dim)
        log(name, res["rows"][name])
    # one group's shape, no bias: the last group of the finest split, all its keys counted
    count = max(groups)
    a, b = _groups(n // l, count)[-1]
    rect_pairs = heads * (b - a) * l * (b - 1) * c
    for backend in ("cudnn", "flash"):
        def rect(q, k, v, a=a, b=b, backend=backend):
            sk = (b - 1) * c
            return _sdpa(backend, _windows(q, l)[a:b], _key_prefix(_summary_keys(k, l, c), sk, b - a),
                         _key_prefix(_summary_keys(v, l, c), sk, b - a), causal=False)
        res["rows"][f"{backend}_rect"] = _time(rect, q, k, v, rect_pairs, head_dim)
        log(f"{backend}_rect", res["rows"][f"{backend}_rect"])
    _DO.clear()
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="262144,1048576")
    ap.add_argument("--configs", default="8x64,2x128")
    ap.add_argument("--groups", default="16")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one forward+backward of ours (whole, A1, A2) and of cuDNN on A1: GPU ms per kernel")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:  # the A/B tool's NxHxD parser: one-line errors for a malformed length or config
        cases = parse_cases(",".join(f"{n}x{cfg}" for n in args.lengths.split(",") for cfg in args.configs.split(",")))
    except ValueError as e:
        ap.error(str(e))
    if not torch.cuda.is_available():
        raise SystemExit("split_probe times CUDA kernels (ours, cuDNN's, FlashAttention-2's): no CUDA GPU here")
    results = {"environment": environment() | {"cudnn": torch.backends.cudnn.version()}, "cases": []}
    for n, h, d in cases:
        results["cases"].append(probe(n, h, d, [int(x) for x in args.groups.split(",")], profile=args.profile))
        print(flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "split_probe.json").write_text(json.dumps(results, indent=1))
    print(json.dumps([{k: v for k, v in c.items() if k != "rows"} | {
        name: (round(r.get("fwdbwd_ms", math.nan), 3), round(r.get("fwdbwd_tflops", math.nan), 1)) if "error" not in r
        else r["error"] for name, r in c["rows"].items()} for c in results["cases"]], indent=1))


if __name__ == "__main__":
    main()
