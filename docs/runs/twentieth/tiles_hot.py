"""Session X call 2: each kernel's configs timed interleaved (round-robin) on a hot GPU, forward+backward,
against the autotuner's choice (which times configs one after another from a cool start)."""
import json, os, sys, time, statistics, subprocess
import torch
from megastride.kernels.launch_ab import _fixed_case
from megastride.kernels import blocksparse as B

os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] = "separate"
out = os.environ.get("OUT", ".")
plan = json.loads(sys.argv[1])
rows = []
def clock():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip()
    except Exception as e:
        return str(e)
for case in plan:
    n, h, d = case["case"]
    layout, q, k, v, do = _fixed_case(n, h, d)
    calls = case.get("calls", 2)
    def fb():
        q.grad = k.grad = v.grad = None
        torch.autograd.backward(B.blocksparse_attention(q, k, v, layout), do)
    def timed(fn, iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(); s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize()
        return s.elapsed_time(e) / iters
    fb(); torch.cuda.synchronize()
    chosen = {name: {str(key): str(cfg) for key, cfg in t.cache.items()} for name, t in (("fwd", B._fwd_tuned), ("dq", B._dq_tuned), ("dkdv", B._dkdv_tuned))}
    for kernel, cfgs in case["kernels"].items():
        cfgs = [tuple(c) for c in cfgs]
        ok = []
        for c in cfgs:  # compile each outside the timings
            try:
                with B.forced_tiles(kernel, c):
                    fb(); torch.cuda.synchronize()
                ok.append(c)
            except Exception as err:
                print(kernel, c, "failed", type(err).__name__, str(err)[:150], flush=True)
        t_end = time.time() + case.get("preheat_s", 3)
        while time.time() < t_end:
            fb()
        torch.cuda.synchronize()
        times = {str(c): [] for c in ["auto"] + ok}
        for r in range(case.get("rounds", 4)):
            for c in [None] + ok:
                if c is None:
                    times["auto"].append(timed(fb, calls))
                else:
                    with B.forced_tiles(kernel, c):
                        times[str(c)].append(timed(fb, calls))
        row = {"case": [n, h, d], "kernel": kernel, "ms": {c: [round(x, 3) for x in t] for c, t in times.items()},
               "median": {c: round(statistics.median(t), 3) for c, t in times.items()}, "smi_after": clock()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    rows.append({"case": [n, h, d], "autotuned": chosen})
    del layout, q, k, v, do
    torch.cuda.empty_cache()
json.dump(rows, open(os.path.join(out, "tiles_hot.json"), "w"), indent=1)
