"""Compile the block-sparse kernels for a GPU architecture without a GPU.

Triton lowers a kernel to PTX and runs ptxas (shipped with the triton wheel) on any machine, so a
CPU-only machine can check that every kernel variant the launchers can ask for still compiles for
Hopper (sm_90): the interpreter tests check the arithmetic, not that the compiler accepts the code.

    python -m megastride.kernels.compile_check            # the default set, sm_90
    python -m megastride.kernels.compile_check --all      # every autotuning config too

Prints one line per variant (compile seconds, shared memory; with --ptxas the registers per thread
and spill bytes from the bundled ptxas -v); exit status 1 if any fails.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import blocksparse as bs
from . import flat

_INDEX_ARRAYS = {"HEADS", "HEAD_CSR", "MIN_OFF", "CODES", "FULL_PTR", "FULL_IDX", "PART_PTR", "PART_IDX", "ORDER",
                 "SEG_LO", "SEG_HI", "SEG_FIRST", "SEG_COUNT", "SEG_CIDX", "WS_CNT", "ROW_FULL_PTR", "ROW_FULL_IDX", "ROW_PART_PTR", "ROW_PART_IDX",
                 "ROW_ORDER", "FULL_RUNS", "ROW_FULL_RUNS", "PROG_PTR", "TILE_ITEM", "TILE_STEP", "TILE_BH", "TILE_SEG",
                 "UNIT_SLOT", "UNIT_PIECES", "UNIT_FIRST", "UNIT_BH"}
_FP32_ARRAYS = {"LSE", "DELTA", "WS", "WS_ML"}
_FLOATS = {"qk_scale", "sm_scale"}


@dataclass
class Variant:
    """One kernel specialisation: its constexprs, which outputs are fp32, launch options."""

    name: str
    kernel: object
    constexprs: dict
    fp32: set = field(default_factory=set)  # pointer args held in fp32 (accumulating outputs)
    num_warps: int = 4
    num_stages: int = 2


def signature(kernel, dtype: str, fp32: set, wide: bool) -> dict:
    """Triton signature of ``kernel``'s arguments: tensors by role, ints as i64 when ``wide``."""
    sig = {}
    for p in kernel.params:
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
        elif name in _INDEX_ARRAYS:
            sig[name] = "*i32"
        elif name in _FP32_ARRAYS or name in fp32:
            sig[name] = "*fp32"
        elif name.isupper():
            sig[name] = f"*{dtype}"
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if wide and name.startswith("stride") else "i32"
    return sig


# split columns add into one fp32 dK and dV (passed as their own sums too)
_SPLIT_FP32 = {"DK", "DV", "DK_PREV", "DV_PREV"}

# the mask kinds compiled by default (local, stride, summary: the strided pattern's and more); --kinds
# picks others, e.g. 24 (window and summary) for the fixed pattern's, as its layouts launch them
DEFAULT_KINDS = 2 | 4 | 16


