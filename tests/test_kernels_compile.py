"""The Triton kernels compile for Hopper (sm_90) on this CPU-only machine.

The interpreter tests check what the kernels compute; only a real compile shows that the compiler
accepts them (types of constexpr branches, tuple returns, atomics, shared memory). Triton lowers to
PTX and runs the ptxas of its wheel without a GPU. Run in a subprocess: the interpreter tests set
TRITON_INTERPRET=1 for the whole session, under which kernels are not compiled.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

# not imported here: the first import of triton in this session must see the TRITON_INTERPRET=1
# that test_kernels_triton.py sets, or its kernels are not interpreted
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


def test_kernels_compile_for_sm90():
    """The default training path (forward, dQ, dK/dV on a natural part), the dK/dV variant with
    every option (permuted merging part, atomic dQ, split columns), the atomic dQ's TMA reduce (natural
    part; the interpreter cannot run it) and the merged backward's; split columns' "last" finish (its
    release/acquire count and L2 reads) in dK/dV and merged; the dQ kernel computing delta itself; the
    summary-first part's forward and dK/dV (its ordering and mask kind: the interpreter checks the arithmetic,
    not that the GPU compiler takes it), with runs of 32 (tiles mapped from their start) and of 16 (32-row tiles
    crossing a run end); the forward and dQ in row segments (blocksparse.fwd_split, dq_split: their slots, count and
    merge), natural and permuted merging."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    only = ["forward natural", "dQ natural, delta loaded", "dK/dV natural, dQ separate, whole columns",
            "dK/dV permuted, merging, dQ atomic, split columns", "dK/dV natural, dQ atomic TMA, whole columns",
            "merged permuted, merging, split columns",
            "dK/dV permuted, merging, dQ atomic, split, last finish columns", "merged natural, split, last finish columns",
            "dQ permuted, merging, delta here", "forward summary-first",
            "dK/dV summary-first, dQ separate, split, last finish columns",
            "dK/dV 16-run summary-first, dQ separate, whole columns",
            "forward in row segments, natural", "forward in row segments, permuted, merging",
            "dQ in row segments, natural, delta here", "dQ in row segments, permuted, merging, delta loaded"]
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", *(f"--only={o}" for o in only)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    compiled = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert len(compiled) == len(only) and proc.stdout.strip().endswith("all compiled"), proc.stdout


def test_fixed_pattern_mask_kinds_compile_and_a_bad_kinds_mask_is_one_line():
    """--kinds 24 compiles the forward as the fixed pattern's layouts launch it (window and summary
    masks); a mask outside the five kinds is refused in one line before anything compiles."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=600)
    proc = run("--kinds", "24", "--only", "forward natural")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("all compiled"), (proc.stdout + proc.stderr)[-2000:]
    bad = run("--kinds", "40")
    assert bad.returncode == 2 and "--kinds" in bad.stderr and "got 40" in bad.stderr
    assert "ok " not in bad.stdout


def test_runs_variants_compile_for_sm90():
    """compile_check --runs: the forward, dQ and dK/dV (split columns: runs offset by the column's first
    entry) and the merged backward, walking full lists as arithmetic runs, compile for sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    only = ["forward natural", "dQ natural, delta loaded", "dK/dV natural, dQ separate, split columns", "merged natural, whole columns"]
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", "--runs", "--kinds", "24",
                           *(f"--only={o}" for o in only)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    compiled = [line for line in proc.stdout.splitlines() if line.startswith("ok ") and "(runs)" in line]
    assert len(compiled) == len(only) and proc.stdout.strip().endswith("all compiled"), proc.stdout


