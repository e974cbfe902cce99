"""The block-sparse forward in Gluon, for layout parts in natural order on Hopper.

Triton issues a forward step's score product, waits for it, runs the exponentials, then issues the value
product and waits for it: the tensor cores idle during the softmax. This kernel issues the products
asynchronously (``kernels/gluon_probe.py`` measured the loop alone on the H200: 539-564 TFLOP/s at head
dim 128 with 128 query rows on two warpgroups, against 453-481 for Triton's loop on the same 128-key
tiles; docs/benchmarks.md "Fourteenth run"). A program takes ROWS query rows of a block of one batch x
head, in the part's block order, and walks its row's key blocks (full ones first, then the partial ones
under the part's token predicate), BLOCK_N keys a step, K and V arriving by TMA into a ring of STAGES
slots. For key tile t (the full blocks; the partial ones as AHEAD = 0):

    AHEAD = 1:  issue  O += P_{t-1} V_{t-1},  S_{t+1} = Q K_{t+1}^T   (S_t already in registers)
                softmax of S_t under both products
    AHEAD = 0:  issue  S_t = Q K_t^T,  O += P_{t-1} V_{t-1};  wait for S_t
                softmax of S_t under the value product

then the running maximum rescales O and P_t waits in registers for the next step's value product. The
output and the base-2 log-sum-exp are written as ``blocksparse._fwd_kernel`` writes them: rows that saw no
key get lse = -inf and zeros; where a head has several parts (LOAD_PREV) the earlier parts' output (fp32
sums, or the output itself) and lse are merged through the two log-sum-exps.

Measured on the H200 beside the Triton forward (docs/benchmarks.md "Nineteenth run"), it is slower: the
fixed pattern's forward at 262,144 tokens took 3.93 ms against Triton's 3.34 at 2x128 (Triton's own forward,
its tiles autotuned, already runs at about 500 TFLOP/s of unmasked pairs there, above the probe's Triton loop
on 128-key tiles), and forward+backward 2-4% longer at 2x128 and 10-14% at 8x64. So it is off by default.

``blocksparse.gluon_forward`` chooses this path (``MEGASTRIDE_BLOCKSPARSE_GLUON_FWD``); Gluon has no
interpreter, so the CPU tests compile it for sm_90 (tests/test_gluon_fwd.py) and the GPU tests check it
against the reference (tests/test_kernels_gpu.py).
"""

from __future__ import annotations

import os
import re

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from .gluon_bwd import (_blocked, _head_desc, _issue, _list_steps, _out_layout, _plain_smem, _program_item,
                        _signature, _strides, _step_start, mma_layouts)

