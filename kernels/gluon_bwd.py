"""The block-sparse backward's two loops in Gluon, for layout parts in natural order on Hopper.

Triton issues each matrix product of a backward step and waits for it before anything reads its result,
so a dK/dV step runs its two score products, the exponentials, the dV product, dS and the dK product one
after another. These kernels issue the warpgroup products asynchronously and wait by count
(``kernels/gluon_bwd_probe.py`` measured the loops alone: 8-14% under our Triton backward at head dim 128
on the H200, docs/benchmarks.md "Sixteenth run"). For query tile t of a key tile's column, dK/dV runs

    issue S^T_t = K Q_t^T, dP^T_t = V dO_t^T           (dV_{t-1} and dK_{t-1} still in flight)
    wait until one product is left                     (dV_{t-1}, dK_{t-1}, S^T_t done; dP^T_t running)
    P^T_t = exp2(S^T_t - lse_t), masked on a partial block
    issue dV += P^T_t dO_t
    wait until one product is left                     (dP^T_t done; dV running)
    dS^T_t = P^T_t * (dP^T_t - delta_t)                (under dV)
    issue dK += dS^T_t Q_t                             (runs under the next step's score products)

and dQ the same with its three products (both score products, the exponentials under dP, dS, the dQ
product left running into the next step). They walk the same compressed layout as the Triton kernels
(``blocksparse._backward``): a program takes one key tile (dK/dV) or query tile (dQ) of a block, of a
batch x head, in the part's block order; its column's (row's) full blocks first, then its partial ones
with the part's token predicate (``_allowed``: the causal diagonal, window and band edges, summary
columns, min offset). The tiles it streams arrive by TMA (in-kernel descriptors over each head's rows,
any row stride that is a multiple of 16 bytes) into a ring of ``STAGES`` slots; it adds the earlier
parts' sums where a head has several (LOAD_PREV) and writes the gradient in the output's dtype, through
shared memory into a blocked layout (written from the accumulator's own layout, ptxas serialises the
loop's products). Beyond the probe:

* at head dim 128 dK/dV takes two launches, the partial blocks and then the full ones adding to them
  (``dkdv_launches``: one kernel holding both loops spills in the full blocks' loop there);
* dQ runs on a second stream beside dK/dV (``use_streams``);
* where one column outweighs a share of the work, dK/dV programs take column segments (SPLIT,
  ``blocksparse.gluon_split``) finished by the last to count, through an fp32 workspace with atomics;
  with whole columns the backward is deterministic (no atomics);
* where ``blocksparse.gluon_dq_sums`` says so (``MEGASTRIDE_BLOCKSPARSE_GLUON_DQ``; by default fp16 sums from
  131,072 tokens at head dim 64), no dQ
  kernel runs: each dK/dV step also forms dQ_t^T = K^T dS^T_t (dS^T_t through shared memory, a fifth
  product), waits for its products, and adds dQ_t into zeroed sums by an asynchronous TMA reduce
  (``tma_reduce_add``) that the next step's send waits for: FlashAttention-3's scheme, at 128 keys a program
  and 32 queries a step (``FUSED_TILES``; ``kernels/gluon_fused_probe.py`` timed it on the full blocks); fp16
  sums live in dQ's own storage (``blocksparse.dq_sums_buffer``), and a step loads the next one's list entry,
  lse and delta at its end (``look_ahead``);
* over whole columns that fused kernel is warp-specialised (``_dkdv_ws_kernel``, ``warp_specialized``): a
  program holds two columns, each on a consumer warpgroup doing only the step's products, exponentials and dS
  (240 registers a thread by setmaxnreg), with a loader warp (K and V, then each step's Q, dO, lse and delta
  into the ring by TMA) and a sender warp (each step's dQ reduce) for each, mbarriers between them; dK's
  product reads dS^T from the shared memory dQ's product reads it from, and ptxas fits the consumer's loop in
  its registers without spilling (``kernels/gluon_ws_probe.py``; 6-9% off the loop at 1M tokens, 8x64);
* where it can run (head dim 64, 128-blocks) whole columns take FlashAttention-3's form of it instead
  (``_dkdv_halves_kernel``, the default of ``warp_specialized``): one column a program, walked 128 queries a
  step, its keys split between the two consumers (64 each, products twice as wide), both reading the step's Q
  and dO from one loader warp's ring; their dS^T halves meet in shared memory, where each consumer's dQ
  product takes its half of the queries over all the keys (4.7% and 1.5% off the forward+backward at 1M,
  8x64, against the two-columns form; docs/benchmarks.md "Thirty-ninth run"). At head dim 128, where asked for
  (not yet run on a GPU), a step takes 64 queries, FlashAttention-3's tiles there, and each consumer's dQ product
  all of them and its half of the head dim.

``blocksparse.gluon_backward`` chooses this path (``MEGASTRIDE_BLOCKSPARSE_GLUON``); Gluon has no
interpreter, so the CPU tests compile it for sm_90 (tests/test_gluon_bwd.py) and the GPU tests check it
against the reference (tests/test_kernels_gpu.py, ``gpu_check``).
"""

from __future__ import annotations

import os
import re

import torch
import triton
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_init, warpgroup_mma_wait)

from .blocksparse import _switch, side_stream

# (tile of the program, tile a step, ring slots, warps) per head dim: the probe's fastest on the H200
# (docs/benchmarks.md "Sixteenth run": 64 keys x 64 queries on one warpgroup, s2 at D=128, s3 at D=64);
# MEGASTRIDE_BLOCKSPARSE_GLUON_TILES replaces them (``tiles``)
DKDV_TILES = {128: (64, 64, 2, 4), 64: (64, 64, 3, 4)}
DQ_TILES = {128: (64, 64, 2, 4), 64: (64, 64, 3, 4)}
HEAD_DIMS = tuple(DKDV_TILES)
# the dK/dV kernel that also adds each step's dQ into summed dQ by an asynchronous TMA reduce (``backward_part``'s
# ``dq_sums``): 128 keys a program, 32 queries a step, 4 slots, 4 warps (docs/benchmarks.md "Thirty-fourth run");
# at head dim 128 64 keys a program, 2 slots (ptxas, sm_90: no spill in the loop; 3 slots reload 15 a step)
FUSED_TILES = {64: (128, 32, 4, 4), 128: (64, 32, 2, 4)}
# the warp-specialised fused dK/dV kernel (``_dkdv_ws_kernel``, ``warp_specialized``): (keys a consumer, queries a
# step, ring slots, dQ staging buffers) per head dim, and its consumers' registers a thread
WS_TILES = {64: (128, 32, 3, 2), 128: (64, 32, 3, 2)}
WS_CONSUMER_REGS = 240
# the form with one column a program, its keys split between the two consumers (``_dkdv_halves_kernel``): (keys a
# program, queries a step, ring slots, dQ staging buffers a consumer, dS buffers, the step's schedule) per head dim;
# MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES replaces the last four (``halves_tiles``). At head dim 128 a step takes
# 64 queries (FlashAttention-3's backward tiles there: a consumer's dK and dV hold 128 registers a thread) and a
# consumer's dQ half of the head dim. "auto" takes it at HALVES_AUTO_DIMS: at 2x128 on the H200 (2026-12-05,
# docs/benchmarks.md "Forty-first run") the forward+backward with it (and the fused dQ's fp16 sums) ran 1M tokens
# in 91.9-93.2 ms against 105.6 with the two-columns kernel and the dQ kernel beside it
HALVES_TILES = {64: (128, 128, 2, 2, 2, 1), 128: (128, 64, 2, 2, 2, 1)}
HALVES_AUTO_DIMS = (64, 128)
# the head dims whose column segments take the halves kernel too (``halves_split``): at 262,144 tokens, 2x128,
# 11.73 ms against 12.79 on whole columns and 14.28 with the segments on the unspecialised kernel (same run)
HALVES_SPLIT_DIMS = (128,)
# shared memory a Hopper SM gives one program (227 KB), and what the compiler adds to ``halves_shared_bytes``'s count
# (the buffers' alignment: 344 bytes in every setting compiled for sm_90, tests/test_gluon_bwd.py)
SHARED_BYTES = 232448
HALVES_SHARED_SLACK = 512
COLUMNS_SHARED_SLACK = 1024  # the two-columns kernel's (two columns' buffers: 656 bytes compiled)
# which warp-specialised kernel whole-column fused launches take (``warp_specialized``): "auto" (the halves kernel
# where it can run, else the two-columns one), "halves", "columns" (or "1"), "0" (neither)
WARP_SPECIALIZED = "auto"
# dK/dV launches per part (``dkdv_launches``)
DKDV_LAUNCHES = {128: 2, 64: 1}
# dQ on a second stream beside dK/dV (``use_streams``)
STREAMS = True
# the fused dK/dV step loads the next step's list entry, lse and delta at its end (``look_ahead``): "auto",
# "1" or "0"
AHEAD = "auto"
# registers a thread the compiler may use, per (kernel, head dim) where capped (``registers``)
MAX_REGISTERS: dict[tuple[str, int], int] = {}


@gluon.constexpr_function
def mma_layouts(num_warps, cols, head_dim):
    """The register layouts of a step on one warpgroup's products: the score tiles (rows x ``cols``), the
    gradient accumulator (rows x ``head_dim``) and the 16-bit A operand of its product."""
    scores = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, cols, 16])
    acc = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, head_dim, 16])
    return scores, acc, gl.DotOperandLayout(operand_index=0, parent=acc, k_width=2)