def variants(block: int = 128, head_dim: int = 64, every_config: bool = False,
             kinds: int = DEFAULT_KINDS, runs: bool = False, desc: bool = False) -> list[Variant]:
    """The kernel variants the launchers produce for one block and head dim: natural and permuted
    parts, first and merging parts, each backward mode; the first autotuning config of each table
    (all of them with ``every_config``). ``desc``: the natural-order parts load their full lists' tiles as
    TMA boxes (blocksparse.use_tma_loads; permuted parts never do)."""
    base = dict(BUCKET=2, BLOCK=block, HEAD_DIM=head_dim, NCOMP=2, KINDS=kinds, DOT_PREC="tf32", RUNS=runs)

    def tiles(table):
        chosen = bs.tile_list(table, block, head_dim)
        return chosen if every_config else chosen[:1]

    out = []
    # natural order; permuted by stride (the strided half, merging); summary positions first (the paper's fixed
    # patterns whose summaries are not whole blocks: launched first, with its own mask kind), its runs multiples
    # of 32 positions (fixed(128, 32), enwik8's) or of 16 (fixed(96, 16), CIFAR-10's: blocksparse._run_alignment)
    for order, load_prev, run in ((0, False, 0), (1, True, 0), (2, False, 32), (2, False, 16)):
        permuted = order != 0
        tag = f"{'16-run ' if run == 16 else ''}{('natural', 'permuted', 'summary-first')[order]}{', merging' if load_prev else ''}"
        common = dict(base, PERMUTED=order, RUN=run, LOAD_PREV=load_prev, DESC=desc and not permuted,
                      KINDS=32 if order == 2 else kinds, NCOMP=1 if order == 2 else base["NCOMP"])
        # a merging part as the last launch of a split head runs it: the earlier parts' fp32 sums in, the
        # final outputs in the inputs' dtype out
        acc = {"O_PREV", "DQ_PREV", "DK_PREV", "DV_PREV"} if load_prev else set()
        for m, n, w, st in tiles(bs._FWD_TILES):
            out.append(Variant(f"forward {tag} {m}x{n} w{w} s{st}", bs._fwd_kernel,
                               dict(common, BLOCK_M=m, BLOCK_N=n), acc & {"O_PREV"}, w, st))
            # rows cut into segments, each row's last segment merging them (blocksparse.fwd_split)
            out.append(Variant(f"forward in row segments, {tag} {m}x{n} w{w} s{st}", bs._fwd_kernel,
                               dict(common, BLOCK_M=m, BLOCK_N=n, SPLIT=True), acc & {"O_PREV"}, w, st))
        flat_tiles = flat.FLAT_TILES.get((block, head_dim)) or flat.candidates(block, head_dim)
        for m, n, w, st, per_sm in flat_tiles if every_config else flat_tiles[:1]:  # the forward as flattened tiles
            out.append(Variant(f"flat {tag} forward {m}x{n} w{w} s{st}", flat._fwd_flat_kernel,
                               {key: value for key, value in dict(common, BLOCK_M=m, BLOCK_N=n).items()
                                if key not in ("BUCKET", "RUNS", "DESC")}, acc & {"O_PREV"}, w, st))
        flat_tiles = flat.FLAT_DQ_TILES.get((block, head_dim)) or flat.candidates(block, head_dim, "dq")
        for (m, n, w, st, per_sm), here in itertools.product(flat_tiles if every_config else flat_tiles[:1],
                                                              (False, True)):  # delta loaded / computed
            out.append(Variant(f"flat {tag} dQ, delta {'here' if here else 'loaded'} {m}x{n} w{w} s{st}",
                               flat._dq_flat_kernel,
                               {key: value for key, value in dict(common, DELTA_HERE=here, BLOCK_M=m, BLOCK_N=n).items()
                                if key not in ("BUCKET", "RUNS", "DESC")}, acc & {"DQ_PREV"}, w, st))
        flat_tiles = flat.FLAT_DKDV_TILES.get((block, head_dim)) or flat.candidates(block, head_dim, "dkdv")
        for m, n, w, st, per_sm in flat_tiles if every_config else flat_tiles[:1]:
            out.append(Variant(f"flat {tag} dK/dV {m}x{n} w{w} s{st}", flat._dkdv_flat_kernel,
                               {key: value for key, value in dict(common, BLOCK_M=m, BLOCK_N=n).items()
                                if key not in ("BUCKET", "RUNS", "DESC")}, acc & {"DK_PREV", "DV_PREV"}, w, st))
        finish = {key: common[key] for key in ("BLOCK", "HEAD_DIM", "PERMUTED", "RUN", "LOAD_PREV")}
        out.append(Variant(f"flat {tag} dK/dV finish, {flat_tiles[0][1]} keys", flat._dkdv_finish_kernel,
                           dict(finish, BLOCK_N=flat_tiles[0][1]), acc & {"DK_PREV", "DV_PREV"}, 4, 1))
        for (m, n, w, st), here in itertools.product(tiles(bs._DQ_TILES), (False, True)):  # delta loaded / computed
            out.append(Variant(f"dQ {tag}, delta {'here' if here else 'loaded'} {m}x{n} w{w} s{st}", bs._bwd_dq_kernel,
                               dict(common, DELTA_HERE=here, BLOCK_M=m, BLOCK_N=n), acc & {"DQ_PREV"}, w, st))
            # rows cut into segments, each row's last segment summing them (blocksparse.dq_split)
            out.append(Variant(f"dQ in row segments, {tag}, delta {'here' if here else 'loaded'} {m}x{n} w{w} s{st}",
                               bs._bwd_dq_kernel, dict(common, DELTA_HERE=here, BLOCK_M=m, BLOCK_N=n, SPLIT=True),
                               acc & {"DQ_PREV"}, w, st))
        # dQ separate (0), atomic: one atomic per element (1) or one TMA reduce per tile (2, natural order only)
        # columns whole (0), split with the "cast" finish (1) or the "last" one (2)
        for split, fused in itertools.product((0, 1, 2), (0, 1) if permuted else (0, 1, 2)):
            kind = ("separate", "atomic", "atomic TMA")[fused]
            mode = f"dQ {kind}, {('whole', 'split', 'split, last finish')[split]} columns"
            fp32 = (acc & {"DK_PREV", "DV_PREV"}) | ({"DQ"} if fused else set()) | (_SPLIT_FP32 if split == 1 else set())
            for m, n, w, st in tiles(bs._DKDV_TILES):
                out.append(Variant(f"dK/dV {tag}, {mode} {m}x{n} w{w} s{st}", bs._bwd_dkdv_kernel,
                                   dict(common, FUSED_DQ=fused, SPLIT=split, BLOCK_M=m, BLOCK_N=n), fp32, w, st))
        for split in (0, 1, 2):  # DQ_MODE "merged": dK/dV and dQ programs in one launch
            fp32 = (acc & {"DQ_PREV", "DK_PREV", "DV_PREV"}) | (_SPLIT_FP32 if split == 1 else set())
            chosen = bs.tile_list(bs._MERGED_TILES, block, head_dim, bs._MERGED_NAMES)
            for m, n, qm, qn, w, st in chosen if every_config else chosen[:1]:
                out.append(Variant(f"merged {tag}, {('whole', 'split', 'split, last finish')[split]} columns "
                                   f"{m}x{n}+{qm}x{qn} w{w} s{st}",
                                   bs._bwd_merged_kernel, dict(common, SPLIT=split, BLOCK_M=m, BLOCK_N=n, DQ_M=qm, DQ_N=qn),
                                   fp32, w, st))
    # the delta kernel (the backward's first launch where dQ does not compute delta: the "streams" mode, the atomic
    # and merged modes)
    out.append(Variant("delta", bs._delta_kernel, dict(HEAD_DIM=head_dim, BLOCK_T=64, ZERO=False, MAXIMA=False)))
    return out