def test_tma_load_variants_compile_for_sm90():
    """compile_check --desc: the forward, dQ, dK/dV and merged kernels loading their full lists' tiles from
    in-kernel tensor descriptors (natural parts) compile for sm_90, with the fixed pattern's masks and runs."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    only = ["forward natural", "dQ natural, delta loaded", "dK/dV natural, dQ separate, whole columns", "merged natural, split columns"]
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", "--desc", "--runs", "--kinds", "24",
                           *(f"--only={o}" for o in only)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    compiled = [line for line in proc.stdout.splitlines() if line.startswith("ok ") and "(TMA loads)" in line]
    assert len(compiled) == len(only) and proc.stdout.strip().endswith("all compiled"), proc.stdout


def test_runs_let_the_pipeliner_prefetch_the_tiles_further():
    """compile_check --waits --no-desc: with pointer loads (short lists, other GPUs, or
    MEGASTRIDE_BLOCKSPARSE_TMA=0) the forward's first config at head dim 32 (three stages) waits for every
    tile load of its full-block loop at the top of each iteration with index lists (count 0), and leaves
    loads in flight when the lists are walked as runs (the reason for MEGASTRIDE_BLOCKSPARSE_RUNS)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    def waits(*extra):
        proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", "--kinds", "24", "--waits", "--no-desc",
                               "--head-dim", "32", "--only", "forward natural", *extra], capture_output=True, text=True, env=env,
                              timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("ok "))
        assert " s3" in line, line  # the first forward config has three stages
        return [int(n) for n in line.rsplit("waits [", 1)[1].rstrip("]").split(", ")]

    assert waits() == [0]
    assert min(waits("--runs")) > 0


def test_the_probe_loop_is_warp_specialised_for_sm90(compiled_lines):
    """kernels/ws_probe.py: with warp_specialize the probe's loop is partitioned for Hopper (a
    ttg.warp_specialize op; 12 warps: 4 of the kernel's own and two groups of 4 the pass adds), without it
    not: what the probe times on the device is the partitioned loop, not the flag ignored."""
    lines = compiled_lines("from megastride.kernels.ws_probe import compile_probe\n"
                            "for ws in (False, True):\n"
                            "    k = compile_probe(ws)\n"
                            "    print(ws, 'ttg.warp_specialize(' in k.asm['ttgir'], k.metadata.num_warps)\n")
    assert lines == ["False False 4", "True True 12"], lines


def test_the_dkdv_hot_loop_is_as_lean_as_the_stripped_probe(compiled_lines):
    """compile_check --loop: the first tensor-core loop of our dK/dV kernel (32x128 w4 s5 at head dim 64,
    the fixed pattern's masks, TMA loads, runs) issues the same 24 HGMMA and 32 MUFU an iteration as
    kernels/ws_probe.py's stripped dK/dV loop, in no more than 5% more instructions: what a change adds to
    the loop where the backward's time goes shows here, without a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", "--kinds", "24", "--runs", "--desc",
                           "--loop", "--only", "dK/dV natural, dQ separate, whole columns"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ok ") and "32x128 w4 s5" in x)
    ours = [int(n) for n in re.search(r"loop (\d+) instructions: (\d+) HGMMA, (\d+) MUFU", line).groups()]
    probe = compiled_lines("from megastride.kernels import compile_check as c, ws_probe as w\n"
                            "m = c.first_mma_loop(w.compile_probe_dkdv(32, 64, 4, 5))\n"
                            "print(m['total'], m['HGMMA'], m['MUFU'])\n")
    total, hgmma, mufu = (int(n) for n in probe[0].split())
    assert ours[1:] == [hgmma, mufu] == [24, 32], (line, probe)
    assert ours[0] <= 1.05 * total, (line, probe)


def test_the_summary_first_dkdv_loop_is_leaner_than_the_stride_permuted_one():
    """compile_check --loop: the summary-first part's dK/dV loop (32x128 w4 s5, head dim 64, runs of 32 as
    enwik8's fixed(128, 32) has) maps its 32-row query tiles, each inside one run, with one scalar map of the
    tile's start (``_natural_tile``), and takes at most 80% of the stride-permuted part's instructions an
    iteration and no spills there. Mapping every row with its own division took 732 instructions and 1 spill
    (655 in the permuted part); the earlier two-sided int64 map 1,592 and 154, and the backward 6x the forward
    on the H200 (docs/benchmarks.md, "Twenty-ninth run")."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", "--loop",
                           "--only", "dK/dV summary-first, dQ separate, whole columns",
                           "--only", "dK/dV permuted, merging, dQ separate, whole columns"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    loops = {}
    for line in proc.stdout.splitlines():
        if line.startswith("ok ") and "32x128 w4 s5" in line:
            total = int(re.search(r"loop (\d+) instructions", line).group(1))
            spills = re.search(r"(\d+) LDL/STL", line)
            loops["summary" if "summary-first" in line else "permuted"] = (total, int(spills.group(1)) if spills else 0)
    assert set(loops) == {"summary", "permuted"}, proc.stdout
    assert loops["summary"][0] <= 0.8 * loops["permuted"][0] and loops["summary"][1] == 0, loops