@builtin
def tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """global[box at coord] += shared ``src``: one asynchronous TMA reduce (``cp.reduce.async.bulk.tensor`` .add),
    tracked as a TMA store is (``tma.store_wait`` waits until the reduces issued before it have read their
    source). Gluon 3.6's ``tma`` module does not export it; its IR builder has it."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)


@gluon.jit
def _allowed(i, j, CODES, min_off, NCOMP: gl.constexpr, KINDS: gl.constexpr):
    """The part's token predicate on broadcastable query positions i and key positions j: Gluon's copy of
    ``blocksparse._allowed`` (``LayoutPart.allows``); the kinds not in KINDS compile away."""
    d = i - j
    ok = d < d  # all False, broadcast shape
    for m in gl.static_range(NCOMP):
        kind = gl.load(CODES + 4 * m)
        a = gl.maximum(gl.load(CODES + 4 * m + 1), 1)  # KIND_NONE padding rows have a = 0
        if KINDS & 1:  # dense
            ok = ok | (kind == 0)
        if KINDS & 2:  # local: i - j < width
            ok = ok | ((kind == 1) & (d < a))
        if KINDS & 4:  # stride: (i - j) % l == 0
            ok = ok | ((kind == 2) & (d % a == 0))
        if KINDS & 8:  # window: same window of size a
            ok = ok | ((kind == 3) & (i // a == j // a))
        if KINDS & 16:  # summary: lo <= j % a < hi
            r = j % a
            ok = ok | ((kind == 4) & (r >= gl.load(CODES + 4 * m + 2)) & (r < gl.load(CODES + 4 * m + 3)))
    return ok & (d >= min_off)


@gluon.jit
def _program_item(HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK: gl.constexpr,
                  TILE: gl.constexpr, NCOMP: gl.constexpr):
    """What this program works on, as ``blocksparse._program_tile`` assigns it (heads fastest over program
    ids, blocks in ORDER): (batch, head, CSR index, block, first position of its TILE-wide tile, the part's
    min offset, its component codes, its slot in ORDER, its batch x head)."""
    return _item(gl.program_id(0), HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK,
                 TILE, NCOMP)


@gluon.jit
def _item(pid, HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK: gl.constexpr,
          TILE: gl.constexpr, NCOMP: gl.constexpr):
    """``_program_item`` of item ``pid`` (the warp-specialised dK/dV kernel's programs take two)."""
    bh = pid % batch_heads
    tile = pid // batch_heads
    batch = (bh // part_heads).to(gl.int64)
    hp = bh % part_heads
    head = gl.load(HEADS + hp).to(gl.int64)
    csr = gl.load(HEAD_CSR + hp)
    slot = csr.to(gl.int64) * order_len + tile // (BLOCK // TILE)
    block = gl.load(ORDER + slot)
    first = block * BLOCK + (tile % (BLOCK // TILE)) * TILE
    return batch, head, csr, block, first, gl.load(MIN_OFF + hp), CODES + hp * (NCOMP * 4), slot, bh


@gluon.jit
def _entry(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, SUB: gl.constexpr):
    """Address of step t's list entry: the full entry t // SUB, or past the nf full steps, a partial one (a
    select of the address, no branch in the loop)."""
    return gl.where(t < nf, FULL_IDX + full_lo + t // SUB, PART_IDX + part_lo + (t - nf) // SUB)


@gluon.jit
def _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, SUB: gl.constexpr, ROWS: gl.constexpr,
                BLOCK: gl.constexpr):
    """First position of step t's tile: sub-tile t % SUB of its list entry (``_entry``)."""
    return gl.load(_entry(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, SUB)) * BLOCK + (t % SUB) * ROWS


@gluon.jit
def _step_rows(LSE, DELTA, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, t1, SUB: gl.constexpr, ROWS: gl.constexpr,
               BLOCK: gl.constexpr, layout: gl.constexpr):
    """(first position, lse, delta) of step t's ROWS-row tile (``_step_start``; lse and delta on ``layout``), or,
    where t >= t1 (a look-ahead past the column's last step), of the head's first rows: no load leaves the
    lists or the rows."""
    entry = gl.load(_entry(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, SUB), mask=t < t1, other=0)
    start = entry * BLOCK + (t % SUB) * ROWS
    rows = start + gl.arange(0, ROWS, layout=layout)
    return start, gl.load(LSE + rows), gl.load(DELTA + rows)


@gluon.jit
def _list_steps(FULL_PTR, PART_PTR, SEG_LO, SEG_HI, SEG_FIRST, csr, block, slot, num_blocks, SUB: gl.constexpr,
                STEPS: gl.constexpr, SPLIT: gl.constexpr):
    """Where a program's steps come from: (first full entry, first partial entry, nf full steps, the launch's
    steps t0..t1) of block ``block``'s list in CSR ``csr``, SUB steps an entry; full steps first, then the
    partial ones. SPLIT: the full entries of its segment (SEG_LO/SEG_HI at ``slot``) and the partial ones only
    where SEG_FIRST. STEPS: which the launch takes: 0 all, 1 the full ones, 2 the partial ones."""
    ptr = csr.to(gl.int64) * (num_blocks + 1) + block
    part_lo = gl.load(PART_PTR + ptr)
    parts = gl.load(PART_PTR + ptr + 1) - part_lo
    if SPLIT:
        full_lo = gl.load(SEG_LO + slot)
        full_hi = gl.load(SEG_HI + slot)
        parts = parts * gl.load(SEG_FIRST + slot)
    else:
        full_lo = gl.load(FULL_PTR + ptr)
        full_hi = gl.load(FULL_PTR + ptr + 1)
    nf = (full_hi - full_lo) * SUB
    if STEPS == 2:
        t0 = nf
    else:
        t0 = nf * 0
    if STEPS == 1:
        t1 = nf
    else:
        t1 = nf + parts * SUB
    return full_lo, part_lo, nf, t0, t1


@gluon.jit
def _head_desc(X, off, n, stride_t, D: gl.constexpr, ROWS: gl.constexpr, layout: gl.constexpr):
    """A TMA descriptor over one head's (n, D) rows of X, starting at element ``off``, in boxes of ROWS rows."""
    return _head_box(X, off, n, stride_t, D, ROWS, D, layout)


@gluon.jit
def _head_box(X, off, n, stride_t, D: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr, layout: gl.constexpr):
    """``_head_desc`` in boxes of ROWS rows x COLS of the D columns."""
    return tma.make_tensor_descriptor(X + off, shape=[n, D], strides=[stride_t, 1], block_shape=[ROWS, COLS],
                                      layout=layout)


@gluon.jit
def _descriptors(Q, K, V, DO, batch, head, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                 stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot, n, D: gl.constexpr,
                 Q_ROWS: gl.constexpr, K_ROWS: gl.constexpr, layout: gl.constexpr):
    """TMA descriptors over one head's rows of Q and dO (boxes of Q_ROWS) and of K and V (K_ROWS)."""
    qd = _head_desc(Q, batch * stride_qb + head * stride_qh, n, stride_qt, D, Q_ROWS, layout)
    dod = _head_desc(DO, batch * stride_dob + head * stride_doh, n, stride_dot, D, Q_ROWS, layout)
    kd = _head_desc(K, batch * stride_kb + head * stride_kh, n, stride_kt, D, K_ROWS, layout)
    vd = _head_desc(V, batch * stride_vb + head * stride_vh, n, stride_vt, D, K_ROWS, layout)
    return qd, dod, kd, vd


@gluon.jit
def _program_setup(Q, K, V, DO, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, stride_qb, stride_qh, stride_qt,
                   stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                   stride_lb, stride_lh, part_heads, batch_heads, num_blocks, order_len, BLOCK: gl.constexpr,
                   TILE: gl.constexpr, NCOMP: gl.constexpr, D: gl.constexpr, Q_ROWS: gl.constexpr,
                   K_ROWS: gl.constexpr, smem: gl.constexpr):
    """What both kernels start from: the program's item (``_program_item``, tiles of TILE rows), LSE and
    DELTA at its batch x head, and the TMA descriptors of its head's Q, dO (Q_ROWS-row boxes) and K, V
    (K_ROWS)."""
    batch, head, csr, block, first, min_off, codes, slot, bh = _program_item(
        HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK, TILE, NCOMP)
    qd, dod, kd, vd = _descriptors(Q, K, V, DO, batch, head, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh,
                                   stride_kt, stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                                   num_blocks * BLOCK, D, Q_ROWS, K_ROWS, smem)
    rows = batch * stride_lb + head * stride_lh
    return batch, head, csr, block, first, min_off, codes, slot, bh, LSE + rows, DELTA + rows, qd, dod, kd, vd


@gluon.jit
def _issue(ad, bd, a_smem, b_smem, bars, start, slot):
    """TMA loads of a step's two tiles (rows start..) into ``slot`` of the ring, on that slot's barrier."""
    mbarrier.expect(bars.index(slot), ad.block_type.nbytes + bd.block_type.nbytes)
    tma.async_copy_global_to_shared(ad, [start, 0], bars.index(slot), a_smem.index(slot))
    tma.async_copy_global_to_shared(bd, [start, 0], bars.index(slot), b_smem.index(slot))


@gluon.jit
def alloc_tiles(dtype: gl.constexpr, D: gl.constexpr, ROWS: gl.constexpr, RING_ROWS: gl.constexpr,
                STAGES: gl.constexpr, layout: gl.constexpr):
    """Shared memory for the two (ROWS, D) tiles a program keeps and the STAGES-slot ring of the two
    (RING_ROWS, D) tiles it streams; STAGES + 1 mbarriers, initialised (a slot each, the last for the kept
    tiles)."""
    a_smem = gl.allocate_shared_memory(dtype, [ROWS, D], layout)
    b_smem = gl.allocate_shared_memory(dtype, [ROWS, D], layout)
    ra_smem = gl.allocate_shared_memory(dtype, [STAGES, RING_ROWS, D], layout)
    rb_smem = gl.allocate_shared_memory(dtype, [STAGES, RING_ROWS, D], layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES + 1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES + 1):
        mbarrier.init(bars.index(i), count=1)
    return a_smem, b_smem, ra_smem, rb_smem, bars


@gluon.jit
def _prologue(fa, fb, ra, rb, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0, t1, first, dtype: gl.constexpr,
              D: gl.constexpr, ROWS: gl.constexpr, RING_ROWS: gl.constexpr, STAGES: gl.constexpr,
              SUB: gl.constexpr, BLOCK: gl.constexpr, layout: gl.constexpr):
    """Shared memory for the two tiles a program keeps (boxes of ``fa`` and ``fb`` at row ``first``) and for
    the ring of the two it streams (``ra``, ``rb``); an mbarrier a slot and one for the kept tiles (the
    last); the kept tiles' loads and the ring's first STAGES steps (of t0..t1) issued."""
    a_smem, b_smem, ra_smem, rb_smem, bars = alloc_tiles(dtype, D, ROWS, RING_ROWS, STAGES, layout)
    mbarrier.expect(bars.index(STAGES), fa.block_type.nbytes + fb.block_type.nbytes)
    tma.async_copy_global_to_shared(fa, [first, 0], bars.index(STAGES), a_smem)
    tma.async_copy_global_to_shared(fb, [first, 0], bars.index(STAGES), b_smem)
    for b in gl.static_range(STAGES):
        if t0 + b < t1:
            _issue(ra, rb, ra_smem, rb_smem, bars,
                   _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0 + b, SUB, RING_ROWS, BLOCK), b)
    return a_smem, b_smem, ra_smem, rb_smem, bars


@gluon.constexpr_function
def _out_layout(num_warps):
    """The layout gradients leave in: 16 bytes of a row a thread."""
    return gl.BlockedLayout([1, 4], [1, 32], [num_warps, 1], [1, 0])


@gluon.jit
def _blocked(acc, buf, num_warps: gl.constexpr):
    """``acc`` (fp32, the accumulator's layout) in ``_out_layout``, through ``buf`` (shared memory the loop
    no longer reads, as fp32): read where they lie in the accumulator's layout (by global loads and stores,
    or a layout conversion), the accumulators make ptxas serialise the loop's products."""
    gl.thread_barrier()  # every warp's reads of buf's previous contents are done
    buf.store(acc)
    gl.thread_barrier()
    return buf.load(_out_layout(num_warps))


@gluon.jit
def _write(X, X_PREV, off, first, stride_t, acc, ROWS: gl.constexpr, D: gl.constexpr, LOAD_PREV: gl.constexpr,
           num_warps: gl.constexpr):
    """Rows first.. of one head's gradient: ``acc`` (fp32, ``_out_layout``), plus the earlier parts' sums in
    X_PREV (same strides) where LOAD_PREV, in X's dtype."""
    layout: gl.constexpr = _out_layout(num_warps)
    rows = first + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, layout))
    offs = off + gl.expand_dims(rows.to(gl.int64) * stride_t, 1) + gl.expand_dims(cols, 0)
    if LOAD_PREV:
        acc += gl.load(X_PREV + offs).to(gl.float32)
    gl.store(X + offs, acc.to(X.dtype.element_ty))


@gluon.jit
def _write_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first, stride_dkt, stride_dvt, dk, dv, buf,
                ROWS: gl.constexpr, D: gl.constexpr, LOAD_PREV: gl.constexpr, num_warps: gl.constexpr,
                BLOCKED: gl.constexpr):
    """Rows first.. of one head's dK and dV (``_write``): ``dk`` and ``dv`` in ``_out_layout``, or (BLOCKED) in an
    accumulator's layout, each taken into it through ``buf`` (``_blocked``) just before it is written."""
    if BLOCKED:
        dk = _blocked(dk, buf, num_warps)
    _write(DK, DK_PREV, dk_off, first, stride_dkt, dk, ROWS, D, LOAD_PREV, num_warps)
    if BLOCKED:
        dv = _blocked(dv, buf, num_warps)
    _write(DV, DV_PREV, dv_off, first, stride_dvt, dv, ROWS, D, LOAD_PREV, num_warps)


@gluon.jit
def _finish_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first_col, stride_dkt, stride_dvt, dk, dv, WS, WS_CNT,
                 SEG_COUNT, SEG_CIDX, slot, bh, batch_heads, ws_cols, SPLIT: gl.constexpr, BLOCK: gl.constexpr,
                 BLOCK_N: gl.constexpr, D: gl.constexpr, LOAD_PREV: gl.constexpr, num_warps: gl.constexpr):
    """Write a key tile's dK and dV (``_out_layout``, dK scaled). SPLIT (a segment of a column): a column of
    one segment writes as a whole one does; the segments of a longer column add into their rows of the fp32
    workspace WS (SEG_CIDX: the column among such columns of its CSR, ws_cols a batch x head) and count
    themselves in WS_CNT; the last to count reads the sums, writes the gradients and zeroes its rows and
    counter for the next launch (``blocksparse.split_finish`` "last", as the Triton kernel does)."""
    if SPLIT:
        segments = gl.load(SEG_COUNT + slot)  # 0: a padding slot, which writes nothing
        if segments == 1:
            _write_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first_col, stride_dkt, stride_dvt, dk, dv, None,
                        BLOCK_N, D, LOAD_PREV, num_warps, False)
        if segments > 1:
            layout: gl.constexpr = _out_layout(num_warps)
            column = bh.to(gl.int64) * ws_cols + gl.load(SEG_CIDX + slot)
            unit = column * BLOCK + first_col % BLOCK
            ws_rows = batch_heads.to(gl.int64) * ws_cols * BLOCK
            rows = unit + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
            offs = gl.expand_dims(rows * D, 1) + gl.expand_dims(gl.arange(0, D, layout=gl.SliceLayout(0, layout)), 0)
            gl.atomic_add(WS + offs, dk, sem="relaxed")
            gl.atomic_add(WS + ws_rows * D + offs, dv, sem="release")
            gl.thread_barrier()  # every thread's sums are in before the count
            if gl.atomic_add(WS_CNT + unit, 1, sem="acq_rel") == segments - 1:
                # the last segment: every other one's sums are in; read them from L2
                dk = gl.load(WS + offs, cache_modifier=".cg")
                dv = gl.load(WS + ws_rows * D + offs, cache_modifier=".cg")
                zero = gl.zeros([BLOCK_N, D], gl.float32, layout)
                gl.store(WS + offs, zero)
                gl.store(WS + ws_rows * D + offs, zero)
                gl.store(WS_CNT + unit, 0)
                _write_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first_col, stride_dkt, stride_dvt, dk, dv,
                            None, BLOCK_N, D, LOAD_PREV, num_warps, False)
    else:
        _write_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first_col, stride_dkt, stride_dvt, dk, dv, None,
                    BLOCK_N, D, LOAD_PREV, num_warps, False)


@gluon.constexpr_function
def _plain_smem():
    return gl.SwizzledSharedLayout(1, 1, 1, [1, 0])


@gluon.jit
def _p_dv(s, lse, qk_scale, rows, first_col, codes, min_off, do_tile, dv, NCOMP: gl.constexpr, KINDS: gl.constexpr,
          MASKED: gl.constexpr, BLOCK_N: gl.constexpr, p_layout: gl.constexpr):
    """A dK/dV step's P^T_t = exp2(S^T_t - lse) (``lse`` broadcast over its keys; masked by the token predicate on
    a partial block, ``rows`` its query positions) and the issue of dV += P^T_t dO_t: (P^T_t fp32, P^T_t as the
    A operand, dV in flight)."""
    s_layout: gl.constexpr = s.type.layout
    pt = gl.exp2(s * qk_scale - lse)
    if MASKED:  # a partial block: the token predicate on (keys, queries)
        keys = first_col + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, s_layout))
        ok = _allowed(gl.expand_dims(rows, 0), gl.expand_dims(keys, 1), codes, min_off, NCOMP, KINDS)
        pt = gl.where(ok, pt, 0.0)
    pt16 = gl.convert_layout(pt.to(do_tile.dtype), p_layout)
    return pt, pt16, warpgroup_mma(pt16, do_tile, dv, is_async=True)


