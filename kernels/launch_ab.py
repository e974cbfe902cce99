"""The host's cost of eager calls: one forward+backward of our kernels at short lengths, where issuing the
launches takes longer than the GPU takes to run them, with every launch through Triton's
``JITFunction.run`` and with later launches straight to the compiled kernels' launchers
(``blocksparse.use_direct_launch``, ``MEGASTRIDE_BLOCKSPARSE_DIRECT``), alternating in one process so that
both see the same host, allocator and caches. The attention bench's eager columns time each variant once,
and on a host-bound case they vary between variants by more than the launch path changes; alternating
rounds make the difference readable.

    python -m megastride.kernels.launch_ab --cases 12288x8x64,3072x8x64,12288x2x128 --out OUT

``--switch`` alternates another of the kernels' on/off switches the same way (``SWITCHES``): e.g. the Gluon
backward against the Triton one at long lengths, where a bench variant timed after another's autotuning
ran slower than the same configuration timed first (docs/benchmarks.md, seventeenth run):

    python -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_GLUON --cases 262144x2x128 --calls 20

or two values of a switch that takes more than on and off (``VALUED``; ``--values``), with a profile of
each after the rounds (``--profile``: per-kernel ms), e.g. the backward's dQ modes:

    python -m megastride.kernels.launch_ab --switch MEGASTRIDE_BLOCKSPARSE_DQ --values auto,atomic \
        --cases 1048576x8x64 --calls 4 --warmup 1 --profile

Each case is the bench's fixed pattern (l ~ sqrt(128 n), one summary block of 128) at ``NxHxD``, bf16,
B=1. Each round times ``--calls`` forward+backward calls (after ``--warmup`` untimed ones) with the switch
off, then on; the ms per call includes the GPU's work (synchronised once at the end of a round), which
is the floor either way ("off" is the first of ``--values``, "on" the second). Before a case is timed, one
call at each value must give the same output and gradients (within ``AGREE_TOL`` of each other, the row's
``disagreement``); a case where they differ is not timed, is listed under ``disagreed`` and makes the exit
status 1: a faster wrong kernel is not a speed-up. Written to OUT/launch_ab.json with the device, versions
and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from .blocksparse import DQ_MODES

SWITCH = "MEGASTRIDE_BLOCKSPARSE_DIRECT"
# the switches --switch may alternate: each read at every call, "0" off and "1" on
SWITCHES = (SWITCH, "MEGASTRIDE_BLOCKSPARSE_GLUON", "MEGASTRIDE_BLOCKSPARSE_GLUON_FWD",
            "MEGASTRIDE_BLOCKSPARSE_GLUON_STREAMS", "MEGASTRIDE_BLOCKSPARSE_TMA",
            "MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT")
MODES = ("0", "1")  # off (for DIRECT: Triton's run), on (direct)
# switches with more values than on and off: the values --values may name
VALUED = {"MEGASTRIDE_BLOCKSPARSE_DQ": DQ_MODES,
          "MEGASTRIDE_BLOCKSPARSE_GLUON_WS": ("auto", "0", "1", "columns", "halves"),
          # the halves kernel's slots, staging and dS buffers, schedule (gluon_bwd.halves_tiles; takes effect with
          # MEGASTRIDE_BLOCKSPARSE_GLUON_WS=halves in the environment)
          "MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES": tuple(f"s{s}g{g}d{d}m{m}" for s in (2, 3) for g in (1, 2)
                                                             for d in (1, 2) for m in (0, 1, 2) if d == 2 or m < 2)}


def parse_values(switch: str, raw: str) -> tuple[str, str]:
    """``--values`` for ``switch``: two different values it takes (on/off switches: "0" and "1");
    ValueError naming the problem."""
    values = tuple(x.strip() for x in raw.split(","))
    allowed = VALUED.get(switch, MODES)
    if len(values) != 2 or values[0] == values[1]:
        raise ValueError(f"--values takes two different values, got {raw!r}")
    bad = [x for x in values if x not in allowed]
    if bad:
        raise ValueError(f"{switch} does not take {bad[0]!r} (one of {', '.join(allowed)})")
    return values


def parse_cases(raw: str) -> list[tuple[int, int, int]]:
    """``"NxHxD,..."`` as (n, heads, head dim) triples; ValueError naming the bad item."""
    cases = []
    for item in filter(None, (x.strip() for x in raw.split(","))):
        parts = item.split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"case {item!r} is not NxHxD (e.g. 12288x8x64)")
        n, heads, dim = (int(p) for p in parts)
        if n < 128 or n % 128:
            raise ValueError(f"case {item!r}: the length must be a positive multiple of the block, 128")
        if heads < 1 or dim not in (16, 32, 64, 128, 256):
            raise ValueError(f"case {item!r}: needs at least one head and a head dim of 16, 32, 64, 128 or 256")
        cases.append((n, heads, dim))
    if not cases:
        raise ValueError("no cases given")
    return cases


def alternate(step, rounds: int, calls: int, warmup: int, sync=lambda: None, clock=time.perf_counter,
              switch: str = SWITCH, values: tuple[str, str] = MODES) -> dict:
    """ms per ``step()`` with ``switch`` at ``values`` (off, on), alternating for ``rounds`` rounds (``warmup``
    untimed calls, then ``calls`` timed ones, ``sync()`` before and after); the switch's earlier value
    restored."""
    before = os.environ.get(switch)
    times: dict[str, list[float]] = {m: [] for m in values}
    try:
        for _ in range(rounds):
            for mode in values:
                os.environ[switch] = mode
                for _ in range(warmup):
                    step()
                sync()
                t0 = clock()
                for _ in range(calls):
                    step()
                sync()
                times[mode].append((clock() - t0) / calls * 1e3)
    finally:
        if before is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = before
    first, second = times[values[0]], times[values[1]]
    off, on = statistics.median(first), statistics.median(second)
    return {"values": list(values), "off_ms": [round(t, 4) for t in first], "on_ms": [round(t, 4) for t in second],
            "median_off_ms": round(off, 4), "median_on_ms": round(on, 4),
            "rounds_on_faster": sum(a > b for a, b in zip(first, second)),
            "saving": round(1 - on / off, 4) if off else None}


def profiles(step, switch: str, values: tuple[str, ...], iters: int) -> dict:
    """Per value of ``switch``: ``profiling.profile_calls`` of ``iters`` calls of ``step`` (wall and GPU ms
    a call, ms per kernel); the switch's earlier value restored."""
    from unittest import mock

    from .profiling import profile_calls

    out = {}
    for value in values:
        with mock.patch.dict(os.environ, {switch: value}):
            prof = profile_calls(step, iters)
        out[value] = {"wall_ms": round(prof["wall_ms"], 3), "gpu_ms": round(prof["gpu_ms"], 3),
                      "kernels_ms": {k: round(v, 3) for k, v in prof["kernels_ms"].items()}}
    return out