def test_the_probe_moves_a_quarter_and_a_half_of_its_exponentials_off_the_special_function_unit(compiled_lines):
    """kernels/ws_probe.py --kernels poly, compiled for sm_90 (128x128 tile, head dim 64, 4 warps): each
    thread's loop computes 128 exponentials of scores and 4 of the rescaling (132 MUFU); with a quarter of
    the columns from the polynomial 100, with half 68, and no shuffles added by the column split."""
    lines = compiled_lines("from megastride.kernels import compile_check as c, ws_probe as w\n"
                            "for poly in (0, 1, 2):\n"
                            "    m = c.first_mma_loop(w.compile_probe(False, num_stages=2, poly=poly))\n"
                            "    print(m['HGMMA'], m['MUFU'], m.get('SHFL', 0))\n")
    assert lines == ["24 132 16", "24 100 16", "24 68 16"], lines


def test_packed_16bit_exponentials_still_take_one_special_function_issue_per_element(compiled_lines):
    """ws_probe's forward with EXP16 asks PTX for two exponentials an instruction (ex2.approx.ftz.bf16x2 /
    ex2.approx.f16x2) to halve the special-function unit's work at head dim 64; ptxas for sm_90 splits each
    into two scalar MUFU.EX2, so the loop keeps its 132 MUFU an iteration (bf16 and fp16 alike) and gains
    the packing and unpacking around them: why the option was not taken to the GPU (2026-12-01)."""
    lines = compiled_lines("from megastride.kernels import compile_check as c, ws_probe as w\n"
                            "for dtype in ('bf16', 'fp16'):\n"
                            "    for e in (0, 1):\n"
                            "        k = w.compile_probe(False, num_stages=2, exp16=e, dtype=dtype)\n"
                            "        m = c.first_mma_loop(k)\n"
                            "        print(dtype, e, m['HGMMA'], m['MUFU'], m['total'], 'ex2.approx.ftz.bf16x2' in k.asm['ptx'] "
                            "or 'ex2.approx.f16x2' in k.asm['ptx'])\n")
    rows = [line.split() for line in lines]
    assert [r[:4] for r in rows] == [[d, e, "24", "132"] for d in ("bf16", "fp16") for e in ("0", "1")], lines
    assert [r[5] for r in rows] == ["False", "True", "False", "True"], lines  # the packed form reached the PTX
    assert int(rows[1][4]) > int(rows[0][4]) and int(rows[3][4]) > int(rows[2][4]), lines  # and cost instructions


def test_triton_keeps_the_persistent_probes_column_loop_apart_from_its_walk(compiled_lines):
    """ws_probe's persistent dK/dV probe asks for ``tl.range(..., flatten=True)``: Triton 3.6 fuses only inner
    loops with constant bounds, so a column's own bounds leave two loops (the probe's timing, the fourteenth
    run, is of the unfused walk); the same pass on constant bounds does fuse (the check can see a fusion)."""
    lines = compiled_lines("from megastride.kernels import ws_probe as w\n"
                            "for flatten in (False, True):\n"
                            "    print(w.compile_probe_dkdv_persistent(flatten).asm['ttgir'].count('scf.for'))\n"
                            "import triton, triton.language as tl\n"
                            "@triton.jit\n"
                            "def k(X, Y, total):\n"
                            "    for i in tl.range(tl.program_id(0), total, tl.num_programs(0), flatten=True):\n"
                            "        acc = tl.zeros([128], tl.float32)\n"
                            "        for t in tl.range(0, 8):\n"
                            "            acc += tl.load(X + t * 128 + tl.arange(0, 128))\n"
                            "        tl.store(Y + i * 128 + tl.arange(0, 128), acc)\n"
                            "print(w._compile(k, {'X': '*fp32', 'Y': '*fp32', 'total': 'i32'}, {}, 4, 3, 90)"
                            ".asm['ttgir'].count('scf.for'))\n")
    assert lines == ["2", "2", "1"], lines