@gluon.jit
def _dkdv_step(t, dk, dv, pt16, dst16, k_smem, v_smem, q_smem, do_smem, bars, qd, dod, zero_s, LSE, DELTA, FULL_IDX,
               PART_IDX, full_lo, part_lo, nf, t0, t1, first_col, codes, min_off, qk_scale, ds_smem, stage, dqd,
               dq_scale, zero_q, ahead, NCOMP: gl.constexpr, KINDS: gl.constexpr, MASKED: gl.constexpr,
               BLOCK: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
               p_layout: gl.constexpr, DQ_SEND: gl.constexpr, AHEAD: gl.constexpr):
    """Step t of a key tile's column (query tile t): see the module's docstring. DQ_SEND: the step also forms
    dQ_t^T = K^T dS^T_t (``zero_q``: (D, BLOCK_M) zeros on the scores' layout) from dS^T_t in ``ds_smem``,
    waits for all its products (read any later, or while dK_t is in flight, ptxas serialises every product of
    the loop), and sends dQ_t times ``dq_scale`` through ``stage`` into the summed dQ (``dqd``) by a TMA
    reduce left in flight until the next send (one product for two steps' dQ, faster in the full-block probe,
    was 2.5% slower here: docs/benchmarks.md "Thirty-fifth run", commit 4743fcc)."""
    dtype: gl.constexpr = pt16.dtype
    s_layout: gl.constexpr = zero_s.type.layout
    slot = (t - t0) % STAGES
    mbarrier.wait(bars.index(slot), ((t - t0) // STAGES) & 1)
    s = warpgroup_mma(k_smem, q_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(v_smem, do_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    row_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    if AHEAD:  # step t's rows came a step ahead (loaded at the end of step t-1)
        start, lse, delta = ahead
        rows = start + gl.arange(0, BLOCK_M, layout=row_layout)
    else:
        start = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, BLOCK // BLOCK_M, BLOCK_M, BLOCK)
        rows = start + gl.arange(0, BLOCK_M, layout=row_layout)
        lse = gl.load(LSE + rows)
        delta = gl.load(DELTA + rows)
    # in flight, oldest first: dV_{t-1}, dK_{t-1}, S^T_t, dP^T_t; wait for all but dP^T_t
    s, dv, dk, pt16, dst16 = warpgroup_mma_wait(num_outstanding=1, deps=(s, dv, dk, pt16, dst16))
    if t > t0:  # step t-1's products are done: its slot takes step t-1+STAGES
        if t - 1 + STAGES < t1:
            _issue(qd, dod, q_smem, do_smem, bars,
                   _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t - 1 + STAGES, BLOCK // BLOCK_M, BLOCK_M,
                               BLOCK), (t - 1 - t0) % STAGES)
    pt, pt16, dv = _p_dv(s, gl.expand_dims(lse, 0), qk_scale, rows, first_col, codes, min_off, do_smem.index(slot), dv,
                         NCOMP, KINDS, MASKED, BLOCK_N, p_layout)
    # in flight: dP^T_t, dV_t; wait for dP^T_t
    dp, pt16 = warpgroup_mma_wait(num_outstanding=1, deps=(dp, pt16))
    dst = (pt * (dp - gl.expand_dims(delta, 0))).to(dtype)
    dst16 = gl.convert_layout(dst, p_layout)
    if DQ_SEND:
        ds_smem.store(dst)  # the last step's dQ product, which read it, is done
        fence_async_shared()
        dq = warpgroup_mma(k_smem.permute((1, 0)), ds_smem, zero_q, use_acc=False, is_async=True)
        dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
        dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ))
        tma.store_wait(pendings=0)  # the last step's reduce has read the staging buffer
        stage.permute((1, 0)).store((dq * dq_scale).to(stage.dtype))
        fence_async_shared()
        tma_reduce_add(dqd, [start, 0], stage)
    else:
        dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
    if AHEAD:  # step t+1's rows, under this step's last products and the next step's score products
        ahead = _step_rows(LSE, DELTA, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t + 1, t1, BLOCK // BLOCK_M, BLOCK_M,
                           BLOCK, row_layout)
    return dk, dv, pt16, dst16, ahead


@gluon.jit
def _dq_step(t, dq, ds16, q_smem, do_smem, k_smem, v_smem, bars, kd, vd, zero_s, rows, lse, delta, FULL_IDX,
             PART_IDX, full_lo, part_lo, nf, t0, t1, codes, min_off, qk_scale, NCOMP: gl.constexpr,
             KINDS: gl.constexpr, MASKED: gl.constexpr, BLOCK: gl.constexpr, BLOCK_N: gl.constexpr,
             STAGES: gl.constexpr, p_layout: gl.constexpr):
    """Step t of a query tile's row (key tile t): both score products, the exponentials under dP, dS, the
    dQ product left running into the next step."""
    dtype: gl.constexpr = ds16.dtype
    s_layout: gl.constexpr = zero_s.type.layout
    slot = (t - t0) % STAGES
    mbarrier.wait(bars.index(slot), ((t - t0) // STAGES) & 1)
    s = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(do_smem, v_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    # in flight, oldest first: dQ_{t-1}, S_t, dP_t; wait for all but dP_t
    s, dq, ds16 = warpgroup_mma_wait(num_outstanding=1, deps=(s, dq, ds16))
    if t > t0:  # step t-1's products are done: its slot takes step t-1+STAGES
        if t - 1 + STAGES < t1:
            _issue(kd, vd, k_smem, v_smem, bars,
                   _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t - 1 + STAGES, BLOCK // BLOCK_N, BLOCK_N,
                               BLOCK), (t - 1 - t0) % STAGES)
    p = gl.exp2(s * qk_scale - lse)
    if MASKED:  # a partial block: the token predicate on (queries, keys)
        keys = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, BLOCK // BLOCK_N, BLOCK_N, BLOCK) + \
            gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        p = gl.where(_allowed(rows, gl.expand_dims(keys, 0), codes, min_off, NCOMP, KINDS), p, 0.0)
    dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp, ))
    ds16 = gl.convert_layout((p * (dp - delta)).to(dtype), p_layout)
    dq = warpgroup_mma(ds16, k_smem.index(slot), dq, is_async=True)
    return dq, ds16


@gluon.jit
def _dkdv_kernel(Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                 FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, SEG_LO, SEG_HI, SEG_FIRST, SEG_COUNT, SEG_CIDX,
                 WS, WS_CNT, ws_cols, DQS, DQ_SCALE, stride_sb, stride_sh, stride_st,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                 stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                 stride_dvb, stride_dvh, stride_dvt, stride_lb, stride_lh,
                 part_heads, batch_heads, num_blocks, order_len, qk_scale, sm_scale,
                 BLOCK: gl.constexpr, D: gl.constexpr, NCOMP: gl.constexpr, KINDS: gl.constexpr,
                 LOAD_PREV: gl.constexpr, STEPS: gl.constexpr, SPLIT: gl.constexpr, BLOCK_N: gl.constexpr,
                 BLOCK_M: gl.constexpr, STAGES: gl.constexpr, DQ_SEND: gl.constexpr, AHEAD: gl.constexpr,
                 num_warps: gl.constexpr):
    """dK and dV of BLOCK_N keys over their column's query blocks, BLOCK_M queries a step. K and V stay in
    shared memory; Q and dO tiles stream through the ring. STEPS: which blocks of the column (``_list_steps``).
    SPLIT: a program takes one segment of a column (ORDER: the segments' columns; SEG_LO/SEG_HI its range of
    full entries, SEG_FIRST whether it also takes the partial ones), finished by ``_finish_dkdv``. DQ_SEND:
    each step also adds its dQ, times DQ_SCALE[0], into the summed dQ DQS (fp32 or fp16, (n, D) rows a head
    at stride_sb / stride_sh, zeroed before the launch) by a TMA reduce (``_dkdv_step``)."""
    gl.static_assert(STAGES >= 2, "the ring needs two slots: step t's loads land while step t-1's products run")
    dtype: gl.constexpr = Q.dtype.element_ty
    SUB: gl.constexpr = BLOCK // BLOCK_M  # steps a list entry
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    (batch, head, csr, col_block, first_col, min_off, codes, slot, bh, LSE, DELTA, qd, dod, kd, vd) = _program_setup(
        Q, K, V, DO, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, stride_qb, stride_qh, stride_qt, stride_kb,
        stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot, stride_lb,
        stride_lh, part_heads, batch_heads, num_blocks, order_len, BLOCK, BLOCK_N, NCOMP, D, BLOCK_M, BLOCK_N, smem)

    # S^T and dP^T: (BLOCK_N keys, BLOCK_M queries); dK, dV: (BLOCK_N, D); P^T and dS^T as the A operand
    layouts: gl.constexpr = mma_layouts(num_warps, BLOCK_M, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    p_layout: gl.constexpr = layouts[2]

    full_lo, part_lo, nf, t0, t1 = _list_steps(FULL_PTR, PART_PTR, SEG_LO, SEG_HI, SEG_FIRST, csr, col_block, slot,
                                               num_blocks, SUB, STEPS, SPLIT)
    k_smem, v_smem, q_smem, do_smem, bars = _prologue(kd, vd, qd, dod, FULL_IDX, PART_IDX, full_lo, part_lo, nf,
                                                      t0, t1, first_col, dtype, D, BLOCK_N, BLOCK_M, STAGES, SUB,
                                                      BLOCK, smem)
    mbarrier.wait(bars.index(STAGES), 0)

    zero_s = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    dk = warpgroup_mma_init(gl.zeros([BLOCK_N, D], gl.float32, o_layout))
    dv = warpgroup_mma_init(gl.zeros([BLOCK_N, D], gl.float32, o_layout))
    if DQ_SEND:  # dS^T of a step, dQ's staging buffer, the summed dQ's descriptor, dQ^T's zeros
        gl.static_assert(D % (16 * num_warps) == 0, "dQ^T of a step: D rows, 16 a warp")
        sum_ty: gl.constexpr = DQS.dtype.element_ty
        ds_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_M],
                                            gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], dtype))
        stage_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, D], sum_ty)
        stage = gl.allocate_shared_memory(sum_ty, [BLOCK_M, D], stage_layout)
        dqd = _head_desc(DQS, batch * stride_sb + head * stride_sh, num_blocks * BLOCK, stride_st, D, BLOCK_M,
                         stage_layout)
        dq_scale = gl.load(DQ_SCALE)
        zero_q = gl.zeros([D, BLOCK_M], gl.float32, s_layout)
    else:  # not read
        ds_smem, stage, dqd, dq_scale, zero_q = k_smem, k_smem, kd, sm_scale, zero_s
    # the A operands of the products in flight, kept alive (in registers) until the wait that ends them
    pt16 = gl.zeros([BLOCK_N, BLOCK_M], dtype, p_layout)
    dst16 = gl.zeros([BLOCK_N, BLOCK_M], dtype, p_layout)
    if AHEAD:  # the first step's (first position, lse, delta); each step loads the next one's
        ahead = _step_rows(LSE, DELTA, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0, t1, SUB, BLOCK_M, BLOCK,
                           gl.SliceLayout(0, s_layout))
    else:  # not read
        ahead = 0
    # full blocks, then the partial ones under the token predicate: one loop each, so the full blocks' loop
    # carries no mask; the ring runs on from one to the other
    if STEPS != 2:
        for t in range(t0, nf):
            dk, dv, pt16, dst16, ahead = _dkdv_step(
                t, dk, dv, pt16, dst16, k_smem, v_smem, q_smem, do_smem, bars, qd, dod, zero_s, LSE, DELTA, FULL_IDX,
                PART_IDX, full_lo, part_lo, nf, t0, t1, first_col, codes, min_off, qk_scale, ds_smem, stage, dqd,
                dq_scale, zero_q, ahead, NCOMP, KINDS, False, BLOCK, BLOCK_N, BLOCK_M, STAGES, p_layout, DQ_SEND,
                AHEAD)
    if STEPS == 0:  # the products in flight done before the next loop takes them (else ptxas serialises them)
        dk, dv, pt16, dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv, pt16, dst16))
        dk, dv = warpgroup_mma_init(dk), warpgroup_mma_init(dv)
    if STEPS != 1:
        for t in range(nf, t1):
            dk, dv, pt16, dst16, ahead = _dkdv_step(
                t, dk, dv, pt16, dst16, k_smem, v_smem, q_smem, do_smem, bars, qd, dod, zero_s, LSE, DELTA, FULL_IDX,
                PART_IDX, full_lo, part_lo, nf, t0, t1, first_col, codes, min_off, qk_scale, ds_smem, stage, dqd,
                dq_scale, zero_q, ahead, NCOMP, KINDS, True, BLOCK, BLOCK_N, BLOCK_M, STAGES, p_layout, DQ_SEND,
                AHEAD)
    dv, dk, pt16, dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, pt16, dst16))
    for i in gl.static_range(STAGES + 1):
        mbarrier.invalidate(bars.index(i))
    if DQ_SEND:  # the last reduce has read its staging buffer; the gradients leave through a buffer of their own
        tma.store_wait(pendings=0)
        buf = gl.allocate_shared_memory(gl.float32, [BLOCK_N, D], _plain_smem())
    else:  # the ring is read by nothing now: its Q slots take the two gradients on the way out
        buf = q_smem._reinterpret(gl.float32, [BLOCK_N, D], _plain_smem())
    dk = _blocked(dk * sm_scale, buf, num_warps)
    dv = _blocked(dv, buf, num_warps)
    _finish_dkdv(DK, DV, DK_PREV, DV_PREV, batch * stride_dkb + head * stride_dkh, batch * stride_dvb + head * stride_dvh,
                 first_col, stride_dkt, stride_dvt, dk, dv, WS, WS_CNT, SEG_COUNT, SEG_CIDX, slot, bh, batch_heads,
                 ws_cols, SPLIT, BLOCK, BLOCK_N, D, LOAD_PREV, num_warps)