AGREE_TOL = 2e-2  # a value's output and gradients against the other's: max error / max(1, max |other|)


def outputs_at(switch: str, value: str, q, k, v, do, layout) -> list[torch.Tensor]:
    """The forward's output and dQ, dK, dV (fp32 copies) of one call with ``switch`` at ``value``."""
    from unittest import mock

    from .blocksparse import blocksparse_attention

    with mock.patch.dict(os.environ, {switch: value}):
        for t in (q, k, v):
            t.grad = None
        out = blocksparse_attention(q, k, v, layout)
        torch.autograd.backward(out, do)
        got = [out.detach().float(), *(t.grad.float() for t in (q, k, v))]
    for t in (q, k, v):
        t.grad = None
    return got


def disagreement(first: list[torch.Tensor], second: list[torch.Tensor]) -> dict[str, float]:
    """Per tensor (out, dq, dk, dv): the largest difference between the two values' results, relative to
    max(1, the largest magnitude of the second's); non-finite results count as infinitely far."""
    out = {}
    for name, a, b in zip(("out", "dq", "dk", "dv"), first, second):
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            out[name] = float("inf")
            continue
        out[name] = round((a - b).abs().max().item() / max(1.0, b.abs().max().item()), 5)
    return out


def chosen_tiles_now() -> dict[str, dict]:
    """``bench.tile_record``, then forgotten: the autotuner's choices and medians per kernel since the last
    call (both values' launches: a switch that changes a tuning key, such as the dQ mode, has a choice of
    its own)."""
    from .bench import tile_record

    return tile_record(clear=True)