def test_a_constexpr_left_out_compiles_at_its_default():
    """``compile_check`` fills in the defaults of constexpr parameters a variant leaves out, as a launch does
    (``ASTSource`` alone does not, and the kernel then fails to compile where it reads one): the LayerNorm
    backward without its PREFETCH compiles, and as the default's kernel."""
    code = """
from megastride.kernels import compile_check as cc, layernorm as L
k = L._layer_norm_bwd_kernel
consts = dict(N=512, HAS_WEIGHT=True, HAS_BIAS=True, BLOCK_M=4, BLOCK_N=512, HAS_DS=True, HAS_DR=False)
sig = {p.name: "constexpr" if p.is_constexpr else "*fp32" if p.name.isupper() else "i32" for p in k.params}
assert cc.with_defaults(k, consts)["PREFETCH"] is False and cc.with_defaults(k, {"PREFETCH": True})["PREFETCH"] is True
line, ok = cc.report_line(k, "bwd", sig, consts, 8)
same, _ = cc.report_line(k, "bwd", sig, dict(consts, PREFETCH=False), 8)
print(ok, line == same, line)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("True True"), proc.stdout


@pytest.mark.parametrize("head_dim", [64, 128])
def test_the_flat_kernels_listed_tiles_compile_without_spills_or_serialised_products(head_dim):
    """The flat forward, dQ and dK/dV (kernels/flat.py) write a finished item inside their loops: placed after the
    item's last product, that read of the sums made ptxas serialise every wgmma of the loop; written where the next
    item starts, before the products that accumulate into what the write's branch yields, it does not. Every listed
    tile of the three (dQ with delta read and computed in it), natural order, the fixed pattern's mask kinds: compiled
    for sm_90 without spills or that warning."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", "--only", "flat natural",
                           "--all", "--ptxas", "--kinds", "24", "--head-dim", str(head_dim)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert len(lines) >= 6 and all(any(f" dQ, delta {how} " in line for line in lines) for how in ("here", "loaded")) \
        and any(" dK/dV " in line for line in lines), proc.stdout
    for line in lines:
        assert "spills 0/0 B" in line and "serialised" not in line, line


def test_dependent_launch_variants_compile_and_wait_before_any_global_access():
    """compile_check --pdl: the forward, dQ, dK/dV, merged and delta kernels as programmatic dependent launches
    (blocksparse.use_pdl) compile for sm_90, each with its griddepcontrol.wait before its first global load,
    store or asynchronous copy in the PTX and a launch_dependents after it (compile_check fails a variant
    otherwise)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    only = ["forward natural", "dQ natural, delta here", "dK/dV natural, dQ separate, split, last finish columns",
            "merged natural, whole columns", "delta"]
    proc = subprocess.run([sys.executable, "-m", "megastride.kernels.compile_check", "--pdl", "--kinds", "24",
                           *(f"--only={o}" for o in only)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    compiled = [line for line in proc.stdout.splitlines() if line.startswith("ok ") and "waits first" in line]
    for pattern in only:  # each asked-for kernel among them ("delta" also names dQ variants: the delta kernel's own line)
        assert any(pattern in line for line in compiled), (pattern, proc.stdout)
    assert any(line.startswith("ok   delta:") for line in compiled), proc.stdout
    assert proc.stdout.strip().endswith("all compiled"), proc.stdout
