"""Tile sweep: one of our kernels timed at each of several configs, beside Flex's same half, on one GPU.

The autotuner keeps only the fastest config per key and says nothing of the others; a sweep times each
config on its own (``blocksparse.forced_tiles``) so a kernel change or a new config can be judged by
numbers, in the same process as FlexAttention on exactly the same pattern. The forward kernel ("fwd")
is timed alone (forward without autograd); the backward kernels ("dq", "dkdv", "merged") inside a
forward+backward with the other kernels autotuned (the dQ mode fixed to the one that launches the
swept kernel). The forward's output is checked against the fp32 reference on sampled rows first, under
each forced config, and in a backward sweep the sampled rows' dQ too (``bench.check_dq_rows``); a config
outside the tolerance is marked FAILED in the table and the JSON (``check_failed``): its time is not that
of the attention (dK and dV are checked by tests/test_kernels_gpu.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from unittest import mock

import torch

from . import bench as Bn
from . import blocksparse as B
from . import patterns as P

KERNELS = tuple(B._KERNEL_NAMES)  # fwd, dq, dkdv, merged
# the dQ mode under which each backward kernel is launched
_MODE = {"dq": "separate", "dkdv": "separate", "merged": "merged"}
_TABLES = {"fwd": B._FWD_TILES, "dq": B._DQ_TILES, "dkdv": B._DKDV_TILES, "merged": B._MERGED_TILES}


def parse_tile(kernel: str, text: str) -> tuple[int, ...]:
    """A config from its short form: "128x64w4s3" (BLOCK_M x BLOCK_N, warps, stages), for "merged"
    "64x64+128x32w4s3" (dK/dV tiles + dQ tiles)."""
    if kernel == "merged":
        m = re.fullmatch(r"(\d+)x(\d+)\+(\d+)x(\d+)w(\d+)s(\d+)", text)
    else:
        m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)", text)
    if m is None:
        form = "MxN+MxNwWsS, e.g. 64x64+128x32w4s3" if kernel == "merged" else "MxNwWsS, e.g. 128x64w4s5"
        raise ValueError(f"{text!r} is not a {kernel} config ({form})")
    entry = tuple(int(x) for x in m.groups())
    if any(x & (x - 1) for x in entry[:-2]):
        raise ValueError(f"{text!r}: tile sizes must be powers of two")
    return entry


tile_name = B.tile_name  # a config's short form, parse_tile's inverse


def configs_for(kernel: str, spec: str, block: int, head_dim: int) -> list[tuple[int, ...]]:
    """The configs a ``--tiles`` spec names at one block and head dim: "list" is the kernel's autotuning
    list there, other items are configs; those with a tile larger than the block are left out."""
    out: list[tuple[int, ...]] = []
    names = B._KERNEL_NAMES[kernel]
    for item in filter(None, (x.strip() for x in spec.split(","))):
        entries = B.tile_list(_TABLES[kernel], block, head_dim, names) if item == "list" else [parse_tile(kernel, item)]
        out += [e for e in entries if e not in out and max(e[:-2]) <= block]
    return out


def sweep_case(case: Bn.Case, kernel: str, spec: str, flex: bool = True, log=print, check_rows_count: int = 16,
               rounds: int = 0, preheat_s: float = 3.0, graphs: bool = False) -> list[dict]:
    """Rows (one per config, then Flex's) for one bench case: ms (median of do_bench), TFLOP/s over the
    attended pairs, the max error against the fp32 reference on sampled rows. ``rounds``: then, after
    ``preheat_s`` seconds of the autotuner's choice, that many rounds of every config, the autotuner's
    choice (a row of its own, "auto") and Flex in turn (``bench.alternate``: each row's ``alt_ms``, the
    rounds' median, and the SM clock after each round): the sequential timings above meet a GPU that heats
    from one config to the next, at long lengths up to its power cap (docs/benchmarks.md, twentieth run).
    ``graphs``: each row's ``graph_ms`` too, the same call replayed from a CUDA graph: at short lengths an
    eager call is bound by the host's issue of its launches, and only the replay compares the kernels
    (docs/benchmarks.md, twenty-first run)."""
    device = torch.device("cuda")
    pattern, stride, block, mask_mod = Bn.case_pattern(case)
    n = case.seq_len
    layout = P.build_layout(pattern, n, block, device=device)
    pairs = Bn.count_pairs(layout) * case.batch
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (case.batch, case.heads, n, case.head_dim)
    q, k, v, do = (torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(4))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    rows = Bn._sample_rows(n, check_rows_count, device)
    base = {"pattern": case.pattern, "seq_len": n, "heads": case.heads, "head_dim": case.head_dim,
            "stride": stride, "block": block, "kernel": kernel, "runs": B.use_runs()}
    backward = kernel != "fwd"

    def call_of(fn, entry=None):
        """One forward (kernel "fwd") or forward+backward of ``fn``, under ``entry``'s forced tiles."""
        def call():
            with B.forced_tiles(kernel, entry) if entry else contextlib.nullcontext():
                if not backward:
                    with torch.no_grad():
                        fn(q, k, v)
                    return
                for t in leaves:
                    t.grad = None
                fn(*leaves).backward(do)
        return call

    def timed(fn) -> float:
        call = call_of(fn)
        call()
        return Bn._bench(call, leaves if backward else ())

    def replayed(row: dict, fn) -> None:
        """``row["graph_ms"]``: ``fn``'s call (under the tiles and switches in force) replayed from a CUDA
        graph; a capture that fails is the row's ``graph_error``."""
        try:
            row["graph_ms"] = Bn._bench(Bn._graphed(call_of(fn), leaves if backward else ()))
        except Exception as err:  # noqa: BLE001 - a config that cannot be captured is a result
            row["graph_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        finally:
            torch.cuda.synchronize()

    def replay_note(row: dict) -> str:
        if "graph_ms" in row:
            return f", {row['graph_ms']:.3f} ms replayed"
        return f", replay failed: {row['graph_error']}" if "graph_error" in row else ""

    out = []
    ours = Bn._our_fn(layout)
    env = {"MEGASTRIDE_BLOCKSPARSE_DQ": _MODE[kernel]} if backward else {}
    for entry in configs_for(kernel, spec, block, case.head_dim):
        row = {**base, "impl": "ours", "tile": tile_name(entry)}
        try:
            with mock.patch.dict(os.environ, env), B.forced_tiles(kernel, entry):
                with torch.no_grad():
                    checks = {"output": Bn.check_rows(ours(q, k, v), q, k, v, layout, rows)}
                if backward:
                    checks["dQ"] = Bn.check_dq_rows(ours, q, k, v, do, layout, rows)
                    row["dq_max_err"] = checks["dQ"]["max_err"]
                row["max_err"] = checks["output"]["max_err"]
                failed = [what for what, check in checks.items() if Bn.check_failed(check)]
                if failed:
                    row["check_failed"] = failed
                row["ms"] = timed(ours)
                if graphs:
                    replayed(row, ours)
        except Exception as err:  # noqa: BLE001 - a config that fails to compile or launch is a result
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        if "ms" in row:
            row["tflops"] = Bn._tflops(pairs, case.head_dim, row["ms"], backward)
        out.append(row)
        log(f"  {row['tile']:>22}: " + (f"{row['ms']:.3f} ms, {row['tflops']:.0f} TFLOP/s, max err {row['max_err']:.2e}"
                                         + (f", dQ {row['dq_max_err']:.2e}" if "dq_max_err" in row else "")
                                         + (f", check FAILED ({', '.join(row['check_failed'])})"
                                            if "check_failed" in row else "")
                                         + replay_note(row) if "ms" in row else row["error"]))
        torch.cuda.empty_cache()
    if flex:
        row = {**base, "impl": "flex", "tile": "(Flex's own)"}
        try:
            result = Bn.Result(case, stride, block, 0.0, pairs)
            fn = Bn._flex_fn(mask_mod, n, device, result)
            with torch.no_grad():
                row["max_err"] = Bn.check_rows(fn(q, k, v), q, k, v, layout, rows)["max_err"]
            row["ms"] = timed(fn)
            row["tflops"] = Bn._tflops(pairs, case.head_dim, row["ms"], backward)
            if graphs:
                replayed(row, fn)
            log(f"  {'Flex':>22}: {row['ms']:.3f} ms, {row['tflops']:.0f} TFLOP/s, max err {row['max_err']:.2e}"
                + replay_note(row))
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            log(f"  Flex failed: {row['error']}")
        out.append(row)
        torch.cuda.empty_cache()
    if rounds:
        _alternate_rows(out, call_of, ours, fn if flex and "ms" in out[-1] else None, env, base, rounds, preheat_s, log)
    return out


def _alternate_rows(out: list[dict], call_of, ours, flex_fn, env: dict, base: dict, rounds: int, preheat_s: float,
                    log=print) -> None:
    """``sweep_case``'s alternated rounds over the configs that ran (``out``), the autotuner's choice and
    Flex (``flex_fn``, None: left out), into ``out``."""
    timed = [r for r in out if r["impl"] == "ours" and "ms" in r]
    auto = {**base, "impl": "ours", "tile": "auto"}
    entries = [("auto", call_of(ours), Bn.round_calls(min(r["ms"] for r in timed)) if timed else 1, env)]
    entries += [(r["tile"], call_of(ours, parse_tile(r["kernel"], r["tile"])), Bn.round_calls(r["ms"]), env) for r in timed]
    if flex_fn is not None:
        entries.append(("flex", call_of(flex_fn), Bn.round_calls(out[-1]["ms"]), {}))
    kernel = base["kernel"]
    B.chosen_tiles(kernel, clear=True)
    with mock.patch.dict(os.environ, env):
        heat = call_of(ours)
        heat()
        end = time.perf_counter() + preheat_s
        while time.perf_counter() < end:
            heat()
        torch.cuda.synchronize()
    # what "auto" runs: the configs the autotuner chose for the swept kernel's launches in this case
    auto["chosen"] = [tile_name(e) for e in B.chosen_tiles(kernel, clear=True)]
    got = Bn.alternate(entries, rounds, Bn._event_timer)
    out.insert(out.index(timed[-1]) + 1 if timed else 0, auto)  # after the configs that ran
    for row in out:
        name = "flex" if row["impl"] == "flex" else row["tile"]
        if name in got and got[name]["ms"]:
            row["alt_ms"] = round(got[name]["median_ms"], 4)
            row["alt_rounds_ms"] = [round(x, 4) for x in got[name]["ms"]]
            row["alt_sm_mhz"] = got[name]["sm_mhz"]
            log(f"  {row['tile'] if name != 'flex' else 'Flex':>22}: {row['alt_ms']:.3f} ms over {rounds} alternated rounds")
    torch.cuda.empty_cache()


def table(rows: list[dict]) -> str:
    """Markdown: one line per (case, config), each config's time relative to Flex's in the same case; with
    alternated rounds (``sweep_case``'s ``rounds``) also their median and the SM clock, and the autotuner's
    choice ("auto") as a row; with replays (``graphs``) each one's replayed time against Flex's replayed time."""
    alt = any("alt_ms" in r for r in rows)
    replay = any("graph_ms" in r or "graph_error" in r for r in rows)
    dq = any("dq_max_err" in r for r in rows)
    head = ("| case | kernel | config | ms | TFLOP/s | vs Flex | max err |" + (" dQ max err |" if dq else "")
            + (" alternated ms | SM MHz |" if alt else "") + (" replayed ms | replayed vs Flex |" if replay else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    flex_ms = {(r["pattern"], r["seq_len"], r["heads"], r["head_dim"]): r.get("ms") for r in rows if r["impl"] == "flex"}
    flex_graph = {(r["pattern"], r["seq_len"], r["heads"], r["head_dim"]): r.get("graph_ms")
                  for r in rows if r["impl"] == "flex"}

    def replay_cells(r, key):
        if not replay:
            return ""
        if "graph_ms" not in r:
            return " failed |  |" if "graph_error" in r else " — | — |"
        ref = flex_graph.get(key)
        ratio = f"{ref / r['graph_ms']:.2f}×" if ref and r["impl"] == "ours" else "—"
        return f" {r['graph_ms']:.3f} | {ratio} |"

    def alt_cells(r):
        if not alt:
            return ""
        clocks = [c for c in r.get("alt_sm_mhz") or [] if c is not None]
        mhz = f"{sorted(clocks)[len(clocks) // 2]:,.0f}" if clocks else "—"
        return f" {r['alt_ms']:.3f} | {mhz} |" if "alt_ms" in r else " — | — |"

    for r in rows:
        key = (r["pattern"], r["seq_len"], r["heads"], r["head_dim"])
        case = f"{r['pattern']} {r['seq_len']:,} {r['heads']}×{r['head_dim']}" + (" (runs)" if r.get("runs") else "")
        if "ms" not in r:
            what = (("the autotuner's choice" + (f": {', '.join(r['chosen'])}" if r.get("chosen") else ""))
                    if r["tile"] == "auto" else f"failed: {r.get('error', '')[:80]}")
            lines.append(f"| {case} | {r['kernel']} | {r['tile']} | {what} | | | |" + (" |" if dq else "")
                         + alt_cells(r) + replay_cells(r, key))
            continue
        ref = flex_ms.get(key)
        ratio = f"{ref / r['ms']:.2f}×" if ref and r["impl"] == "ours" else "—"
        failed = r.get("check_failed", [])
        err = f"{r['max_err']:.1e}" + (" FAILED" if "output" in failed else "")
        dq_cell = ((f" {r['dq_max_err']:.1e}" + (" FAILED" if "dQ" in failed else "") if "dq_max_err" in r else " —")
                   + " |" if dq else "")
        lines.append(f"| {case} | {r['kernel']} | {r['tile']} | {r['ms']:.3f} | {r['tflops']:.0f} | {ratio} "
                     f"| {err} |" + dq_cell + alt_cells(r) + replay_cells(r, key))
    return "\n".join(lines)


def run(cases: list[Bn.Case], kernel: str, spec: str, flex: bool = True, out_dir: str | None = None, log=print,
        rounds: int = 0, preheat_s: float = 3.0, graphs: bool = False) -> list[dict]:
    """Sweep every case; rewrite the JSON and table after each (a run cut short keeps what it timed)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (one of {', '.join(KERNELS)})")
    rows: list[dict] = []
    for case in cases:
        log(f"{case.pattern} n={case.seq_len:,} H={case.heads} D={case.head_dim} ({kernel})")
        start = time.perf_counter()
        rows += sweep_case(case, kernel, spec, flex, log, rounds=rounds, preheat_s=preheat_s, graphs=graphs)
        log(f"  [{time.perf_counter() - start:.0f} s]")
        if out_dir:
            path = Path(out_dir)
            path.mkdir(parents=True, exist_ok=True)
            (path / "bench_tiles.json").write_text(json.dumps({"environment": Bn.environment(), "rows": rows}, indent=1))
            (path / "bench_tiles.md").write_text(table(rows) + "\n")
    return rows