# (query rows a program, keys a step, ring slots, warps, AHEAD) per head dim: the probe's fastest on the H200
# (docs/benchmarks.md "Fourteenth run": 128 rows on eight warps with the next scores ahead, three slots, at
# D=128; 64 rows on one warpgroup, two slots, the scores not ahead, at D=64);
# MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES replaces them (``tiles``)
FWD_TILES = {128: (128, 128, 3, 8, 1), 64: (64, 128, 2, 4, 0)}
HEAD_DIMS = tuple(FWD_TILES)
# forward launches per part (``launches``)
FWD_LAUNCHES = 2


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, MASKED: gl.constexpr):
    """One key tile of the online softmax on scores ``s`` (base-2 units after ``qk_scale``, which joins the
    subtraction in one multiply-add a score): (p, alpha, m, l). MASKED: ``s`` holds -inf where the token
    predicate says no, and rows that have seen no key yet keep exp2(-inf - -inf) from making NaN."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    if MASKED:
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_use, 1))
    alpha = gl.exp2(m_i - m_use)
    return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _masked(s, rows, keys, CODES, min_off, NCOMP: gl.constexpr, KINDS: gl.constexpr):
    """Scores ``s`` of (rows, keys) with -inf where the part's token predicate (``blocksparse._allowed``,
    ``LayoutPart.allows``) says no. Each kind's test is written as a comparison of a row vector with a column
    vector (local: j > i - a; stride: i % a == j % a, the same as (i - j) % a == 0 for positions >= 0; window:
    i // a == j // a; summary: on j alone; the min offset: j <= i - min_off), so no tile of differences i - j
    is formed: at head dim 128 that tile's registers made the loops spill (ptxas, sm_90)."""
    i = gl.expand_dims(rows, 1)
    j = gl.expand_dims(keys, 0)
    ok = (i < 0) | (j < 0)  # all False, broadcast shape
    for m in gl.static_range(NCOMP):
        kind = gl.load(CODES + 4 * m)
        a = gl.maximum(gl.load(CODES + 4 * m + 1), 1)  # KIND_NONE padding rows have a = 0
        if KINDS & 1:  # dense
            ok = ok | (kind == 0)
        if KINDS & 2:  # local: i - j < a
            ok = ok | ((kind == 1) & (j > i - a))
        if KINDS & 4:  # stride: (i - j) % a == 0
            ok = ok | ((kind == 2) & (i % a == j % a))
        if KINDS & 8:  # window: same window of size a
            ok = ok | ((kind == 3) & (i // a == j // a))
        if KINDS & 16:  # summary: lo <= j % a < hi
            r = keys % a
            summary = (r >= gl.load(CODES + 4 * m + 2)) & (r < gl.load(CODES + 4 * m + 3))
            ok = ok | ((kind == 4) & gl.expand_dims(summary, 0))
    return gl.where(ok & (j <= i - min_off), s, float("-inf"))


@gluon.jit
def _fwd_step(t, acc, m_i, l_i, s, p16, q_smem, k_smem, v_smem, bars, kd, vd, zero_s, rows, FULL_IDX, PART_IDX,
              full_lo, part_lo, nf, t0, t1, codes, min_off, qk_scale, NCOMP: gl.constexpr, KINDS: gl.constexpr,
              MASKED: gl.constexpr, AHEAD: gl.constexpr, BLOCK: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, o_rows: gl.constexpr):
    """Key tile t of a query tile's row (t > t0): see the module's docstring. Under AHEAD ``s`` holds tile t's
    scores on entry and tile t+1's on return (the last step scores its own tile again: one product wasted a
    program); ``p16`` holds tile t-1's probabilities on entry, tile t's on return."""
    SUB: gl.constexpr = BLOCK // BLOCK_N
    prev = (t - 1 - t0) % STAGES
    if AHEAD:
        acc = warpgroup_mma(p16, v_smem.index(prev), acc, is_async=True)
        nxt = gl.minimum(t1 - 1, t + 1)
        slot = (nxt - t0) % STAGES
        mbarrier.wait(bars.index(slot), ((nxt - t0) // STAGES) & 1)
        s_next = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    else:
        slot = (t - t0) % STAGES
        mbarrier.wait(bars.index(slot), ((t - t0) // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        acc = warpgroup_mma(p16, v_smem.index(prev), acc, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))
    if MASKED:  # a partial block: the token predicate on (rows, keys)
        keys = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, SUB, BLOCK_N, BLOCK) + \
            gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, zero_s.type.layout))
        s = _masked(s, rows, keys, codes, min_off, NCOMP, KINDS)
    p, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, MASKED)
    p_cur = p.to(p16.dtype)
    if AHEAD:  # in flight: the value product, then the next scores; wait for the value product
        acc, p16 = warpgroup_mma_wait(num_outstanding=1, deps=(acc, p16))
    else:
        acc, p16 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
    p16 = gl.convert_layout(p_cur, p16.type.layout)
    if t - 1 + STAGES < t1:  # tile t-1's slot is read by nothing in flight: it takes tile t-1+STAGES
        _issue(kd, vd, k_smem, v_smem, bars, _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t - 1 + STAGES,
                                                         SUB, BLOCK_N, BLOCK), prev)
    if AHEAD:
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next, ))
    return acc, m_i, l_i, s, p16


