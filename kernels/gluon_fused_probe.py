"""Probe: a dK/dV loop that also adds dQ, five products a step, its dQ sent by an asynchronous TMA reduce.

Our backward runs seven products a tile: four in the dK/dV kernel (S^T, dP^T, dV, dK) and three in a dQ kernel
that recomputes S and dP. FlashAttention-3 runs five: its dK/dV loop also forms dQ_t = dS_t K for each query
tile t and adds it into an fp32 dQ with a TMA reduce that the products do not wait for. Triton 3.6's
``TensorDescriptor.atomic_add`` waits for each reduce to have read its shared memory before the loop goes on,
and Gluon 3.6's ``tma`` module has no reduce; the Gluon builder does (``create_async_tma_reduce``), so
``gluon_bwd.tma_reduce_add`` issues one and the loop waits for it (``tma.store_wait``) only a step later, when
the staging buffer is wanted again. Here the step waits for its dQ product with nothing else in flight (read
any later, ptxas serialises every product of the loop), so the overlap comes from the SM's other program.
For query tile t of a key tile's column (one warpgroup, ``BLOCK_N`` keys a program, ``BLOCK_M`` queries a
step):

    issue S^T_t = K Q_t^T, dP^T_t = V dO_t^T
    wait until one product is left                     (S^T_t done; dP^T_t running)
    P^T_t = exp2(S^T_t - lse_t); issue dV += P^T_t dO_t
    wait until one product is left                     (dP^T_t done; dV running)
    dS^T_t = P^T_t * (dP^T_t - delta_t) -> shared memory; issue dQ_t = dS_t K (or its transpose K^T dS^T_t
        where BLOCK_M is 32, a product of 64 rows), then dK += dS^T_t Q_t
    wait for all three; dQ_t -> staging (once the reduce of t-1 read it), fence, issue its TMA reduce

Lists, inputs and orders as ``gluon_bwd_probe`` (full blocks only, lse and delta 0 for timing). The fused time
includes zeroing the fp32 dQ and casting it to the inputs' dtype. Without a GPU ``compile_fused`` compiles it
for sm_90 (tests/test_gluon_bwd_probe.py); on a Hopper GPU

    python -m megastride.kernels.gluon_fused_probe --lists fixed --cases 1048576x64,262144x64 --out OUT

times it beside the Triton dK/dV probe and the Gluon dK/dV and dQ probes, with dK and dV checked against the
Triton probe and dQ against fp32 PyTorch on sampled tiles.
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)

from .gluon_bwd import mma_layouts, tma_reduce_add as _tma_reduce_add
from .gluon_bwd_probe import (ORDERS, _column_init, _column_program, _head_desc, _issue_pair, _prologue, _rel_diff,
                              _score_step, _write_dkdv, dq_reference, gluon_dkdv, gluon_dq, probe_inputs,
                              tile_order)
from .ws_probe import BLOCK, _timed, add_list_options, column_lists, probe_dkdv, write_rows

_LIST_BLOCK = gl.constexpr(BLOCK)


@gluon.jit
def _store_pair_half(ds_smem, dst, t, BLOCK_M: gl.constexpr):
    """Step t's dS^T (BLOCK_N, BLOCK_M) into its half of a two-step (2 BLOCK_M, BLOCK_N) dS buffer (rows of
    even steps first), fenced for the product that reads the buffer."""
    if t % 2 == 0:
        ds_smem.slice(0, BLOCK_M).permute((1, 0)).store(dst)
    else:
        ds_smem.slice(BLOCK_M, BLOCK_M).permute((1, 0)).store(dst)
    fence_async_shared()


@gluon.jit
def _send_dq(dq, stage, dqd, start, sm_scale, SWAP: gl.constexpr, SEND: gl.constexpr, PENDING: gl.constexpr):
    """Step's dQ (or its transpose) times sm_scale into the staging buffer once the last reduce read it, then
    its reduce into rows start.. of the fp32 dQ (``stage`` one of STAGING buffers, so PENDING = STAGING - 1 reduces
    may still be reading theirs). SEND (a diagnostic; dQ is wrong below 2): 2 all of it, 1 the
    staging store without the reduce, 0 neither (the store only where ``start`` < 0, never), -1 (in the
    kernel) not even the dQ product; 3 the reduce into an L2-sized part of dQ (its cost where the rows it adds
    to stay in L2)."""
    if SEND != 0 or start < 0:
        tma.store_wait(pendings=PENDING)
        if SWAP:
            stage.permute((1, 0)).store((dq * sm_scale).to(stage.dtype))
        else:
            stage.store((dq * sm_scale).to(stage.dtype))
        fence_async_shared()
    if SEND == 2:
        _tma_reduce_add(dqd, [start, 0], stage)
    if SEND == 3:  # into the first 16,384 rows of its head only (8 heads: 32 MB, under the L2's 50)
        _tma_reduce_add(dqd, [start % 16384, 0], stage)


@gluon.jit
def _fused_kernel(Q, K, V, DO, DK, DV, DQ, LSE, DELTA, PTR, IDX, ORDER, N, qk_scale, sm_scale, HEADS: gl.constexpr,
                  D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
                  SWAP: gl.constexpr, SEND: gl.constexpr, STAGING: gl.constexpr, DV_WAIT: gl.constexpr,
                  PAIR: gl.constexpr, num_warps: gl.constexpr):
    gl.static_assert(STAGES >= 2, "the ring needs two slots: step t's loads land while step t-1's products run")
    dtype: gl.constexpr = Q.dtype.element_ty
    SUB: gl.constexpr = _LIST_BLOCK // BLOCK_M
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    pid, bh, LSE, DELTA, qd, dod, kd, vd, dkd, dvd = _column_program(Q, K, V, DO, DK, DV, LSE, DELTA, ORDER, N, HEADS,
                                                                     D, BLOCK_N, BLOCK_M)
    # dQ's sums: fp32, or (a probe of the reduce's bytes) whatever DQ holds, fp16
    acc_ty: gl.constexpr = DQ.dtype.element_ty
    f32_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([2 * BLOCK_M if PAIR else BLOCK_M, D], acc_ty)
    dqd = _head_desc(DQ, bh, N, D, 2 * BLOCK_M if PAIR else BLOCK_M, f32_layout)

    layouts: gl.constexpr = mma_layouts(num_warps, BLOCK_M, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    p_layout: gl.constexpr = layouts[2]
    cols: gl.constexpr = gl.SliceLayout(0, s_layout)
    # dQ of a step: (BLOCK_M, D) on the gradient layout, or its transpose (D, BLOCK_M) on the scores' layout;
    # PAIR: of two steps, (2 BLOCK_M, D), its dS in a (2 BLOCK_M, BLOCK_N) buffer
    QROWS: gl.constexpr = 2 * BLOCK_M if PAIR else BLOCK_M
    dq_layout: gl.constexpr = s_layout if SWAP else o_layout
    dq_shape: gl.constexpr = [D, BLOCK_M] if SWAP else [QROWS, D]
    ds_shape: gl.constexpr = [QROWS, BLOCK_N] if PAIR else [BLOCK_N, BLOCK_M]
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for(ds_shape, dtype)

    lo = gl.load(PTR + pid // (_LIST_BLOCK // BLOCK_N))
    steps = (gl.load(PTR + pid // (_LIST_BLOCK // BLOCK_N) + 1) - lo) * SUB
    k_smem, v_smem, q_smem, do_smem, bars = _prologue(kd, vd, qd, dod, IDX, lo, steps, pid * BLOCK_N, dtype, D,
                                                      BLOCK_N, BLOCK_M, STAGES, SUB, smem)
    ds_smem = gl.allocate_shared_memory(dtype, ds_shape, ds_layout)
    stage = gl.allocate_shared_memory(acc_ty, [STAGING, QROWS, D], f32_layout)
    mbarrier.wait(bars.index(STAGES), 0)

    zero_s, dk, dv, pt16, dst16 = _column_init(BLOCK_N, BLOCK_M, D, dtype, s_layout, o_layout, p_layout)
    zero_q = gl.zeros(dq_shape, gl.float32, dq_layout)
    for t in range(0, steps):
        slot = t % STAGES
        s, dp, start, lse, delta = _score_step(k_smem, v_smem, q_smem, do_smem, bars, zero_s, IDX, LSE, DELTA, lo, t,
                                               STAGES, SUB, BLOCK_M, cols)
        # in flight: S^T_t, dP^T_t; wait for S^T_t
        s, dk, dst16 = warpgroup_mma_wait(num_outstanding=1, deps=(s, dk, dst16))
        if t >= 1:  # step t-1's products are done (waited for at its end): its slot takes step t-1+STAGES
            if t - 1 + STAGES < steps:
                _issue_pair(qd, dod, q_smem, do_smem, bars, IDX, lo, t - 1 + STAGES, STAGES, SUB, BLOCK_M)
        pt = gl.exp2(s * qk_scale - gl.expand_dims(lse, 0))
        pt16 = gl.convert_layout(pt.to(dtype), p_layout)
        dv = warpgroup_mma(pt16, do_smem.index(slot), dv, is_async=True)
        # in flight: dP^T_t, dV_t; wait for dP^T_t (and dV_t where DV_WAIT: P^T_t's registers free for dS)
        dp, pt16 = warpgroup_mma_wait(num_outstanding=1 - DV_WAIT, deps=(dp, pt16))
        dst = (pt * (dp - gl.expand_dims(delta, 0))).to(dtype)
        # dS^T_t to shared memory (the last step's dQ product, which read it, is done) for dQ_t
        dst16 = gl.convert_layout(dst, p_layout)
        if PAIR:  # dS_t into its half of a two-step (2 BLOCK_M, BLOCK_N) buffer; dQ of both steps at odd t
            _store_pair_half(ds_smem, dst, t, BLOCK_M)
            dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
            if t % 2 == 1:
                dq = warpgroup_mma(ds_smem, k_smem, zero_q, use_acc=False, is_async=True)
                dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ))
                _send_dq(dq, stage.index((t // 2) % STAGING), dqd, start - BLOCK_M, sm_scale, False, SEND,
                         STAGING - 1)
            else:
                dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dst16, ))
        elif SEND >= 0:
            ds_smem.store(dst)
            fence_async_shared()
            if SWAP:
                dq = warpgroup_mma(k_smem.permute((1, 0)), ds_smem, zero_q, use_acc=False, is_async=True)
            else:
                dq = warpgroup_mma(ds_smem.permute((1, 0)), k_smem, zero_q, use_acc=False, is_async=True)
            dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
            # in flight: dV_t, dQ_t, dK_t; wait for all three and send dQ_t. ptxas serialises every product of
            # the loop where dQ is read in the next step (carried) or while dK_t is still in flight (sm_90,
            # triton 3.6's ptxas: "non wgmma instructions reading/defining accumulator registers"); the other
            # program on the SM keeps the tensor cores busy meanwhile
            dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ))
            _send_dq(dq, stage.index(t % STAGING), dqd, start, sm_scale, SWAP, SEND, STAGING - 1)
        else:  # diagnostic: the four products of dK/dV alone, waited for at the step's end as above
            dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
            dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dst16, ))
    dv, dk, pt16, dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, pt16, dst16))
    tma.store_wait(pendings=0)  # the last reduce has read its staging buffer
    _write_dkdv(dk, dv, k_smem, v_smem, dkd, dvd, bars, pid * BLOCK_N, sm_scale, STAGES)


def gluon_fused(q, k, v, do, lse, delta, col_ptr, col_idx, order=None, *, block_n: int = 64, block_m: int = 64,
                stages: int = 3, num_warps: int = 4, swap: bool | None = None, send: int = 2, staging: int = 1,
                dv_wait: bool = False, pair: bool = False, sums=torch.float32):
    """dK, dV and dQ of the probe's lists in one launch: (dk, dv, dq), dq zeroed in fp32 (``sums``: fp16 to
    probe what half the reduce's bytes cost, and lose) before it and cast to the inputs' dtype after it."""
    heads, n, d = q.shape
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dq32 = torch.zeros(q.shape, device=q.device, dtype=sums)
    scale = d ** -0.5
    if order is None:
        order = tile_order(col_ptr, heads, block_n)
    if swap is None:
        swap = block_m < 64 and not pair
    _fused_kernel[(order.numel(),)](q, k, v, do, dk, dv, dq32, lse, delta, col_ptr, col_idx, order, n,
                                    scale * 1.4426950408889634, scale, HEADS=heads, D=d, BLOCK_N=block_n,
                                    BLOCK_M=block_m, STAGES=stages, SWAP=swap, SEND=send, STAGING=staging,
                                    DV_WAIT=int(dv_wait), PAIR=pair, num_warps=num_warps)
    return dk, dv, dq32.to(q.dtype)


def compile_fused(head_dim: int = 64, block_n: int = 64, block_m: int = 64, stages: int = 3, swap: bool = False,
                  num_warps: int = 4, arch: int = 90, send: int = 2, staging: int = 1, dv_wait: bool = False,
                  pair: bool = False):
    """The fused probe compiled for ``arch`` without a GPU (bf16)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    consts = {"HEADS": 8, "D": head_dim, "BLOCK_N": block_n, "BLOCK_M": block_m, "STAGES": stages, "SWAP": swap,
              "SEND": send, "STAGING": staging, "DV_WAIT": int(dv_wait), "PAIR": pair,
              "num_warps": num_warps}
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "DO": "*bf16", "DK": "*bf16", "DV": "*bf16", "DQ": "*fp32",
           "LSE": "*fp32", "DELTA": "*fp32", "PTR": "*i32", "IDX": "*i32", "ORDER": "*i32", "N": "i32",
           "qk_scale": "fp32", "sm_scale": "fp32", **{name: "constexpr" for name in consts}}
    src = GluonASTSource(fn=_fused_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


# (keys a program, queries a step, stages, swapped dQ product, staging buffers, dV waited for before dS, one dQ
# product of two steps, dQ summed in fp16)
SETTINGS = ((64, 64, 3, False, 1, False, False, False), (128, 32, 4, True, 1, False, False, False),
            (128, 32, 4, False, 1, False, True, False))


def probe_checks(q, k, v, do, lse, delta, ptr, idx):
    """(col_ptr, col_idx, same_kv, same_dq) for the probes' inputs: the column lists of the row lists ``ptr``,
    ``idx`` on the GPU; ``same_kv((dk, dv, ...))``: the largest differences of dK and dV from the Triton dK/dV
    probe's on the key rows some query block visits; ``same_dq(dq)``: dQ's from fp32 PyTorch on three query tiles
    of every head (the row lists' first non-empty, middle and last)."""
    col_ptr, col_idx = (t.cuda() for t in column_lists(ptr.cpu(), idx.cpu()))
    ref_dk, ref_dv = probe_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx)
    seen = torch.repeat_interleave(col_ptr.diff() > 0, BLOCK)
    nonempty = torch.nonzero(ptr.diff() > 0).flatten().cpu()
    tiles = [int(nonempty[0]) * 2, int(nonempty[len(nonempty) // 2]) * 2 + 1, int(nonempty[-1]) * 2]
    ref_dq = dq_reference(q, k, v, do, lse, delta, ptr, idx, tiles)
    sample = torch.cat([torch.arange(t * 64, t * 64 + 64) for t in tiles]).cuda()

    def same_kv(got):
        return {"max_rel_diff_dk": _rel_diff(got[0][:, seen], ref_dk[:, seen]),
                "max_rel_diff_dv": _rel_diff(got[1][:, seen], ref_dv[:, seen])}

    def same_dq(dq):
        return {"max_rel_diff_dq_vs_fp32": _rel_diff(dq[:, sample], ref_dq)}

    return col_ptr, col_idx, same_kv, same_dq


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.gluon_fused_probe", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="1048576x64,262144x64", help="comma-separated NxD (heads = 512 / D)")
    p.add_argument("--settings", default=None, help="BLOCK_NxBLOCK_MsSTAGES[t][bSTAGING] items, comma-separated "
                   "(t: transposed dQ product; p: one dQ product of two steps; bSTAGING: staging buffers, default 1; "
                   "w: dV waited for before dS; h: dQ summed in fp16); "
                   "default: the SETTINGS list")
    p.add_argument("--orders", default="tiles", help="program orders to time the fused kernel in")
    p.add_argument("--sends", default="2", help="SEND values to time (diagnostics: 1 no reduce, 0 no staging "
                   "store either, -1 no dQ product, 3 the reduce into 16,384 rows a head; their dQ is wrong and not "
                   "checked)")
    add_list_options(p)
    p.add_argument("--out", default=None, help="folder for gluon_fused_probe.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a Hopper GPU (without one, compile_fused compiles it for sm_90)")
    settings = SETTINGS
    if args.settings:
        settings = []
        for item in args.settings.split(","):
            m = re.fullmatch(r"(\d+)x(\d+)s(\d+)(t?)(p?)(?:b(\d+))?(w?)(h?)", item)
            if not m:
                p.error(f"--settings: {item!r} is not BLOCK_NxBLOCK_MsSTAGES[t][p][bSTAGING][w][h]")
            settings.append((int(m[1]), int(m[2]), int(m[3]), bool(m[4]), int(m[6] or 1), bool(m[7]), bool(m[5]),
                             bool(m[8])))
    orders = args.orders.split(",")
    sends = [int(x) for x in args.sends.split(",")]
    if not set(orders) <= set(ORDERS):
        p.error(f"--orders takes {', '.join(ORDERS)}")
    rows = []
    for n, d, heads, ptr, idx, pairs, q, k, v, do, lse, delta, base in probe_inputs(args):
        col_ptr, col_idx, same_kv, same_dq = probe_checks(q, k, v, do, lse, delta, ptr, idx)

        def same_all(got):
            return {**same_kv(got), **same_dq(got[2])}

        # the separate kernels: dK/dV (four products a tile) and dQ (three), each timed alone
        rows.append(_timed(dict(base, kernel="dkdv triton", block_n=BLOCK, block_m=32, warps=4, stages=5),
                           lambda: probe_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx), 8 * pairs * d, same_kv))
        for bn, bm, st in ((64, 64, 3), (128, 32, 4)):
            order = tile_order(col_ptr, heads, bn, "tiles")
            rows.append(_timed(dict(base, kernel="dkdv gluon", block_n=bn, block_m=bm, warps=4, stages=st, order="tiles"),
                               lambda: gluon_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx, order, block_n=bn,
                                                  block_m=bm, stages=st), 8 * pairs * d, same_kv))
        order_q = tile_order(ptr, heads, 64, "tiles")
        rows.append(_timed(dict(base, kernel="dq gluon", block_m=64, block_n=64, warps=4, stages=3, order="tiles"),
                           lambda: gluon_dq(q, k, v, do, lse, delta, ptr, idx, order_q, block_m=64, block_n=64,
                                            stages=3),
                           6 * pairs * d, same_dq))
        for (bn, bm, st, swap, stg, dvw, pair, half), mode, send in itertools.product(settings, orders, sends):
            order = tile_order(col_ptr, heads, bn, mode)
            rows.append(_timed(dict(base, kernel="fused gluon", block_n=bn, block_m=bm, warps=4, stages=st,
                                    swap=swap, staging=stg, dv_wait=dvw, pair=pair, fp16_sums=half, order=mode,
                                    send=send),
                               lambda: gluon_fused(q, k, v, do, lse, delta, col_ptr, col_idx, order, block_n=bn,
                                                   block_m=bm, stages=st, swap=swap, send=send, staging=stg,
                                                   dv_wait=dvw, pair=pair,
                                                   sums=torch.float16 if half else torch.float32),
                               10 * pairs * d, same_all if send == 2 else same_kv))
    if args.out:
        write_rows(Path(args.out, "gluon_fused_probe.json"), rows, visits=args.visits, lists=args.lists)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