@gluon.jit
def _dq_kernel(Q, K, V, DO, DQ, DQ_PREV, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
               FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER,
               stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
               stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
               part_heads, batch_heads, num_blocks, order_len, qk_scale, sm_scale,
               BLOCK: gl.constexpr, D: gl.constexpr, NCOMP: gl.constexpr, KINDS: gl.constexpr,
               LOAD_PREV: gl.constexpr, STEPS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
               STAGES: gl.constexpr, num_warps: gl.constexpr):
    """dQ of BLOCK_M query rows over their row's key blocks, BLOCK_N keys a step. Q and dO stay in shared
    memory; K and V tiles stream through the ring. STEPS: which blocks of the row (``_list_steps``)."""
    gl.static_assert(STAGES >= 2, "the ring needs two slots: step t's loads land while step t-1's products run")
    dtype: gl.constexpr = Q.dtype.element_ty
    SUB: gl.constexpr = BLOCK // BLOCK_N  # steps a list entry
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    (batch, head, csr, row_block, first_row, min_off, codes, slot, bh, LSE, DELTA, qd, dod, kd, vd) = _program_setup(
        Q, K, V, DO, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, stride_qb, stride_qh, stride_qt, stride_kb,
        stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot, stride_lb,
        stride_lh, part_heads, batch_heads, num_blocks, order_len, BLOCK, BLOCK_M, NCOMP, D, BLOCK_M, BLOCK_N, smem)
    layouts: gl.constexpr = mma_layouts(num_warps, BLOCK_N, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    p_layout: gl.constexpr = layouts[2]

    full_lo, part_lo, nf, t0, t1 = _list_steps(FULL_PTR, PART_PTR, FULL_PTR, FULL_PTR, FULL_PTR, csr, row_block, slot,
                                               num_blocks, SUB, STEPS, False)
    q_smem, do_smem, k_smem, v_smem, bars = _prologue(qd, dod, kd, vd, FULL_IDX, PART_IDX, full_lo, part_lo, nf,
                                                      t0, t1, first_row, dtype, D, BLOCK_M, BLOCK_N, STAGES, SUB,
                                                      BLOCK, smem)
    rows = gl.expand_dims(first_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout)), 1)
    lse = gl.load(LSE + rows)
    delta = gl.load(DELTA + rows)
    mbarrier.wait(bars.index(STAGES), 0)

    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    dq = warpgroup_mma_init(gl.zeros([BLOCK_M, D], gl.float32, o_layout))
    ds16 = gl.zeros([BLOCK_M, BLOCK_N], dtype, p_layout)
    if STEPS != 2:  # full blocks, then the partial ones (as in dK/dV)
        for t in range(t0, nf):
            dq, ds16 = _dq_step(t, dq, ds16, q_smem, do_smem, k_smem, v_smem, bars, kd, vd, zero_s, rows, lse, delta,
                                FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0, t1, codes, min_off, qk_scale, NCOMP,
                                KINDS, False, BLOCK, BLOCK_N, STAGES, p_layout)
    if STEPS == 0:
        dq, ds16 = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds16))
        dq = warpgroup_mma_init(dq)
    if STEPS != 1:
        for t in range(nf, t1):
            dq, ds16 = _dq_step(t, dq, ds16, q_smem, do_smem, k_smem, v_smem, bars, kd, vd, zero_s, rows, lse, delta,
                                FULL_IDX, PART_IDX, full_lo, part_lo, nf, t0, t1, codes, min_off, qk_scale, NCOMP,
                                KINDS, True, BLOCK, BLOCK_N, STAGES, p_layout)
    dq, ds16 = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds16))
    for i in gl.static_range(STAGES + 1):
        mbarrier.invalidate(bars.index(i))
    buf = k_smem._reinterpret(gl.float32, [BLOCK_M, D], _plain_smem())  # the ring: read by nothing now
    _write(DQ, DQ_PREV, batch * stride_dqb + head * stride_dqh, first_row, stride_dqt,
           _blocked(dq * sm_scale, buf, num_warps), BLOCK_M, D, LOAD_PREV, num_warps)


@gluon.jit
def _ws_bar(bars, role: gl.constexpr, i, STAGES: gl.constexpr, STAGING: gl.constexpr):
    """One of a warp-specialised column's mbarriers: role 0 ready[i] (loader -> consumer: ring slot i's Q, dO,
    lse and delta landed), 1 empty[i] (consumer -> loader: slot i's products are done), 2 staged[i] (consumer
    -> sender: step dQ in staging buffer i), 3 free[i] (sender -> consumer: buffer i's reduce has read it),
    4 the kept K and V tiles'."""
    if role == 0:
        return bars.index(i)
    elif role == 1:
        return bars.index(STAGES + i)
    elif role == 2:
        return bars.index(2 * STAGES + i)
    elif role == 3:
        return bars.index(2 * STAGES + STAGING + i)
    else:
        return bars.index(2 * STAGES + 2 * STAGING)