@gluon.jit
def _fwd_kernel(Q, K, V, O, O_PREV, LSE, HEADS, HEAD_CSR, MIN_OFF, CODES, FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER,
                stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                stride_ob, stride_oh, stride_ot, stride_lb, stride_lh,
                part_heads, batch_heads, num_blocks, order_len, qk_scale,
                BLOCK: gl.constexpr, D: gl.constexpr, NCOMP: gl.constexpr, KINDS: gl.constexpr,
                LOAD_PREV: gl.constexpr, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                AHEAD: gl.constexpr, STEPS: gl.constexpr, num_warps: gl.constexpr):
    """Output and lse of ROWS query rows over their row's key blocks, BLOCK_N keys a step."""
    gl.static_assert(STAGES >= 2 + AHEAD, "the next scores are issued before the previous tile's slot is free")
    gl.static_assert(STAGES * BLOCK_N * 2 >= ROWS * 4, "the ring's K slots take the fp32 output on the way out")
    dtype: gl.constexpr = Q.dtype.element_ty
    SUB: gl.constexpr = BLOCK // BLOCK_N  # steps a list entry
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    batch, head, csr, row_block, first_row, min_off, codes, slot, bh = _program_item(
        HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK, ROWS, NCOMP)
    n = num_blocks * BLOCK
    qd = _head_desc(Q, batch * stride_qb + head * stride_qh, n, stride_qt, D, ROWS, smem)
    kd = _head_desc(K, batch * stride_kb + head * stride_kh, n, stride_kt, D, BLOCK_N, smem)
    vd = _head_desc(V, batch * stride_vb + head * stride_vh, n, stride_vt, D, BLOCK_N, smem)
    layouts: gl.constexpr = mma_layouts(num_warps, BLOCK_N, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    p_layout: gl.constexpr = layouts[2]
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    full_lo, part_lo, nf, t0, t1 = _list_steps(FULL_PTR, PART_PTR, FULL_PTR, FULL_PTR, FULL_PTR, csr, row_block, slot,
                                               num_blocks, SUB, STEPS, False)
    # Q stays in shared memory (on the last barrier); K and V stream through the ring, its first STAGES tiles
    # issued now
    q_smem = gl.allocate_shared_memory(dtype, [ROWS, D], smem)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], smem)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], smem)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES + 1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES + 1):
        mbarrier.init(bars.index(i), count=1)
    mbarrier.expect(bars.index(STAGES), qd.block_type.nbytes)
    tma.async_copy_global_to_shared(qd, [first_row, 0], bars.index(STAGES), q_smem)
    for b in gl.static_range(STAGES):
        if t0 + b < t1:
            _issue(kd, vd, k_smem, v_smem, bars,
                   _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0 + b, SUB, BLOCK_N, BLOCK), b)
    rows = first_row + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
    zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    acc = gl.zeros([ROWS, D], gl.float32, o_layout)
    m_i = gl.full([ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    mbarrier.wait(bars.index(STAGES), 0)
    if t1 > t0:
        # tile t0 (masked where the row has no full block); under AHEAD tile t0+1's scores run under its softmax
        mbarrier.wait(bars.index(0), 0)
        s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
        if AHEAD:
            nxt = gl.minimum(t1 - 1, t0 + 1)
            mbarrier.wait(bars.index((nxt - t0) % STAGES), ((nxt - t0) // STAGES) & 1)
            s_next = warpgroup_mma(q_smem, k_smem.index((nxt - t0) % STAGES).permute((1, 0)), zero_s, use_acc=False,
                                   is_async=True)
        keys = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0, SUB, BLOCK_N, BLOCK) + \
            gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        if STEPS == 2:  # partial blocks only
            s = _masked(s, rows, keys, codes, min_off, NCOMP, KINDS)
        elif STEPS == 0:
            if t0 >= nf:  # a row without full blocks
                s = _masked(s, rows, keys, codes, min_off, NCOMP, KINDS)
        p, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, True)
        p16 = gl.convert_layout(p.to(dtype), p_layout)
        if AHEAD:
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next, ))
        # full blocks, then the partial ones under the token predicate (the scores not ahead: the mask's
        # registers): one loop each, so the full blocks' loop carries no mask; the ring runs on from one to the
        # other (STEPS: one launch takes both, or each its own)
        if STEPS != 2:
            for t in range(t0 + 1, nf):
                acc, m_i, l_i, s, p16 = _fwd_step(t, acc, m_i, l_i, s, p16, q_smem, k_smem, v_smem, bars, kd, vd, zero_s,
                                                  rows, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0, t1, codes, min_off,
                                                  qk_scale, NCOMP, KINDS, False, AHEAD, BLOCK, BLOCK_N, STAGES, o_rows)
        if STEPS != 1:
            for t in range(gl.maximum(nf, t0 + 1), t1):
                acc, m_i, l_i, s, p16 = _fwd_step(t, acc, m_i, l_i, s, p16, q_smem, k_smem, v_smem, bars, kd, vd, zero_s,
                                                  rows, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0, t1, codes, min_off,
                                                  qk_scale, NCOMP, KINDS, True, 0, BLOCK, BLOCK_N, STAGES,
                                                  o_rows)
        acc = warpgroup_mma(p16, v_smem.index((t1 - 1 - t0) % STAGES), acc, is_async=True)
        acc, p16 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))
    for i in gl.static_range(STAGES + 1):
        mbarrier.invalidate(bars.index(i))

    # out through the ring (read by nothing now) into a blocked layout, normalised and merged there
    layout: gl.constexpr = _out_layout(num_warps)
    o = _blocked(acc, k_smem._reinterpret(gl.float32, [ROWS, D], _plain_smem()), num_warps)
    out_rows: gl.constexpr = gl.SliceLayout(1, layout)
    l_o = gl.convert_layout(l_i, out_rows)
    m_o = gl.convert_layout(m_i, out_rows)
    empty = l_o == 0.0  # rows with no key in this part: lse = -inf, output 0
    lse = gl.where(empty, float("-inf"), m_o + gl.log2(gl.where(empty, 1.0, l_o)))
    o = o / gl.expand_dims(gl.where(empty, 1.0, l_o), 1)
    pos = first_row + gl.arange(0, ROWS, layout=out_rows)
    lse_ptrs = LSE + batch * stride_lb + head * stride_lh + pos
    offs = batch * stride_ob + head * stride_oh + gl.expand_dims(pos.to(gl.int64) * stride_ot, 1) + \
        gl.expand_dims(gl.arange(0, D, layout=gl.SliceLayout(0, layout)), 0)
    if LOAD_PREV:  # merge with the earlier parts of this head through the two lse
        lse_prev = gl.load(lse_ptrs)
        top = gl.maximum(lse_prev, lse)
        top = gl.where(top == float("-inf"), 0.0, top)
        w_prev = gl.exp2(lse_prev - top)
        w_new = gl.exp2(lse - top)
        total = w_prev + w_new
        o_prev = gl.load(O_PREV + offs).to(gl.float32)
        o = (o_prev * gl.expand_dims(w_prev, 1) + o * gl.expand_dims(w_new, 1)) / \
            gl.expand_dims(gl.where(total == 0.0, 1.0, total), 1)
        lse = gl.where(total == 0.0, float("-inf"), top + gl.log2(gl.where(total == 0.0, 1.0, total)))
    gl.store(O + offs, o.to(O.dtype.element_ty))
    gl.store(lse_ptrs, lse)


