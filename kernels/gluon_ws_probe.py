"""Probe: the fused dK/dV + dQ loop with its loads and its dQ reduces moved to warps of their own.

The fused dK/dV kernel (``gluon_bwd._dkdv_kernel`` with ``DQ_SEND``; ``gluon_fused_probe`` on full blocks) runs
one warpgroup a program, two programs an SM, 128 keys a program and 32 queries a step, and each step's
warpgroup also issues the next ring slot's TMA loads (after loading the list entry they need), waits for its
last dQ reduce to have read the staging buffer and issues the next. None of that is long, but all of it sits in
the chain of a step that already runs at about 39% of the tensor cores' peak for want of work to hide its
latencies (docs/benchmarks.md, thirty-seventh run). FlashAttention-3 keeps its consumer warpgroups to products
and exponentials: a producer warp issues the loads and a warp of its own sends dQ.

Here one program (CTA) holds two consumer warpgroups, each the fused loop of one 128-key column as before
(two columns a CTA, as two programs an SM were), and four single warps: for each consumer a loader (the K/V
tiles, then the ring's Q/dO tiles as the consumer frees slots) and a sender (each step's dQ staged by the
consumer, reduced into the fp16 sums by TMA; the staging buffer handed back once the reduce has read it).
mbarriers carry every hand-over:

    ready[s]  loader -> consumer   slot s's Q, dO landed (TMA transaction count)
    empty[s]  consumer -> loader   slot s's products are done (each step ends waiting for all of them)
    staged[b] consumer -> sender   dQ_t (times the scale, fp16) is in staging buffer b = t % STAGING
    free[b]   sender -> consumer   the reduce of buffer b has read it

Registers: the default partition (consumer A, 4 warps) and consumer B (a 4-warp worker) at 240 a thread, the
four single warps at 24 (``setmaxnreg``; Triton pads them to a warpgroup and gives the default partition what
is left of 168 a thread over 12 warps: 240). Lists, inputs and checks as ``gluon_fused_probe`` (full blocks
only, lse and delta 0 for timing, fp16 dQ sums times sm_scale). Without a GPU ``compile_ws`` compiles it for
sm_90 (tests/test_gluon_ws_probe.py); on a Hopper GPU

    python -m megastride.kernels.gluon_ws_probe --lists fixed --cases 1048576x64,262144x64 --out OUT

times it beside the fused probe at the production kernel's tiles, dK and dV checked against the Triton dK/dV
probe and dQ against fp32 PyTorch on sampled tiles.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)

from .gluon_bwd import _ws_bar as _bar, mma_layouts, tma_reduce_add
from .gluon_bwd_probe import _column_init, _tile_start, probe_inputs, tile_order
from .gluon_fused_probe import gluon_fused, probe_checks
from .ws_probe import BLOCK, _timed, add_list_options, write_rows

_LIST_BLOCK = gl.constexpr(BLOCK)


@gluon.jit
def _consumer(k_smem, v_smem, q_smem, do_smem, ds_smem, stage, bars, lse_smem, delta_smem, dkd, dvd, IDX, LSE, DELTA,
              lo, steps, krow, qk_scale, sm_scale, dq_scale, D: gl.constexpr, BLOCK_N: gl.constexpr,
              BLOCK_M: gl.constexpr, STAGES: gl.constexpr, STAGING: gl.constexpr, ROWS: gl.constexpr,
              DK_SMEM: gl.constexpr):
    """One column's loop on one warpgroup: the fused probe's step (S^T, dP^T, exponentials, dV, dS^T, dQ^T and
    dK, all waited for at the step's end) with the ring slot handed back and dQ staged for the sender instead
    of loads and reduces of its own; dK and dV out by TMA at the end. ROWS: the step's lse and delta loaded
    from global memory at its start (0) or read from the ring's slot, where the loader put them (1), when
    wanted. DK_SMEM: dK's product takes dS^T from shared memory (where dQ's reads it) rather than from registers,
    which then need not hold it while the step's last products run."""
    dtype: gl.constexpr = k_smem.dtype
    SUB: gl.constexpr = _LIST_BLOCK // BLOCK_M
    layouts: gl.constexpr = mma_layouts(4, BLOCK_M, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    p_layout: gl.constexpr = layouts[2]
    cols: gl.constexpr = gl.SliceLayout(0, s_layout)
    zero_s, dk, dv, pt16, dst16 = _column_init(BLOCK_N, BLOCK_M, D, dtype, s_layout, o_layout, p_layout)
    zero_q = gl.zeros([D, BLOCK_M], gl.float32, s_layout)
    mbarrier.wait(_bar(bars, 4, 0, STAGES, STAGING), 0)
    for t in range(0, steps):
        slot = t % STAGES
        mbarrier.wait(_bar(bars, 0, slot, STAGES, STAGING), (t // STAGES) & 1)
        s = warpgroup_mma(k_smem, q_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp = warpgroup_mma(v_smem, do_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        if ROWS == 0:
            rows = _tile_start(IDX, lo, t, SUB, BLOCK_M) + gl.arange(0, BLOCK_M, layout=cols)
            lse = gl.expand_dims(gl.load(LSE + rows), 0)
            delta = gl.expand_dims(gl.load(DELTA + rows), 0)
        # in flight: S^T_t, dP^T_t; wait for S^T_t
        s, dk, dst16 = warpgroup_mma_wait(num_outstanding=1, deps=(s, dk, dst16))
        if ROWS == 1:
            lse = lse_smem.index(slot).load(s_layout)
        pt = gl.exp2(s * qk_scale - lse)
        pt16 = gl.convert_layout(pt.to(dtype), p_layout)
        dv = warpgroup_mma(pt16, do_smem.index(slot), dv, is_async=True)
        # in flight: dP^T_t, dV_t; wait for dP^T_t
        dp, pt16 = warpgroup_mma_wait(num_outstanding=1, deps=(dp, pt16))
        if ROWS == 1:
            delta = delta_smem.index(slot).load(s_layout)
        dst = (pt * (dp - delta)).to(dtype)
        if not DK_SMEM:
            dst16 = gl.convert_layout(dst, p_layout)
        ds_smem.store(dst)  # the last step's dQ product, which read it, is done (the fence after it also orders
        # this step's reads of the slot's lse and delta before the loader's next TMA into it)
        fence_async_shared()
        dq = warpgroup_mma(k_smem.permute((1, 0)), ds_smem, zero_q, use_acc=False, is_async=True)
        if DK_SMEM:
            dk = warpgroup_mma(ds_smem, q_smem.index(slot), dk, is_async=True)
        else:
            dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
        # all three waited for (read any later, or while dK_t runs, ptxas serialises the loop's products)
        dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ))
        mbarrier.arrive(_bar(bars, 1, slot, STAGES, STAGING), count=1)  # the slot's products are done
        b = t % STAGING
        mbarrier.wait(_bar(bars, 3, b, STAGES, STAGING), ((t // STAGING) & 1) ^ 1)
        stage.index(b).permute((1, 0)).store((dq * dq_scale).to(stage.dtype))
        fence_async_shared()
        mbarrier.arrive(_bar(bars, 2, b, STAGES, STAGING), count=1)
    dv, dk, pt16, dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, pt16, dst16))
    k_smem.store((dk * sm_scale).to(dtype))  # K and V are read by nothing now
    v_smem.store(dv.to(dtype))
    fence_async_shared()
    if steps > 0:  # a padding column (no steps) writes nothing
        tma.async_copy_shared_to_global(dkd, [krow, 0], k_smem)
        tma.async_copy_shared_to_global(dvd, [krow, 0], v_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _loader(k_smem, v_smem, q_smem, do_smem, bars, lse_smem, delta_smem, qd, dod, kd, vd, lsed, deltad, IDX, lo, steps,
            krow, qrow, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, STAGING: gl.constexpr, ROWS: gl.constexpr):
    """One warp: a column's K and V, then its Q and dO tiles (and where ROWS, the rows' lse and delta) into the
    ring as the consumer frees the slots."""
    SUB: gl.constexpr = _LIST_BLOCK // BLOCK_M
    kv = _bar(bars, 4, 0, STAGES, STAGING)
    mbarrier.expect(kv, kd.block_type.nbytes + vd.block_type.nbytes)
    tma.async_copy_global_to_shared(kd, [krow, 0], kv, k_smem)
    tma.async_copy_global_to_shared(vd, [krow, 0], kv, v_smem)
    for t in range(0, steps):
        slot = t % STAGES
        # a fresh barrier passes a wait for phase 1: the first STAGES loads go straight in
        mbarrier.wait(_bar(bars, 1, slot, STAGES, STAGING), ((t // STAGES) & 1) ^ 1)
        start = qrow + _tile_start(IDX, lo, t, SUB, BLOCK_M)
        ready = _bar(bars, 0, slot, STAGES, STAGING)
        if ROWS == 1:
            mbarrier.expect(ready, qd.block_type.nbytes + dod.block_type.nbytes + lsed.block_type.nbytes
                            + deltad.block_type.nbytes)
            tma.async_copy_global_to_shared(lsed, [start // BLOCK_M, 0], ready, lse_smem.index(slot))
            tma.async_copy_global_to_shared(deltad, [start // BLOCK_M, 0], ready, delta_smem.index(slot))
        else:
            mbarrier.expect(ready, qd.block_type.nbytes + dod.block_type.nbytes)
        tma.async_copy_global_to_shared(qd, [start, 0], ready, q_smem.index(slot))
        tma.async_copy_global_to_shared(dod, [start, 0], ready, do_smem.index(slot))


@gluon.jit
def _sender(stage, bars, dqd, IDX, lo, steps, qrow, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
            STAGING: gl.constexpr):
    """One warp: each step's staged dQ reduced into the sums by TMA; a buffer handed back once its reduce has
    read it (``tma.store_wait`` counts this warp's own reduces)."""
    SUB: gl.constexpr = _LIST_BLOCK // BLOCK_M
    for t in range(0, steps):
        b = t % STAGING
        mbarrier.wait(_bar(bars, 2, b, STAGES, STAGING), (t // STAGING) & 1)
        tma_reduce_add(dqd, [qrow + _tile_start(IDX, lo, t, SUB, BLOCK_M), 0], stage.index(b))
        tma.store_wait(pendings=STAGING - 1)  # the reduce of step t - STAGING + 1 has read its buffer
        if t >= STAGING - 1:
            mbarrier.arrive(_bar(bars, 3, (t - STAGING + 1) % STAGING, STAGES, STAGING), count=1)
    tma.store_wait(pendings=0)


@gluon.jit
def _column(ORDER, PTR, item, N, HEADS: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr):
    """Column item ``item`` of ORDER (tile * HEADS + head): (first list entry, steps, its first key row and its
    head's first row in the (HEADS * N, D) views)."""
    it = gl.load(ORDER + item)
    col = it // HEADS
    bh = it % HEADS
    lo = gl.load(PTR + col // (_LIST_BLOCK // BLOCK_N))
    steps = (gl.load(PTR + col // (_LIST_BLOCK // BLOCK_N) + 1) - lo) * (_LIST_BLOCK // BLOCK_M)
    return lo, steps, bh * N + col * BLOCK_N, bh * N


@gluon.jit
def _alloc(dtype: gl.constexpr, sum_ty: gl.constexpr, D: gl.constexpr, BLOCK_N: gl.constexpr,
           BLOCK_M: gl.constexpr, STAGES: gl.constexpr, STAGING: gl.constexpr, smem: gl.constexpr,
           stage_layout: gl.constexpr, rows_layout: gl.constexpr):
    """A consumer's shared memory: K, V, the ring of Q and dO (and of the rows' lse and delta), dS^T, the dQ
    staging buffers, the mbarriers."""
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D], smem)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D], smem)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], smem)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], smem)
    ds_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_M],
                                        gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], dtype))
    stage = gl.allocate_shared_memory(sum_ty, [STAGING, BLOCK_M, D], stage_layout)
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], rows_layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], rows_layout)
    bars = gl.allocate_shared_memory(gl.int64, [2 * STAGES + 2 * STAGING + 1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2 * STAGES + 2 * STAGING + 1):
        mbarrier.init(bars.index(i), count=1)
    return k_smem, v_smem, q_smem, do_smem, ds_smem, stage, bars, lse_smem, delta_smem


@gluon.jit
def _ws_kernel(qd, dod, kd, vd, dkd, dvd, dqd, lsed, deltad, LSE, DELTA, PTR, IDX, ORDER, N, qk_scale, sm_scale,
               HEADS: gl.constexpr, D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
               STAGES: gl.constexpr, STAGING: gl.constexpr, CONSUMER_REGS: gl.constexpr,
               WORKER_REGS: gl.constexpr, ROWS: gl.constexpr, DK_SMEM: gl.constexpr, num_warps: gl.constexpr):
    gl.static_assert(num_warps == 4, "the default partition is one consumer warpgroup")
    gl.static_assert(STAGES >= 2, "the ring needs two slots")
    dtype: gl.constexpr = qd.dtype
    smem: gl.constexpr = qd.layout
    sum_ty: gl.constexpr = dqd.dtype
    stage_layout: gl.constexpr = dqd.layout
    rows_layout: gl.constexpr = lsed.layout
    a_lo, a_steps, a_krow, a_qrow = _column(ORDER, PTR, 2 * gl.program_id(0), N, HEADS, BLOCK_N, BLOCK_M)
    b_lo, b_steps, b_krow, b_qrow = _column(ORDER, PTR, 2 * gl.program_id(0) + 1, N, HEADS, BLOCK_N, BLOCK_M)
    a = _alloc(dtype, sum_ty, D, BLOCK_N, BLOCK_M, STAGES, STAGING, smem, stage_layout, rows_layout)
    b = _alloc(dtype, sum_ty, D, BLOCK_N, BLOCK_M, STAGES, STAGING, smem, stage_layout, rows_layout)
    a_lse = LSE + a_qrow
    a_delta = DELTA + a_qrow
    b_lse = LSE + b_qrow
    b_delta = DELTA + b_qrow
    gl.warp_specialize([
        (_consumer, (a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], dkd, dvd, IDX, a_lse, a_delta, a_lo,
                     a_steps, a_krow, qk_scale, sm_scale, sm_scale, D, BLOCK_N, BLOCK_M, STAGES, STAGING, ROWS,
                     DK_SMEM)),
        (_consumer, (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], dkd, dvd, IDX, b_lse, b_delta, b_lo,
                     b_steps, b_krow, qk_scale, sm_scale, sm_scale, D, BLOCK_N, BLOCK_M, STAGES, STAGING, ROWS,
                     DK_SMEM)),
        (_loader, (a[0], a[1], a[2], a[3], a[6], a[7], a[8], qd, dod, kd, vd, lsed, deltad, IDX, a_lo, a_steps,
                   a_krow, a_qrow, BLOCK_M, STAGES, STAGING, ROWS)),
        (_loader, (b[0], b[1], b[2], b[3], b[6], b[7], b[8], qd, dod, kd, vd, lsed, deltad, IDX, b_lo, b_steps,
                   b_krow, b_qrow, BLOCK_M, STAGES, STAGING, ROWS)),
        (_sender, (a[5], a[6], dqd, IDX, a_lo, a_steps, a_qrow, BLOCK_M, STAGES, STAGING)),
        (_sender, (b[5], b[6], dqd, IDX, b_lo, b_steps, b_qrow, BLOCK_M, STAGES, STAGING)),
    ], [4, 1, 1, 1, 1], [CONSUMER_REGS, WORKER_REGS, WORKER_REGS, WORKER_REGS, WORKER_REGS])


def _descriptors(q, k, v, do, dk, dv, dq, lse, delta, block_n: int, block_m: int):
    """Host TMA descriptors over the (heads * n, D) views: Q, dO and the dQ sums in boxes of ``block_m`` rows,
    K, V, dK and dV in boxes of ``block_n``; lse and delta in boxes of ``block_m`` values."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    def desc(x, rows):
        flat = x.reshape(-1, x.shape[-1])
        ty = gl.float16 if x.dtype == torch.float16 else gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float32
        layout = gl.NVMMASharedLayout.get_default_for([rows, flat.shape[1]], ty)
        return TensorDescriptor.from_tensor(flat, [rows, flat.shape[1]], layout)

    def rows(x):  # (heads, n) fp32 as (heads * n / block_m, block_m), a box a step
        flat = x.reshape(-1, block_m)
        layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
        return TensorDescriptor.from_tensor(flat, [1, block_m], layout)

    return (desc(q, block_m), desc(do, block_m), desc(k, block_n), desc(v, block_n), desc(dk, block_n),
            desc(dv, block_n), desc(dq, block_m), rows(lse), rows(delta))


def gluon_ws(q, k, v, do, lse, delta, col_ptr, col_idx, order=None, *, block_n: int = 128, block_m: int = 32,
             stages: int = 4, staging: int = 2, consumer_regs: int = 240, worker_regs: int = 24, rows: int = 1,
             dk_smem: bool = True):
    """dK, dV and dQ of the probe's lists in one launch of the warp-specialised loop: (dk, dv, dq), dq summed in
    fp16 (zeroed before the launch) and cast to the inputs' dtype after it."""
    heads, n, d = q.shape
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dq16 = torch.zeros(q.shape, device=q.device, dtype=torch.float16)
    if order is None:
        order = tile_order(col_ptr, heads, block_n, "tiles")
    if order.numel() % 2:
        raise ValueError(f"the probe takes two columns a program: {order.numel()} items")
    scale = d ** -0.5
    descs = _descriptors(q, k, v, do, dk, dv, dq16, lse, delta, block_n, block_m)
    _ws_kernel[(order.numel() // 2,)](*descs, lse, delta, col_ptr, col_idx, order, n, scale * 1.4426950408889634,
                                      scale, HEADS=heads, D=d, BLOCK_N=block_n, BLOCK_M=block_m, STAGES=stages,
                                      STAGING=staging, CONSUMER_REGS=consumer_regs, WORKER_REGS=worker_regs,
                                      ROWS=rows, DK_SMEM=dk_smem, num_warps=4)
    return dk, dv, dq16.to(q.dtype)


def compile_ws(head_dim: int = 64, block_n: int = 128, block_m: int = 32, stages: int = 4, staging: int = 2,
               consumer_regs: int = 240, worker_regs: int = 24, rows: int = 1, dk_smem: bool = True,
               arch: int = 90):
    """The warp-specialised probe compiled for ``arch`` without a GPU (bf16 inputs, fp16 sums)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    def desc(rows, ty, gty):
        layout = gl.NVMMASharedLayout.get_default_for([rows, head_dim], gty)
        return f"tensordesc<{ty}[{rows}, {head_dim}],{layout!r}>"

    consts = {"HEADS": 8, "D": head_dim, "BLOCK_N": block_n, "BLOCK_M": block_m, "STAGES": stages,
              "STAGING": staging, "CONSUMER_REGS": consumer_regs, "WORKER_REGS": worker_regs, "ROWS": rows,
              "DK_SMEM": dk_smem, "num_warps": 4}
    rows_layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    rows_desc = f"tensordesc<fp32[1, {block_m}],{rows_layout!r}>"
    sig = {"qd": desc(block_m, "bf16", gl.bfloat16), "dod": desc(block_m, "bf16", gl.bfloat16),
           "kd": desc(block_n, "bf16", gl.bfloat16), "vd": desc(block_n, "bf16", gl.bfloat16),
           "dkd": desc(block_n, "bf16", gl.bfloat16), "dvd": desc(block_n, "bf16", gl.bfloat16),
           "dqd": desc(block_m, "fp16", gl.float16), "lsed": rows_desc, "deltad": rows_desc, "LSE": "*fp32",
           "DELTA": "*fp32", "PTR": "*i32", "IDX": "*i32",
           "ORDER": "*i32", "N": "i32", "qk_scale": "fp32", "sm_scale": "fp32",
           **{name: "constexpr" for name in consts}}
    src = GluonASTSource(fn=_ws_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})


# (ring slots, staging buffers, lse and delta through the ring, dK's dS^T from shared memory) of the
# warp-specialised loop to time
SETTINGS = ((4, 2, 1, True), (3, 2, 1, True), (5, 2, 1, True), (4, 1, 1, True), (4, 2, 0, True), (4, 2, 1, False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.gluon_ws_probe", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="1048576x64,262144x64", help="comma-separated NxD (heads = 512 / D)")
    p.add_argument("--settings", default=None, help="STAGESxSTAGING[r][d] items, comma-separated (r: lse and delta "
                   "through the ring; d: dK's dS^T from shared memory; default: SETTINGS)")
    p.add_argument("--repeat", type=int, default=2, help="times each kernel is timed, alternating (the spread "
                   "between them is the measurement's)")
    add_list_options(p)
    p.add_argument("--out", default=None, help="folder for gluon_ws_probe.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a Hopper GPU (without one, compile_ws compiles it for sm_90)")
    settings = SETTINGS
    if args.settings:
        settings = []
        for item in args.settings.split(","):
            m = re.fullmatch(r"(\d+)x(\d+)(r?)(d?)", item)
            if not m:
                p.error(f"--settings: {item!r} is not STAGESxSTAGING[r][d]")
            settings.append((int(m[1]), int(m[2]), int(bool(m[3])), bool(m[4])))
    rows = []
    for n, d, heads, ptr, idx, pairs, q, k, v, do, lse, delta, base in probe_inputs(args):
        col_ptr, col_idx, same_kv, same_dq = probe_checks(q, k, v, do, lse, delta, ptr, idx)

        def same(got):
            return {**same_kv(got), **same_dq(got[2])}

        order = tile_order(col_ptr, heads, 128, "tiles")
        for rep in range(args.repeat):
            # the production kernel's loop on full blocks: 128 keys, 32 queries, 4 slots, fp16 sums
            rows.append(_timed(dict(base, kernel="fused gluon", block_n=128, block_m=32, stages=4, staging=1,
                                    repeat=rep),
                               lambda: gluon_fused(q, k, v, do, lse, delta, col_ptr, col_idx, order, block_n=128,
                                                   block_m=32, stages=4, swap=True, sums=torch.float16),
                               10 * pairs * d, same))
            for stages, staging, via_ring, dk_smem in settings:
                rows.append(_timed(dict(base, kernel="ws gluon", block_n=128, block_m=32, stages=stages,
                                        staging=staging, rows_via_ring=via_ring, dk_smem=dk_smem, repeat=rep),
                                   lambda: gluon_ws(q, k, v, do, lse, delta, col_ptr, col_idx, order, stages=stages,
                                                    staging=staging, rows=via_ring, dk_smem=dk_smem),
                                   10 * pairs * d, same))
    if args.out:
        write_rows(Path(args.out, "gluon_ws_probe.json"), rows, visits=args.visits, lists=args.lists)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
