"""Probe: does the backward's dK/dV loop written in Gluon, its four products a step asynchronous and the
exponentials and dS under them, pass the rate of the loop Triton compiles (``ws_probe --kernels dkdv``)?

Triton issues each product of our dK/dV step and waits for it before anything reads its result, so the
step's two score products, its exponentials, the dV product, dS and the dK product run one after another
(a step compiles to 24 HGMMA and 32 MUFU an iteration, no overlap). Gluon issues warpgroup products
asynchronously and waits by count, so this kernel runs, for query tile t of a key tile's column:

    issue S^T_t = K Q_t^T, dP^T_t = V dO_t^T           (dV_{t-1} and dK_{t-1} still in flight)
    wait until one product is left                     (dV_{t-1}, dK_{t-1}, S^T_t done; dP^T_t running)
    P^T_t = exp2(S^T_t - lse_t)                        (under dP^T_t)
    issue dV += P^T_t dO_t
    wait until one product is left                     (dP^T_t done; dV running)
    dS^T_t = P^T_t * (dP^T_t - delta_t)                (under dV)
    issue dK += dS^T_t Q_t                             (runs under the next step's score products)

Q and dO tiles arrive by TMA into a ring of ``STAGES`` slots with an mbarrier each; a slot is refilled once
the products of its step are done. One warpgroup a program (four warps), ``BLOCK_N`` keys (64 or 128) over
``BLOCK_M`` queries a step (32 or 64); lists as ``ws_probe`` builds them (CSR over 128-blocks, ``--lists``),
full blocks only, lse and delta 0 for timing. The dQ loop (``_gluon_dq_kernel``) is built the same way
with its three products: both score products, the exponentials under dP, dS, the dQ product left running
into the next step. Programs take their (tile, head) items in one of three orders (``tile_order``).

    python -m megastride.kernels.gluon_bwd_probe --out OUT     # on a Hopper GPU: prints, writes OUT/gluon_bwd_probe.json

Without a GPU ``compile_gluon_dkdv`` and ``compile_gluon_dq`` compile them for sm_90
(tests/test_gluon_bwd_probe.py); Gluon has no interpreter, so the dK/dV values are checked on the GPU
against the Triton probe's (``ws_probe.probe_dkdv``) and dQ against fp32 PyTorch on sampled tiles
(``dq_reference``). On the H200 (docs/benchmarks.md, sixteenth run) both loops only matched our kernels at
head dim 64 (except dK/dV in the "heads" order, 8% under ours at 1M) and ran 8-14% under them at 128.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_init, warpgroup_mma_wait)

from .gluon_bwd import mma_layouts, alloc_tiles
from .ws_probe import BLOCK, _timed, add_list_options, column_lists, gpu_cases, probe_dkdv, write_rows

_LIST_BLOCK = gl.constexpr(BLOCK)  # the lists' block (128 queries or keys an entry)


@gluon.jit
def _tile_start(IDX, lo, t, SUB: gl.constexpr, BLOCK_M: gl.constexpr):
    """First query row of step t: sub-tile t % SUB of list entry t // SUB (a 128-query block)."""
    return gl.load(IDX + lo + t // SUB) * (SUB * BLOCK_M) + (t % SUB) * BLOCK_M


@gluon.jit
def _head_desc(X, bh, N, D: gl.constexpr, ROWS: gl.constexpr, layout: gl.constexpr):
    """A TMA descriptor over head bh's (N, D) rows of X (heads, N, D), in boxes of ROWS rows."""
    return tma.make_tensor_descriptor(X + bh * N * D, shape=[N, D], strides=[D, 1], block_shape=[ROWS, D],
                                      layout=layout)


@gluon.jit
def _issue_pair(ad, bd, a_smem, b_smem, bars, IDX, lo, t, STAGES: gl.constexpr, SUB: gl.constexpr,
                ROWS: gl.constexpr):
    """TMA loads of step t's two tiles (Q and dO, or K and V) into slot t % STAGES, on that slot's barrier."""
    slot = t % STAGES
    start = _tile_start(IDX, lo, t, SUB, ROWS)
    mbarrier.expect(bars.index(slot), ad.block_type.nbytes + bd.block_type.nbytes)
    tma.async_copy_global_to_shared(ad, [start, 0], bars.index(slot), a_smem.index(slot))
    tma.async_copy_global_to_shared(bd, [start, 0], bars.index(slot), b_smem.index(slot))


@gluon.jit
def _prologue(fa, fb, ra, rb, IDX, lo, steps, first, dtype: gl.constexpr, D: gl.constexpr, ROWS: gl.constexpr,
              RING_ROWS: gl.constexpr, STAGES: gl.constexpr, SUB: gl.constexpr, layout: gl.constexpr):
    """Shared memory for the two tiles a program keeps (boxes of ``fa`` and ``fb`` at row ``first``: K and V,
    or Q and dO) and for the ring of the two it streams (``ra``, ``rb``); an mbarrier a slot and one for the
    kept tiles (the last); the kept tiles' loads and the ring's first STAGES steps issued."""
    a_smem, b_smem, ra_smem, rb_smem, bars = alloc_tiles(dtype, D, ROWS, RING_ROWS, STAGES, layout)
    mbarrier.expect(bars.index(STAGES), fa.block_type.nbytes + fb.block_type.nbytes)
    tma.async_copy_global_to_shared(fa, [first, 0], bars.index(STAGES), a_smem)
    tma.async_copy_global_to_shared(fb, [first, 0], bars.index(STAGES), b_smem)
    for b in gl.static_range(STAGES):
        if b < steps:
            _issue_pair(ra, rb, ra_smem, rb_smem, bars, IDX, lo, b, STAGES, SUB, RING_ROWS)
    return a_smem, b_smem, ra_smem, rb_smem, bars


@gluon.jit
def _column_program(Q, K, V, DO, DK, DV, LSE, DELTA, ORDER, N, HEADS: gl.constexpr, D: gl.constexpr,
                    BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr):
    """A dK/dV program's item (``tile_order``: ORDER[program] = tile * HEADS + head; the key tile's BLOCK_N keys
    belong to 128-key column tile // (128 // BLOCK_N)): its key tile, its head's lse and delta rows, and TMA
    descriptors over its head's Q, dO (BLOCK_M rows a box), K, V, dK and dV (BLOCK_N rows)."""
    dtype: gl.constexpr = Q.dtype.element_ty
    item = gl.load(ORDER + gl.program_id(0))
    pid = item // HEADS
    bh = (item % HEADS).to(gl.int64)
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    return (pid, bh, LSE + bh * N, DELTA + bh * N, _head_desc(Q, bh, N, D, BLOCK_M, smem),
            _head_desc(DO, bh, N, D, BLOCK_M, smem), _head_desc(K, bh, N, D, BLOCK_N, smem),
            _head_desc(V, bh, N, D, BLOCK_N, smem), _head_desc(DK, bh, N, D, BLOCK_N, smem),
            _head_desc(DV, bh, N, D, BLOCK_N, smem))


@gluon.jit
def _column_init(BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, D: gl.constexpr, dtype: gl.constexpr,
                 s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
    """A dK/dV column's starting values: the score products' zero accumulator, dK and dV (zero, as warpgroup
    accumulators), and the A operands of the products in flight, P^T and dS^T, kept alive (in registers)
    until the wait that ends them."""
    return (gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout),
            warpgroup_mma_init(gl.zeros([BLOCK_N, D], gl.float32, o_layout)),
            warpgroup_mma_init(gl.zeros([BLOCK_N, D], gl.float32, o_layout)),
            gl.zeros([BLOCK_N, BLOCK_M], dtype, p_layout), gl.zeros([BLOCK_N, BLOCK_M], dtype, p_layout))


@gluon.jit
def _score_step(k_smem, v_smem, q_smem, do_smem, bars, zero_s, IDX, LSE, DELTA, lo, t, STAGES: gl.constexpr,
                SUB: gl.constexpr, BLOCK_M: gl.constexpr, cols: gl.constexpr):
    """Step t of a dK/dV column: wait for its ring slot, issue S^T_t = K Q_t^T and dP^T_t = V dO_t^T
    (asynchronous), load its rows' lse and delta: (S^T_t, dP^T_t in flight, first row, lse, delta)."""
    slot = t % STAGES
    mbarrier.wait(bars.index(slot), (t // STAGES) & 1)
    s = warpgroup_mma(k_smem, q_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(v_smem, do_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    start = _tile_start(IDX, lo, t, SUB, BLOCK_M)
    rows = start + gl.arange(0, BLOCK_M, layout=cols)
    return s, dp, start, gl.load(LSE + rows), gl.load(DELTA + rows)


@gluon.jit
def _write_dkdv(dk, dv, k_smem, v_smem, dkd, dvd, bars, first, sm_scale, STAGES: gl.constexpr):
    """A dK/dV program's end: the barriers invalidated, dK (scaled) and dV through K's and V's slots (read by
    nothing now) to rows first.. by TMA."""
    dtype: gl.constexpr = k_smem.dtype
    for i in gl.static_range(STAGES + 1):
        mbarrier.invalidate(bars.index(i))
    k_smem.store((dk * sm_scale).to(dtype))
    v_smem.store(dv.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(dkd, [first, 0], k_smem)
    tma.async_copy_shared_to_global(dvd, [first, 0], v_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _gluon_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, PTR, IDX, ORDER, N, qk_scale, sm_scale, HEADS: gl.constexpr,
                       D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
                       num_warps: gl.constexpr):
    gl.static_assert(STAGES >= 2, "the ring needs two slots: step t's loads land while step t-1's products run")
    dtype: gl.constexpr = Q.dtype.element_ty
    SUB: gl.constexpr = _LIST_BLOCK // BLOCK_M  # steps a 128-query list entry
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    pid, bh, LSE, DELTA, qd, dod, kd, vd, dkd, dvd = _column_program(Q, K, V, DO, DK, DV, LSE, DELTA, ORDER, N, HEADS,
                                                                     D, BLOCK_N, BLOCK_M)

    # S^T and dP^T: (BLOCK_N keys, BLOCK_M queries); dK, dV: (BLOCK_N, D); P^T and dS^T as the A operand
    layouts: gl.constexpr = mma_layouts(num_warps, BLOCK_M, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    p_layout: gl.constexpr = layouts[2]
    cols: gl.constexpr = gl.SliceLayout(0, s_layout)

    lo = gl.load(PTR + pid // (_LIST_BLOCK // BLOCK_N))
    steps = (gl.load(PTR + pid // (_LIST_BLOCK // BLOCK_N) + 1) - lo) * SUB
    k_smem, v_smem, q_smem, do_smem, bars = _prologue(kd, vd, qd, dod, IDX, lo, steps, pid * BLOCK_N, dtype, D,
                                                      BLOCK_N, BLOCK_M, STAGES, SUB, smem)
    mbarrier.wait(bars.index(STAGES), 0)

    zero_s, dk, dv, pt16, dst16 = _column_init(BLOCK_N, BLOCK_M, D, dtype, s_layout, o_layout, p_layout)
    for t in range(0, steps):
        slot = t % STAGES
        s, dp, start, lse, delta = _score_step(k_smem, v_smem, q_smem, do_smem, bars, zero_s, IDX, LSE, DELTA, lo, t,
                                               STAGES, SUB, BLOCK_M, cols)
        # in flight, oldest first: dV_{t-1}, dK_{t-1}, S^T_t, dP^T_t; wait for all but dP^T_t
        s, dv, dk, pt16, dst16 = warpgroup_mma_wait(num_outstanding=1, deps=(s, dv, dk, pt16, dst16))
        if t >= 1:  # step t-1's products are done: its slot takes step t-1+STAGES
            if t - 1 + STAGES < steps:
                _issue_pair(qd, dod, q_smem, do_smem, bars, IDX, lo, t - 1 + STAGES, STAGES, SUB, BLOCK_M)
        pt = gl.exp2(s * qk_scale - gl.expand_dims(lse, 0))
        pt16 = gl.convert_layout(pt.to(dtype), p_layout)
        dv = warpgroup_mma(pt16, do_smem.index(slot), dv, is_async=True)
        # in flight: dP^T_t, dV_t; wait for dP^T_t
        dp, pt16 = warpgroup_mma_wait(num_outstanding=1, deps=(dp, pt16))
        dst = pt * (dp - gl.expand_dims(delta, 0))
        dst16 = gl.convert_layout(dst.to(dtype), p_layout)
        dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
    dv, dk, pt16, dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, pt16, dst16))
    _write_dkdv(dk, dv, k_smem, v_smem, dkd, dvd, bars, pid * BLOCK_N, sm_scale, STAGES)


@gluon.jit
def _gluon_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, PTR, IDX, ORDER, N, qk_scale, sm_scale, HEADS: gl.constexpr,
                     D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                     num_warps: gl.constexpr):
    """dQ of BLOCK_M query rows over their row's key blocks, BLOCK_N keys a step: both score products issued,
    the exponentials under dP, dS, then the dQ product issued and left running under the next step's score
    products. Q and dO stay in shared memory; K and V tiles stream through the ring."""
    gl.static_assert(STAGES >= 2, "the ring needs two slots: step t's loads land while step t-1's products run")
    dtype: gl.constexpr = Q.dtype.element_ty
    SUB: gl.constexpr = _LIST_BLOCK // BLOCK_N  # steps a 128-key list entry
    item = gl.load(ORDER + gl.program_id(0))
    pid = item // HEADS  # BLOCK_M rows of 128-query row pid // (128 // BLOCK_M)
    bh = (item % HEADS).to(gl.int64)
    LSE += bh * N
    DELTA += bh * N
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    qd = _head_desc(Q, bh, N, D, BLOCK_M, smem)
    dod = _head_desc(DO, bh, N, D, BLOCK_M, smem)
    dqd = _head_desc(DQ, bh, N, D, BLOCK_M, smem)
    kd = _head_desc(K, bh, N, D, BLOCK_N, smem)
    vd = _head_desc(V, bh, N, D, BLOCK_N, smem)
    layouts: gl.constexpr = mma_layouts(num_warps, BLOCK_N, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    p_layout: gl.constexpr = layouts[2]
    rows_l: gl.constexpr = gl.SliceLayout(1, s_layout)

    lo = gl.load(PTR + pid // (_LIST_BLOCK // BLOCK_M))
    steps = (gl.load(PTR + pid // (_LIST_BLOCK // BLOCK_M) + 1) - lo) * SUB
    q_smem, do_smem, k_smem, v_smem, bars = _prologue(qd, dod, kd, vd, IDX, lo, steps, pid * BLOCK_M, dtype, D,
                                                      BLOCK_M, BLOCK_N, STAGES, SUB, smem)
    rows = pid * BLOCK_M + gl.arange(0, BLOCK_M, layout=rows_l)
    lse = gl.expand_dims(gl.load(LSE + rows), 1)
    delta = gl.expand_dims(gl.load(DELTA + rows), 1)
    mbarrier.wait(bars.index(STAGES), 0)

    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    dq = warpgroup_mma_init(gl.zeros([BLOCK_M, D], gl.float32, o_layout))
    ds16 = gl.zeros([BLOCK_M, BLOCK_N], dtype, p_layout)
    for t in range(0, steps):
        slot = t % STAGES
        mbarrier.wait(bars.index(slot), (t // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp = warpgroup_mma(do_smem, v_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        # in flight, oldest first: dQ_{t-1}, S_t, dP_t; wait for all but dP_t
        s, dq, ds16 = warpgroup_mma_wait(num_outstanding=1, deps=(s, dq, ds16))
        if t >= 1:  # step t-1's products are done: its slot takes step t-1+STAGES
            if t - 1 + STAGES < steps:
                _issue_pair(kd, vd, k_smem, v_smem, bars, IDX, lo, t - 1 + STAGES, STAGES, SUB, BLOCK_N)
        p = gl.exp2(s * qk_scale - lse)
        dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp, ))
        ds16 = gl.convert_layout((p * (dp - delta)).to(dtype), p_layout)
        dq = warpgroup_mma(ds16, k_smem.index(slot), dq, is_async=True)
    dq, ds16 = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds16))
    for i in gl.static_range(STAGES + 1):
        mbarrier.invalidate(bars.index(i))
    q_smem.store((dq * sm_scale).to(dtype))  # Q is read by nothing now
    fence_async_shared()
    tma.async_copy_shared_to_global(dqd, [pid * BLOCK_M, 0], q_smem)
    tma.store_wait(pendings=0)


ORDERS = ("heads", "tiles", "heaviest")


def tile_order(ptr: torch.Tensor, heads: int, tile: int, mode: str = "heads") -> torch.Tensor:
    """(tile, head) items as tile * heads + head, int32, for tiles of ``tile`` rows of the 128-blocks whose CSR
    list pointers are ``ptr``, in the order programs take them: "heads" (one head's tiles after another, in
    index order: a grid of (tiles, heads)), "tiles" (every head's tile together, tiles in index order: our
    kernels' way, ``blocksparse._program_tile``) or "heaviest" (as "tiles", the tiles of the longest lists
    first)."""
    if mode not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {mode!r}")
    blocks = len(ptr) - 1
    tiles = torch.arange(blocks * (BLOCK // tile), device=ptr.device)
    hs = torch.arange(heads, device=ptr.device)
    if mode == "heads":
        return (tiles[None, :] * heads + hs[:, None]).reshape(-1).int()
    if mode == "heaviest":
        work = (ptr[1:] - ptr[:-1]).long()[tiles // (BLOCK // tile)]
        tiles = tiles[torch.argsort(-work, stable=True)]
    return (tiles[:, None] * heads + hs).reshape(-1).int()


def gluon_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx, order=None, *, block_n: int = 64, block_m: int = 64,
               stages: int = 3, num_warps: int = 4):
    """The Gluon dK/dV probe on (heads, n, D) bf16/fp16 CUDA tensors, lse (base 2, scaled scores) and delta
    (heads, n) fp32, over CSR column lists of 128-blocks (``ws_probe.column_lists``), programs taking the
    (key tile, head) items of ``order`` (``tile_order`` of ``block_n``; None: its "heads" order): (dk, dv)."""
    heads, n, d = q.shape
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    scale = d ** -0.5
    if order is None:
        order = tile_order(col_ptr, heads, block_n)
    _gluon_dkdv_kernel[(order.numel(),)](q, k, v, do, dk, dv, lse, delta, col_ptr, col_idx, order, n,
                                         scale * 1.4426950408889634, scale, HEADS=heads, D=d, BLOCK_N=block_n,
                                         BLOCK_M=block_m, STAGES=stages, num_warps=num_warps)
    return dk, dv


def gluon_dq(q, k, v, do, lse, delta, ptr, idx, order=None, *, block_m: int = 64, block_n: int = 64, stages: int = 3,
             num_warps: int = 4):
    """The Gluon dQ probe on (heads, n, D) tensors over CSR row lists of 128-blocks, programs taking the
    (query tile, head) items of ``order`` (``tile_order`` of ``block_m``; None: its "heads" order): dq."""
    heads, n, d = q.shape
    dq = torch.empty_like(q)
    scale = d ** -0.5
    if order is None:
        order = tile_order(ptr, heads, block_m)
    _gluon_dq_kernel[(order.numel(),)](q, k, v, do, dq, lse, delta, ptr, idx, order, n, scale * 1.4426950408889634,
                                       scale, HEADS=heads, D=d, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                                       num_warps=num_warps)
    return dq


def dq_reference(q, k, v, do, lse, delta, ptr, idx, tiles, block_m: int = 64) -> torch.Tensor:
    """dQ of the query tiles ``tiles`` (of ``block_m`` rows, every head) in fp32 PyTorch over their row lists,
    from the same lse and delta: (heads, len(tiles) * block_m, D)."""
    heads, n, d = q.shape
    scale = d ** -0.5
    out = []
    for tile in tiles:
        r0 = tile * block_m
        keys = (idx[ptr[r0 // BLOCK]:ptr[r0 // BLOCK + 1]].long()[:, None] * BLOCK
                + torch.arange(BLOCK, device=q.device)).reshape(-1)
        qf, dof = q[:, r0:r0 + block_m].float(), do[:, r0:r0 + block_m].float()
        kf, vf = k[:, keys].float(), v[:, keys].float()
        p = torch.exp2(qf @ kf.transpose(1, 2) * (scale * 1.4426950408889634) - lse[:, r0:r0 + block_m, None])
        ds = p * (dof @ vf.transpose(1, 2) - delta[:, r0:r0 + block_m, None])
        out.append(ds @ kf * scale)
    return torch.cat(out, 1)


def compile_gluon_dq(head_dim: int = 64, block_m: int = 64, block_n: int = 64, stages: int = 3, num_warps: int = 4,
                     arch: int = 90):
    """The Gluon dQ probe compiled for ``arch`` without a GPU (bf16)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    consts = {"HEADS": 8, "D": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n, "STAGES": stages,
              "num_warps": num_warps}
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "DO": "*bf16", "DQ": "*bf16", "LSE": "*fp32", "DELTA": "*fp32",
           "PTR": "*i32", "IDX": "*i32", "ORDER": "*i32", "N": "i32", "qk_scale": "fp32", "sm_scale": "fp32",
           **{name: "constexpr" for name in consts}}
    src = GluonASTSource(fn=_gluon_dq_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def compile_gluon_dkdv(head_dim: int = 64, block_n: int = 64, block_m: int = 64, stages: int = 3, num_warps: int = 4,
                       arch: int = 90):
    """The Gluon dK/dV probe compiled for ``arch`` without a GPU (bf16)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    consts = {"HEADS": 8, "D": head_dim, "BLOCK_N": block_n, "BLOCK_M": block_m, "STAGES": stages,
              "num_warps": num_warps}
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "DO": "*bf16", "DK": "*bf16", "DV": "*bf16", "LSE": "*fp32",
           "DELTA": "*fp32", "PTR": "*i32", "IDX": "*i32", "ORDER": "*i32", "N": "i32", "qk_scale": "fp32",
           "sm_scale": "fp32", **{name: "constexpr" for name in consts}}
    src = GluonASTSource(fn=_gluon_dkdv_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


# dK/dV: (keys a program, queries a step, stages) at four warps; the first of each head dim also in index order
SETTINGS = {64: ((64, 64, 3), (64, 64, 4), (128, 32, 4), (64, 32, 4)),
            128: ((64, 64, 2), (64, 32, 3), (64, 32, 4))}
# dQ: (queries a program, keys a step, stages) at four warps
DQ_SETTINGS = {64: ((64, 64, 3), (64, 64, 4), (64, 128, 3)), 128: ((64, 64, 2), (64, 32, 3), (64, 64, 3))}
# the Triton dK/dV probe's settings beside them: (query rows, warps, stages), its best from ws_probe runs first
TRITON = {64: ((32, 4, 5),), 128: ((32, 4, 5),)}


def _rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def probe_inputs(args: argparse.Namespace):
    """For each case of ``args`` (``ws_probe.gpu_cases``), after setting the allocator in-kernel TMA descriptors
    need: (n, head dim, heads, row ptr, row idx, visited pairs, q, k, v, dO, lse, delta, the row's common
    fields). Timing inputs as ws_probe's: random bf16 q, k, v, dO; lse 0 and delta 0 keep every exponential
    finite."""
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    for n, d, heads, ptr, idx in gpu_cases(args):
        pairs = BLOCK * BLOCK * int(ptr[-1]) * heads
        q, k, v, do = (torch.randn(heads, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        lse, delta = torch.zeros(heads, n, device="cuda"), torch.zeros(heads, n, device="cuda")
        yield n, d, heads, ptr, idx, pairs, q, k, v, do, lse, delta, dict(n=n, head_dim=d, heads=heads, lists=args.lists)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.gluon_bwd_probe", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="1048576x64,262144x64,262144x128,1048576x128",
                   help="comma-separated NxD (heads = 512 / D)")
    p.add_argument("--kernels", default="dkdv,dq", help="dkdv, dq or both")
    add_list_options(p)
    p.add_argument("--out", default=None, help="folder for gluon_bwd_probe.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a Hopper GPU (without one, compile_gluon_dkdv and compile_gluon_dq compile it for sm_90)")
    kernels = set(args.kernels.split(","))
    rows = []
    for n, d, heads, ptr, idx, pairs, q, k, v, do, lse, delta, base in probe_inputs(args):
        if "dkdv" in kernels:
            # the two probes compute the same function of these inputs: the Gluon values against the Triton probe's
            col_ptr, col_idx = (t.cuda() for t in column_lists(ptr.cpu(), idx.cpu()))
            ref_dk, ref_dv = probe_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx)
            seen = torch.repeat_interleave(col_ptr.diff() > 0, BLOCK)  # key rows some query block visits

            def same(got):
                return {"max_rel_diff_dk": _rel_diff(got[0][:, seen], ref_dk[:, seen]),
                        "max_rel_diff_dv": _rel_diff(got[1][:, seen], ref_dv[:, seen])}

            for block_m, warps, stages in TRITON[d]:
                rows.append(_timed(dict(base, kernel="dkdv triton", block_n=BLOCK, block_m=block_m, warps=warps,
                                        stages=stages),
                                   lambda: probe_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx, block_m=block_m,
                                                      num_warps=warps, num_stages=stages), 8 * pairs * d, same))
            for i, (block_n, block_m, stages) in enumerate(SETTINGS[d]):
                for mode in ORDERS if i == 0 else ORDERS[:1]:
                    order = tile_order(col_ptr, heads, block_n, mode)
                    rows.append(_timed(dict(base, kernel="dkdv gluon", block_n=block_n, block_m=block_m, warps=4,
                                            stages=stages, order=mode),
                                       lambda: gluon_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx, order,
                                                          block_n=block_n, block_m=block_m, stages=stages),
                                       8 * pairs * d, same))
        if "dq" in kernels:
            # against fp32 PyTorch on a few query tiles of each head (the row lists' first non-empty, middle, last)
            nonempty = torch.nonzero(ptr.diff() > 0).flatten().cpu()
            tiles = [int(nonempty[0]) * 2, int(nonempty[len(nonempty) // 2]) * 2 + 1, int(nonempty[-1]) * 2]
            ref_dq = dq_reference(q, k, v, do, lse, delta, ptr, idx, tiles)
            sample = torch.cat([torch.arange(t * 64, t * 64 + 64) for t in tiles]).cuda()

            def same_dq(got):
                return {"max_rel_diff_dq_vs_fp32": _rel_diff(got[:, sample], ref_dq)}

            for i, (block_m, block_n, stages) in enumerate(DQ_SETTINGS[d]):
                for mode in ORDERS if i == 0 else ORDERS[:1]:
                    order = tile_order(ptr, heads, block_m, mode)
                    rows.append(_timed(dict(base, kernel="dq gluon", block_m=block_m, block_n=block_n, warps=4,
                                            stages=stages, order=mode),
                                       lambda: gluon_dq(q, k, v, do, lse, delta, ptr, idx, order, block_m=block_m,
                                                        block_n=block_n, stages=stages),
                                       6 * pairs * d, same_dq))
    if args.out:
        write_rows(Path(args.out, "gluon_bwd_probe.json"), rows, visits=args.visits, lists=args.lists)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
