"""The forward alone with the soft exponentials (MEGASTRIDE_BLOCKSPARSE_SOFT_EXP) against the plain ones, alternated
in one process: for each case (the bench's fixed pattern at NxHxD, bf16, B=1), rounds of every value in turn, each
timed by triton.testing.do_bench (median ms); the outputs of each value against the plain one (max |diff| / max |out|).

    python docs/runs/fortyfirst/soft_fwd.py --cases 1048576x8x64,262144x8x64 --values 0,4,8,16 --rounds 3 --out OUT

Ran once, in call AV2 (2026-12-05) on tree f01324d, the only tree with the switch: the soft exponentials were no
faster (docs/benchmarks.md "Forty-first run, call AV2"), so the switch was taken out again; kept as the record of
what was timed.
"""

import argparse
import json
import os
import statistics

import torch
import triton

from megastride.kernels.blocksparse import blocksparse_attention
from megastride.kernels.launch_ab import _fixed_case, parse_cases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="1048576x8x64,262144x8x64")
    parser.add_argument("--values", default="0,4,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    values = args.values.split(",")
    rows = []
    for n, heads, dim in parse_cases(args.cases):
        layout, q, k, v, _ = _fixed_case(n, heads, dim)
        q, k, v = (t.detach() for t in (q, k, v))
        outs, times = {}, {x: [] for x in values}
        for x in values:  # compile and autotune each value once, and keep its output
            os.environ["MEGASTRIDE_BLOCKSPARSE_SOFT_EXP"] = x
            outs[x] = blocksparse_attention(q, k, v, layout).float()
        scale = outs[values[0]].abs().max().item()
        for _ in range(args.rounds):
            for x in values:
                os.environ["MEGASTRIDE_BLOCKSPARSE_SOFT_EXP"] = x
                times[x].append(triton.testing.do_bench(lambda: blocksparse_attention(q, k, v, layout), rep=200))
        for x in values:
            row = {"n": n, "heads": heads, "dim": dim, "soft_exp": x, "ms": statistics.median(times[x]),
                   "rounds_ms": times[x], "max_diff_rel": (outs[x] - outs[values[0]]).abs().max().item() / scale}
            rows.append(row)
            print(f"{n}x{heads}x{dim} soft {x}: {row['ms']:.3f} ms (rounds {', '.join(f'{t:.3f}' for t in times[x])}), "
                  f"max diff from plain {row['max_diff_rel']:.2e} of the largest", flush=True)
        del q, k, v, outs
        torch.cuda.empty_cache()
    os.environ.pop("MEGASTRIDE_BLOCKSPARSE_SOFT_EXP", None)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    with open(os.path.join(args.out, "soft_fwd.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
