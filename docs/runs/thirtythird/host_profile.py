"""Thirty-third run: where an eager forward+backward's host time goes at short lengths (fixed pattern, bf16).

For each case: the host's issue time per call (a loop of calls with no synchronisation inside, timed on the
host; the GPU's own time per call from a CUDA graph replay beside it), the same for Flex (compiled), and a
cProfile of our calls sorted by own time. Ours with launch plans off and on (MEGASTRIDE_BLOCKSPARSE_PLANS),
alternated in one process; the profile with them on. Written to stdout."""
import cProfile
import io
import os
import pstats
import sys
import time

import torch

from megastride.kernels import bench as B
from megastride.kernels.attention import layout_for
from megastride.kernels.blocksparse import blocksparse_attention

CALLS = 300


def host_and_wall(step, calls=CALLS):
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / calls * 1e3, (t2 - t0) / calls * 1e3


def graphed_ms(step, calls=100):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(calls):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / calls


def case(n, heads, dim):
    c = B.Case(pattern="fixed", seq_len=n, heads=heads, head_dim=dim)
    pattern, stride, block, mask_mod = B.case_pattern(c)
    layout = layout_for(pattern, n, block, "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ours = lambda: blocksparse_attention(*leaves, layout).backward(do)  # noqa: E731
    ours_fwd = lambda: blocksparse_attention(q, k, v, layout)  # noqa: E731
    flex = B._flex_fn(mask_mod, n, "cuda", B.Result(c, stride, block, 0.0, 0))
    flex_step = lambda: flex(*leaves).backward(do)  # noqa: E731
    print(f"\n== n={n} {heads}x{dim} block {block} stride {stride}", flush=True)
    host, wall = host_and_wall(flex_step)
    print(f"flex f+b: host issue {host:.3f} ms/call, wall {wall:.3f} ms/call", flush=True)
    for rnd in range(3):  # launch plans off and on, alternated in one process
        for plans in ("0", "auto"):
            os.environ["MEGASTRIDE_BLOCKSPARSE_PLANS"] = plans
            host, wall = host_and_wall(ours)
            fhost, fwall = host_and_wall(lambda: torch.no_grad()(ours_fwd)())
            print(f"round {rnd} plans {plans}: ours f+b host issue {host:.3f} ms/call, wall {wall:.3f}; "
                  f"forward alone host {fhost:.3f}, wall {fwall:.3f}", flush=True)
    os.environ["MEGASTRIDE_BLOCKSPARSE_PLANS"] = "auto"
    for name, step in (("ours f+b", ours), ("flex f+b", flex_step)):
        for t in leaves:
            t.grad = None
        print(f"{name}: replayed from a CUDA graph {graphed_ms(step):.3f} ms/call", flush=True)
        for t in leaves:
            t.grad = None
    prof = cProfile.Profile()
    for _ in range(20):
        ours()
    torch.cuda.synchronize()
    prof.enable()
    for _ in range(CALLS):
        ours()
    prof.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue()[-9000:])
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(20)
    print(out.getvalue()[-7000:])


if __name__ == "__main__":
    for spec in sys.argv[1:] or ["12288x8x64", "3072x8x64", "12288x2x128"]:
        n, h, d = map(int, spec.split("x"))
        case(n, h, d)
