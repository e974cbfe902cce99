"""Session X call 1: atomic dQ (5 products) vs the default backward, per kernel, and the forward's time
alone / grad-enabled / inside f+b. Ad-hoc device script (kept in .gpudata)."""
import json, os, sys, time, statistics
import torch
from megastride.kernels.launch_ab import _fixed_case
from megastride.kernels.blocksparse import blocksparse_attention
from megastride.kernels.profiling import profile_calls

out = os.environ.get("OUT", ".")
cases = [tuple(int(x) for x in c.split("x")) for c in sys.argv[1].split(",")]
rows = []
def ev_time(fn, iters):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(iters): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / iters
for n, h, d in cases:
    layout, q, k, v, do = _fixed_case(n, h, d)
    iters = 4 if n >= 1 << 20 else 12
    def fb():
        q.grad = k.grad = v.grad = None
        torch.autograd.backward(blocksparse_attention(q, k, v, layout), do)
    row = {"n": n, "heads": h, "head_dim": d}
    t0 = time.time()
    for mode in ("auto", "atomic"):
        os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] = mode
        fb(); torch.cuda.synchronize()
    row["warm_s"] = round(time.time() - t0, 1)
    times = {"auto": [], "atomic": []}
    for r in range(3):
        for mode in ("auto", "atomic"):
            os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] = mode
            fb()
            times[mode].append(ev_time(fb, iters))
    row["fb_ms"] = {m: [round(x, 3) for x in t] for m, t in times.items()}
    row["fb_median"] = {m: round(statistics.median(t), 3) for m, t in times.items()}
    for mode in ("auto", "atomic"):
        os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] = mode
        p = profile_calls(fb, max(2, iters // 2))
        row[f"profile_{mode}"] = {"wall_ms": round(p["wall_ms"], 3), "kernels_ms": {k2: round(v2, 3) for k2, v2 in p["kernels_ms"].items()}}
    os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] = "auto"
    def f_nograd():
        with torch.no_grad():
            blocksparse_attention(q, k, v, layout)
    def f_grad():
        blocksparse_attention(q, k, v, layout)
    row["fwd_nograd_ms"] = round(ev_time(f_nograd, iters), 3)
    row["fwd_grad_ms"] = round(ev_time(f_grad, iters), 3)
    # the forward's own time inside f+b calls: events around the forward only
    fw = []
    for _ in range(iters):
        q.grad = k.grad = v.grad = None
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); o = blocksparse_attention(q, k, v, layout); e.record()
        torch.autograd.backward(o, do)
        torch.cuda.synchronize(); fw.append(s.elapsed_time(e))
    row["fwd_in_fb_ms"] = round(statistics.median(fw), 3)
    row["fwd_nograd_again_ms"] = round(ev_time(f_nograd, iters), 3)
    print(json.dumps(row), flush=True)
    rows.append(row)
    del layout, q, k, v, do
    torch.cuda.empty_cache()
json.dump(rows, open(os.path.join(out, "ab_atomic.json"), "w"), indent=1)