def _fixed_case(n: int, heads: int, dim: int):
    """(layout, q, k, v, dO) of the attention bench's fixed case (``bench.case_pattern``) at ``n`` tokens on
    the GPU, bf16, B=1."""
    from . import patterns as P
    from .bench import Case, case_pattern

    pattern, _, block, _ = case_pattern(Case("fixed", n, heads, dim))
    layout = P.build_layout(pattern, n, block, device="cuda")
    q, k, v, do = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    return layout, q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megastride.kernels.launch_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="12288x8x64,3072x8x64,12288x2x128", help="comma-separated NxHxD")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of off, then on (default 3)")
    parser.add_argument("--calls", type=int, default=200, help="timed forward+backward calls a round (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before each timing (default 10)")
    parser.add_argument("--switch", default=SWITCH, choices=SWITCHES + tuple(VALUED),
                        help=f"the switch to alternate (default {SWITCH})")
    parser.add_argument("--values", default=",".join(MODES),
                        help="the switch's two values, off then on (default 0,1; a switch of VALUED: two of its "
                             "values, e.g. MEGASTRIDE_BLOCKSPARSE_DQ: "
                             + ", ".join(VALUED["MEGASTRIDE_BLOCKSPARSE_DQ"]) + ")")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, profile a few calls at each value (per-kernel ms in the JSON)")
    parser.add_argument("--out", default=None, help="folder for launch_ab.json")
    args = parser.parse_args(argv)
    try:
        cases = parse_cases(args.cases)
        values = parse_values(args.switch, args.values)
        if min(args.rounds, args.calls) < 1 or args.warmup < 0:
            raise ValueError("--rounds and --calls must be at least 1, --warmup at least 0")
    except ValueError as err:
        print(f"launch_ab: {err}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("launch_ab: needs a CUDA GPU (the direct launch is a GPU launcher's)", file=sys.stderr)
        return 2
    from .blocksparse import blocksparse_attention
    from .ws_probe import write_rows

    rows, failed = [], []
    for n, heads, dim in cases:
        layout, q, k, v, do = _fixed_case(n, heads, dim)

        def step():
            torch.autograd.backward(blocksparse_attention(q, k, v, layout), do)

        step()  # autotuning and "auto"'s timing outside the rounds
        # both values must compute the same thing before either is timed: a switch that changes the kernels
        # (a dQ mode, the Gluon backward) is only worth timing where it gives the same output and gradients
        far = disagreement(*(outputs_at(args.switch, value, q, k, v, do, layout) for value in values))
        if max(far.values()) > AGREE_TOL:
            print(f"launch_ab: {args.switch}={values[0]} and ={values[1]} disagree at {n}x{heads}x{dim} "
                  f"(max error / max magnitude: {far}); not timed", file=sys.stderr)
            failed.append({"n": n, "heads": heads, "head_dim": dim, "disagreement": far})
            continue
        row = {"n": n, "heads": heads, "head_dim": dim, "disagreement": far,
               **alternate(step, args.rounds, args.calls, args.warmup, sync=torch.cuda.synchronize,
                           switch=args.switch, values=values)}
        if args.profile:
            row["profile"] = profiles(step, args.switch, values, max(2, min(args.calls, 10)))
        row["tiles"] = chosen_tiles_now()
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        write_rows(Path(args.out) / "launch_ab.json", rows, switch=args.switch, values=list(values), rounds=args.rounds,
                   calls=args.calls, warmup=args.warmup, disagreed=failed,
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