def tiles(head_dim: int) -> tuple[int, int, int, int, int]:
    """(query rows a program, keys a step, ring slots, warps, AHEAD) at ``head_dim``: ``FWD_TILES``, or
    ``MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES`` where set ("128x128s3w8a1": rows x keys, s slots, w warps, a
    AHEAD 0 or 1; one setting for every head dim)."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES")
    if not raw:
        return FWD_TILES[head_dim]
    m = re.fullmatch(r"(\d+)x(\d+)s(\d+)w(4|8)a([01])", raw)
    if not m:
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES must look like 128x128s3w8a1 (rows x keys, slots, "
                         f"warps, ahead); got {raw!r}")
    rows, keys, stages, warps, ahead = (int(g) for g in m.groups())
    if rows not in (64, 128) or keys not in (64, 128) or stages < 2 + ahead or rows % (16 * warps):
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES {raw!r}: rows and keys must be 64 or 128, at least "
                         f"{2 + ahead} slots, rows a multiple of 16 per warp")
    return rows, keys, stages, warps, ahead


def fits(head_dim: int, block: int) -> bool:
    """Whether the tiles at ``head_dim`` run on a layout of ``block``: whole tiles in a block, the fp32
    output fitting in the ring's K slots, and shared memory within a Hopper SM's 227 KB."""
    rows, keys, stages, _, _ = tiles(head_dim)
    smem = 2 * head_dim * (rows + 2 * stages * keys)
    return block % rows == 0 and block % keys == 0 and stages * keys * 2 >= rows * 4 and smem <= 227 * 1024


def forward_part(q, k, v, out, prev, lse, meta, order, block: int, scale: float, load_prev: bool) -> None:
    """One layout part's output and lse (base 2) on the GPU, as ``blocksparse._fwd_kernel`` writes them:
    ``out`` (the output, or the fp32 sums of a head's earlier parts), ``prev`` the earlier parts' output read
    where ``load_prev``, ``lse`` (B, H, T) fp32; ``meta`` the part's ``_PartMeta``, ``order`` its row block
    order (``blocksparse._side_order``). The part must be in natural order, q/k/v 16-bit with 16-byte aligned
    bases and row strides (``blocksparse.gluon_forward``)."""
    batch, _, n, d = q.shape
    heads = meta.heads.numel()
    lists = meta.lists
    rows, keys, stages, warps, ahead = tiles(d)
    grid = (order.shape[1] * (block // rows) * batch * heads,)

    def launch(target, earlier, steps, merge):
        _fwd_kernel[grid](q, k, v, target, earlier, lse, meta.heads, meta.head_csr, meta.min_off, meta.codes,
                          lists["row_full_ptr"], lists["row_full_idx"], lists["row_part_ptr"], lists["row_part_idx"],
                          order, *_strides(q, k, v, target), lse.stride(0), lse.stride(1), heads, batch * heads,
                          meta.num_blocks, order.shape[1], scale * 1.4426950408889634, BLOCK=block, D=d,
                          NCOMP=meta.ncomp, KINDS=meta.kinds, LOAD_PREV=merge, ROWS=rows, BLOCK_N=keys, STAGES=stages,
                          AHEAD=ahead if steps != 2 else 0, STEPS=steps, num_warps=warps)

    if launches() == 1:
        launch(out, prev, 0, load_prev)
    else:  # the partial blocks (merged with the earlier parts), then the full ones merged with those rows
        launch(out, prev, 2, load_prev)
        launch(out, out, 1, True)


def launches() -> int:
    """Launches of the forward kernel per part: 1 (a program walks its row's full blocks and then its partial
    ones) or 2 (the partial blocks first, writing the output and lse as an earlier part would, then the full
    ones merged with those rows through the two log-sum-exps: one more rounding of the partial blocks' share
    to the output's dtype where the output is 16-bit). Compiled for sm_90, one kernel with both loops spills
    in the full blocks' loop at both head dims (the token predicate's arithmetic in the other loop: ptxas,
    255 registers, 24-30 reloads an iteration at D=128), the full blocks alone do not, so it is 2
    (``FWD_LAUNCHES``); ``MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_LAUNCHES`` ("1" or "2") overrides it."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_LAUNCHES")
    if raw is None:
        return FWD_LAUNCHES
    if raw not in ("1", "2"):
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_LAUNCHES must be 1 or 2, got {raw!r}")
    return int(raw)


def compile_for(head_dim: int = 128, block: int = 128, ncomp: int = 2, kinds: int = 8 | 16, load_prev: bool = False,
                steps: int = 1,
                tiles_: tuple[int, int, int, int, int] | None = None, arch: int = 90):
    """The forward kernel compiled for ``arch`` without a GPU (bf16 inputs and output, fp32 earlier sums),
    for the fixed pattern's kinds (window and summary) by default; ``tiles_`` replaces the head dim's."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    rows, keys, stages, warps, ahead = tiles_ or FWD_TILES[head_dim]
    consts = {"BLOCK": block, "D": head_dim, "NCOMP": ncomp, "KINDS": kinds, "LOAD_PREV": load_prev, "ROWS": rows,
              "BLOCK_N": keys, "STAGES": stages, "AHEAD": ahead if steps != 2 else 0,
              "STEPS": steps, "num_warps": warps}
    src = GluonASTSource(fn=_fwd_kernel, signature=_signature(list(_fwd_kernel.arg_names), consts), constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


__all__ = ["FWD_LAUNCHES", "FWD_TILES", "HEAD_DIMS", "compile_for", "fits", "forward_part", "launches", "tiles"]