# the kernels that can go out as programmatic dependent launches (blocksparse.use_pdl): their GDC constexpr
PDL_KERNELS = ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_bwd_merged_kernel", "_delta_kernel")


def dependent(v: Variant) -> Variant | None:
    """``v`` compiled as a programmatic dependent launch compiles it (GDC on), or None for a kernel without one."""
    if getattr(v.kernel, "__name__", "") not in PDL_KERNELS:
        return None
    return Variant(v.name, v.kernel, {**v.constexprs, "GDC": True}, v.fp32, v.num_warps, v.num_stages)


def launch_attrs(kernel) -> dict:
    """The specialisation a real launch gives: pointers 16-byte aligned and strides multiples of 16
    (torch allocations; contiguous (B, H, T, D) tensors with D >= 16), except do_not_specialize args."""
    skip = set(kernel.do_not_specialize) | set(getattr(kernel, "do_not_specialize_names", []))
    attrs = {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr or p.name in skip or i in skip:
            continue
        if p.name.isupper() or p.name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def with_defaults(kernel, constexprs: dict) -> dict:
    """``constexprs`` plus the defaults of the kernel's constexpr parameters it leaves out: a launch fills those in,
    ``ASTSource`` does not (the kernel then fails to compile where it reads one)."""
    return {**{p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default}, **constexprs}


def compile_variant(v: Variant, dtype: str = "bf16", arch: int = 90, wide: bool = False):
    src = ASTSource(fn=v.kernel, signature=signature(v.kernel, dtype, v.fp32, wide),
                    constexprs=with_defaults(v.kernel, v.constexprs), attrs=launch_attrs(v.kernel))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": v.num_warps, "num_stages": v.num_stages})


def first_loop_waits(kernel) -> list[int]:
    """The ``async_wait`` counts inside the kernel's first loop (its full-block loop) in the TTGIR: how
    many async copy groups may still be in flight where the loop waits for its tiles. 0 means every tile
    load issued for this iteration is waited for at its top (prefetched one iteration ahead at most)."""
    ttgir = kernel.asm["ttgir"]
    start = ttgir.find("scf.for")
    if start < 0:
        return []
    end = ttgir.find("scf.yield", start)
    return [int(n) for n in re.findall(r"async_wait[^{\n]*\{num = (\d+)", ttgir[start:end])]


def _bundled_tool(name: str) -> str:
    """The path of one of the CUDA tools the triton wheel ships (ptxas, nvdisasm)."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas_usage(kernel, arch: int = 90) -> dict:
    """Registers per thread, spill bytes and performance warnings of a compiled kernel, from the bundled
    ptxas -v."""
    ptxas = _bundled_tool("ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(kernel.asm["ptx"])
        sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        info = subprocess.run([ptxas, f"-arch={sm}", "-v", path, "-o", os.devnull], capture_output=True, text=True)
    text = info.stdout + info.stderr
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(stores.group(1)) if stores else 0, "spill_loads": int(loads.group(1)) if loads else 0,
            # e.g. C7514: tensor-core products serialised (each waited for at once), whatever the source asked
            "warnings": re.findall(r"Potential Performance Loss: ([^\n]*)", text)}


def report_line(kernel, name: str, signature: dict, constexprs: dict, warps: int, attrs: dict | None = None,
                arch: int = 90, vectors: str | None = None) -> tuple[str, bool]:
    """(line, ok) of one small elementwise kernel compiled for ``arch`` without a GPU (``attrs``: the
    specialisation of a real launch, ``launch_attrs`` by default): its registers and spills, ok without spills;
    with ``vectors`` "all" (every global access) or "any" (the tiles', beside single-row ones), also the widths
    of its global accesses, ok only where those are 16- or 8-byte vectors. A compile error is a failed line."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        k = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=with_defaults(kernel, constexprs),
                                     attrs=launch_attrs(kernel) if attrs is None else attrs),
                           target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    except Exception as err:  # the caller reports every variant, then fails
        return f"FAIL {name}: {type(err).__name__}: {str(err).splitlines()[0][:300]}", False
    u = ptxas_usage(k, arch)
    ok = u["spill_stores"] == 0 and u["spill_loads"] == 0
    line = f"{name}: {u['registers']} registers, spills {u['spill_stores']}/{u['spill_loads']} B stored/loaded"
    if vectors:
        widths = sorted(set(re.findall(r"\b(?:ld|st)\.global(?:\.\w+)*", k.asm["ptx"])))
        ok &= (all if vectors == "all" else any)(".v4." in w or ".v2." in w for w in widths)
        line += f", accesses {', '.join(widths)}"
    return f"{'ok  ' if ok else 'FAIL'} {line}", ok


def print_report(report: list[tuple[str, bool]], tool: str) -> int:
    """Print ``report_line`` results and a closing line; the exit status: 1 if any failed."""
    for line, _ in report:
        print(line, flush=True)
    failed = sum(not ok for _, ok in report)
    print(f"{tool} compile sm_90: {'FAILED ' + str(failed) if failed else 'all compiled'}")
    return 1 if failed else 0


def sass(kernel) -> str:
    """The compiled kernel's SASS, from the bundled nvdisasm."""
    tool = _bundled_tool("nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        return subprocess.run([tool, "-c", path], capture_output=True, text=True, check=True).stdout


def first_mma_loop(kernel) -> dict:
    """The instruction mix of the kernel's first loop with tensor-core instructions (its full-block loop,
    where nearly all the time goes): instructions per iteration by opcode (``HGMMA`` the products, ``MUFU``
    the exponentials, ``LDL``/``STL`` register spills), from the SASS's first backward branch whose body
    holds an HGMMA. Two kernels with the same products compare by their ``total`` and their spills."""
    lines = sass(kernel).splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*\.(L_x_\d+):", line))}
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`?\(\.(L_x_\d+)\)", line)
        if not m or labels.get(m.group(1), i) >= i:
            continue
        ops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*(@!?U?P\w+\s+)?", "", x).split(" ")[0].split(".")[0]
               for x in lines[labels[m.group(1)]:i + 1] if re.search(r"/\*[0-9a-f]{4,}\*/", x)]
        if "HGMMA" in ops:
            mix = {op: ops.count(op) for op in sorted(set(ops))}
            return {"total": len(ops), **mix}
    return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.compile_check", description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (default 90: H100/H200)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--all", action="store_true", help="every autotuning config, not only the first")
    p.add_argument("--kinds", type=int, default=DEFAULT_KINDS,
                   help="mask kinds bitmask, 1 << kind (default 22: local, stride, summary; 24: the fixed pattern's)")
    p.add_argument("--ptxas", action="store_true", help="also report registers and spills (ptxas -v)")
    p.add_argument("--runs", action="store_true", help="full block lists walked as arithmetic runs (blocksparse.use_runs)")
    p.add_argument("--desc", action=argparse.BooleanOptionalAction, default=None,
                   help="full lists' tiles loaded as TMA boxes in natural order, or (--no-desc) from pointer loads "
                        "(default: the kernels' own choice, blocksparse.use_tma_loads)")
    p.add_argument("--waits", action="store_true",
                   help="also report the async_wait counts of the first (full-block) loop in the TTGIR: 0 = tile loads prefetched one iteration ahead at most")
    p.add_argument("--loop", action="store_true",
                   help="also report the first tensor-core loop's instructions per iteration (SASS): total, HGMMA, "
                        "MUFU, LDL/STL spills")
    p.add_argument("--pdl", action="store_true",
                   help="the kernels as programmatic dependent launches compile them (blocksparse.use_pdl: GDC on; "
                        "the kernels without one are left out), checked to wait for the launch before them first")
    p.add_argument("--only", action="append", default=[],
                   help="compile only variants whose name contains this text (repeatable)")
    args = p.parse_args(argv)
    if not 0 < args.kinds < 32:
        p.error(f"--kinds is a bitmask of the five mask kinds, 1..31, got {args.kinds}")
    only = args.only
    if args.desc is None:
        args.desc = bs.use_tma_loads()
    failed = 0
    chosen = [v for v in variants(args.block, args.head_dim, args.all, args.kinds, args.runs, args.desc) if not only or any(x in v.name for x in only)]
    if args.pdl:
        chosen = [d for d in map(dependent, chosen) if d is not None]
    if not chosen:
        print(f"compile_check: no variant matches --only {only!r}", file=sys.stderr)
        return 2
    for v in chosen:
        start = time.perf_counter()
        try:
            k = compile_variant(v, args.dtype, args.arch, wide=True)
        except Exception as err:  # report every variant, then fail
            failed += 1
            print(f"FAIL {v.name}: {type(err).__name__}: {str(err).splitlines()[0][:300]}", flush=True)
            continue
        usage = ""
        if args.pdl:
            ptx = k.asm["ptx"]
            wait, release = ptx.find("griddepcontrol.wait"), ptx.find("griddepcontrol.launch_dependents")
            first_access = min((i for i in (ptx.find("ld.global"), ptx.find("st.global"), ptx.find("cp.async"))
                                if i >= 0), default=len(ptx))
            if not 0 <= wait < first_access or release < 0:
                failed += 1
                print(f"FAIL {v.name}: the dependent launch's wait is missing or after a global access "
                      f"(wait at {wait}, first access at {first_access}, launch_dependents at {release})", flush=True)
                continue
            usage += ", waits first (dependent launch)"
        if args.ptxas:
            u = ptxas_usage(k, args.arch)
            usage += f", {u['registers']} registers, spills {u['spill_stores']}/{u['spill_loads']} B stored/loaded"
            if any("serialized" in w for w in u["warnings"]):
                usage += ", wgmma serialised by ptxas"
        if args.waits:
            usage += f", first loop waits {first_loop_waits(k)}"
        if args.loop:
            mix = first_mma_loop(k)
            usage += (f", loop {mix.get('total', 0)} instructions: {mix.get('HGMMA', 0)} HGMMA, {mix.get('MUFU', 0)} MUFU, "
                      f"{mix.get('LDL', 0) + mix.get('STL', 0)} LDL/STL")
        print(f"ok   {v.name}{' (runs)' if args.runs else ''}{' (TMA loads)' if v.constexprs.get('DESC') else ''}: {time.perf_counter() - start:.1f} s, shared {k.metadata.shared} B{usage}", flush=True)
    print(f"compile_check sm_{args.arch} {args.dtype}: {'FAILED ' + str(failed) if failed else 'all compiled'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