@gluon.jit
def _ws_alloc(dtype: gl.constexpr, sum_ty: gl.constexpr, D: gl.constexpr, BLOCK_N: gl.constexpr,
              BLOCK_M: gl.constexpr, STAGES: gl.constexpr, STAGING: gl.constexpr, smem: gl.constexpr,
              stage_layout: gl.constexpr, rows_layout: gl.constexpr):
    """A consumer's shared memory: K and V (one buffer, the fp32 gradients' way out at the end), the ring of
    Q, dO, lse and delta, dS^T, the dQ staging buffers, the mbarriers (initialised)."""
    kv_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D], smem)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], smem)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], smem)
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], rows_layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], rows_layout)
    ds_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_M],
                                        gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], dtype))
    stage = gl.allocate_shared_memory(sum_ty, [STAGING, BLOCK_M, D], stage_layout)
    bars = gl.allocate_shared_memory(gl.int64, [2 * STAGES + 2 * STAGING + 1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2 * STAGES + 2 * STAGING + 1):
        mbarrier.init(bars.index(i), count=1)
    return kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars


@gluon.jit
def _ws_step(t, dk, dv, kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, zero_s, zero_q,
             FULL_IDX, PART_IDX, full_lo, part_lo, nf, first_col, codes, min_off, qk_scale, dq_scale,
             NCOMP: gl.constexpr, KINDS: gl.constexpr, MASKED: gl.constexpr, BLOCK: gl.constexpr,
             BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, STAGING: gl.constexpr,
             p_layout: gl.constexpr):
    """Step t of a consumer (``_dkdv_ws_kernel``): the fused step of ``_dkdv_step`` with its loads, its list
    entries (but for a partial block's mask) and its dQ reduce left to the loader and the sender: lse and delta
    read from the ring slot where wanted, dK's dS^T from shared memory (where dQ's product reads it, so no
    registers hold it while the step's last products run), the slot handed back once the step's products are
    done, dQ_t times ``dq_scale`` staged for the sender."""
    dtype: gl.constexpr = kv_smem.dtype
    s_layout: gl.constexpr = zero_s.type.layout
    k_smem = kv_smem.index(0)
    v_smem = kv_smem.index(1)
    slot = t % STAGES
    mbarrier.wait(_ws_bar(bars, 0, slot, STAGES, STAGING), (t // STAGES) & 1)
    s = warpgroup_mma(k_smem, q_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(v_smem, do_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    if MASKED:  # the step's query positions, for the token predicate (under the score products)
        start = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, BLOCK // BLOCK_M, BLOCK_M, BLOCK)
        rows = start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    else:  # not read
        rows = first_col
    # in flight: S^T_t, dP^T_t (the last step's products all done); wait for S^T_t
    s, dk, dv = warpgroup_mma_wait(num_outstanding=1, deps=(s, dk, dv))
    pt, pt16, dv = _p_dv(s, lse_smem.index(slot).load(s_layout), qk_scale, rows, first_col, codes, min_off,
                         do_smem.index(slot), dv, NCOMP, KINDS, MASKED, BLOCK_N, p_layout)
    # in flight: dP^T_t, dV_t; wait for dP^T_t
    dp, pt16 = warpgroup_mma_wait(num_outstanding=1, deps=(dp, pt16))
    dst = (pt * (dp - delta_smem.index(slot).load(s_layout))).to(dtype)
    ds_smem.store(dst)  # the last step's products, which read it, are done; the fence also orders this step's
    fence_async_shared()  # reads of the slot's lse and delta before the loader's next TMA into the slot
    dq = warpgroup_mma(k_smem.permute((1, 0)), ds_smem, zero_q, use_acc=False, is_async=True)
    dk = warpgroup_mma(ds_smem, q_smem.index(slot), dk, is_async=True)
    # all three waited for: dQ read any later, or while dK_t runs, and ptxas serialises the loop's products
    dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ))
    mbarrier.arrive(_ws_bar(bars, 1, slot, STAGES, STAGING), count=1)
    b = t % STAGING
    mbarrier.wait(_ws_bar(bars, 3, b, STAGES, STAGING), ((t // STAGING) & 1) ^ 1)  # fresh: passes
    stage.index(b).permute((1, 0)).store((dq * dq_scale).to(stage.dtype))
    fence_async_shared()
    mbarrier.arrive(_ws_bar(bars, 2, b, STAGES, STAGING), count=1)
    return dk, dv


@gluon.jit
def _consumer_start(DQ_SCALE, ROWS: gl.constexpr, COLS: gl.constexpr, D: gl.constexpr):
    """What a warp-specialised consumer's steps carry and share, on one warpgroup's product layouts
    (``mma_layouts`` of COLS-query steps): zero scores (ROWS keys x COLS queries), dK and dV (ROWS x D, zero), the
    dQ sums' multiplier."""
    layouts: gl.constexpr = mma_layouts(4, COLS, D)
    s_layout: gl.constexpr = layouts[0]
    o_layout: gl.constexpr = layouts[1]
    zero_s = gl.zeros([ROWS, COLS], gl.float32, s_layout)
    dk = warpgroup_mma_init(gl.zeros([ROWS, D], gl.float32, o_layout))
    dv = warpgroup_mma_init(gl.zeros([ROWS, D], gl.float32, o_layout))
    return zero_s, dk, dv, gl.load(DQ_SCALE)


@gluon.jit
def _ws_consumer(kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, DK, DV, DK_PREV, DV_PREV,
                 dk_off, dv_off, stride_dkt, stride_dvt, DQ_SCALE, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t1,
                 valid, first_col, codes, min_off, qk_scale, sm_scale, NCOMP: gl.constexpr, KINDS: gl.constexpr,
                 BLOCK: gl.constexpr, D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
                 STAGES: gl.constexpr, STAGING: gl.constexpr, LOAD_PREV: gl.constexpr):
    """One key tile's column on one warpgroup (``_ws_step``: its full blocks, then its partial ones under the
    token predicate), then its dK (scaled) and dV written through the K/V buffer as ``_dkdv_kernel`` writes
    them; ``valid`` 0: a padding item (an odd count's last program), which writes nothing."""
    layouts: gl.constexpr = mma_layouts(4, BLOCK_M, D)
    s_layout: gl.constexpr = layouts[0]
    p_layout: gl.constexpr = layouts[2]
    zero_s, dk, dv, dq_scale = _consumer_start(DQ_SCALE, BLOCK_N, BLOCK_M, D)
    zero_q = gl.zeros([D, BLOCK_M], gl.float32, s_layout)
    mbarrier.wait(_ws_bar(bars, 4, 0, STAGES, STAGING), 0)
    for t in range(0, nf):
        dk, dv = _ws_step(t, dk, dv, kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, zero_s,
                          zero_q, FULL_IDX, PART_IDX, full_lo, part_lo, nf, first_col, codes, min_off, qk_scale,
                          dq_scale, NCOMP, KINDS, False, BLOCK, BLOCK_N, BLOCK_M, STAGES, STAGING, p_layout)
    for t in range(nf, t1):
        dk, dv = _ws_step(t, dk, dv, kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, zero_s,
                          zero_q, FULL_IDX, PART_IDX, full_lo, part_lo, nf, first_col, codes, min_off, qk_scale,
                          dq_scale, NCOMP, KINDS, True, BLOCK, BLOCK_N, BLOCK_M, STAGES, STAGING, p_layout)
    dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv))
    if valid:  # K and V are read by nothing now: their buffer takes the gradients on the way out
        buf = kv_smem._reinterpret(gl.float32, [BLOCK_N, D], _plain_smem())
        _write_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first_col, stride_dkt, stride_dvt, dk * sm_scale, dv, buf,
                    BLOCK_N, D, LOAD_PREV, 4, True)


@gluon.jit
def _ws_loader(kv_smem, q_smem, do_smem, lse_smem, delta_smem, bars, qd, dod, kd, vd, lsed, deltad, FULL_IDX,
               PART_IDX, full_lo, part_lo, nf, t1, first_col, BLOCK: gl.constexpr, BLOCK_M: gl.constexpr,
               STAGES: gl.constexpr, READY: gl.constexpr, EMPTY: gl.constexpr, KV: gl.constexpr):
    """One warp: a column's K and V (on mbarrier KV of ``bars``), then each step's Q, dO, lse and delta into the
    ring (slot i's arrival on mbarrier READY + i) as its consumers free the slots (EMPTY + i)."""
    kv = bars.index(KV)
    mbarrier.expect(kv, kd.block_type.nbytes + vd.block_type.nbytes)
    tma.async_copy_global_to_shared(kd, [first_col, 0], kv, kv_smem.index(0))
    tma.async_copy_global_to_shared(vd, [first_col, 0], kv, kv_smem.index(1))
    nbytes: gl.constexpr = qd.block_type.nbytes + dod.block_type.nbytes + lsed.block_type.nbytes + \
        deltad.block_type.nbytes
    for t in range(0, t1):
        slot = t % STAGES
        mbarrier.wait(bars.index(EMPTY + slot), ((t // STAGES) & 1) ^ 1)  # fresh: passes
        start = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, BLOCK // BLOCK_M, BLOCK_M, BLOCK)
        ready = bars.index(READY + slot)
        mbarrier.expect(ready, nbytes)
        tma.async_copy_global_to_shared(qd, [start, 0], ready, q_smem.index(slot))
        tma.async_copy_global_to_shared(dod, [start, 0], ready, do_smem.index(slot))
        tma.async_copy_global_to_shared(lsed, [start // BLOCK_M, 0], ready, lse_smem.index(slot))
        tma.async_copy_global_to_shared(deltad, [start // BLOCK_M, 0], ready, delta_smem.index(slot))


@gluon.jit
def _ws_sender(stage, bars, dqd, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t1, row_off, col_off, BLOCK: gl.constexpr,
               BLOCK_M: gl.constexpr, STAGING: gl.constexpr, STAGED: gl.constexpr, FREE: gl.constexpr):
    """One warp: each step's staged dQ (mbarrier STAGED + i of ``bars``: in staging buffer i) added into the sums at
    the step's rows plus ``row_off``, columns ``col_off``.., by a TMA reduce; a staging buffer handed back (FREE + i)
    once its reduce has read it (``tma.store_wait`` counts this warp's own reduces)."""
    for t in range(0, t1):
        b = t % STAGING
        mbarrier.wait(bars.index(STAGED + b), (t // STAGING) & 1)
        start = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, BLOCK // BLOCK_M, BLOCK_M, BLOCK)
        tma_reduce_add(dqd, [start + row_off, col_off], stage.index(b))
        tma.store_wait(pendings=STAGING - 1)  # the reduce of step t - STAGING + 1 has read its buffer
        if t >= STAGING - 1:
            mbarrier.arrive(bars.index(FREE + (t - STAGING + 1) % STAGING), count=1)
    tma.store_wait(pendings=0)


@gluon.jit
def _ws_column(Q, K, V, DO, LSE, DELTA, DQS, HEADS, HEAD_CSR, MIN_OFF, CODES, FULL_PTR, PART_PTR, ORDER, SEG_LO,
               SEG_HI, SEG_FIRST, item, n_items, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh,
               stride_vt, stride_dob, stride_doh, stride_dot, stride_sb, stride_sh, stride_st, stride_lb, stride_lh,
               part_heads, batch_heads, num_blocks, order_len, BLOCK: gl.constexpr, D: gl.constexpr,
               NCOMP: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, smem: gl.constexpr,
               stage_layout: gl.constexpr, rows_layout: gl.constexpr, DQ_ROWS: gl.constexpr,
               DQ_COLS: gl.constexpr, SPLIT: gl.constexpr):
    """Column item ``item`` of the launch (past ``n_items``: the last one again, marked not valid, with no steps;
    SPLIT: a column segment, ``_list_steps``): (batch, head, first key, min offset, codes, full_lo, part_lo, nf,
    t1, valid) and the TMA descriptors of its head's Q, dO, K, V, lse and delta rows (boxes of BLOCK_M values) and
    dQ sums (boxes of DQ_ROWS rows x DQ_COLS columns), then its slot in ORDER and its batch x head."""
    valid = item < n_items
    batch, head, csr, block, first, min_off, codes, slot, bh = _item(
        gl.minimum(item, n_items - 1), HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len,
        BLOCK, BLOCK_N, NCOMP)
    full_lo, part_lo, nf, t0, t1 = _list_steps(FULL_PTR, PART_PTR, SEG_LO, SEG_HI, SEG_FIRST, csr, block, slot,
                                               num_blocks, BLOCK // BLOCK_M, 0, SPLIT)
    t1 = gl.where(valid, t1, 0)
    nf = gl.minimum(nf, t1)
    n = num_blocks * BLOCK
    qd, dod, kd, vd = _descriptors(Q, K, V, DO, batch, head, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh,
                                   stride_kt, stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot, n,
                                   D, BLOCK_M, BLOCK_N, smem)
    rows = batch * stride_lb + head * stride_lh
    lsed = tma.make_tensor_descriptor(LSE + rows, shape=[n // BLOCK_M, BLOCK_M], strides=[BLOCK_M, 1],
                                      block_shape=[1, BLOCK_M], layout=rows_layout)
    deltad = tma.make_tensor_descriptor(DELTA + rows, shape=[n // BLOCK_M, BLOCK_M], strides=[BLOCK_M, 1],
                                        block_shape=[1, BLOCK_M], layout=rows_layout)
    dqd = _head_box(DQS, batch * stride_sb + head * stride_sh, n, stride_st, D, DQ_ROWS, DQ_COLS, stage_layout)
    return (batch, head, first, min_off, codes, full_lo, part_lo, nf, t1, valid.to(gl.int32), qd, dod, kd, vd, lsed,
            deltad, dqd, slot, bh)


@gluon.constexpr_function
def _rows_smem():
    """The ring's lse and delta slots: one unswizzled row of BLOCK_M fp32 values each (a TMA box)."""
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)


@gluon.jit
def _dkdv_ws_kernel(Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                    FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, DQS, DQ_SCALE, stride_sb, stride_sh, stride_st,
                    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                    stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                    stride_dvb, stride_dvh, stride_dvt, stride_lb, stride_lh,
                    part_heads, batch_heads, num_blocks, order_len, n_items, qk_scale, sm_scale,
                    BLOCK: gl.constexpr, D: gl.constexpr, NCOMP: gl.constexpr, KINDS: gl.constexpr,
                    LOAD_PREV: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
                    STAGING: gl.constexpr, CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """The fused dK/dV kernel (``_dkdv_kernel`` with DQ_SEND, whole columns) warp-specialised: a program takes
    two key tiles' columns (launch items 2p and 2p + 1), each on a consumer warpgroup of its own (the default
    partition and a 4-warp worker, CONSUMER_REGS registers a thread) doing only the products, exponentials and
    dS of its steps (``_ws_step``), with a loader warp (``_ws_loader``) and a dQ sender warp (``_ws_sender``)
    for each; mbarriers carry every hand-over (``_ws_bar``). Two columns a program as two programs an SM were;
    the single warps take 24 registers (``setmaxnreg``; Triton pads them to a warpgroup and gives the default
    partition what is left of 65,536 over 12 warps)."""
    gl.static_assert(num_warps == 4, "the default partition is one consumer warpgroup")
    gl.static_assert(STAGES >= 2, "the ring needs two slots")
    dtype: gl.constexpr = Q.dtype.element_ty
    sum_ty: gl.constexpr = DQS.dtype.element_ty
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    stage_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, D], sum_ty)
    rows_layout: gl.constexpr = _rows_smem()
    strides = (stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
               stride_dob, stride_doh, stride_dot, stride_sb, stride_sh, stride_st, stride_lb, stride_lh)
    (a_batch, a_head, a_first, a_min_off, a_codes, a_full_lo, a_part_lo, a_nf, a_t1, a_valid, a_qd, a_dod, a_kd,
     a_vd, a_lsed, a_deltad, a_dqd, _, _) = _ws_column(
        Q, K, V, DO, LSE, DELTA, DQS, HEADS, HEAD_CSR, MIN_OFF, CODES, FULL_PTR, PART_PTR, ORDER, FULL_PTR, FULL_PTR,
        FULL_PTR, 2 * gl.program_id(0), n_items, *strides, part_heads, batch_heads, num_blocks, order_len, BLOCK, D, NCOMP,
        BLOCK_N, BLOCK_M, smem, stage_layout, rows_layout, BLOCK_M, D, False)
    (b_batch, b_head, b_first, b_min_off, b_codes, b_full_lo, b_part_lo, b_nf, b_t1, b_valid, b_qd, b_dod, b_kd,
     b_vd, b_lsed, b_deltad, b_dqd, _, _) = _ws_column(
        Q, K, V, DO, LSE, DELTA, DQS, HEADS, HEAD_CSR, MIN_OFF, CODES, FULL_PTR, PART_PTR, ORDER, FULL_PTR, FULL_PTR,
        FULL_PTR, 2 * gl.program_id(0) + 1, n_items, *strides, part_heads, batch_heads, num_blocks, order_len, BLOCK, D,
        NCOMP, BLOCK_N, BLOCK_M, smem, stage_layout, rows_layout, BLOCK_M, D, False)
    KV: gl.constexpr = 2 * STAGES + 2 * STAGING  # ``_ws_bar``'s roles as the loader and sender index them
    a = _ws_alloc(dtype, sum_ty, D, BLOCK_N, BLOCK_M, STAGES, STAGING, smem, stage_layout, rows_layout)
    b = _ws_alloc(dtype, sum_ty, D, BLOCK_N, BLOCK_M, STAGES, STAGING, smem, stage_layout, rows_layout)
    gl.warp_specialize([
        (_ws_consumer, (a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], DK, DV, DK_PREV, DV_PREV,
                        a_batch * stride_dkb + a_head * stride_dkh,
                        a_batch * stride_dvb + a_head * stride_dvh, stride_dkt, stride_dvt, DQ_SCALE, FULL_IDX,
                        PART_IDX, a_full_lo, a_part_lo, a_nf, a_t1, a_valid, a_first, a_codes, a_min_off, qk_scale,
                        sm_scale, NCOMP, KINDS, BLOCK, D, BLOCK_N, BLOCK_M, STAGES, STAGING, LOAD_PREV)),
        (_ws_consumer, (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], DK, DV, DK_PREV, DV_PREV,
                        b_batch * stride_dkb + b_head * stride_dkh,
                        b_batch * stride_dvb + b_head * stride_dvh, stride_dkt, stride_dvt, DQ_SCALE, FULL_IDX,
                        PART_IDX, b_full_lo, b_part_lo, b_nf, b_t1, b_valid, b_first, b_codes, b_min_off, qk_scale,
                        sm_scale, NCOMP, KINDS, BLOCK, D, BLOCK_N, BLOCK_M, STAGES, STAGING, LOAD_PREV)),
        (_ws_loader, (a[0], a[1], a[2], a[3], a[4], a[7], a_qd, a_dod, a_kd, a_vd, a_lsed, a_deltad, FULL_IDX,
                      PART_IDX, a_full_lo, a_part_lo, a_nf, a_t1, a_first, BLOCK, BLOCK_M, STAGES, 0, STAGES, KV)),
        (_ws_loader, (b[0], b[1], b[2], b[3], b[4], b[7], b_qd, b_dod, b_kd, b_vd, b_lsed, b_deltad, FULL_IDX,
                      PART_IDX, b_full_lo, b_part_lo, b_nf, b_t1, b_first, BLOCK, BLOCK_M, STAGES, 0, STAGES, KV)),
        (_ws_sender, (a[6], a[7], a_dqd, FULL_IDX, PART_IDX, a_full_lo, a_part_lo, a_nf, a_t1, 0, 0, BLOCK, BLOCK_M,
                      STAGING, 2 * STAGES, 2 * STAGES + STAGING)),
        (_ws_sender, (b[6], b[7], b_dqd, FULL_IDX, PART_IDX, b_full_lo, b_part_lo, b_nf, b_t1, 0, 0, BLOCK, BLOCK_M,
                      STAGING, 2 * STAGES, 2 * STAGES + STAGING)),
    ], [4, 1, 1, 1, 1], [CONSUMER_REGS, 24, 24, 24, 24])


@gluon.jit
def _halves_bar(bars, role: gl.constexpr, i, STAGES: gl.constexpr, STAGING: gl.constexpr, DS_BUFS: gl.constexpr):
    """One of a shared column's mbarriers (``_dkdv_halves_kernel``): role 0 ready[i] (loader -> consumers: slot i's
    Q, dO, lse and delta landed), 1 empty[i] (both consumers -> loader: slot i's products are done; count 2),
    2 dS in[i] (both consumers' dS^T halves of buffer i stored; count 2), 3 dS out[i] (both consumers' dQ
    products have read buffer i; count 2), 4 the kept K and V tiles', 5 both consumers' loops done (count 2:
    the K/V buffer then takes their gradients), 6 + 2c and 7 + 2c consumer c's staged[i] and free[i] (as
    ``_ws_bar``'s roles 2 and 3), 10 + c consumer c's turn to issue its score products (MODE 2)."""
    if role == 0:
        return bars.index(i)
    elif role == 1:
        return bars.index(STAGES + i)
    elif role == 2:
        return bars.index(2 * STAGES + i)
    elif role == 3:
        return bars.index(2 * STAGES + DS_BUFS + i)
    elif role == 4:
        return bars.index(2 * STAGES + 2 * DS_BUFS)
    elif role == 5:
        return bars.index(2 * STAGES + 2 * DS_BUFS + 1)
    elif role < 10:  # role 6 + 2c (staged) or 7 + 2c (free) of consumer c
        return bars.index(2 * STAGES + 2 * DS_BUFS + 2 + (role - 6) * STAGING + i)
    else:  # role 10 + c: consumer c's turn to issue its score products (MODE 2)
        return bars.index(2 * STAGES + 2 * DS_BUFS + 2 + 4 * STAGING + role - 10)


@gluon.jit
def _halves_dq(ds_smem, kv_smem, buf, zero_q, C: gl.constexpr, HALF: gl.constexpr, SPLIT_D: gl.constexpr):
    """Issue consumer C's dQ of the step whose dS^T halves are in dS buffer ``buf``, over all the keys, one
    product a key half: its half of the queries (128 a step), or (SPLIT_D: 64 queries a step, too few for two
    m64 products) all the step's queries and its half of the head dim."""
    if SPLIT_D:
        cols: gl.constexpr = zero_q.type.shape[1]
        dq = warpgroup_mma(ds_smem.index(2 * buf), kv_smem.index(0).slice(0, HALF).slice(C * cols, cols, dim=1),
                           zero_q, use_acc=False, is_async=True)
        dq = warpgroup_mma(ds_smem.index(2 * buf + 1),
                           kv_smem.index(0).slice(HALF, HALF).slice(C * cols, cols, dim=1), dq, is_async=True)
    else:
        dq = warpgroup_mma(ds_smem.index(2 * buf).slice(C * HALF, HALF), kv_smem.index(0).slice(0, HALF), zero_q,
                           use_acc=False, is_async=True)
        dq = warpgroup_mma(ds_smem.index(2 * buf + 1).slice(C * HALF, HALF), kv_smem.index(0).slice(HALF, HALF), dq,
                           is_async=True)
    return dq


@gluon.jit
def _halves_stage(dq, stage, bars, t, C: gl.constexpr, STAGES: gl.constexpr, STAGING: gl.constexpr,
                  DS_BUFS: gl.constexpr):
    """Step t's dQ rows of consumer C (scaled) into its staging buffer, once the sender has read the buffer's
    last ones, for the sender."""
    b = t % STAGING
    mbarrier.wait(_halves_bar(bars, 7 + 2 * C, b, STAGES, STAGING, DS_BUFS), ((t // STAGING) & 1) ^ 1)
    stage.index(b).store(dq.to(stage.dtype))
    fence_async_shared()
    mbarrier.arrive(_halves_bar(bars, 6 + 2 * C, b, STAGES, STAGING, DS_BUFS), count=1)


@gluon.jit
def _halves_step(t, dk, dv, kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, zero_s, zero_q,
                 FULL_IDX, PART_IDX, full_lo, part_lo, nf, first_col, codes, min_off, qk_scale, dq_scale,
                 C: gl.constexpr, NCOMP: gl.constexpr, KINDS: gl.constexpr, MASKED: gl.constexpr,
                 BLOCK: gl.constexpr, HALF: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
                 STAGING: gl.constexpr, DS_BUFS: gl.constexpr, MODE: gl.constexpr, p_layout: gl.constexpr,
                 SPLIT_D: gl.constexpr):
    """Step t (BLOCK_M query rows of the column's query blocks) of consumer C, which holds keys C * HALF.. of the
    column: S^T and dP^T of its keys against the step's queries, P^T and dS^T, dV and dK (both from registers),
    its dS^T half into the step's dS buffer (``ds_smem``: one (BLOCK_M, HALF) buffer per half of the keys) and,
    once the other consumer's half is there, dQ of its half of the queries over all the column's keys (two
    products, one a key half), staged for its sender. MODE (``halves_tiles``) 0 waits for both score products
    before the exponentials, 1 runs the exponentials under dP^T's product; 2 is FlashAttention-3's ping-pong:
    consumer C issues its score products only after the other consumer has issued its own of the step before
    (C 0) or of this step (C 1), so one consumer's exponentials run under the other's products, and each
    consumer issues the dQ of step t - 1 beside step t's dV and dK (the other consumer's dS^T half of step
    t - 1 long stored), so the consumers wait for each other at no point of a step (at t = 0 that product reads a
    dS buffer no step has written yet, its result dropped; the last step's dQ follows the loop)."""
    dtype: gl.constexpr = kv_smem.dtype
    s_layout: gl.constexpr = zero_s.type.layout
    k_mine = kv_smem.index(0).slice(C * HALF, HALF)
    v_mine = kv_smem.index(1).slice(C * HALF, HALF)
    slot = t % STAGES
    mbarrier.wait(_halves_bar(bars, 0, slot, STAGES, STAGING, DS_BUFS), (t // STAGES) & 1)
    if MODE == 2:
        if C == 0:  # consumer 1's score products of step t - 1 issued (fresh: passes)
            mbarrier.wait(_halves_bar(bars, 10, 0, STAGES, STAGING, DS_BUFS), (t & 1) ^ 1)
        else:  # consumer 0's of step t
            mbarrier.wait(_halves_bar(bars, 11, 0, STAGES, STAGING, DS_BUFS), t & 1)
    s = warpgroup_mma(k_mine, q_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp = warpgroup_mma(v_mine, do_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    if MODE == 2:
        mbarrier.arrive(_halves_bar(bars, 11 - C, 0, STAGES, STAGING, DS_BUFS), count=1)
    if MASKED:  # the step's query positions, for the token predicate (under the score products)
        start = _step_start(FULL_IDX, PART_IDX, full_lo, part_lo, nf, t, BLOCK // BLOCK_M, BLOCK_M, BLOCK)
        rows = start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    else:  # not read
        rows = first_col
    if MODE == 1:  # the exponentials under dP^T
        s, dk, dv = warpgroup_mma_wait(num_outstanding=1, deps=(s, dk, dv))
    else:
        s, dp, dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(s, dp, dk, dv))
    pt, pt16, dv = _p_dv(s, lse_smem.index(slot).load(s_layout), qk_scale, rows, first_col + C * HALF, codes,
                         min_off, do_smem.index(slot), dv, NCOMP, KINDS, MASKED, HALF, p_layout)
    if MODE == 1:
        dp, pt16 = warpgroup_mma_wait(num_outstanding=1, deps=(dp, pt16))
    dst = (pt * (dp - delta_smem.index(slot).load(s_layout))).to(dtype)
    buf = t % DS_BUFS
    # the buffer's last dQ products (both consumers', of step t - DS_BUFS; MODE 2 issues them a step later) are
    # done: fresh, it passes
    mbarrier.wait(_halves_bar(bars, 3, buf, STAGES, STAGING, DS_BUFS), ((t // DS_BUFS) & 1) ^ 1)
    ds_smem.index(2 * buf + C).permute((1, 0)).store(dst)
    fence_async_shared()  # also orders this step's reads of the slot's lse and delta before the loader's next TMA
    mbarrier.arrive(_halves_bar(bars, 2, buf, STAGES, STAGING, DS_BUFS), count=1)
    dst16 = gl.convert_layout(dst, p_layout)
    dk = warpgroup_mma(dst16, q_smem.index(slot), dk, is_async=True)
    if MODE == 2:  # step t - 1's dQ
        buf = (t + DS_BUFS - 1) % DS_BUFS
        if t > 0:  # both halves of its dS^T stored
            mbarrier.wait(_halves_bar(bars, 2, buf, STAGES, STAGING, DS_BUFS), ((t - 1) // DS_BUFS) & 1)
    else:
        mbarrier.wait(_halves_bar(bars, 2, buf, STAGES, STAGING, DS_BUFS), (t // DS_BUFS) & 1)  # the other half too
    dq = _halves_dq(ds_smem, kv_smem, buf, zero_q, C, HALF, SPLIT_D)
    # all waited for (dV and dK too, the next step's wait a formality): dQ read while dK runs, ptxas serialises
    dq, pt16, dst16 = warpgroup_mma_wait(num_outstanding=0, deps=(dq, pt16, dst16))
    mbarrier.arrive(_halves_bar(bars, 1, slot, STAGES, STAGING, DS_BUFS), count=1)
    if MODE == 2:
        if t > 0:
            mbarrier.arrive(_halves_bar(bars, 3, buf, STAGES, STAGING, DS_BUFS), count=1)
            _halves_stage(dq * dq_scale, stage, bars, t - 1, C, STAGES, STAGING, DS_BUFS)
    else:
        mbarrier.arrive(_halves_bar(bars, 3, buf, STAGES, STAGING, DS_BUFS), count=1)
        _halves_stage(dq * dq_scale, stage, bars, t, C, STAGES, STAGING, DS_BUFS)
    return dk, dv


@gluon.jit
def _halves_consumer(kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, DK, DV, DK_PREV, DV_PREV,
                     dk_off, dv_off, stride_dkt, stride_dvt, DQ_SCALE, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t1,
                     first_col, codes, min_off, qk_scale, sm_scale, C: gl.constexpr, NCOMP: gl.constexpr,
                     KINDS: gl.constexpr, BLOCK: gl.constexpr, D: gl.constexpr, HALF: gl.constexpr,
                     BLOCK_M: gl.constexpr, STAGES: gl.constexpr, STAGING: gl.constexpr, DS_BUFS: gl.constexpr,
                     MODE: gl.constexpr, LOAD_PREV: gl.constexpr, SPLIT_D: gl.constexpr, DQ_ROWS: gl.constexpr,
                     DQ_COLS: gl.constexpr, split_args, SPLIT: gl.constexpr):
    """Consumer C of a shared column (``_halves_step``: the full blocks, then the partial ones under the token
    predicate; MODE 2: then the last step's dQ); once both consumers' loops are done, its keys' dK (scaled) and
    dV written through a buffer of its own (K's for consumer 0, V's for consumer 1) as ``_dkdv_kernel`` writes
    them."""
    layouts: gl.constexpr = mma_layouts(4, BLOCK_M, D)
    p_layout: gl.constexpr = layouts[2]
    zero_s, dk, dv, dq_scale = _consumer_start(DQ_SCALE, HALF, BLOCK_M, D)
    dq_layouts: gl.constexpr = mma_layouts(4, BLOCK_M, DQ_COLS)
    dq_layout: gl.constexpr = dq_layouts[1]
    zero_q = gl.zeros([DQ_ROWS, DQ_COLS], gl.float32, dq_layout)
    mbarrier.wait(_halves_bar(bars, 4, 0, STAGES, STAGING, DS_BUFS), 0)
    for t in range(0, nf):
        dk, dv = _halves_step(t, dk, dv, kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, zero_s,
                              zero_q, FULL_IDX, PART_IDX, full_lo, part_lo, nf, first_col, codes, min_off, qk_scale,
                              dq_scale, C, NCOMP, KINDS, False, BLOCK, HALF, BLOCK_M, STAGES, STAGING, DS_BUFS, MODE,
                              p_layout, SPLIT_D)
    for t in range(nf, t1):
        dk, dv = _halves_step(t, dk, dv, kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage, bars, zero_s,
                              zero_q, FULL_IDX, PART_IDX, full_lo, part_lo, nf, first_col, codes, min_off, qk_scale,
                              dq_scale, C, NCOMP, KINDS, True, BLOCK, HALF, BLOCK_M, STAGES, STAGING, DS_BUFS, MODE,
                              p_layout, SPLIT_D)
    if MODE == 2 and t1 > 0:  # the last step's dQ
        last = t1 - 1
        buf = last % DS_BUFS
        mbarrier.wait(_halves_bar(bars, 2, buf, STAGES, STAGING, DS_BUFS), (last // DS_BUFS) & 1)
        dq = _halves_dq(ds_smem, kv_smem, buf, zero_q, C, HALF, SPLIT_D)
        dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ))
        _halves_stage(dq * dq_scale, stage, bars, last, C, STAGES, STAGING, DS_BUFS)
    dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv))
    done = _halves_bar(bars, 5, 0, STAGES, STAGING, DS_BUFS)
    mbarrier.arrive(done, count=1)
    mbarrier.wait(done, 0)  # the other consumer's dQ products have read all of K
    buf = kv_smem.index(C)._reinterpret(gl.float32, [HALF, D], _plain_smem())
    if SPLIT:  # a segment: its keys' sums finished by the column's last segment to count (``_finish_dkdv``)
        WS, WS_CNT, SEG_COUNT, SEG_CIDX, slot, bh, batch_heads, ws_cols = split_args
        dk = _blocked(dk * sm_scale, buf, 4)
        dv = _blocked(dv, buf, 4)
        _finish_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first_col + C * HALF, stride_dkt, stride_dvt, dk, dv,
                     WS, WS_CNT, SEG_COUNT, SEG_CIDX, slot, bh, batch_heads, ws_cols, True, BLOCK, HALF, D, LOAD_PREV,
                     4)
    else:
        _write_dkdv(DK, DV, DK_PREV, DV_PREV, dk_off, dv_off, first_col + C * HALF, stride_dkt, stride_dvt,
                    dk * sm_scale, dv, buf, HALF, D, LOAD_PREV, 4, True)


@gluon.jit
def _dkdv_halves_kernel(Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                        FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, SEG_LO, SEG_HI, SEG_FIRST, SEG_COUNT, SEG_CIDX,
                        WS, WS_CNT, ws_cols, DQS, DQ_SCALE, stride_sb, stride_sh, stride_st,
                        stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh,
                        stride_vt, stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                        stride_dvb, stride_dvh, stride_dvt, stride_lb, stride_lh,
                        part_heads, batch_heads, num_blocks, order_len, n_items, qk_scale, sm_scale,
                        BLOCK: gl.constexpr, D: gl.constexpr, NCOMP: gl.constexpr, KINDS: gl.constexpr,
                        LOAD_PREV: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
                        STAGES: gl.constexpr, STAGING: gl.constexpr, DS_BUFS: gl.constexpr, MODE: gl.constexpr,
                        SPLIT: gl.constexpr, CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """The fused dK/dV kernel warp-specialised FlashAttention-3's way: a program takes one BLOCK_N-key column
    (launch item ``program_id``) and walks its query blocks BLOCK_M rows a step; two consumer warpgroups split
    its keys (BLOCK_N / 2 each: the default partition and a 4-warp worker, CONSUMER_REGS registers a thread),
    both reading the step's Q and dO, which one loader warp brings (``_ws_loader``); each consumer's dS^T
    half goes through shared memory, where the two consumers' dQ products (each its half of the queries, over
    all the keys) read both halves; a sender warp per consumer reduces its dQ rows into the sums. Against
    ``_dkdv_ws_kernel`` (a column a consumer, 32 queries a step) each product is twice as wide and the Q and dO
    tiles are read once for both consumers. With 64 queries a step (BLOCK_M = BLOCK_N / 2: FlashAttention-3's
    tiles at head dim 128, where a consumer's dK and dV take 128 registers a thread) a consumer's dQ takes all the
    step's queries and its half of the head dim (SPLIT_D), and a block holds BLOCK / BLOCK_M steps. SPLIT: a
    program takes a segment of a column (ORDER the segments' columns, SEG_* their tables, as ``_dkdv_kernel``),
    each consumer finishing its keys' rows as ``_finish_dkdv`` does (the last segment to count writes them)."""
    gl.static_assert(num_warps == 4, "the default partition is one consumer warpgroup")
    gl.static_assert(STAGES >= 2, "the ring needs two slots")
    gl.static_assert(BLOCK_N == 2 * 64 and (BLOCK_M == BLOCK_N or 2 * BLOCK_M == BLOCK_N),
                     "two consumers of 64 keys, 128 or 64 queries a step")
    gl.static_assert(BLOCK == BLOCK_N, "one block's column a program")
    HALF: gl.constexpr = BLOCK_N // 2
    SPLIT_D: gl.constexpr = BLOCK_M == HALF
    DQ_ROWS: gl.constexpr = BLOCK_M if SPLIT_D else HALF  # a consumer's dQ rows and columns a step
    DQ_COLS: gl.constexpr = D // 2 if SPLIT_D else D
    SECOND_ROW: gl.constexpr = 0 if SPLIT_D else HALF  # where consumer 1's dQ rows start in the step's
    dtype: gl.constexpr = Q.dtype.element_ty
    sum_ty: gl.constexpr = DQS.dtype.element_ty
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    stage_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([DQ_ROWS, DQ_COLS], sum_ty)
    rows_layout: gl.constexpr = _rows_smem()
    strides = (stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
               stride_dob, stride_doh, stride_dot, stride_sb, stride_sh, stride_st, stride_lb, stride_lh)
    (batch, head, first, min_off, codes, full_lo, part_lo, nf, t1, valid, qd, dod, kd, vd, lsed, deltad, dqd, slot,
     bh) = _ws_column(Q, K, V, DO, LSE, DELTA, DQS, HEADS, HEAD_CSR, MIN_OFF, CODES, FULL_PTR, PART_PTR, ORDER, SEG_LO,
                      SEG_HI, SEG_FIRST, gl.program_id(0), n_items, *strides, part_heads, batch_heads, num_blocks,
                      order_len, BLOCK, D, NCOMP, BLOCK_N, BLOCK_M, smem, stage_layout, rows_layout, DQ_ROWS, DQ_COLS,
                      SPLIT)
    split_args = (WS, WS_CNT, SEG_COUNT, SEG_CIDX, slot, bh, batch_heads, ws_cols)
    kv_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D], smem)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], smem)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], smem)
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], rows_layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], rows_layout)
    ds_smem = gl.allocate_shared_memory(dtype, [2 * DS_BUFS, BLOCK_M, HALF], smem)
    stage_a = gl.allocate_shared_memory(sum_ty, [STAGING, DQ_ROWS, DQ_COLS], stage_layout)
    stage_b = gl.allocate_shared_memory(sum_ty, [STAGING, DQ_ROWS, DQ_COLS], stage_layout)
    # ready; empty, dS in, dS out (count 2: both consumers); K/V; done (count 2); staged and free; turns
    bars = gl.allocate_shared_memory(gl.int64, [2 * STAGES + 2 * DS_BUFS + 2 + 4 * STAGING + 2, 1],
                                     mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(STAGES, 2 * STAGES + 2 * DS_BUFS):
        mbarrier.init(bars.index(i), count=2)
    mbarrier.init(bars.index(2 * STAGES + 2 * DS_BUFS), count=1)
    mbarrier.init(bars.index(2 * STAGES + 2 * DS_BUFS + 1), count=2)
    for i in gl.static_range(2 * STAGES + 2 * DS_BUFS + 2, 2 * STAGES + 2 * DS_BUFS + 2 + 4 * STAGING + 2):
        mbarrier.init(bars.index(i), count=1)
    dk_offs = (batch * stride_dkb + head * stride_dkh, batch * stride_dvb + head * stride_dvh)
    STAGED: gl.constexpr = 2 * STAGES + 2 * DS_BUFS + 2  # ``_halves_bar``'s role 6 (consumer 0's staged[0])
    gl.warp_specialize([
        (_halves_consumer, (kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage_a, bars, DK, DV, DK_PREV,
                            DV_PREV, dk_offs[0], dk_offs[1], stride_dkt, stride_dvt, DQ_SCALE, FULL_IDX, PART_IDX,
                            full_lo, part_lo, nf, t1, first, codes, min_off, qk_scale, sm_scale, 0, NCOMP, KINDS,
                            BLOCK, D, HALF, BLOCK_M, STAGES, STAGING, DS_BUFS, MODE, LOAD_PREV, SPLIT_D, DQ_ROWS,
                            DQ_COLS, split_args, SPLIT)),
        (_halves_consumer, (kv_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem, stage_b, bars, DK, DV, DK_PREV,
                            DV_PREV, dk_offs[0], dk_offs[1], stride_dkt, stride_dvt, DQ_SCALE, FULL_IDX, PART_IDX,
                            full_lo, part_lo, nf, t1, first, codes, min_off, qk_scale, sm_scale, 1, NCOMP, KINDS,
                            BLOCK, D, HALF, BLOCK_M, STAGES, STAGING, DS_BUFS, MODE, LOAD_PREV, SPLIT_D, DQ_ROWS,
                            DQ_COLS, split_args, SPLIT)),
        (_ws_loader, (kv_smem, q_smem, do_smem, lse_smem, delta_smem, bars, qd, dod, kd, vd, lsed, deltad, FULL_IDX,
                      PART_IDX, full_lo, part_lo, nf, t1, first, BLOCK, BLOCK_M, STAGES, 0, STAGES,
                      2 * STAGES + 2 * DS_BUFS)),
        (_ws_sender, (stage_a, bars, dqd, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t1, 0, 0, BLOCK, BLOCK_M, STAGING,
                      STAGED, STAGED + STAGING)),
        (_ws_sender, (stage_b, bars, dqd, FULL_IDX, PART_IDX, full_lo, part_lo, nf, t1, SECOND_ROW,
                      D - DQ_COLS, BLOCK, BLOCK_M, STAGING, STAGED + 2 * STAGING, STAGED + 3 * STAGING)),
    ], [4, 1, 1, 1], [CONSUMER_REGS, 24, 24, 24])


def _strides(*tensors) -> list[int]:
    """(batch, head, position) strides of (B, H, T, D) tensors, flattened."""
    return [s for t in tensors for s in t.stride()[:3]]


def backward_part(q, k, v, do, lse, delta, grads, prevs, meta, orders, block: int, scale: float, load_prev: bool,
                  segments=None, dq_sums=None, ws=None):
    """One layout part's dQ, dK and dV on the GPU: ``grads`` (dq, dk, dv) written (plus ``prevs``, the
    earlier parts' sums of the same strides, where ``load_prev``), from the merged lse (base 2) and delta
    of ``blocksparse._backward``; ``meta`` the part's ``_PartMeta``, ``orders`` its (row, column) block
    orders (``blocksparse._side_order``). The part must be in natural order, its block a multiple of 64,
    q/k/v/do 16-bit with 16-byte aligned bases and row strides (``blocksparse.gluon_backward``).
    ``segments``: None (dK/dV programs take whole columns) or the split columns' tables (segment columns,
    full ranges, first flags, counts, column indices: ``blocksparse._column_segments``) and their workspace
    (fp32 sums, counters, columns per batch x head: ``blocksparse._split_workspace``); the full blocks'
    programs then take segments. ``dq_sums``: None, or (sums, multiplier): the dK/dV programs then add each
    step's dQ times ``multiplier`` (a one-element fp32 tensor) into ``sums`` ((B, H, T, D), fp32 or fp16,
    TMA-aligned strides, zeroed by the caller, who makes dQ of it: ``blocksparse.dq_sums_buffer``) with
    ``FUSED_TILES``, and no dQ kernel runs; whole columns take the warp-specialised kernel ``ws`` names
    (``warp_specialized``'s answer, which the caller has for its split decision: "halves", "columns" or None),
    and so do segments where it is "halves" and ``halves_split`` says so."""
    batch, _, n, d = q.shape
    heads = meta.heads.numel()
    lists = meta.lists
    dq, dk, dv = grads
    dq_prev, dk_prev, dv_prev = prevs
    common = (heads, batch * heads, meta.num_blocks)
    consts = dict(BLOCK=block, D=d, NCOMP=meta.ncomp, KINDS=meta.kinds)
    head_tables = (meta.heads, meta.head_csr, meta.min_off, meta.codes)
    row_order, col_order = orders
    block_n, block_m, stages, warps = FUSED_TILES[d] if dq_sums is not None else tiles("dkdv", d)
    lists_ = (lists["col_full_ptr"], lists["col_full_idx"], lists["col_part_ptr"], lists["col_part_idx"])
    strides = (*_strides(q, k, v, do, dk, dv), lse.stride(0), lse.stride(1), *common)
    scales = (scale * 1.4426950408889634, scale)
    dkdv_tiles = dict(BLOCK_N=block_n, BLOCK_M=block_m, STAGES=stages, num_warps=warps,
                      **({} if dq_sums is not None else _cap("dkdv", d)))
    if dq_sums is not None:
        sums, multiplier = dq_sums
        fused = (sums, multiplier, *sums.stride()[:3])
    else:  # not read
        fused = (lse, lse, 0, 0, 0)

    def dkdv(outs, steps, split, prev):
        """One dK/dV launch: whole columns in col_order, or (split) the segments."""
        if split:
            order, *tables, ws, ws_cnt, ws_cols = segments
        else:  # the segment tables and workspace are not read: any int32 / fp32 tensors
            order, tables, ws, ws_cnt, ws_cols = col_order, [col_order] * 5, lse, col_order, 0
        grid = (order.shape[1] * (block // block_n) * batch * heads,)
        _dkdv_kernel[grid](q, k, v, do, *outs, lse, delta, *head_tables, *lists_, order, *tables, ws, ws_cnt, ws_cols,
                           *fused, *strides, order.shape[1], *scales, LOAD_PREV=prev, STEPS=steps, SPLIT=split,
                           DQ_SEND=dq_sums is not None,
                           AHEAD=dq_sums is not None and look_ahead(fused[0].dtype, split, prev),
                           **dkdv_tiles, **consts)

    # dQ on a second stream beside dK/dV: its programs fill the SMs the long dK/dV columns leave idle at
    # the end (what the Triton kernels' "merged" mode does in one launch)
    split = segments is not None
    kind = ws if dq_sums is not None and (not split or (ws == "halves" and halves_split(d))) else None
    if kind == "columns":
        block_n, block_m, stages, staging = columns_tiles(d, fused[0].element_size())
        n_items = col_order.shape[1] * (block // block_n) * batch * heads
        _dkdv_ws_kernel[(triton.cdiv(n_items, 2),)](
            q, k, v, do, dk, dv, dk_prev, dv_prev, lse, delta, *head_tables, *lists_, col_order, *fused, *strides,
            col_order.shape[1], n_items, *scales, LOAD_PREV=load_prev, BLOCK_N=block_n, BLOCK_M=block_m,
            STAGES=stages, STAGING=staging, CONSUMER_REGS=WS_CONSUMER_REGS, num_warps=4, **consts)
        return
    if kind == "halves":
        block_n, block_m, stages, staging, ds_bufs, mode = halves = halves_tiles(d)
        check_halves_shared(d, halves, fused[0].dtype)
        if split:
            order, *tables, work, counts, ws_cols = segments
        else:  # the segment tables and workspace are not read: any int32 / fp32 tensors
            order, tables, work, counts, ws_cols = col_order, [col_order] * 5, lse, col_order, 0
        n_items = order.shape[1] * batch * heads
        _dkdv_halves_kernel[(n_items,)](
            q, k, v, do, dk, dv, dk_prev, dv_prev, lse, delta, *head_tables, *lists_, order, *tables, work, counts,
            ws_cols, *fused, *strides, order.shape[1], n_items, *scales, LOAD_PREV=load_prev, BLOCK_N=block_n,
            BLOCK_M=block_m, STAGES=stages, STAGING=staging, DS_BUFS=ds_bufs, MODE=mode, SPLIT=split,
            CONSUMER_REGS=WS_CONSUMER_REGS, num_warps=4, **consts)
        return
    if dq_sums is not None:
        dkdv((dk, dv, dk_prev, dv_prev), 0, split, load_prev)
        return
    main = torch.cuda.current_stream(q.device)
    side = _side_stream(q.device) if use_streams() else main
    side.wait_stream(main)
    if dkdv_launches(d) == 1:
        dkdv((dk, dv, dk_prev, dv_prev), 0, split, load_prev)
    else:  # the partial blocks (and the earlier parts' sums) of whole columns, then the full ones added to those
        dkdv((dk, dv, dk_prev, dv_prev), 2, False, load_prev)
        dkdv((dk, dv, dk, dv), 1, split, True)
    block_m, block_n, stages, warps = tiles("dq", d)
    with torch.cuda.stream(side):
        _dq_kernel[(row_order.shape[1] * (block // block_m) * batch * heads,)](
            q, k, v, do, dq, dq_prev, lse, delta, *head_tables,
            lists["row_full_ptr"], lists["row_full_idx"], lists["row_part_ptr"], lists["row_part_idx"], row_order,
            *_strides(q, k, v, do, dq), lse.stride(0), lse.stride(1), *common, row_order.shape[1],
            scale * 1.4426950408889634, scale, LOAD_PREV=load_prev, STEPS=0, BLOCK_M=block_m, BLOCK_N=block_n,
            STAGES=stages, num_warps=warps, **_cap("dq", d), **consts)
    main.wait_stream(side)


def programs_per_sm(kernel: str, head_dim: int) -> int:
    """How many of ``kernel``'s programs an SM holds by registers (65,536 a Hopper SM, allocated 8 a thread at
    a time): at the cap ``registers``, or 255 a thread (what these loops take uncapped)."""
    warps = tiles(kernel, head_dim)[3]
    cap = registers(kernel, head_dim) or 255
    return max(1, 65536 // (32 * warps * -(-cap // 8) * 8))


def _cap(kernel: str, head_dim: int) -> dict:
    """The launch option capping ``kernel``'s registers (``registers``), if any."""
    cap = registers(kernel, head_dim)
    return {} if cap is None else {"maxnreg": cap}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream dQ runs on beside dK/dV: the device's ``blocksparse.side_stream`` (the Triton backward's
    "streams" mode uses it too)."""
    return side_stream(device.index if device.index is not None else torch.cuda.current_device())


def use_streams() -> bool:
    """Whether dQ runs on a second stream beside dK/dV (``STREAMS``; ``MEGASTRIDE_BLOCKSPARSE_GLUON_STREAMS``
    "0" or "1" overrides it). The caller's stream waits for both before the backward returns, also inside
    a CUDA graph capture (a fork and a join of the captured stream)."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_GLUON_STREAMS", STREAMS)


def look_ahead(sums: torch.dtype, split: bool, load_prev: bool) -> bool:
    """Whether each step of the fused dK/dV kernel (``DQ_SEND``) loads the next step's list entry, lse and
    delta at its end, after its dQ reduce is issued, instead of its own at its start (where the chain of
    the two loads, the entry and then the rows, waits under only the score products): ``AHEAD``, or
    ``MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD`` where set. "1": always; "0": never; "auto": a launch of whole
    columns into fp16 ``sums`` without earlier parts' sums (ptxas for sm_90: 3 spill reloads an iteration
    instead of 6-7, and on the H200 2.6-3.4% off the forward+backward at 262,144 tokens, 8x64, -0.3 to 3.6%
    at 1M: docs/benchmarks.md "Thirty-sixth run"); into fp32 sums, with column segments or with earlier sums
    it reloads 10-21 an iteration instead of 6-7, not timed. The other dK/dV kernels compile as without it."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD", AHEAD)
    if raw not in ("auto", "0", "1"):
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD must be auto, 0 or 1, got {raw!r}")
    return raw == "1" or (raw == "auto" and sums == torch.float16 and not split and not load_prev)


def warp_specialized(head_dim: int, block: int, lse: torch.Tensor, delta: torch.Tensor) -> str | None:
    """Which warp-specialised kernel a fused launch of whole columns (``backward_part`` with ``dq_sums``) runs
    instead of ``_dkdv_kernel``: "halves" (``_dkdv_halves_kernel``: one column a program, its keys split between
    the two consumers), "columns" (``_dkdv_ws_kernel``: two columns a program, one a consumer) or None (neither).
    ``WARP_SPECIALIZED``, or ``MEGASTRIDE_BLOCKSPARSE_GLUON_WS`` where set: "0" neither; "1" or "columns" and
    "halves" that kernel where it can run; "auto" (the default) "halves" where it can run at a head dim of
    ``HALVES_AUTO_DIMS``, else "columns" where that can. Where they can run: a head dim of ``HALVES_TILES``
    (``WS_TILES``), a block of its keys a program ("columns": a block its key tiles divide), lse and delta rows
    TMA can address (unit stride, 16-byte aligned bases and row strides). On the H200, at 1M tokens, 8x64, the "columns" loop on full blocks of the
    fixed pattern ran 6-9% faster than the fused kernel's (docs/benchmarks.md "Thirty-eighth run"), and the
    forward+backward with "halves" 4.7% faster than with "columns" ("Thirty-ninth run")."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", WARP_SPECIALIZED)
    if raw not in ("auto", "0", "1", "columns", "halves"):
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_WS must be auto, 0, 1, columns or halves, got {raw!r}")
    halves = head_dim in HALVES_TILES and block == HALVES_TILES[head_dim][0]
    auto = raw == "auto" and not (halves and head_dim in HALVES_AUTO_DIMS)
    kind = None if raw == "0" else "columns" if raw in ("1", "columns") or auto else "halves"
    if kind == "halves" and not halves:
        return None
    if kind == "columns" and (head_dim not in WS_TILES or block % WS_TILES[head_dim][0]):
        return None
    aligned = all(x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(st * x.element_size() % 16 == 0
                                                                       for st in x.stride()[:-1])
                  for x in (lse, delta))
    return kind if kind and aligned else None


def halves_split(head_dim: int) -> bool:
    """Whether launches at ``head_dim`` whose dK/dV columns ``blocksparse.gluon_split`` cuts into segments take the
    halves kernel on them (each consumer finishing its keys' rows as ``_finish_dkdv`` does) where it is the
    warp-specialised kernel (``warp_specialized``), instead of the unspecialised fused kernel: at
    ``HALVES_SPLIT_DIMS``, or as ``MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT`` ("0" or "1") says where set. Where it
    matters: 262,144 tokens at 2x128, whose summary columns are the launch's critical path on whole columns; at
    head dim 64 not timed."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT", head_dim in HALVES_SPLIT_DIMS)


def halves_tiles(head_dim: int) -> tuple[int, int, int, int, int, int]:
    """``HALVES_TILES`` at ``head_dim``, or with ``MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES`` ("sSgGdDmM": S ring
    slots, G dQ staging buffers a consumer, D dS buffers, M the step's schedule: 0 the score products waited for
    together, 1 the exponentials under dP^T's product, 2 the consumers taking turns, each step's dQ issued with
    the next step's score products) its last four replaced."""
    base = HALVES_TILES[head_dim]
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES", "")
    if not raw:
        return base
    m = re.fullmatch(r"s(\d)g(\d)d(\d)m([012])", raw)
    if not m or not (2 <= int(m[1]) and 1 <= int(m[2]) and 1 <= int(m[3])) or (m[4] == "2" and int(m[3]) < 2):
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES: {raw!r} is not sSgGdDmM (S >= 2 ring slots, "
                         f"G >= 1 staging buffers, D >= 1 dS buffers (2 with M 2), M 0, 1 or 2), e.g. s2g2d2m0")
    return (*base[:2], *(int(m[i]) for i in range(1, 5)))


def check_halves_shared(head_dim: int, tiles: tuple[int, int, int, int, int, int], sums: torch.dtype) -> None:
    """Refuse (ValueError, naming them) ``_dkdv_halves_kernel``'s ``tiles`` at ``head_dim`` with dQ sums of
    ``sums`` where one program's shared memory (``halves_shared_bytes`` plus ``HALVES_SHARED_SLACK``) passes an
    SM's ``SHARED_BYTES``: the launch would fail."""
    need = halves_shared_bytes(head_dim, tiles, sums.itemsize) + HALVES_SHARED_SLACK
    if need > SHARED_BYTES:
        raise ValueError(f"the halves kernel's tiles {tuple(tiles)} at head dim {head_dim} with {sums} dQ sums need "
                         f"about {need:,} bytes of shared memory, more than an SM's {SHARED_BYTES:,} "
                         f"(MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES: fewer slots or buffers)")


def columns_tiles(head_dim: int, sum_bytes: int) -> tuple[int, int, int, int]:
    """``WS_TILES`` at ``head_dim`` for dQ sums of ``sum_bytes`` a value, with one staging buffer a consumer where
    two would not fit an SM's shared memory (fp32 sums at head dim 128: 239,936 bytes compiled, 207,136 with one;
    the H200 refused the launch, 2026-12-05)."""
    tiles = WS_TILES[head_dim]
    if columns_shared_bytes(head_dim, tiles, sum_bytes) + COLUMNS_SHARED_SLACK > SHARED_BYTES:
        tiles = (*tiles[:3], 1)
    return tiles


def columns_shared_bytes(head_dim: int, tiles: tuple[int, int, int, int], sum_bytes: int) -> int:
    """Shared memory one program of ``_dkdv_ws_kernel`` allocates (two columns, each as ``_ws_alloc`` makes it: K
    and V, the ring of Q, dO, lse and delta, dS^T, the dQ staging buffers, the mbarriers); the compiler's
    alignment adds up to ``COLUMNS_SHARED_SLACK``."""
    block_n, block_m, stages, staging = tiles
    column = (2 * block_n * head_dim * 2 + 2 * stages * block_m * head_dim * 2 + 2 * stages * block_m * 4
              + block_n * block_m * 2 + staging * block_m * head_dim * sum_bytes + 8 * (2 * stages + 2 * staging + 1))
    return 2 * column


def halves_shared_bytes(head_dim: int, tiles: tuple[int, int, int, int, int, int], sum_bytes: int) -> int:
    """Shared memory one program of ``_dkdv_halves_kernel`` allocates with ``tiles`` (``halves_tiles``) at
    ``head_dim`` into dQ sums of ``sum_bytes`` a value: K and V, the ring of Q, dO, lse and delta, the dS buffers,
    both consumers' staging buffers and the mbarriers (8 bytes each); the compiler's alignment adds up to
    ``HALVES_SHARED_SLACK``."""
    block_n, block_m, stages, staging, ds_bufs, _ = tiles
    half = block_n // 2
    dq_values = block_m * head_dim // 2  # a consumer's dQ a step: half the queries, or all and half the head dim
    bars = 2 * stages + 2 * ds_bufs + 2 + 4 * staging + 2
    return (2 * block_n * head_dim * 2 + 2 * stages * block_m * head_dim * 2 + 2 * stages * block_m * 4
            + 2 * ds_bufs * block_m * half * 2 + 2 * staging * dq_values * sum_bytes + 8 * bars)


def _tiles_item(kernel: str) -> tuple[tuple[int, int, int, int], int | None] | None:
    """``kernel``'s item of ``MEGASTRIDE_BLOCKSPARSE_GLUON_TILES`` (tiles, register cap), or None."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_TILES", "")
    found = None
    for item in filter(None, (x.strip() for x in raw.split(","))):
        m = re.fullmatch(r"(dkdv|dq):(\d+)x(\d+)s(\d+)w(\d+)(?:r(\d+))?", item)
        big, small, stages, warps = (int(g) for g in m.groups()[1:5]) if m else (0, 0, 0, 0)
        cap = int(m.group(6)) if m and m.group(6) else None
        if (not m or warps not in (4, 8) or big != 16 * warps or small not in (32, 64, 128) or stages < 2
                or (cap is not None and not 24 <= cap <= 255)):
            raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_TILES: {item!r} is not KERNEL:PxSsNwW[rR] (KERNEL dkdv "
                             f"or dq, P = 16 x W rows, W 4 or 8, S 32, 64 or 128, N >= 2 slots, R 24-255 "
                             f"registers a thread)")
        if m.group(1) == kernel and found is None:
            found = (big, small, stages, warps), cap
    return found


def tiles(kernel: str, head_dim: int) -> tuple[int, int, int, int]:
    """(program tile, step tile, ring slots, warps) of the Gluon ``kernel`` ("dkdv": keys a program, queries a
    step; "dq": queries a program, keys a step) at ``head_dim``: ``DKDV_TILES``/``DQ_TILES``, or where
    ``MEGASTRIDE_BLOCKSPARSE_GLUON_TILES`` names the kernel ("dkdv:128x64s3w8,dq:64x32s3w4r168": at every head
    dim; ``registers`` reads the optional rR), that. A program tile takes 16 rows a warp (one m64 product a
    warpgroup): 64 rows at four warps, 128 at eight (two warpgroups sharing the streamed tiles); the layout
    block must hold whole tiles."""
    item = _tiles_item(kernel)
    return item[0] if item else (DKDV_TILES if kernel == "dkdv" else DQ_TILES)[head_dim]


def registers(kernel: str, head_dim: int) -> int | None:
    """The cap on registers a thread (ptxas ``maxnreg``) of the Gluon ``kernel`` at ``head_dim``, None for
    the compiler's own choice: what decides how many programs share an SM (65,536 registers: two at 255
    a thread and four warps, three at 168). ``MAX_REGISTERS``, or the rR of the kernel's item in
    ``MEGASTRIDE_BLOCKSPARSE_GLUON_TILES`` (an item without one: None)."""
    item = _tiles_item(kernel)
    return item[1] if item else MAX_REGISTERS.get((kernel, head_dim))


def dkdv_launches(head_dim: int) -> int:
    """Launches of the dK/dV kernel per part: 1 (a program walks its column's full blocks and then its
    partial ones) or 2 (the partial blocks first, then the full ones, which add the first launch's rows,
    rounded to the output's dtype, to theirs). At head dim 128 one kernel with both loops spills in the
    full blocks' loop (ptxas, sm_90: 255 registers, 5 reloads an iteration), the full blocks alone do not
    (251), so there it is 2 (``DKDV_LAUNCHES``); ``MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES`` ("1" or "2")
    overrides it."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES")
    if raw is None:
        return DKDV_LAUNCHES[head_dim]
    if raw not in ("1", "2"):
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES must be 1 or 2, got {raw!r}")
    return int(raw)


def _signature(names: list[str], consts: dict) -> dict:
    ints = {"part_heads", "batch_heads", "num_blocks", "order_len", "ws_cols"} | {x for x in names if x.startswith("stride_")}
    floats = {"qk_scale", "sm_scale"}
    i32 = {"HEADS", "HEAD_CSR", "MIN_OFF", "CODES", "FULL_PTR", "FULL_IDX", "PART_PTR", "PART_IDX", "ORDER", "WS_CNT",
           "SEG_LO", "SEG_HI", "SEG_FIRST", "SEG_COUNT", "SEG_CIDX"}
    sig = {}
    for x in names:
        if x in consts:
            sig[x] = "constexpr"
        elif x in ints:
            sig[x] = "i32"
        elif x in floats:
            sig[x] = "fp32"
        elif x in i32:
            sig[x] = "*i32"
        elif x in ("LSE", "DELTA", "WS"):
            sig[x] = "*fp32"
        elif x.endswith("_PREV"):
            sig[x] = "*fp32"
        else:
            sig[x] = "*bf16"
    return sig


def compile_for(kernel: str = "dkdv", head_dim: int = 128, block: int = 128, ncomp: int = 2, kinds: int = 8 | 16,
                load_prev: bool = False, steps: int = 0, split: bool = False,
                tiles: tuple[int, int, int, int] | None = None, maxnreg: int | None = None, arch: int = 90,
                dq_sums: str | None = None, ahead: bool | None = None):
    """The dK/dV (``kernel`` "dkdv") or dQ ("dq") kernel compiled for ``arch`` without a GPU (bf16 inputs,
    fp32 earlier sums), for the fixed pattern's kinds (window and summary) by default; ``tiles`` replaces
    the head dim's (program tile, step tile, stages, warps), ``maxnreg`` caps its registers a thread.
    ``dq_sums`` ("fp32" or "fp16"): the dK/dV kernel that also sends dQ into sums of that type, at
    ``FUSED_TILES`` unless ``tiles`` says otherwise. ``ahead``: its rows loaded a step ahead
    (``look_ahead``'s choice where None)"""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    if ahead is None:
        ahead = look_ahead(torch.float16 if dq_sums == "fp16" else torch.float32, split, load_prev)
    if kernel in ("dkdv_ws", "dkdv_halves"):
        halves = kernel == "dkdv_halves"
        if halves:
            big, small, stages, staging, ds_bufs, mode = tiles or halves_tiles(head_dim)
        else:
            big, small, stages, staging = tiles or WS_TILES[head_dim]
        fn = _dkdv_halves_kernel if halves else _dkdv_ws_kernel
        consts = {"BLOCK": block, "D": head_dim, "NCOMP": ncomp, "KINDS": kinds, "LOAD_PREV": load_prev,
                  "BLOCK_N": big, "BLOCK_M": small, "STAGES": stages, "STAGING": staging,
                  **({"DS_BUFS": ds_bufs, "MODE": mode, "SPLIT": split} if halves else {}),
                  "CONSUMER_REGS": WS_CONSUMER_REGS, "num_warps": 4}
        sig = _signature(list(fn.arg_names), consts)
        sig.update(DQS=f"*{dq_sums or 'fp16'}", DQ_SCALE="*fp32", stride_sb="i32", stride_sh="i32", stride_st="i32",
                   n_items="i32")
        src = GluonASTSource(fn=fn, signature=sig, constexprs=consts)
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    fn = _dkdv_kernel if kernel == "dkdv" else _dq_kernel
    defaults = FUSED_TILES if dq_sums else DKDV_TILES if kernel == "dkdv" else DQ_TILES
    big, small, stages, warps = tiles or defaults[head_dim]
    names = list(fn.arg_names)
    tile_names = ("BLOCK_N", "BLOCK_M") if kernel == "dkdv" else ("BLOCK_M", "BLOCK_N")
    consts = {"BLOCK": block, "D": head_dim, "NCOMP": ncomp, "KINDS": kinds, "LOAD_PREV": load_prev, "STEPS": steps,
              **({"SPLIT": split, "DQ_SEND": bool(dq_sums), "AHEAD": bool(dq_sums) and ahead}
                 if kernel == "dkdv" else {}),
              tile_names[0]: big, tile_names[1]: small, "STAGES": stages, "num_warps": warps}
    sig = _signature(names, consts)
    if kernel == "dkdv":
        sig.update(DQS=f"*{dq_sums or 'fp32'}", DQ_SCALE="*fp32", stride_sb="i32", stride_sh="i32", stride_st="i32")
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts)
    options = {"num_warps": warps, **({} if maxnreg is None else {"maxnreg": maxnreg})}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


__all__ = ["COLUMNS_SHARED_SLACK", "DKDV_TILES", "DQ_TILES", "FUSED_TILES", "HALVES_AUTO_DIMS", "HALVES_SHARED_SLACK",
           "HALVES_SPLIT_DIMS", "HALVES_TILES", "HEAD_DIMS", "MAX_REGISTERS", "SHARED_BYTES", "WS_TILES", "backward_part",
           "check_halves_shared", "columns_shared_bytes", "columns_tiles", "compile_for", "dkdv_launches",
           "halves_shared_bytes", "halves_split", "halves_tiles", "look_ahead", "programs_per_sm", "registers",
           "tiles", "use_streams", "warp_specialized"]
