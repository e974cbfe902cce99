"""Block-sparse causal attention in Triton over the compressed layouts of ``patterns``.

FlashAttention-2 style: one program per (query tile, batch x head of a part) walks the key blocks of
its row (the *full* blocks without a mask, then the *partial* ones with the part's token predicate),
keeping an online softmax in fp32 and saving the log-sum-exp (base 2). The backward pass is a dQ kernel
over the row lists, which also computes delta = rowsum(dO * O) for its rows (``delta_in_dq``), then a
dK/dV kernel over the transposed (column) lists: every output element is written by exactly one program,
so no atomics (``dq_mode`` "auto" may run both in one launch, after a delta kernel). Optionally
(``DQ_MODE = "atomic"``) the dK/dV kernel also adds each tile's dS @ K to an fp32 dQ with atomics
and the dQ kernel is skipped: two matmuls per tile fewer, at the price of a run-to-run
nondeterministic summation order in dQ. With a split of S > 0 (``dkdv_split``: by default where one
column outweighs a fair share of the work per SM) a dK/dV program takes at most S query blocks of a
column and adds its share into a small fp32 workspace with atomics, the last segment to count writing the
column's final dK/dV (``split_finish``): the fixed pattern's summary columns (attended by every later
query block) stop being one long serial chain per column.

Every switch (environment variables, default, when each is read): docs/kernels.md.

A layout may split a head over several *parts* (the strided pattern: its local half in natural
order, its strided half on the sequence permuted by i -> (i mod l) * (n / l) + i // l, where keys
with equal i mod l are neighbours and the tiles are dense). Permuted parts read and write natural
positions by index arithmetic in the loads (no gather copy). Parts after the first merge into the
running output through the two log-sum-exps (LOAD_PREV); the backward of every part uses the merged
lse and delta and adds its gradients to the earlier parts' ones.

Programs take their blocks in chunks of consecutive blocks, heaviest chunk first (``block_order``), so
the programs in flight read the same windows' tiles. On Hopper, where a natural-order part's rows hold
long full lists (``TMA_MIN_BLOCKS``), the full blocks' tiles are loaded as TMA boxes through in-kernel
tensor descriptors (``use_tma_loads``); elsewhere by pointer loads. There, from 65,536 tokens at head dim
128, the backward of natural-order parts runs in Gluon instead (``gluon_backward``, kernels/gluon_bwd.py:
each product of a step asynchronous, the exponentials and dS under the products). A Gluon forward
(``gluon_forward``, kernels/gluon_fwd.py) is there as an option; it was slower than the Triton one.

All base offsets are int64: B*H*T*D passes 2**31 elements at a few million tokens.

Eager calls at short lengths are bound by the host's issue of the launches: once two calls of one key (layout,
tensors' shapes, strides, dtypes, alignment, every switch) launched alike, later calls replay those launches
with their own tensors (launch plans, ``use_plans``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import re
import threading
import weakref
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from triton.runtime import _allocation

from .attention import attention_forward, qkv_heads
from .patterns import Layout, LayoutPart
from .profiling import sm_count

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


def _switch(name: str, default) -> bool:
    """An on/off switch: environment variable ``name`` ("0" or "1") where set, else ``default``."""
    raw = os.environ.get(name)
    if raw is None:
        return bool(default)
    if raw not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


_HEAD_DIMS = (16, 32, 64, 128, 256)
# A backward step issues both of its score products (S and dP) before the exponentials, so the tensor
# cores run the second while the first's exponentials are computed: on the H200 (2026-12-01,
# docs/benchmarks.md "Twelfth run") dK/dV 6-8% faster at H=8, D=64 from 262,144 tokens, 1-5% at H=2, D=128,
# dQ within 1.3% either way. MEGASTRIDE_BLOCKSPARSE_DOTS_FIRST=0 (read at import: it changes the compiled
# kernels) keeps the earlier order, dP after the exponentials.
DOTS_FIRST = tl.constexpr(_switch("MEGASTRIDE_BLOCKSPARSE_DOTS_FIRST", True))

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _natural(p, perm_g, perm_l, PERMUTED: tl.constexpr, seq):
    """Natural sequence position (int64) of part position p (the inverse of the part's permutation) in a
    sequence of ``seq`` positions. PERMUTED 1: by stride (perm_g = n / l groups, perm_l = l); 2: summary
    positions first (``LayoutPart.summary_first``; perm_g = the summary width c, perm_l = the window l):
    part positions below c * n / l are the windows' last c positions, window by window, then come the other
    l - c of each window."""
    if PERMUTED == 2:
        # one int32 division per position, by the width of its own run (c or l - c): the two-sided int64 form
        # this replaces (both quotients and both remainders for every position) held the dK/dV loop at
        # 1,592 instructions and 154 spill loads/stores per iteration (sm_90 SASS, compile_check --loop)
        boundary = ((seq // perm_l) * perm_g).to(tl.int32)
        summary = p < boundary
        width = tl.where(summary, perm_g, perm_l - perm_g)
        x = tl.where(summary, p, p - boundary)
        w = x // width
        return (w * perm_l + tl.where(summary, perm_l - perm_g, 0) + (x - w * width)).to(tl.int64)
    elif PERMUTED:
        return (p % perm_g).to(tl.int64) * perm_l + (p // perm_g).to(tl.int64)
    else:
        return p.to(tl.int64)


@triton.jit
def _natural_tile(start, TILE: tl.constexpr, perm_g, perm_l, PERMUTED: tl.constexpr, RUN: tl.constexpr, seq):
    """Natural positions (int64) of the part positions start, ..., start + TILE - 1 (start a multiple of TILE,
    the tile inside one block). In a summary-first part whose runs (c summary positions of a window, or its
    l - c others) are all multiples of RUN long (``_run_alignment``) the tile is contiguous in natural order
    but where it crosses from one run to the next (the natural position jumps by the other run's width), and
    it crosses fewer than TILE / RUN times: one scalar map of its start and at most TILE / RUN - 1 compares a
    position, instead of one division a position (``_natural``). Any other order: ``_natural``."""
    if PERMUTED == 2 and RUN > 0 and TILE // RUN <= 8:
        boundary = (seq // perm_l) * perm_g  # where the summaries end (a multiple of the block: so of TILE)
        summary = start < boundary
        width = tl.where(summary, perm_g, perm_l - perm_g)
        x = tl.where(summary, start, start - boundary)
        w = x // width
        r0 = x - w * width  # the start's offset in its run
        i = tl.arange(0, TILE)
        nat = (w * perm_l + tl.where(summary, perm_l - perm_g, 0) + r0).to(tl.int64) + i
        gap = tl.where(summary, perm_l - perm_g, perm_g).to(tl.int64)
        for k in tl.static_range(1, TILE // RUN):  # the k-th run end inside the tile, if any
            nat += tl.where(r0 + i >= k * width, gap, 0)
        return nat
    else:
        return _natural(start + tl.arange(0, TILE), perm_g, perm_l, PERMUTED, seq)


@triton.jit
def _runs_of(RUNS_T, csr, block, num_blocks, RUNS: tl.constexpr):
    """A full list as (at most) two arithmetic runs of blocks (``_block_runs``): first start, count,
    step; second start, step. Unused (zeros) without RUNS."""
    if RUNS:
        base = RUNS_T + (csr.to(tl.int64) * num_blocks + block) * 6
        return tl.load(base), tl.load(base + 1), tl.load(base + 2), tl.load(base + 3), tl.load(base + 5)
    else:
        return 0, 0, 0, 0, 0


@triton.jit
def _nth_block(e, first, IDX, r0, c0, st0, r1, st1, RUNS: tl.constexpr):
    """Block of full entry ``e`` (its list starts at entry ``first``): from the runs by arithmetic alone
    with RUNS, so the pipeliner can prefetch the tiles it addresses like a dense loop's, else loaded
    from the index list (a load the tile loads then wait on)."""
    if RUNS:
        t = e - first
        return tl.where(t < c0, r0 + t * st0, r1 + (t - c0) * st1)
    else:
        return tl.load(IDX + e)


@triton.jit
def _list_tile(t, first, IDX, r0, c0, st0, r1, st1, perm_g, perm_l, BLOCK: tl.constexpr, TILE: tl.constexpr,
               RUNS: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr, seq):
    """Sub-tile ``t`` of a full list walked TILE positions per loop iteration (entries from ``first`` on
    cover ``BLOCK // TILE`` iterations each, so a pipeline stage buffers one sub-tile): its first part
    position and its positions in natural order."""
    SUB: tl.constexpr = BLOCK // TILE
    start = _nth_block(t // SUB, first, IDX, r0, c0, st0, r1, st1, RUNS) * BLOCK + (t % SUB) * TILE
    return start, _natural_tile(start, TILE, perm_g, perm_l, PERMUTED, RUN, seq)


@triton.jit
def _row_tile(X, desc, start, rows, offs_d, stride_t, DESC: tl.constexpr):
    """The rows of X at (natural) positions ``rows``: by pointers, or (DESC: natural order, where ``rows``
    are ``start``, ``start + 1``, ...) one TMA box of ``desc`` (``_tile_descs``)."""
    if DESC:
        return desc.load([start, 0])
    else:
        return tl.load(X + rows[:, None] * stride_t + offs_d[None, :])


@triton.jit
def _tile_descs(A, B, stride_at, stride_bt, rows, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, DESC: tl.constexpr):
    """TMA descriptors of A's and B's (rows, HEAD_DIM) rows in boxes of ROWS rows (DESC: a natural-order
    part, whose full lists' tiles are contiguous rows), else A and B themselves (not read)."""
    if DESC:
        return (tl.make_tensor_descriptor(A, shape=[rows, HEAD_DIM], strides=[stride_at, 1], block_shape=[ROWS, HEAD_DIM]),
                tl.make_tensor_descriptor(B, shape=[rows, HEAD_DIM], strides=[stride_bt, 1], block_shape=[ROWS, HEAD_DIM]))
    else:
        return A, B


@triton.jit
def _key_tile(K, V, k_desc, v_desc, start, cols, offs_d, stride_kt, stride_vt, DESC: tl.constexpr):
    """The K and V rows at (natural) positions ``cols`` (from ``start`` on with DESC): one key tile of the
    forward or dQ kernel."""
    return (_row_tile(K, k_desc, start, cols, offs_d, stride_kt, DESC),
            _row_tile(V, v_desc, start, cols, offs_d, stride_vt, DESC))


@triton.jit
def _allowed(i, j, CODES, min_off, NCOMP: tl.constexpr, KINDS: tl.constexpr):
    """The part's token predicate (``LayoutPart.allows``) on broadcastable 2-D query i and key j positions.

    KINDS has bit (1 << kind) set for each component kind present in the part: the others compile away.
    """
    d = i - j
    ok = d < d  # all False, broadcast shape
    for m in tl.static_range(NCOMP):
        kind = tl.load(CODES + 4 * m)
        a = tl.maximum(tl.load(CODES + 4 * m + 1), 1)  # KIND_NONE padding rows have a = 0
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
            ok = ok | ((kind == 4) & (r >= tl.load(CODES + 4 * m + 2)) & (r < tl.load(CODES + 4 * m + 3)))
        if KINDS & 32:  # earlier summaries (summary-first part): j below the boundary, of an earlier window
            rest = tl.maximum(tl.load(CODES + 4 * m + 2), 1)
            boundary = tl.load(CODES + 4 * m + 3)
            window = tl.where(i < boundary, i // a, (tl.maximum(i - boundary, 0)) // rest)
            ok = ok | ((kind == 5) & (j < boundary) & (j // a < window))
    return ok & (d >= min_off)


@triton.jit
def _fwd_step(acc, l_i, m_i, q, k, v, qk_scale, ok, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key tile of the online softmax (scores in base-2 units). The scale multiplies the row max, not
    every score (max(s) * c = max(s * c) for c > 0), and joins the subtraction in one multiply-add per
    score instead of a multiply and a subtract: the per-score arithmetic competes with the two matrix
    products at these head dims (H200, same tiles: forward 3-4% faster at D=64, 4-6% at D=128;
    docs/benchmarks.md "Tile sweeps")."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    if MASKED:
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    if MASKED:  # a row may have seen no key yet: keep exp2(-inf - -inf) from making NaN
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = tl.math.exp2(s * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _program_tile(pid, HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len,
                  BLOCK: tl.constexpr, TILE: tl.constexpr, NCOMP: tl.constexpr):
    """What program ``pid`` works on: (batch, head, CSR index, block, first position of its TILE-wide
    tile, the part's min offset, its component codes, its slot in ORDER). Heads vary fastest over
    program ids and the blocks come in ORDER (order_len entries per CSR, in ``block_order()``'s order:
    chunks of consecutive blocks, heaviest chunk first), so every head's heaviest tiles start early and
    the programs in flight read the same windows' tiles."""
    bh = pid % batch_heads
    tile = pid // batch_heads
    batch = (bh // part_heads).to(tl.int64)
    hp = bh % part_heads
    head = tl.load(HEADS + hp).to(tl.int64)
    csr = tl.load(HEAD_CSR + hp)
    slot = csr.to(tl.int64) * order_len + tile // (BLOCK // TILE)
    block = tl.load(ORDER + slot)
    first = block * BLOCK + (tile % (BLOCK // TILE)) * TILE
    return batch, head, csr, block, first, tl.load(MIN_OFF + hp), CODES + hp * (NCOMP * 4), slot


@triton.jit
def _dependent_start(GDC: tl.constexpr):
    """A kernel's first statement where it may be launched as a programmatic dependent launch (GDC: ``use_pdl``):
    wait for the launch before it on the stream to complete, its writes visible (before any load or store here,
    so neither a result it writes nor memory the allocator gave back can be touched early), then let the launch
    after this one start its programs once every program of this one has begun. Only the launches' own start and
    their programs' dispatch overlap; without GDC, nothing."""
    if GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


# Programmatic dependent launch (Hopper and later): the Triton attention kernels launched so each may start its
# programs while the launch before it on the stream finishes (use_pdl; each waits for it first, _dependent_start).
# For the short lengths, where a forward+backward is a few launches of tens of microseconds each. Off by default:
# timed in docs/benchmarks.md's forty-sixth run, 1-2.5% off at 2x128 and nothing measurable at 8x64
PDL = False


def use_pdl(q: torch.Tensor) -> bool:
    """Whether the Triton attention kernels on q's device go out as programmatic dependent launches: ``PDL``
    (``MEGASTRIDE_BLOCKSPARSE_PDL`` "0" or "1" overrides it) on a CUDA GPU of compute capability 9.0 or later,
    compiled (the interpreter has no such launch)."""
    if not _switch("MEGASTRIDE_BLOCKSPARSE_PDL", PDL) or not q.is_cuda or _INTERPRET:
        return False
    return torch.cuda.get_device_capability(q.device)[0] >= 9


def _pdl_consts(q: torch.Tensor) -> dict:
    """The constexpr and launch option of a programmatic dependent launch (``use_pdl``): GDC always given (the
    direct launch passes every parameter), ``launch_pdl`` only where on (else the keys of before)."""
    return {"GDC": True, "launch_pdl": True} if use_pdl(q) else {"GDC": False}


@triton.jit
def _row_range(FULL_PTR, PART_PTR, ptr, SEG_LO, SEG_HI, SEG_FIRST, slot, SPLIT: tl.constexpr):
    """(first full entry of the row, this program's full entries [lo, hi), its partial entries [lo, hi)) for row
    ``ptr`` of a CSR: the whole row, or (SPLIT) row segment ``slot``'s full entries, and the partial ones only
    in the row's first segment."""
    full_lo = tl.load(FULL_PTR + ptr)
    part_lo, part_hi = tl.load(PART_PTR + ptr), tl.load(PART_PTR + ptr + 1)
    if SPLIT:
        seg_lo, seg_hi = tl.load(SEG_LO + slot), tl.load(SEG_HI + slot)
        part_hi = tl.where(tl.load(SEG_FIRST + slot) != 0, part_hi, part_lo)
    else:
        seg_lo, seg_hi = full_lo, tl.load(FULL_PTR + ptr + 1)
    return full_lo, seg_lo, seg_hi, part_lo, part_hi


_NO_SPECIALIZE = ["part_heads", "batch_heads", "num_blocks", "order_len", "perm_g", "perm_l", "BUCKET", "ws_cols",
                  "seg_len"]


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _fwd_kernel(Q, K, V, O, O_PREV, LSE, HEADS, HEAD_CSR, MIN_OFF, CODES, FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, FULL_RUNS,
                SEG_LO, SEG_HI, SEG_FIRST, SEG_COUNT, SEG_CIDX, WS, WS_ML, WS_CNT,
                stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                stride_ob, stride_oh, stride_ot, stride_lb, stride_lh,
                part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, order_len, ws_cols, seg_len,
                BUCKET, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                NCOMP: tl.constexpr, KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                RUNS: tl.constexpr, DESC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                GDC: tl.constexpr = False, SPLIT: tl.constexpr = False):
    # one program per (query tile, batch x head); SPLIT (``_row_split``): per (row segment, tile, batch x head),
    # ORDER the segments' row blocks (order_len a CSR), each program the full entries [SEG_LO, SEG_HI) of its row
    # (and its partial entries where SEG_FIRST); a row of SEG_COUNT > 1 segments stores each segment's softmax
    # state (unnormalised output, max, sum) in its slot of WS / WS_ML, counts itself in WS_CNT, and the segment
    # that counts last merges the slots and writes the rows, then zeroes the counter for the next launch
    _dependent_start(GDC)
    batch, head, csr, row_block, first_row, min_off, codes, slot = _program_tile(
        tl.program_id(0), HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK, BLOCK_M, NCOMP)
    Q += batch * stride_qb + head * stride_qh
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    k_desc, v_desc = _tile_descs(K, V, stride_kt, stride_vt, num_blocks * BLOCK, BLOCK_N, HEAD_DIM, DESC)

    offs_m = first_row + tl.arange(0, BLOCK_M)  # part coordinates
    offs_d = tl.arange(0, HEAD_DIM)
    rows = _natural_tile(first_row, BLOCK_M, perm_g, perm_l, PERMUTED, RUN, num_blocks * BLOCK)
    q = tl.load(Q + rows[:, None] * stride_qt + offs_d[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    ptr = csr.to(tl.int64) * (num_blocks + 1) + row_block

    full_lo, seg_lo, seg_hi, part_lo, part_hi = _row_range(FULL_PTR, PART_PTR, ptr, SEG_LO, SEG_HI, SEG_FIRST, slot,
                                                           SPLIT)
    r0, c0, st0, r1, st1 = _runs_of(FULL_RUNS, csr, row_block, num_blocks, RUNS)
    for t in range(seg_lo * (BLOCK // BLOCK_N), seg_hi * (BLOCK // BLOCK_N)):
        start, cols = _list_tile(t, full_lo, FULL_IDX, r0, c0, st0, r1, st1, perm_g, perm_l, BLOCK, BLOCK_N, RUNS, PERMUTED, RUN,
                                  num_blocks * BLOCK)
        k, v = _key_tile(K, V, k_desc, v_desc, start, cols, offs_d, stride_kt, stride_vt, DESC)
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k, v, qk_scale, 0, False, DOT_PREC)

    last_row = first_row + BLOCK_M - 1
    # masked tiles at most 64 keys wide: their token-mask arithmetic sets the kernel's register count
    # (compile_check --ptxas [--kinds 24], sm_90, head dim 64: 128x128 w4 spilled 204 B per thread under
    # the fixed pattern's mask kinds and 1,304 B under local+stride+summary, with 64-key masked tiles 0 and
    # 408 B; 128x128 w8 went from 255 registers to 211-233, without spills)
    MASK_N: tl.constexpr = 64 if BLOCK_N > 64 else BLOCK_N
    for e in range(part_lo, part_hi):
        col_block = tl.load(PART_IDX + e)
        for s in tl.static_range(BLOCK // MASK_N):
            first_col = col_block * BLOCK + s * MASK_N
            if first_col <= last_row - min_off:  # skip sub-tiles wholly above the (shifted) diagonal
                offs_n = first_col + tl.arange(0, MASK_N)
                cols = _natural_tile(first_col, MASK_N, perm_g, perm_l, PERMUTED, RUN, num_blocks * BLOCK)
                k, v = _key_tile(K, V, K, V, first_col, cols, offs_d, stride_kt, stride_vt, False)  # MASK_N rows
                ok = _allowed(offs_m[:, None], offs_n[None, :], codes, min_off, NCOMP, KINDS)
                acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k, v, qk_scale, ok, True, DOT_PREC)

    if SPLIT:
        segments = tl.load(SEG_COUNT + slot)  # 0: a padding slot, which writes nothing
        if segments == 1:
            _store_rows(O, O_PREV, LSE, acc, l_i, m_i, batch, head, rows, offs_d, stride_ob, stride_oh, stride_ot,
                        stride_lb, stride_lh, LOAD_PREV)
        elif segments > 1:
            acc, l_i, m_i, last = _merge_row_segments(WS, WS_ML, WS_CNT, acc, l_i, m_i, seg_lo, full_lo, seg_len,
                                                      segments, tl.load(SEG_CIDX + slot), ws_cols, batch_heads,
                                                      first_row - row_block * BLOCK, offs_d, BLOCK, BLOCK_M, HEAD_DIM)
            if last:
                _store_rows(O, O_PREV, LSE, acc, l_i, m_i, batch, head, rows, offs_d, stride_ob, stride_oh,
                            stride_ot, stride_lb, stride_lh, LOAD_PREV)
    else:
        _store_rows(O, O_PREV, LSE, acc, l_i, m_i, batch, head, rows, offs_d, stride_ob, stride_oh, stride_ot,
                    stride_lb, stride_lh, LOAD_PREV)


@triton.jit
def _segment_slot(seg_lo, full_lo, seg_len, cidx, ws_cols, bh, batch_heads, row_in_block, BLOCK: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """Where a row segment's tile goes in the row-segment slots (``_row_split_workspace``): (its segment index j
    in its row, the rows of one slot, the tile's rows within a slot, the tile's first row: its counter's index).
    Row index (bh x ws_cols + cidx) x BLOCK + the row within its block; slot j starts at j x that total."""
    j = (seg_lo - full_lo) // seg_len
    total = batch_heads.to(tl.int64) * ws_cols * BLOCK
    first = (bh.to(tl.int64) * ws_cols + cidx) * BLOCK + row_in_block
    return j, total, first + tl.arange(0, BLOCK_M), first


@triton.jit
def _merge_row_segments(WS, WS_ML, WS_CNT, acc, l_i, m_i, seg_lo, full_lo, seg_len, segments, cidx, ws_cols,
                        batch_heads, row_in_block, offs_d, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
                        HEAD_DIM: tl.constexpr):
    """A row segment's finish (``_fwd_kernel`` with SPLIT): store its softmax state in its slot (segment j of its
    row: full entries from ``full_lo + j * seg_len``), count itself at the tile's first row; the segment that
    counts last gets (acc, l, m) merged over every slot (in slot order, so the bits do not depend on which
    segment came last), and True, and zeroes the count; the others get False."""
    j, total, rows, first = _segment_slot(seg_lo, full_lo, seg_len, cidx, ws_cols, tl.program_id(0) % batch_heads,
                                          batch_heads, row_in_block, BLOCK, BLOCK_M)
    tl.store(WS + (j * total + rows)[:, None] * HEAD_DIM + offs_d[None, :], acc)
    tl.store(WS_ML + (j * total + rows) * 2, m_i)
    tl.store(WS_ML + (j * total + rows) * 2 + 1, l_i)
    tl.debug_barrier()  # every thread's slot stored before the count
    counter = WS_CNT + first
    last = tl.atomic_add(counter, 1, sem="acq_rel") == segments - 1
    if last:  # every other segment's slot is in; read them from L2
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for s in range(0, segments):
            m_s = tl.load(WS_ML + (s * total + rows) * 2, cache_modifier=".cg")
            l_s = tl.load(WS_ML + (s * total + rows) * 2 + 1, cache_modifier=".cg")
            acc_s = tl.load(WS + (s * total + rows)[:, None] * HEAD_DIM + offs_d[None, :], cache_modifier=".cg")
            m_new = tl.maximum(m_i, m_s)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key in either yet: no NaN
            alpha, beta = tl.math.exp2(m_i - m_use), tl.math.exp2(m_s - m_use)
            l_i = l_i * alpha + l_s * beta
            acc = acc * alpha[:, None] + acc_s * beta[:, None]
            m_i = m_new
        tl.store(counter, 0)
    return acc, l_i, m_i, last


@triton.jit
def _store_rows(O, O_PREV, LSE, acc, l_i, m_i, batch, head, rows, offs_d, stride_ob, stride_oh, stride_ot, stride_lb,
                stride_lh, LOAD_PREV: tl.constexpr):
    """A forward program's finished rows: output acc / l and lse = m + log2(l) (rows with no key in this part: lse
    -inf, output 0), merged with the earlier parts of the head where LOAD_PREV (O_PREV: fp32 sums, or O itself)
    through the two lse."""
    empty = l_i == 0.0
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse_ptrs = LSE + batch * stride_lb + head * stride_lh + rows
    o_offs = batch * stride_ob + head * stride_oh + rows[:, None] * stride_ot + offs_d[None, :]
    if LOAD_PREV:
        lse_prev = tl.load(lse_ptrs)
        top = tl.maximum(lse_prev, lse)
        top = tl.where(top == float("-inf"), 0.0, top)
        w_prev = tl.math.exp2(lse_prev - top)
        w_new = tl.math.exp2(lse - top)
        total = w_prev + w_new
        o_prev = tl.load(O_PREV + o_offs).to(tl.float32)
        o = (o_prev * w_prev[:, None] + o * w_new[:, None]) / tl.where(total == 0.0, 1.0, total)[:, None]
        lse = tl.where(total == 0.0, float("-inf"), top + tl.math.log2(tl.where(total == 0.0, 1.0, total)))
    tl.store(O + o_offs, o.to(O.dtype.element_ty))
    tl.store(lse_ptrs, lse)


@triton.jit
def _delta_kernel(O, DO, DELTA, K, V, SUMS, MAXES, stride_ob, stride_oh, stride_ot, stride_db, stride_dh, stride_dt,
                  stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_sb, stride_sh, stride_st,
                  stride_lb, stride_lh, heads, seq_len, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
                  ZERO: tl.constexpr, MAXIMA: tl.constexpr, GDC: tl.constexpr = False):
    """delta = rowsum(dO * O) in fp32, the softmax backward's per-row constant. For the fused dQ (``_bwd_prep``),
    over the same rows: ZERO writes zeros into the sums SUMS ((B, H, T, D) at their strides), MAXIMA raises
    MAXES[0:3] (fp32, zeroed by the caller) to max|dO|, max|V| and max|K| by atomic maxima, skipped where a
    program's own maximum is not above the value it reads there first (never above the true one: the
    maxima only grow), so few of the programs' atomics reach the three addresses."""
    _dependent_start(GDC)
    batch = (tl.program_id(1) // heads).to(tl.int64)
    head = (tl.program_id(1) % heads).to(tl.int64)
    offs_t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    live = offs_t < seq_len
    o = tl.load(O + batch * stride_ob + head * stride_oh + offs_t[:, None] * stride_ot + offs_d[None, :],
                mask=live[:, None], other=0.0)
    do = tl.load(DO + batch * stride_db + head * stride_dh + offs_t[:, None] * stride_dt + offs_d[None, :],
                 mask=live[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + batch * stride_lb + head * stride_lh + offs_t, delta, mask=live)
    if ZERO:
        tl.store(SUMS + batch * stride_sb + head * stride_sh + offs_t[:, None] * stride_st + offs_d[None, :],
                 tl.zeros([BLOCK_T, HEAD_DIM], SUMS.dtype.element_ty), mask=live[:, None])
    if MAXIMA:
        k = tl.load(K + batch * stride_kb + head * stride_kh + offs_t[:, None] * stride_kt + offs_d[None, :],
                    mask=live[:, None], other=0.0)
        v = tl.load(V + batch * stride_vb + head * stride_vh + offs_t[:, None] * stride_vt + offs_d[None, :],
                    mask=live[:, None], other=0.0)
        which = tl.arange(0, 4)
        top = tl.where(which == 0, tl.max(tl.max(tl.abs(do.to(tl.float32)), 1), 0),
                       tl.where(which == 1, tl.max(tl.max(tl.abs(v.to(tl.float32)), 1), 0),
                                tl.max(tl.max(tl.abs(k.to(tl.float32)), 1), 0)))
        seen = tl.load(MAXES + which, mask=which < 3, other=0.0)
        tl.atomic_max(MAXES + which, top, mask=(which < 3) & (top > seen))


@triton.jit
def _dq_scale_kernel(MAXES, OUT, log_const, scale, BOUND_LOG2: tl.constexpr):
    """OUT[0:2] = (multiplier, inverse) of the fp16 dQ sums from MAXES (``_dq_multiplier``): 2^e x scale and 2^-e,
    e = floor(BOUND_LOG2 - log_const - log2 of the three maxima - 2^-16) within [-120, 120] (a zero maximum: no
    bound, 120), the powers of two made from their exponent bits (exact). The 2^-16 covers the rounding of
    the log2 terms (libdevice's log2f on the GPU), so the bound never passes 2^BOUND_LOG2."""
    which = tl.arange(0, 4)
    top = tl.load(MAXES + which, mask=which < 3, other=1.0)
    log_bound = log_const + tl.sum(tl.math.log2(top), 0)
    e = tl.floor(BOUND_LOG2 - log_bound - 1.52587890625e-05)
    e = tl.where(e == e, e, 0.0)  # NaN inputs: any scale
    e = tl.minimum(tl.maximum(e, -120.0), 120.0).to(tl.int32)
    power = ((e + 127) << 23).to(tl.float32, bitcast=True)
    inverse = ((127 - e) << 23).to(tl.float32, bitcast=True)
    tl.store(OUT + which, tl.where(which == 0, power * scale, inverse), mask=which < 2)


@triton.jit
def _dq_finish_kernel(ACC, DQ, INVERSE, stride_ab, stride_ah, stride_at, stride_qb, stride_qh, stride_qt, heads,
                      seq_len, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    """dQ = ACC x INVERSE[0] in DQ's dtype and strides: the fused backward's sums ((B, H, T, D), fp32 or fp16,
    scaled by a power of two; DQ's own storage where ``dq_sums_buffer`` put them there: each element is read
    before the same program writes it) read once, in fp32."""
    batch = (tl.program_id(1) // heads).to(tl.int64)
    head = (tl.program_id(1) % heads).to(tl.int64)
    offs_t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    live = offs_t < seq_len
    acc = tl.load(ACC + batch * stride_ab + head * stride_ah + offs_t[:, None] * stride_at + offs_d[None, :],
                  mask=live[:, None], other=0.0)
    dq = acc.to(tl.float32) * tl.load(INVERSE)
    tl.store(DQ + batch * stride_qb + head * stride_qh + offs_t[:, None] * stride_qt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=live[:, None])


@triton.jit
def _dq_step(dq, q, do, k, v, lse, delta, qk_scale, ok, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if DOTS_FIRST:
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        p = tl.where(ok, p, 0.0)
    if not DOTS_FIRST:
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)


@triton.jit
def _dq_program(pid, Q, K, V, DO, DQ, DQ_PREV, LSE, DELTA, O, HEADS, HEAD_CSR, MIN_OFF, CODES,
                FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, FULL_RUNS,
                SEG_LO, SEG_HI, SEG_FIRST, SEG_COUNT, SEG_CIDX, WS, WS_CNT,
                stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                stride_ob, stride_oh, stride_ot,
                part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale, order_len, ws_cols, seg_len,
                BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr, NCOMP: tl.constexpr,
                KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr, RUNS: tl.constexpr,
                DESC: tl.constexpr, DELTA_HERE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                ROW_SPLIT: tl.constexpr):
    """dQ of one (query tile, batch x head): program ``pid`` of the dQ kernel or of the merged one.
    DELTA_HERE: the program computes its rows' delta = rowsum(dO * O) from the output O itself and stores
    it for the dK/dV launch that follows (no delta kernel before it). ROW_SPLIT (``dq_split``): one row segment of
    the tile, as the forward's (``_fwd_kernel`` with SPLIT; ORDER the segments' row blocks, order_len a CSR); a
    row of several segments sums their dQ in slot order through WS (``_sum_row_segments``); every segment computes
    and stores its rows' delta, the same bits."""
    batch, head, csr, row_block, first_row, min_off, codes, slot = _program_tile(
        pid, HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK, BLOCK_M, NCOMP)
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    k_desc, v_desc = _tile_descs(K, V, stride_kt, stride_vt, num_blocks * BLOCK, BLOCK_N, HEAD_DIM, DESC)

    offs_m = first_row + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = _natural_tile(first_row, BLOCK_M, perm_g, perm_l, PERMUTED, RUN, num_blocks * BLOCK)
    q = tl.load(Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qt + offs_d[None, :])
    do = tl.load(DO + batch * stride_dob + head * stride_doh + rows[:, None] * stride_dot + offs_d[None, :])
    lse = tl.load(LSE + batch * stride_lb + head * stride_lh + rows)
    if DELTA_HERE:
        o = tl.load(O + batch * stride_ob + head * stride_oh + rows[:, None] * stride_ot + offs_d[None, :])
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + batch * stride_lb + head * stride_lh + rows, delta)
    else:
        delta = tl.load(DELTA + batch * stride_lb + head * stride_lh + rows)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    ptr = csr.to(tl.int64) * (num_blocks + 1) + row_block

    full_lo, seg_lo, seg_hi, part_lo, part_hi = _row_range(FULL_PTR, PART_PTR, ptr, SEG_LO, SEG_HI, SEG_FIRST, slot,
                                                           ROW_SPLIT)
    r0, c0, st0, r1, st1 = _runs_of(FULL_RUNS, csr, row_block, num_blocks, RUNS)
    for t in range(seg_lo * (BLOCK // BLOCK_N), seg_hi * (BLOCK // BLOCK_N)):
        start, cols = _list_tile(t, full_lo, FULL_IDX, r0, c0, st0, r1, st1, perm_g, perm_l, BLOCK, BLOCK_N, RUNS, PERMUTED, RUN,
                                  num_blocks * BLOCK)
        k, v = _key_tile(K, V, k_desc, v_desc, start, cols, offs_d, stride_kt, stride_vt, DESC)
        dq = _dq_step(dq, q, do, k, v, lse, delta, qk_scale, 0, False, DOT_PREC)

    last_row = first_row + BLOCK_M - 1
    for e in range(part_lo, part_hi):
        col_block = tl.load(PART_IDX + e)
        for s in tl.static_range(BLOCK // BLOCK_N):
            first_col = col_block * BLOCK + s * BLOCK_N
            if first_col <= last_row - min_off:
                offs_n = first_col + tl.arange(0, BLOCK_N)
                cols = _natural_tile(first_col, BLOCK_N, perm_g, perm_l, PERMUTED, RUN, num_blocks * BLOCK)
                k, v = _key_tile(K, V, k_desc, v_desc, first_col, cols, offs_d, stride_kt, stride_vt, DESC)
                ok = _allowed(offs_m[:, None], offs_n[None, :], codes, min_off, NCOMP, KINDS)
                dq = _dq_step(dq, q, do, k, v, lse, delta, qk_scale, ok, True, DOT_PREC)

    dq_offs = batch * stride_dqb + head * stride_dqh + rows[:, None] * stride_dqt + offs_d[None, :]
    if ROW_SPLIT:
        segments = tl.load(SEG_COUNT + slot)  # 0: a padding slot, which writes nothing
        if segments == 1:
            _store_dq(DQ, DQ_PREV, dq, dq_offs, sm_scale, LOAD_PREV)
        elif segments > 1:
            dq, last = _sum_row_segments(WS, WS_CNT, dq, seg_lo, full_lo, seg_len, segments, tl.load(SEG_CIDX + slot),
                                         ws_cols, pid % batch_heads, batch_heads, first_row - row_block * BLOCK, offs_d,
                                         BLOCK, BLOCK_M, HEAD_DIM)
            if last:
                _store_dq(DQ, DQ_PREV, dq, dq_offs, sm_scale, LOAD_PREV)
    else:
        _store_dq(DQ, DQ_PREV, dq, dq_offs, sm_scale, LOAD_PREV)


@triton.jit
def _store_dq(DQ, DQ_PREV, dq, dq_offs, sm_scale, LOAD_PREV: tl.constexpr):
    """A dQ program's finished rows: dq x sm_scale, plus the earlier parts' sum where LOAD_PREV (DQ_PREV: DQ
    itself, or fp32 beside a last part's final DQ), in DQ's dtype."""
    dq = dq * sm_scale
    if LOAD_PREV:
        dq += tl.load(DQ_PREV + dq_offs).to(tl.float32)
    tl.store(DQ + dq_offs, dq.to(DQ.dtype.element_ty))


@triton.jit
def _sum_row_segments(WS, WS_CNT, dq, seg_lo, full_lo, seg_len, segments, cidx, ws_cols, bh, batch_heads,
                      row_in_block, offs_d, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A dQ row segment's finish (``_dq_program`` with ROW_SPLIT), as ``_merge_row_segments``: its sums in its slot,
    a count at the tile's first row; the segment that counts last gets the slots' sum (in slot order) and True,
    and zeroes the count."""
    j, total, rows, first = _segment_slot(seg_lo, full_lo, seg_len, cidx, ws_cols, bh, batch_heads, row_in_block,
                                          BLOCK, BLOCK_M)
    tl.store(WS + (j * total + rows)[:, None] * HEAD_DIM + offs_d[None, :], dq)
    tl.debug_barrier()  # every thread's slot stored before the count
    counter = WS_CNT + first
    last = tl.atomic_add(counter, 1, sem="acq_rel") == segments - 1
    if last:  # every other segment's slot is in; read them from L2
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for s in range(0, segments):
            dq += tl.load(WS + (s * total + rows)[:, None] * HEAD_DIM + offs_d[None, :], cache_modifier=".cg")
        tl.store(counter, 0)
    return dq, last


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dq_kernel(Q, K, V, DO, DQ, DQ_PREV, LSE, DELTA, O, HEADS, HEAD_CSR, MIN_OFF, CODES,
                   FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, FULL_RUNS,
                   SEG_LO, SEG_HI, SEG_FIRST, SEG_COUNT, SEG_CIDX, WS, WS_CNT,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                   stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                   stride_ob, stride_oh, stride_ot,
                   part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale, order_len, ws_cols, seg_len,
                   BUCKET, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                   NCOMP: tl.constexpr, KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                   RUNS: tl.constexpr, DESC: tl.constexpr, DELTA_HERE: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, GDC: tl.constexpr = False, SPLIT: tl.constexpr = False):
    # one program per (query tile, batch x head); SPLIT: per (row segment, tile, batch x head) (``dq_split``)
    _dependent_start(GDC)
    _dq_program(tl.program_id(0), Q, K, V, DO, DQ, DQ_PREV, LSE, DELTA, O, HEADS, HEAD_CSR, MIN_OFF, CODES,
                FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, FULL_RUNS,
                SEG_LO, SEG_HI, SEG_FIRST, SEG_COUNT, SEG_CIDX, WS, WS_CNT,
                stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                stride_ob, stride_oh, stride_ot,
                part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale, order_len, ws_cols, seg_len,
                BLOCK, HEAD_DIM, PERMUTED, RUN, NCOMP, KINDS, LOAD_PREV, DOT_PREC, RUNS, DESC, DELTA_HERE, BLOCK_M,
                BLOCK_N, SPLIT)


@triton.jit
def _dkdv_step(dk, dv, k, v, q, do, lse, delta, qk_scale, ok, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):
    st = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # (keys, queries)
    if DOTS_FIRST:
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    pt = tl.math.exp2(st - lse[None, :])
    if MASKED:
        pt = tl.where(ok, pt, 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
    if not DOTS_FIRST:
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)
    dk += tl.dot(dst, q, input_precision=DOT_PREC)
    return dk, dv, dst


@triton.jit
def _dq_atomic(DQ, dq_desc, first_row, rows, offs_d, stride_dqt, dst, k, sm_scale, DOT_PREC: tl.constexpr,
               FUSED_DQ: tl.constexpr):
    """FUSED_DQ: this key tile's share of dQ for the query rows, dS @ K, added to the fp32 DQ in place:
    one atomic per element (1), or (2, rows first_row.. contiguous) one TMA reduce of the whole tile
    through ``dq_desc``, asynchronous and done in L2, as FlashAttention-3 accumulates dQ."""
    dq = tl.dot(tl.trans(dst), k, input_precision=DOT_PREC) * sm_scale  # (queries, head dim)
    if FUSED_DQ == 2:
        dq_desc.atomic_add([first_row, 0], dq)
    else:
        tl.atomic_add(DQ + rows[:, None] * stride_dqt + offs_d[None, :], dq, sem="relaxed")


@triton.jit
def _dkdv_program(pid, Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, DQ, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                  FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, SEG_LO, SEG_HI, SEG_FIRST,
                  SEG_COUNT, SEG_CIDX, WS, WS_CNT, ws_cols, order_len, FULL_RUNS,
                  stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                  stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                  stride_dvb, stride_dvh, stride_dvt, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                  part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale,
                  BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr, NCOMP: tl.constexpr,
                  KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                  FUSED_DQ: tl.constexpr, SPLIT: tl.constexpr, RUNS: tl.constexpr, DESC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # program ``pid`` of the dK/dV kernel or of the merged one: one key tile of BLOCK_N keys; query
    # tiles of BLOCK_M rows from the column lists
    # (key blocks in ORDER, heaviest chunk first: the fixed pattern's summary columns are long). FUSED_DQ: the
    # program also adds dS @ K of each tile to an fp32 DQ with atomics (no separate dQ kernel): one per
    # element (1) or one TMA reduce per tile (2; natural order only, where a tile's rows are contiguous).
    # SPLIT: a program takes one segment of a column (ORDER = the segments' columns, heaviest first;
    # SEG_LO/SEG_HI its range of full entries; SEG_FIRST whether it also takes the partial ones), so a long
    # column is no longer one serial chain. SPLIT 1 adds its dK/dV to fp32 DK/DV with atomics (cast after
    # the launch); SPLIT 2 ("last" finish) writes a column of one segment as a whole column does, and a
    # column of SEG_COUNT > 1 segments adds into its rows of the fp32 workspace WS (compact: SEG_CIDX of
    # ws_cols such columns per batch x head), counts itself in WS_CNT, and the segment that counts last
    # reads the sums, writes the final dK/dV and zeroes its rows and counter for the next launch
    batch, head, csr, col_block, first_col, min_off, codes, slot = _program_tile(
        pid, HEADS, HEAD_CSR, MIN_OFF, CODES, ORDER, part_heads, batch_heads, order_len, BLOCK, BLOCK_N, NCOMP)
    DQ += batch * stride_dqb + head * stride_dqh
    if FUSED_DQ == 2:  # natural order: a query tile's rows are contiguous, one TMA box of the fp32 dQ
        dq_desc = tl.make_tensor_descriptor(DQ, shape=[num_blocks * BLOCK, HEAD_DIM], strides=[stride_dqt, 1],
                                            block_shape=[BLOCK_M, HEAD_DIM])
    else:
        dq_desc = DQ  # not read
    Q += batch * stride_qb + head * stride_qh
    DO += batch * stride_dob + head * stride_doh
    LSE += batch * stride_lb + head * stride_lh
    DELTA += batch * stride_lb + head * stride_lh
    q_desc, do_desc = _tile_descs(Q, DO, stride_qt, stride_dot, num_blocks * BLOCK, BLOCK_M, HEAD_DIM, DESC)

    offs_n = first_col + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    cols = _natural_tile(first_col, BLOCK_N, perm_g, perm_l, PERMUTED, RUN, num_blocks * BLOCK)
    k = tl.load(K + batch * stride_kb + head * stride_kh + cols[:, None] * stride_kt + offs_d[None, :])
    v = tl.load(V + batch * stride_vb + head * stride_vh + cols[:, None] * stride_vt + offs_d[None, :])
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    ptr = csr.to(tl.int64) * (num_blocks + 1) + col_block
    part_lo = tl.load(PART_PTR + ptr)
    part_hi = tl.load(PART_PTR + ptr + 1)
    column_lo = tl.load(FULL_PTR + ptr)
    if SPLIT:
        full_lo = tl.load(SEG_LO + slot)
        full_hi = tl.load(SEG_HI + slot)
        part_hi = part_lo + (part_hi - part_lo) * tl.load(SEG_FIRST + slot)
    else:
        full_lo = column_lo
        full_hi = tl.load(FULL_PTR + ptr + 1)

    r0, c0, st0, r1, st1 = _runs_of(FULL_RUNS, csr, col_block, num_blocks, RUNS)
    for t in range(full_lo * (BLOCK // BLOCK_M), full_hi * (BLOCK // BLOCK_M)):
        first_row, rows = _list_tile(t, column_lo, FULL_IDX, r0, c0, st0, r1, st1, perm_g, perm_l, BLOCK, BLOCK_M,
                                     RUNS, PERMUTED, RUN, num_blocks * BLOCK)
        q = _row_tile(Q, q_desc, first_row, rows, offs_d, stride_qt, DESC)
        do = _row_tile(DO, do_desc, first_row, rows, offs_d, stride_dot, DESC)
        lse = tl.load(LSE + rows)
        delta = tl.load(DELTA + rows)
        dk, dv, dst = _dkdv_step(dk, dv, k, v, q, do, lse, delta, qk_scale, 0, False, DOT_PREC)
        if FUSED_DQ:
            _dq_atomic(DQ, dq_desc, first_row, rows, offs_d, stride_dqt, dst, k, sm_scale, DOT_PREC, FUSED_DQ)

    for e in range(part_lo, part_hi):
        row_block = tl.load(PART_IDX + e)
        for s in tl.static_range(BLOCK // BLOCK_M):
            first_row = row_block * BLOCK + s * BLOCK_M
            if first_row + BLOCK_M - 1 - min_off >= first_col:  # skip sub-tiles wholly above the diagonal
                offs_m = first_row + tl.arange(0, BLOCK_M)
                rows = _natural_tile(first_row, BLOCK_M, perm_g, perm_l, PERMUTED, RUN, num_blocks * BLOCK)
                q = _row_tile(Q, q_desc, first_row, rows, offs_d, stride_qt, DESC)
                do = _row_tile(DO, do_desc, first_row, rows, offs_d, stride_dot, DESC)
                lse = tl.load(LSE + rows)
                delta = tl.load(DELTA + rows)
                ok = _allowed(offs_m[None, :], offs_n[:, None], codes, min_off, NCOMP, KINDS)  # (keys, queries)
                dk, dv, dst = _dkdv_step(dk, dv, k, v, q, do, lse, delta, qk_scale, ok, True, DOT_PREC)
                if FUSED_DQ:
                    _dq_atomic(DQ, dq_desc, first_row, rows, offs_d, stride_dqt, dst, k, sm_scale, DOT_PREC,
                               FUSED_DQ)

    dk_offs = batch * stride_dkb + head * stride_dkh + cols[:, None] * stride_dkt + offs_d[None, :]
    dv_offs = batch * stride_dvb + head * stride_dvh + cols[:, None] * stride_dvt + offs_d[None, :]
    dk = dk * sm_scale
    if SPLIT == 1:  # other segments of this column (and other parts of this head) add to the same rows
        tl.atomic_add(DK + dk_offs, dk, sem="relaxed")
        tl.atomic_add(DV + dv_offs, dv, sem="relaxed")
    else:
        write = True
        if SPLIT == 2:
            segments = tl.load(SEG_COUNT + slot)  # 0: a padding slot, which writes nothing
            write = segments == 1
            if segments > 1:
                # this key tile's rows of the workspace: dK sums, then (ws_rows on) the dV sums
                column = (pid % batch_heads).to(tl.int64) * ws_cols + tl.load(SEG_CIDX + slot)
                unit = column * BLOCK + first_col % BLOCK
                ws_rows = batch_heads.to(tl.int64) * ws_cols * BLOCK
                ws_offs = (unit + tl.arange(0, BLOCK_N))[:, None] * HEAD_DIM + offs_d[None, :]
                tl.atomic_add(WS + ws_offs, dk, sem="relaxed")
                tl.atomic_add(WS + ws_rows * HEAD_DIM + ws_offs, dv, sem="release")
                tl.debug_barrier()  # every thread's sums are in before the count
                write = tl.atomic_add(WS_CNT + unit, 1, sem="acq_rel") == segments - 1
                if write:  # the last segment: every other one's sums are in; read them from L2
                    dk = tl.load(WS + ws_offs, cache_modifier=".cg")
                    dv = tl.load(WS + ws_rows * HEAD_DIM + ws_offs, cache_modifier=".cg")
                    zero = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
                    tl.store(WS + ws_offs, zero)
                    tl.store(WS + ws_rows * HEAD_DIM + ws_offs, zero)
                    tl.store(WS_CNT + unit, 0)
        if write:
            if LOAD_PREV:  # the earlier parts' sums (DK_PREV, DV_PREV: DK and DV, or fp32 beside a last part's)
                dk += tl.load(DK_PREV + dk_offs).to(tl.float32)
                dv += tl.load(DV_PREV + dv_offs).to(tl.float32)
            tl.store(DK + dk_offs, dk.to(DK.dtype.element_ty))
            tl.store(DV + dv_offs, dv.to(DV.dtype.element_ty))


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, DQ, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                     FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, SEG_LO, SEG_HI, SEG_FIRST,
                     SEG_COUNT, SEG_CIDX, WS, WS_CNT, ws_cols, order_len, FULL_RUNS,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                     stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                     stride_dvb, stride_dvh, stride_dvt, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                     part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale,
                     BUCKET, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                     NCOMP: tl.constexpr, KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                     FUSED_DQ: tl.constexpr, SPLIT: tl.constexpr, RUNS: tl.constexpr, DESC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GDC: tl.constexpr = False):
    _dependent_start(GDC)
    _dkdv_program(tl.program_id(0), Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, DQ, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                  FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, SEG_LO, SEG_HI, SEG_FIRST,
                  SEG_COUNT, SEG_CIDX, WS, WS_CNT, ws_cols, order_len, FULL_RUNS,
                  stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                  stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                  stride_dvb, stride_dvh, stride_dvt, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                  part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale,
                  BLOCK, HEAD_DIM, PERMUTED, RUN, NCOMP, KINDS, LOAD_PREV, DOT_PREC, FUSED_DQ, SPLIT, RUNS, DESC, BLOCK_M,
                  BLOCK_N)


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_merged_kernel(Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, DQ, DQ_PREV, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                       FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, SEG_LO, SEG_HI, SEG_FIRST,
                       SEG_COUNT, SEG_CIDX, WS, WS_CNT, ws_cols, order_len, FULL_RUNS,
                       ROW_FULL_PTR, ROW_FULL_IDX, ROW_PART_PTR, ROW_PART_IDX, ROW_ORDER, ROW_FULL_RUNS,
                       stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                       stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                       stride_dvb, stride_dvh, stride_dvt, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                       part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale,
                       BUCKET, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                       NCOMP: tl.constexpr, KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                       SPLIT: tl.constexpr, RUNS: tl.constexpr, DESC: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, DQ_M: tl.constexpr, DQ_N: tl.constexpr, GDC: tl.constexpr = False):
    # DQ_MODE "merged": the dK/dV programs (key tiles over the column lists, heaviest columns first)
    # and then the dQ programs (query tiles of DQ_M rows over the row lists) in one launch, so the dQ
    # programs fill the GPU beside the long dK/dV columns instead of after them, and one launch fewer
    _dependent_start(GDC)
    pid = tl.program_id(0)
    dkdv_programs = order_len * (BLOCK // BLOCK_N) * batch_heads
    if pid < dkdv_programs:
        _dkdv_program(pid, Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, DQ, LSE, DELTA, HEADS, HEAD_CSR, MIN_OFF, CODES,
                      FULL_PTR, FULL_IDX, PART_PTR, PART_IDX, ORDER, SEG_LO, SEG_HI, SEG_FIRST,
                      SEG_COUNT, SEG_CIDX, WS, WS_CNT, ws_cols, order_len, FULL_RUNS,
                      stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                      stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                      stride_dvb, stride_dvh, stride_dvt, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                      part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale,
                      BLOCK, HEAD_DIM, PERMUTED, RUN, NCOMP, KINDS, LOAD_PREV, DOT_PREC, False, SPLIT, RUNS, DESC, BLOCK_M,
                      BLOCK_N)
    else:
        _dq_program(pid - dkdv_programs, Q, K, V, DO, DQ, DQ_PREV, LSE, DELTA, Q, HEADS, HEAD_CSR, MIN_OFF, CODES,
                    ROW_FULL_PTR, ROW_FULL_IDX, ROW_PART_PTR, ROW_PART_IDX, ROW_ORDER, ROW_FULL_RUNS,
                    ROW_ORDER, ROW_ORDER, ROW_ORDER, ROW_ORDER, ROW_ORDER, LSE, ROW_ORDER,  # no row segments: not read
                    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                    stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                    stride_qb, stride_qh, stride_qt,  # O: not read (delta comes from the delta kernel)
                    part_heads, batch_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale, num_blocks, 0, 1,
                    BLOCK, HEAD_DIM, PERMUTED, RUN, NCOMP, KINDS, LOAD_PREV, DOT_PREC, RUNS, DESC, False, DQ_M, DQ_N,
                    False)


# --- autotuning: configs declared once per kernel, pruned to the layout's block and head dim ------

_TUNE_KEY = ["BUCKET", "BLOCK", "HEAD_DIM", "PERMUTED", "RUN", "NCOMP", "KINDS", "LOAD_PREV", "FUSED_DQ", "SPLIT", "DELTA_HERE",
             "RUNS", "DESC"]


# (BLOCK_M, BLOCK_N, warps, stages) per layout block, or per (block, head dim) where that key exists (it
# replaces the block's list there). BLOCK_M is the program's tile in the forward and dQ kernels and the
# inner (query) sub-tile in dK/dV. Few on purpose: every config is one more compile and benchmark per
# kernel variant (results are cached on disk: autotune cache_results).
# Starting points: Triton's fused-attention tutorial on Hopper; the third config of each block-128
# list is one that `python -m megastride.kernels.compile_check --ptxas` showed free of register
# spills for sm_90 at head dim 64, where the first one spills (table in docs/benchmarks.md).
# The per-head-dim lists come from `megastride bench tiles` on the H200 (docs/benchmarks.md "Tile
# sweeps"): five stages for the forward, whose K/V loads hang off a block-index load that Triton's
# pipeliner then prefetches one iteration ahead at 3 or 4 stages and two at 5 (2026-11-30, 7-11% faster);
# the backward's lists after its loops went flat (one sub-tile per iteration, so a stage holds one
# sub-tile: half the shared memory, and five stages fit at head dim 128; 2026-11-30, docs/benchmarks.md
# "Sixth run"): dK/dV 32x128 w4 s5 is the fastest at D=64 and 1M but the slowest at D=128 (it spills
# 3.7 KB there).
_FWD_TILES = {128: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 5)], 64: [(64, 64, 4, 3), (64, 64, 4, 5)],
              # w4 s3: Flex's D=64 tile; 64x128: twice the programs where a short sequence's query blocks
              # leave SMs idle (3,072 tokens, 8 heads: 192 programs of 128 rows), chosen there in the
              # twenty-first run (forward kernel 0.032 -> 0.025 ms; 128x128 still chosen at 12,288, the longer
              # lengths' choice not re-timed with it listed)
              (128, 64): [(128, 128, 4, 5), (128, 64, 4, 5), (128, 128, 4, 3), (64, 128, 4, 5)],
              # 64-row tiles at head dim 128: 3,072 tokens at two heads make 48 query blocks of 128 for 132
              # SMs; replayed forward 0.034 -> 0.028 ms there (64x128 w4 s5), 64x64 w4 s5 even at 12,288
              # (H200, twenty-seventh run, call 3)
              (128, 128): [(128, 128, 8, 5), (128, 64, 8, 5), (128, 128, 8, 3), (64, 128, 4, 5), (64, 64, 4, 5)]}
_DQ_TILES = {128: [(128, 32, 4, 5), (128, 64, 8, 3), (128, 32, 8, 4)], 64: [(64, 32, 4, 4)],
             (64, 64): [(64, 32, 4, 4), (64, 64, 4, 5)],  # block 64 at head dim 64: see _DKDV_TILES
             # 64x64 w4 s5: twice the programs at short lengths (3,072 tokens, 8 heads: 192 query blocks of
             # 128 for 132 SMs); replayed f+b with it forced 0.105-0.108 -> 0.096 ms at 3,072 and 0.444 ->
             # 0.425 at 12,288 (H200, twenty-seventh run, call 1)
             (128, 64): [(128, 64, 4, 5), (128, 32, 8, 5), (128, 32, 4, 5), (64, 64, 4, 5)],
             (128, 128): [(128, 32, 4, 5), (128, 64, 8, 5), (128, 64, 8, 3)]}
_DKDV_TILES = {128: [(32, 128, 4, 5), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3)], 64: [(32, 64, 4, 4)],
               # block 64 at head dim 64 (the strided pattern's block at short lengths, kernels.bench.strided_block,
               # where it ran 17% under the fixed pattern's TFLOP/s at 12,288 tokens on an H100, forty-fourth run):
               # the 64x64 w4 s5 tiles that the fixed pattern's short lengths chose at block 128, listed beside the
               # single block-64 config here and in dQ and merged; timed in docs/benchmarks.md's forty-fifth run (the strided
               # pattern then within 10% of the fixed one at 12,288 tokens). sm_90 with the strided pattern's
               # masks (compile_check --block 64 --head-dim 64 --kinds 22 --ptxas): dQ no spills, dK/dV and merged
               # 44-140 B (the block-128 lists' spill 80-832 B with the same masks). At head dim 128 they spill
               # hundreds of bytes and ptxas serialises the atomic dQ's products: not listed there.
               (64, 64): [(32, 64, 4, 4), (64, 64, 4, 5)],
               (128, 64): [(32, 128, 4, 5), (64, 64, 4, 5), (64, 128, 8, 5)],
               (128, 128): [(64, 64, 4, 3), (64, 128, 8, 5), (64, 128, 8, 3)]}  # 64x128 w8 s3: Flex's D=128 tile
# The merged backward (DQ_MODE "merged"): (dK/dV BLOCK_M, BLOCK_N, dQ DQ_M, DQ_N, warps, stages), the two
# kernels' configs paired where their warps and stages agree (one launch has one of each)
_MERGED_TILES = {128: [(64, 64, 128, 32, 4, 3), (32, 128, 128, 32, 4, 5), (64, 128, 128, 64, 8, 3),
                       (32, 128, 128, 32, 8, 4)],
                 64: [(32, 64, 64, 32, 4, 4)],
                 (64, 64): [(32, 64, 64, 32, 4, 4), (64, 64, 64, 64, 4, 5)],  # block 64 at head dim 64: see _DKDV_TILES
                 # 64x64 + 64x64 w4 s5, as at head dim 128 below: 0.425 -> 0.416 ms replayed at 12,288 8x64, chosen
                 # at 3,072 and 12,288 there (twenty-seventh run, calls 1 and 2)
                 (128, 64): [(32, 128, 128, 32, 4, 5), (64, 64, 128, 64, 4, 5), (64, 128, 128, 64, 8, 5),
                             (64, 64, 64, 64, 4, 5)],
                 # 64x64 + 64x64 w4 s5: twice the programs where 3,072 tokens at H=2 give 48 key and 48
                 # query blocks for 132 SMs (replayed f+b 0.101 -> 0.085 ms there; H200, 2026-12-02)
                 (128, 128): [(64, 128, 128, 64, 8, 5), (64, 64, 128, 32, 4, 3), (16, 128, 128, 64, 8, 3),
                              (64, 64, 64, 64, 4, 5)]}
_TILE_NAMES = ("BLOCK_M", "BLOCK_N")
_MERGED_NAMES = ("BLOCK_M", "BLOCK_N", "DQ_M", "DQ_N")


def _extra_tiles(raw: str) -> dict[str, list[tuple[int, int, int, int]]]:
    """Configs added to the autotuning lists for an experiment, e.g. "fwd:128x128w8s2,dkdv:64x128w8s2"
    (``MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES``, read at import); each is tried at every block it fits."""
    out: dict[str, list[tuple[int, int, int, int]]] = {"fwd": [], "dq": [], "dkdv": []}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        m = re.fullmatch(r"(fwd|dq|dkdv):(\d+)x(\d+)w(\d+)s(\d+)", item)
        if m is None:
            raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES: {item!r} is not KERNEL:MxNwWsS "
                             "(KERNEL one of fwd, dq, dkdv), e.g. fwd:128x128w8s2")
        out[m[1]].append(tuple(int(m[i]) for i in range(2, 6)))
    return out


_EXTRA = _extra_tiles(os.environ.get("MEGASTRIDE_BLOCKSPARSE_EXTRA_TILES", ""))
for _name, _table in (("fwd", _FWD_TILES), ("dq", _DQ_TILES), ("dkdv", _DKDV_TILES)):
    _table["extra"] = _EXTRA[_name]


def _config(entry, names=_TILE_NAMES) -> triton.Config:
    """A table entry (tile sizes named by ``names``, then warps, stages) as a Triton config."""
    *tiles, warps, stages = entry
    return triton.Config(dict(zip(names, tiles)), num_warps=warps, num_stages=stages)


def _configs(table, names=_TILE_NAMES):
    values = {v for vs in table.values() for v in vs}
    return [_config(v, names) for v in sorted(values)]


def tile_list(table, block: int, head_dim: int, names=_TILE_NAMES) -> list[tuple[int, ...]]:
    """The (tile sizes..., warps, stages) configs a table offers at one block and head dim: the list
    for (block, head dim), else the block's, then the EXTRA_TILES that fit; one safe config if none."""
    listed = table.get((block, head_dim), table.get(block, []))
    extra = [t for t in table.get("extra", []) if all(x <= block for x in t[:-2]) and t not in listed]
    return listed + extra or [(min(block, 64),) * len(names) + (4, 2)]


def _pruner(table, names=_TILE_NAMES):
    def prune(configs, named_args, **kwargs):
        wanted = tile_list(table, kwargs["BLOCK"], kwargs["HEAD_DIM"], names)
        keep = [c for c in configs if tuple(c.kwargs[n] for n in names) + (c.num_warps, c.num_stages) in wanted]
        return keep or [_config(wanted[-1], names)]

    return prune


def _read_back(kernel: str, nargs: dict) -> list[str]:
    """The outputs a launch reads as well as writes, which autotuning trials must therefore leave as
    they found them: the fp32 sums a merging part (LOAD_PREV) adds to where it writes them back (a
    last part reads them from *_PREV and writes the final outputs elsewhere: nothing to save), the
    log-sum-exps it merges, dK/dV added by split columns' atomics, dQ added by the dK/dV kernel's
    atomics. A first part writes its outputs without reading them, so nothing is saved for it (at 4M
    tokens fp32 dK, dV, dQ are 8.6 GB each)."""
    prev = bool(nargs.get("LOAD_PREV"))

    def in_place(*outs):  # the *_PREV sums of these outputs where they are the outputs themselves
        return [f"{o}_PREV" for o in outs if prev and nargs[f"{o}_PREV"].data_ptr() == nargs[o].data_ptr()]

    if kernel == "fwd":
        return in_place("O") + (["LSE"] if prev else [])
    if kernel == "dq":
        return in_place("DQ")
    # split columns' atomics add into DK and DV themselves ("cast"); the "last" finish writes them as whole
    # columns do, its workspace left zero by every complete launch
    kv = ["DK", "DV"] if nargs.get("SPLIT") == 1 else in_place("DK", "DV")
    if kernel == "dkdv":
        return kv + (["DQ"] if nargs.get("FUSED_DQ") else [])
    return kv + in_place("DQ")  # merged: its dQ programs add to earlier parts' like the dq kernel


def _restore_hooks(kernel: str):
    """triton.autotune pre/post hooks saving and restoring, around each trial, only ``_read_back``'s
    outputs (Triton's restore_value would copy every listed output at every launch it tunes)."""
    saved: dict[str, torch.Tensor] = {}

    def pre(nargs, reset_only=False):
        if not reset_only:
            saved.update({name: nargs[name].clone() for name in _read_back(kernel, nargs)})

    def post(nargs, exception):
        for name, copy in saved.items():
            nargs[name].copy_(copy)
        saved.clear()

    return pre, post


def _autotuned(kernel, table, name, names=_TILE_NAMES):
    pre, post = _restore_hooks(name)
    return triton.autotune(configs=_configs(table, names), key=_TUNE_KEY,
                           prune_configs_by={"early_config_prune": _pruner(table, names)},
                           pre_hook=pre, post_hook=post, cache_results=True)(kernel)


_fwd_tuned = _autotuned(_fwd_kernel, _FWD_TILES, "fwd")
_dq_tuned = _autotuned(_bwd_dq_kernel, _DQ_TILES, "dq")
_dkdv_tuned = _autotuned(_bwd_dkdv_kernel, _DKDV_TILES, "dkdv")
_merged_tuned = _autotuned(_bwd_merged_kernel, _MERGED_TILES, "merged", _MERGED_NAMES)


# Tests set this to fill every output buffer with NaN first: proves the kernels write each element.
POISON = False
# dQ in the backward pass: "auto" (the faster of "separate" and "merged", timed once per layout and
# shape), "separate" kernel, "merged" launch or "atomic" adds from the dK/dV kernel (see dq_mode)
DQ_MODE = "auto"
# the deterministic modes "auto" times against each other, in this order; repetitions timed per mode
# after one untimed; a first mode's backward longer than AUTO_LONG_S is kept without timing the others
# (at 4M tokens a second mode's first call costs its autotuning: seconds). Merged's gain is one launch
# and a fuller GPU: 3-23% below 1 ms, but also 12% at 262,144 tokens with H=2, D=128 (H200,
# 2026-11-30), so the bound lets 1M (backward 0.1-0.22 s) time both
AUTO_MODES = ("separate", "merged")
AUTO_REPEATS = 2
# GPU clock cycles a sleep kernel holds the stream before each timed backward (about 2 ms at the H200's
# 1.98 GHz), so the events time GPU work, not the host's issue (see _cuda_seconds)
AUTO_LEAD_CYCLES = 4_000_000
AUTO_LONG_S = 0.25
# dK/dV programs take at most this many query blocks of a column, adding with atomics: an integer (0 = whole
# columns) or "auto" (SPLIT_SEGMENT where the longest column is SPLIT_RATIO or more times a fair share of the
# dK/dV work per SM; see dkdv_split)
DKDV_SPLIT = "auto"
SPLIT_SEGMENT = 8
SPLIT_RATIO = 2.5
# the separate dQ kernel computes delta itself, no delta kernel (delta_in_dq)
DELTA_IN_DQ = True
# later launches go straight to the compiled kernel's launcher (use_direct_launch)
DIRECT_LAUNCH = True
# how split columns are completed: split_finish
SPLIT_FINISH = "last"
SPLIT_FINISHES = ("cast", "last")
# where a head is merged from two launches, the first one's partial results go into the "output" tensors
# themselves, in the inputs' dtype, or to "fp32" sums beside them (see partials_in_outputs)
PARTIALS = "output"
PARTIALS_MODES = ("fp32", "output")
# full block lists walked as arithmetic runs where every list of a side has at most two (see use_runs)
RUNS = False
# the order programs take a side's blocks in: "chunked" (in chunks of consecutive blocks, heaviest chunk
# first) or "lpt" (longest first); see block_order
ORDER = "chunked"
ORDERS = ("lpt", "chunked")
# full lists' tiles loaded as TMA boxes where a part is in natural order and its rows' full lists hold
# TMA_MIN_BLOCKS blocks or more on average (see use_tma_loads)
TMA_LOADS = True
TMA_MIN_BLOCKS = 20
# the backward of natural-order parts in Gluon (kernels/gluon_bwd.py) on Hopper: gluon_backward
GLUON_BWD = "auto"
GLUON_SETTINGS = ("0", "1", "auto")
# the head dims "auto" takes it at
GLUON_AUTO_DIMS = (128,)
# its dK/dV programs take columns in segments where the longest column is more than GLUON_SPLIT_RATIO of
# an even share of the work per program slot: gluon_split
GLUON_SPLIT = "auto"
GLUON_SPLIT_RATIO = 1.0
# "auto" takes it from this length (shorter ones are not measured with it)
GLUON_MIN_LENGTH = 65536
# dQ added by the Gluon dK/dV kernel (an asynchronous TMA reduce a step) into sums of this type instead of a dQ
# kernel: "0" (off), "fp32" or "fp16" (scaled by a power of two into range), "auto" (fp16 from
# GLUON_DQ_MIN_LENGTH tokens); see gluon_dq_sums
GLUON_DQ = "auto"
GLUON_DQ_SETTINGS = ("auto", "0", "fp32", "fp16")
GLUON_DQ_MIN_LENGTH = 65536
# the head dims "auto" takes it at, each with the layout block it needs there (None: any its fused tiles fit): 64,
# and 128 on 128-blocks, where the halves kernel runs (at 2x128 with it 12-14% faster, docs/benchmarks.md "Forty-first
# run"; elsewhere at head dim 128 the fused tiles were 4-13% slower than its dQ kernel, "Thirty-eighth run")
GLUON_DQ_AUTO_DIMS = {64: None, 128: 128}
# the bound on the fp16 sums' magnitude the scale aims at (fp16's largest is 65,504)
GLUON_DQ_FP16_BOUND = 2.0 ** 14
# the forward of natural-order parts in Gluon (kernels/gluon_fwd.py): gluon_forward. Slower than the Triton
# forward wherever timed (docs/benchmarks.md "Nineteenth run"), so off, and "auto" takes it at no head dim
GLUON_FWD = "0"
GLUON_FWD_AUTO_DIMS: tuple[int, ...] = ()
# the forward as one loop over each program's flattened tiles (kernels/flat.py): flat_setting; off (it and the flat
# dQ and dK/dV timed slower than the default kernels at 3,072 and 12,288 tokens, docs/benchmarks.md "Forty-third run")
FLAT = "0"
FLAT_DQ = False
FLAT_DKDV = False
# an eager call's launches replayed from a plan once two calls of one key launched alike: "auto" (where
# launches go straight to the compiled kernels, use_direct_launch on CUDA), "1" (also under the interpreter,
# for the tests) or "0"; see use_plans
PLANS = "auto"
PLAN_TRIES = 4
# blocks per chunk of the "chunked" order: consecutive blocks whose programs run at the same time, so the
# tiles they read (one window's keys, one window's queries) are read from L2 rather than from HBM
ORDER_CHUNK = 32


def _empty(shape, dtype, device) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device) if POISON else torch.empty(shape, dtype=dtype, device=device)


def _fixed_tiles(block: int, names=_TILE_NAMES) -> dict | None:
    """Tiles without autotuning: under the interpreter (no timing there) or when forced for a test.

    MEGASTRIDE_BLOCKSPARSE_TILES="M,N" forces the tiles (M for the query-side names, *_M, and N for the
    key side); the interpreter default uses half-block sub-tiles so the tests exercise the sub-tiling paths.
    """
    forced = os.environ.get("MEGASTRIDE_BLOCKSPARSE_TILES")
    if forced:
        if not re.fullmatch(r"\d+,\d+", forced) or min(int(x) for x in forced.split(",")) < 16:
            raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_TILES must be 'M,N' (two integers >= 16), got {forced!r}")
        m, n = (min(int(x), block) for x in forced.split(","))
        return {**{name: m if name.endswith("_M") else n for name in names}, "num_warps": 4, "num_stages": 2}
    if _INTERPRET:
        return dict.fromkeys(names, max(16, block // 2))
    return None


def _bucket(seq_len: int) -> int:
    """Autotuning bucket of a sequence length: lengths within a factor of 4 share one entry instead of
    re-tuning per length (<= 8,192; <= 32,768; <= 131,072; ... 4x per bucket). Wider buckets picked at
    one length a config that was slow at another: on the H200 (2026-11-30) the dK/dV config tuned at
    12,288 ran the 65,536 2x128 case 24% slower than the one tuned there."""
    bucket, top = 0, 8192
    while seq_len > top:
        bucket, top = bucket + 1, top * 4
    return bucket


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


@dataclass
class _PartMeta:
    """A part's layout packed for the kernels on one device (built once per layout and device)."""

    heads: torch.Tensor  # (Hp,) int32 head index in the layer
    head_csr: torch.Tensor  # (Hp,) int32 which packed CSR the head uses
    min_off: torch.Tensor  # (Hp,) int32
    codes: torch.Tensor  # (Hp, NCOMP, 4) int32
    lists: dict[str, torch.Tensor]  # row_full_ptr ... col_part_idx, CSRs concatenated
    num_blocks: int  # blocks per side of each CSR
    ncomp: int
    kinds: int
    perm_mode: int  # 0 natural order, 1 permuted by stride, 2 summary positions first (``_natural``)
    perm_g: int
    perm_l: int
    perm_run: int  # summary-first: every run's length a multiple of this power of two (``_run_alignment``); else 0
    full_per_row: float  # mean full blocks in a row's list (over the part's CSRs): tiles a program walks
    # built on demand: ("segments", S, order, chunk) -> column segments, ("order", order, chunk, side) -> order
    extra: dict = field(default_factory=dict)
    # split columns' "last" finish: (segments key, batch, head dim) -> (fp32 sums, int32 counters), zero
    # between launches (the last segment of each column zeroes its rows); not metadata
    workspaces: dict = field(default_factory=dict)

    @property
    def permuted(self) -> bool:
        return self.perm_mode != 0


def _pack_lists(part: LayoutPart, device) -> dict[str, torch.Tensor]:
    """Concatenate the part's unique CSRs (pointers rebased) so one launch serves every head."""
    names = ["row_full", "row_part", "col_full", "col_part"]
    out = {}
    for name in names:
        ptrs = [getattr(c, f"{name}_ptr").to(device) for c in part.csr]
        idxs = [getattr(c, f"{name}_idx").to(device) for c in part.csr]
        if len(part.csr) == 1:  # the common uniform-head case: no copy
            ptr, idx = ptrs[0], idxs[0]
        else:
            base = torch.tensor([0] + [i.numel() for i in idxs[:-1]], device=device).cumsum(0)
            ptr = torch.cat([p + b for p, b in zip(ptrs, base.to(torch.int32))])
            idx = torch.cat(idxs)
        out[f"{name}_ptr"] = ptr.to(torch.int32).contiguous()
        out[f"{name}_idx"] = (idx if idx.numel() else torch.zeros(1, dtype=torch.int32, device=device)).contiguous()
    return out


def _work_order(work: torch.Tensor, blocks: torch.Tensor | None, mode: str) -> torch.Tensor:
    """The order (a permutation) in which programs take items of ``work`` whose blocks are ``blocks``
    (None: item i is block i). "lpt": descending work (stable). "chunked": items in chunks of
    ORDER_CHUNK consecutive blocks, the chunks by their heaviest item, descending, and inside a chunk
    descending work: near the longest-first order (the heavy items still start first), while the
    programs running at one time share their tiles' rows in L2."""
    if mode == "lpt" or work.numel() == 0:
        return torch.argsort(-work, stable=True)
    blocks = torch.arange(work.numel(), device=work.device) if blocks is None else blocks.long()
    chunk = blocks // ORDER_CHUNK
    top = torch.zeros(int(chunk.max()) + 1, dtype=work.dtype, device=work.device)
    top = top.scatter_reduce(0, chunk, work, "amax", include_self=False)
    # successive stable sorts, least significant key first: work, then chunk, then the chunk's heaviest
    order = torch.argsort(-work, stable=True)
    order = order[torch.argsort(chunk[order], stable=True)]
    return order[torch.argsort(-top[chunk[order]], stable=True)]


def _side_order(meta: "_PartMeta", side: str) -> torch.Tensor:
    """(num csr, nb) int32 blocks of ``side`` ("row" or "col") in ``block_order()``'s order, by each
    block's full and partial entries (built once per order, layout and device)."""
    mode = block_order()
    key = ("order", mode, ORDER_CHUNK, side)
    if key not in meta.extra:
        lists, nb = meta.lists, meta.num_blocks
        work = (lists[f"{side}_full_ptr"].long().view(-1, nb + 1).diff(dim=1)
                + lists[f"{side}_part_ptr"].long().view(-1, nb + 1).diff(dim=1))
        meta.extra[key] = {"order": torch.stack([_work_order(w, None, mode) for w in work]).to(torch.int32).contiguous()}
    return meta.extra[key]["order"]


def _block_runs(ptr: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
    """One CSR side's lists as at most two arithmetic runs of blocks each: (num_blocks, 6) int32 rows
    (start, count, step, start, count, step), or None where a list needs more. A run begins at a list's
    first entry and wherever the step between neighbours changes (exact, if not always the fewest runs).
    The fixed pattern's lists need two at most: a row holds the summary blocks of the earlier windows (one
    step) and then its own window's blocks (step 1), a column one run of rows."""
    num_blocks = ptr.numel() - 1
    device = idx.device
    out = torch.zeros((num_blocks, 6), dtype=torch.int64, device=device)
    out[:, 2] = out[:, 5] = 1
    starts_at = ptr[:-1].long()
    counts = ptr.diff().long()
    nnz = int(ptr[-1])
    if nnz == 0:
        return out.to(torch.int32)
    idx = idx[:nnz].long()
    row = torch.repeat_interleave(torch.arange(num_blocks, device=device), counts)
    pos = torch.arange(nnz, device=device) - starts_at[row]
    step = torch.zeros_like(idx)
    step[1:] = idx[1:] - idx[:-1]
    before = torch.zeros_like(step)
    before[1:] = step[:-1]
    new = (pos == 0) | ((pos >= 2) & (step != before))
    run = torch.cumsum(new.long(), 0) - 1
    nth = run - run[starts_at[row]]  # run number within its list
    if int(nth.max()) >= 2:
        return None
    first = new.nonzero().squeeze(1)
    length = torch.bincount(run, minlength=first.numel())
    steps = torch.where(length > 1, idx[torch.clamp(first + 1, max=nnz - 1)] - idx[first], torch.ones_like(first))
    r, k = row[first], nth[first]
    out[r, 3 * k] = idx[first]
    out[r, 3 * k + 1] = length
    out[r, 3 * k + 2] = steps
    return out.to(torch.int32)


def _runs_table(part: LayoutPart, meta: "_PartMeta", side: str) -> torch.Tensor | None:
    """``_block_runs`` of every CSR of the part's ``side`` ("row" or "col") full lists, stacked
    (ncsr * num_blocks, 6) for the kernels; None when runs are off or some list needs more than two.
    Built once per layout and device."""
    if not use_runs():
        return None
    key = ("runs", side)
    if key not in meta.extra:
        tables = [_block_runs(getattr(c, f"{side}_full_ptr").to(meta.codes.device),
                              getattr(c, f"{side}_full_idx").to(meta.codes.device)) for c in part.csr]
        # {} where some list needs more than two runs: remembered, and no tensor for metadata_bytes to count
        meta.extra[key] = {} if any(t is None for t in tables) else {"runs": torch.cat(tables).contiguous()}
    return meta.extra[key].get("runs")


def _column_segments(lists: dict[str, torch.Tensor], num_blocks: int, seg_len: int,
                     mode: str = "lpt", side: str = "col") -> dict[str, torch.Tensor]:
    """The dK/dV work split into column segments of at most ``seg_len`` full entries, per CSR (``side`` "row":
    the forward's rows the same way, ``_row_split``):
    (ncsr, S) arrays of each segment's column, full-entry range and whether it also takes the
    column's partial entries (its first segment does), in ``mode``'s order (``_work_order`` by their
    columns: "lpt" longest first); rows shorter than S padded with empty segments (column 0, empty
    range, no partial entries: they add zeros). For the "last" finish (``split_finish``) also each
    segment's column's number of segments (``seg_count``; 0 in the padding) and, where that is more than
    one, the column's index among such columns of its CSR (``seg_cidx``), and ``ws_cols`` (one element:
    the most such columns in a CSR, the workspace's columns per batch x head)."""
    full_ptr = lists[f"{side}_full_ptr"].long().view(-1, num_blocks + 1)
    part_n = lists[f"{side}_part_ptr"].long().view(-1, num_blocks + 1).diff(dim=1)
    rows = []
    for ptr, parts in zip(full_ptr, part_n):
        full_n = ptr.diff()
        nseg = torch.clamp((full_n + seg_len - 1) // seg_len, min=1)
        col = torch.repeat_interleave(torch.arange(num_blocks, device=ptr.device), nseg)
        j = torch.arange(col.numel(), device=ptr.device) - torch.repeat_interleave(nseg.cumsum(0) - nseg, nseg)
        lo = ptr[col] + j * seg_len
        hi = torch.minimum(lo + seg_len, ptr[col + 1])
        first = (j == 0).long()
        multi = nseg > 1
        cidx = torch.where(multi, multi.long().cumsum(0) - 1, torch.zeros_like(nseg))
        order = _work_order((hi - lo) + first * parts[col], col, mode)
        rows.append([t[order] for t in (col, lo, hi, first, nseg[col], cidx[col])] + [int(multi.sum())])
    width = max(r[0].numel() for r in rows)
    out = {}
    for k, name in enumerate(("seg_col", "seg_lo", "seg_hi", "seg_first", "seg_count", "seg_cidx")):
        table = torch.zeros((len(rows), width), dtype=torch.int64, device=full_ptr.device)
        for i, r in enumerate(rows):
            table[i, : r[k].numel()] = r[k]
        out[name] = table.to(torch.int32).contiguous()
    out["ws_cols"] = torch.tensor([max(r[-1] for r in rows)], dtype=torch.int32)
    return out


def _segments(meta: "_PartMeta", seg_len: int, side: str = "col") -> tuple[tuple, dict[str, torch.Tensor]]:
    """(key, tables) of the part's column segments (``side`` "row": row segments) of at most ``seg_len`` full
    entries in ``block_order()``'s order (``_column_segments``), built once per length, order and device."""
    key = ("segments", seg_len, block_order(), ORDER_CHUNK) + (() if side == "col" else (side,))
    if key not in meta.extra:
        meta.extra[key] = _column_segments(meta.lists, meta.num_blocks, seg_len, block_order(), side)
    return key, meta.extra[key]


def _split_workspace(meta: _PartMeta, key: tuple, batch: int, head_dim: int, block: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(fp32 sums, int32 counters, columns per batch x head) for the "last" finish of split columns under
    segments ``key``: dK then dV sums for the part's batch x heads x multi-segment columns x block rows,
    one counter per row (a key tile's first row counts its segments), zeroed once and kept zero by the
    launches themselves, so no launch clears or casts them."""
    cols = int(meta.extra[key]["ws_cols"][0])
    wkey = (key, batch, head_dim)
    if wkey not in meta.workspaces:
        rows = batch * meta.heads.numel() * max(cols, 1) * block
        meta.workspaces[wkey] = (torch.zeros((2, rows, head_dim), dtype=torch.float32, device=device),
                                 torch.zeros(rows, dtype=torch.int32, device=device))
    ws, counts = meta.workspaces[wkey]
    return ws, counts, cols


def _run_alignment(n: int, l: int, c: int, most: int = 128) -> int:
    """The largest power of two, at most ``most`` (the largest tile), dividing the length of every run of a
    summary-first order of ``n`` positions with window ``l`` and summary width ``c``: the summaries' runs (c),
    where they end (c * (n // l)) and the other runs (l - c). A tile of TILE dividing it lies in one run
    (``_natural_tile``): fixed(128, 32) gives 32, fixed(96, 16) gives 16."""
    run = 1
    while run < most and all(x % (2 * run) == 0 for x in (c, l - c, c * (n // l))):
        run *= 2
    return run


def _ordering(part: LayoutPart, n: int) -> dict[str, int]:
    """The part's ordering as ``_natural`` reads it: mode 1 (by stride l: n / l groups of l), 2 (summary
    positions first: width c, window l, its runs' alignment ``_run_alignment``) or 0 (natural order)."""
    if part.permute_stride:
        return dict(perm_mode=1, perm_g=n // part.permute_stride, perm_l=part.permute_stride, perm_run=0)
    if part.summary_first:
        l, c = part.summary_first
        return dict(perm_mode=2, perm_g=c, perm_l=l, perm_run=_run_alignment(n, l, c))
    return dict(perm_mode=0, perm_g=1, perm_l=1, perm_run=0)


def _part_meta(part: LayoutPart, n: int, device: torch.device) -> _PartMeta:
    key = ("blocksparse", str(device))
    if key not in part.kernel_cache:
        codes = part.component_codes()
        kinds = 0
        for kind in codes[..., 0].unique().tolist():
            kinds |= (1 << kind) if kind >= 0 else 0
        as_i32 = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
        num_blocks = part.csr[0].row_full_ptr.numel() - 1
        full = sum(c.row_full_idx.numel() for c in part.csr)
        part.kernel_cache[key] = _PartMeta(
            heads=as_i32(part.heads), head_csr=as_i32(part.head_csr), min_off=as_i32(part.min_offset),
            codes=codes.to(device).contiguous(), lists=_pack_lists(part, device),
            num_blocks=num_blocks, ncomp=codes.shape[1], kinds=kinds,
            **_ordering(part, n),
            full_per_row=full / (len(part.csr) * max(1, num_blocks)),
        )
    return part.kernel_cache[key]


def metadata_bytes(layout: Layout) -> int:
    """Bytes of block metadata the kernels hold for ``layout``: its CSRs plus packed copies and orders."""
    own = {t.data_ptr() for p in layout.parts for c in p.csr for t in c.tensors()}
    extra = 0
    for part in layout.parts:
        for key, meta in part.kernel_cache.items():
            extra += sum(t.numel() * t.element_size() for t in meta.lists.values() if t.data_ptr() not in own)
            extra += sum(t.numel() * t.element_size() for seg in meta.extra.values() for t in seg.values())
    return layout.nbytes + extra


def _strides(*tensors) -> list[int]:
    return [s for t in tensors for s in t.stride()[:3]]


# kernel name -> config (a table entry) launched instead of autotuning: ``forced_tiles``
_FORCED: dict[str, tuple[int, ...]] = {}
_KERNEL_NAMES = {"fwd": _TILE_NAMES, "dq": _TILE_NAMES, "dkdv": _TILE_NAMES, "merged": _MERGED_NAMES}


@contextlib.contextmanager
def forced_tiles(kernel: str, entry: tuple[int, ...]):
    """Inside the block, launch ``kernel`` ("fwd", "dq", "dkdv" or "merged") with one config, a table
    entry (tile sizes..., warps, stages) such as (128, 64, 4, 5), instead of the autotuned choice: the
    tile sweep (``megastride bench tiles``) times each config on its own this way. A tile larger than a
    layout's block is an error at launch."""
    if kernel not in _KERNEL_NAMES:
        raise ValueError(f"unknown kernel {kernel!r} (one of {', '.join(_KERNEL_NAMES)})")
    width = len(_KERNEL_NAMES[kernel]) + 2
    if len(entry) != width or not all(isinstance(x, int) and x > 0 for x in entry):
        raise ValueError(f"a {kernel} config is {width} positive integers (tile sizes, warps, stages), got {entry!r}")
    before = _FORCED.get(kernel)
    _FORCED[kernel] = tuple(entry)
    try:
        yield
    finally:
        if before is None:
            _FORCED.pop(kernel, None)
        else:
            _FORCED[kernel] = before


# kernel name -> {tuning key: (the autotuner's config, its tile names, the timings it took them from or
# None)} for every autotuned launch since the last ``chosen_tiles(name, clear=True)``: what the tile sweep's
# "auto" row and the bench's notes name
_CHOSEN: dict[str, dict] = {}


def _entry(config, names) -> tuple[int, ...]:
    return tuple(config.kwargs[n] for n in names) + (config.num_warps, config.num_stages)


def tile_name(entry: tuple[int, ...]) -> str:
    """A config (tile sizes..., warps, stages) in short form: "128x64w4s5", merged "64x64+128x32w4s3"."""
    *tiles, warps, stages = entry
    return "+".join(f"{tiles[i]}x{tiles[i + 1]}" for i in range(0, len(tiles), 2)) + f"w{warps}s{stages}"


def chosen_tiles(kernel: str, clear: bool = False) -> list[tuple[int, ...]]:
    """The configs (tile sizes..., warps, stages) the autotuner chose for ``kernel``'s launches since the
    last call with ``clear`` (one per tuning key, in launch order; none where tiles were forced or
    fixed); ``clear`` then forgets them."""
    seen = _CHOSEN.pop(kernel, {}) if clear else _CHOSEN.get(kernel, {})
    out = []
    for config, names, _ in seen.values():
        entry = _entry(config, names) if config is not None else None
        if entry is not None and entry not in out:
            out.append(entry)
    return out


def tuning_timings(kernel: str) -> list[dict[tuple[int, ...], float]]:
    """For each tuning key of ``kernel`` that the autotuner timed in this process since the last
    ``chosen_tiles(kernel, clear=True)``: every config it timed and its median ms, as the autotuner
    measured it (Triton's do_bench), in launch order."""
    out = []
    for _, names, timings in _CHOSEN.get(kernel, {}).values():
        if timings:
            out.append({_entry(c, names): (t[0] if isinstance(t, (list, tuple)) else t) for c, t in timings.items()})
    return out


def _tuning_key(tuned, args, consts) -> tuple:
    """The key ``triton.autotune`` files this launch under, computed as it does (the key arguments'
    values, then the dtype of every argument that has one, in argument order) without its per-launch
    list scans: 12 against 46 us per launch of the ~60-argument kernels (CPU, 2026-11-30)."""
    values = dict(zip(tuned.arg_names, args))
    values.update(consts)
    key = [values[k] for k in tuned.keys if k in values]
    key += [str(v.dtype) for v in values.values() if hasattr(v, "dtype")]
    return tuple(key)


def _launch(tuned, kernel, grid, args, consts, names=_TILE_NAMES, name: str = ""):
    forced = _FORCED.get(name)
    if forced is not None:
        *tiles, warps, stages = forced
        if max(tiles) > consts["BLOCK"]:
            raise ValueError(f"forced {name} tiles {tiles} exceed the layout's block {consts['BLOCK']}")
        _not_replayable()
        kernel[grid](*args, **consts, **dict(zip(names, tiles)), num_warps=warps, num_stages=stages)
        return
    tiles = _fixed_tiles(consts["BLOCK"], names)
    if tiles is None:
        key = _tuning_key(tuned, args, consts)
        config = tuned.cache.get(key)
        timings = None
        if config is None:  # first launch of this key: the autotuner times the configs
            _not_replayable()
            tuned[grid](*args, **consts)
            config = tuned.cache.get(key)
            timings = getattr(tuned, "configs_timings", None)
        else:  # its choice, launched without the autotuner's own per-launch key computation
            _launch_chosen(kernel, grid, args, {**consts, **config.all_kwargs()})
        seen = _CHOSEN.setdefault(name, {})
        if timings is not None or key not in seen:  # a steady-state launch adds one dict lookup
            seen[key] = (config, names, timings)
    else:
        _launch_chosen(kernel, grid, args, {**consts, **tiles})


# (kernel, current device, _spec_key of its positional arguments, its keyword arguments) -> the compiled
# kernel Triton launched for them: use_direct_launch
_DIRECT: dict[tuple, object] = {}
_I32 = 1 << 31


def _spec_key(args) -> tuple:
    """What Triton specialises a compiled kernel on, for positional arguments ``args``, or finer: a tensor's
    dtype and 16-byte alignment; an int's being 1, divisible by 16, and its width (i32, i64, u64: one code
    each); a bool's value; a float, nothing (one fp32 argument). Exact types tested first, tensors (half of
    our arguments) before ints: 6.6 / 7.8 / 10.7 us for the forward / dQ / dK/dV kernels' 36 / 46 / 60
    arguments against 8.1 / 10.6 / 13.3 with isinstance chains (CPU machine, 2026-12-01)."""
    key = []
    append = key.append
    for a in args:
        t = type(a)
        if t is torch.Tensor:
            append((a.dtype, not a.data_ptr() & 15))
        elif t is int:
            append(1 if a == 1 else (2 if a & 15 else 3) if -_I32 <= a < _I32 else
                   (4 if a & 15 else 5) if a < 1 << 63 else (6 if a & 15 else 7))
        elif t is bool:
            append(a)
        elif isinstance(a, torch.Tensor):  # a subclass (a Parameter)
            append((a.dtype, not a.data_ptr() & 15))
        elif isinstance(a, int):  # an int subclass: as Triton, by value
            append(_spec_key([int(a)])[0])
        else:
            append(t)
    return tuple(key)


def _launch_hooks_set() -> bool:
    """Whether Triton has launch hooks to call (a profiler's): its knobs hold empty hook chains otherwise."""
    runtime = triton.knobs.runtime
    return any(h is not None and getattr(h, "calls", True) for h in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def _current_device() -> int:
    """The current CUDA device's index (Triton compiles and loads a kernel per device)."""
    return torch.cuda.current_device()


def _current_stream(device: int) -> int:
    """The current CUDA stream's handle on ``device``, as Triton's launcher takes it."""
    return torch._C._cuda_getCurrentRawStream(device)


def _launch_chosen(kernel, grid, args, kwargs: dict) -> None:
    """``kernel[grid](*args, **kwargs)`` (keyword arguments: the constexprs and a config's tiles and launch
    options). With ``use_direct_launch``, later launches whose arguments specialise alike (``_spec_key``) call
    the kernel Triton compiled and launched the first time straight through its launcher, skipping the
    binder, cache key and checks of ``JITFunction.run`` on the host; not with a launch hook set (a
    profiler's), nor under the interpreter."""
    record = getattr(_RECORDING, "record", None)
    if not use_direct_launch() or _INTERPRET or _launch_hooks_set():
        if record is not None:
            record.launches.append((kernel, _grid3(grid(kwargs)), list(args), dict(kwargs)))
        kernel[grid](*args, **kwargs)
        return
    device = _current_device()
    key = (kernel, device, _spec_key(args), tuple(kwargs.items()))
    compiled = _DIRECT.get(key)
    if compiled is None:
        _not_replayable()  # compiled now: the next call launches it directly
        _DIRECT[key] = kernel[grid](*args, **kwargs)
        return
    params = [*args, *(kwargs[name] for name in kernel.arg_names[len(args):])]  # every parameter, in order
    g = _grid3(grid(kwargs))
    if record is not None:
        record.launches.append((compiled, g, params, None))
    compiled.run(*g, _current_stream(device), compiled.function, compiled.packed_metadata, None, None, None, *params)


def _grid3(g) -> tuple[int, int, int]:
    return (g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1)


# --- launch plans -------------------------------------------------------------------------------------
# At short lengths an eager call is bound by the host: deciding its launches (parts, modes, switches, tiles,
# specialisation keys) costs more host time than the GPU spends on them (docs/benchmarks.md, "Thirty-third
# run"). For one layout, the same input shapes, strides, dtypes, 16-byte alignments and the same switches,
# those decisions come out the same every call, so after two calls whose launches agree a call replays
# them: the same compiled kernels, grids and arguments, with the call's own tensors (inputs, and the
# outputs it allocates as the full path does) in their places.

_RECORDING = threading.local()


class _Record:
    """The launches of one call, and whether it may be replayed: every launch recorded, nothing else done
    to the GPU but allocating the call's own tensors (``slots``)."""

    __slots__ = ("slots", "launches", "clean", "allocator")

    def __init__(self, slots: tuple):
        self.slots, self.launches, self.clean, self.allocator = slots, [], True, False

    def template(self) -> list[tuple]:
        """Per launch (target, grid, values, slot positions, kwargs): values hold the arguments with None
        where one of the call's own tensors goes, and slot positions say which (position, slot index)."""
        where = {id(t): i for i, t in enumerate(self.slots)}
        out = []
        for target, grid, params, kwargs in self.launches:
            slots = tuple((pos, where[id(p)]) for pos, p in enumerate(params) if id(p) in where)
            values = list(params)
            for pos, _ in slots:
                values[pos] = None
            out.append((target, grid, values, slots, kwargs))
        return out


def _not_replayable() -> None:
    """Called where a call does what a plan cannot replay (autotuning, a first compile, fills or copies
    outside the kernels, Gluon launches): the call being recorded, if any, gives no plan."""
    record = getattr(_RECORDING, "record", None)
    if record is not None:
        record.clean = False


def _same_launches(a: list[tuple], b: list[tuple]) -> bool:
    """Whether two calls' templates launch alike: the same compiled kernels, grids, keyword arguments and
    slot positions, and every other argument equal (tensors: the same object, a layout's own metadata)."""
    if len(a) != len(b):
        return False
    for (ta, ga, va, sa, ka), (tb, gb, vb, sb, kb) in zip(a, b):
        if ta is not tb or ga != gb or sa != sb or ka != kb or len(va) != len(vb):
            return False
        for x, y in zip(va, vb):
            if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
                if x is not y:
                    return False
            elif type(x) is not type(y) or x != y:
                return False
    return True


class _Plan:
    """Launches to replay for one key (``_plan_lookup``)."""

    __slots__ = ("launches", "allocator", "cuda")

    def __init__(self, launches: list[tuple], allocator: bool, cuda: bool):
        self.launches, self.allocator, self.cuda = launches, allocator, cuda

    def replay(self, slots: tuple) -> None:
        if self.allocator:
            _ensure_allocator()
        stream = _current_stream(_current_device()) if self.cuda else None
        away = 0  # "side" switches not yet switched back ("streams" backward): undone if a launch raises
        try:
            for target, grid, values, where, kwargs in self.launches:
                if type(target) is str:  # a stream switch (_stream_step), then the launches on that stream
                    _cuda_stream_step(target)
                    away += {"side": 1, "main": -1}.get(target, 0)
                    stream = _current_stream(_current_device()) if self.cuda else None
                    continue
                params = values.copy()
                for pos, i in where:
                    params[pos] = slots[i]
                if kwargs is None:
                    target.run(*grid, stream, target.function, target.packed_metadata, None, None, None, *params)
                else:
                    target[grid](*params, **kwargs)
        finally:
            for _ in range(away):
                _cuda_stream_step("main")


# --- dQ beside dK/dV on a second stream (the dQ mode "streams") ----------------------------------------------
# At short lengths neither backward kernel fills the GPU: the dK/dV launch waits on its longest columns (the
# fixed pattern's summary columns) while SMs idle, and the dQ launch's rows are short. With the delta kernel
# first, dQ needs nothing of dK/dV's, so it runs on a second stream beside it. Each switch is recorded in a
# call's launches, so a launch plan replays it too.

_SIDE_STREAMS: dict = {}  # CUDA device index -> its side stream
_CALLERS = threading.local()  # the streams "side" switched away from (innermost last)


def side_stream(device: int) -> "torch.cuda.Stream":
    """The second stream of CUDA device ``device`` (an index) that dQ runs on beside dK/dV (made once)."""
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return stream


def _cuda_stream_step(kind: str) -> None:
    """One stream switch of the "streams" backward on the current CUDA device: "fork", the side stream waits for
    the current (caller's) stream's work so far; "side", the side stream becomes the current stream; "main", the
    caller's stream current again; "join", the caller's stream waits for the side stream's work so far (also
    inside a CUDA graph capture: a fork and a join of the captured stream)."""
    device = _current_device()
    if kind == "fork":
        side_stream(device).wait_stream(torch.cuda.current_stream(device))
    elif kind == "side":
        if not hasattr(_CALLERS, "stack"):
            _CALLERS.stack = []
        _CALLERS.stack.append(torch.cuda.current_stream(device))
        torch.cuda.set_stream(side_stream(device))
    elif kind == "main":
        torch.cuda.set_stream(_CALLERS.stack.pop())
    elif kind == "join":
        torch.cuda.current_stream(device).wait_stream(side_stream(device))
    else:
        raise ValueError(f"unknown stream switch {kind!r}")


def _stream_step(kind: str) -> None:
    """``_cuda_stream_step(kind)``, recorded in the launches of the call being recorded (its plan replays it)."""
    record = getattr(_RECORDING, "record", None)
    if record is not None:
        record.launches.append((kind, None, [], None))
    _cuda_stream_step(kind)


@contextlib.contextmanager
def _on_side_stream(active: bool, fork: bool):
    """The block's launches on the device's side stream where ``active`` (else on the caller's stream), after the
    caller's stream's work so far where ``fork`` (else after the side stream's own); the caller's stream current
    again after it."""
    if not active:
        yield
        return
    if fork:
        _stream_step("fork")
    _stream_step("side")
    try:
        yield
    finally:
        _stream_step("main")


def streams_here(mode: str, q: torch.Tensor) -> bool:
    """Whether a backward in dQ mode ``mode`` on q's device switches streams: the mode "streams" on a CUDA GPU
    (compiled kernels; elsewhere the mode runs its launches in the same order on one stream)."""
    return mode == "streams" and q.is_cuda and not _INTERPRET


# module settings a call's launches depend on (the environment's MEGASTRIDE_ variables are read as well)
_PLAN_SETTINGS = ("POISON", "FLAT", "FLAT_DQ", "FLAT_DKDV", "DQ_MODE", "AUTO_MODES", "DKDV_SPLIT", "SPLIT_SEGMENT", "SPLIT_RATIO", "DELTA_IN_DQ",
                  "DIRECT_LAUNCH", "SPLIT_FINISH", "PARTIALS", "RUNS", "ORDER", "TMA_LOADS", "TMA_MIN_BLOCKS",
                  "GLUON_BWD", "GLUON_AUTO_DIMS", "GLUON_SPLIT", "GLUON_SPLIT_RATIO", "GLUON_MIN_LENGTH", "GLUON_FWD",
                  "GLUON_FWD_AUTO_DIMS", "ORDER_CHUNK", "PLANS", "PLAN_TRIES", "PDL", "FWD_SPLIT", "FWD_SPLIT_MAX_BYTES", "DQ_SPLIT")


def _environment_key() -> tuple:
    """The MEGASTRIDE_ environment variables, as (name, value) pairs (from os.environ's own dict where it
    has one: a few microseconds, against decoding every variable)."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return tuple(kv for kv in data.items() if kv[0][:11] in (b"MEGASTRIDE_", "MEGASTRIDE_"))
    return tuple(kv for kv in os.environ.items() if kv[0].startswith("MEGASTRIDE_"))


def use_plans(q: torch.Tensor) -> bool:
    """Whether calls on ``q``'s device replay launch plans (``_Record``): ``PLANS`` "auto" where launches go
    straight to the compiled kernels (``use_direct_launch``, CUDA, no launch hooks), "1" also under the
    interpreter (the tests), "0" never. ``MEGASTRIDE_BLOCKSPARSE_PLANS`` overrides ``PLANS``."""
    mode = os.environ.get("MEGASTRIDE_BLOCKSPARSE_PLANS", PLANS)
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_PLANS must be one of 0, 1, auto; got {mode!r}")
    if mode == "0" or _launch_hooks_set():
        return False
    return mode == "1" or (q.is_cuda and not _INTERPRET and use_direct_launch())


def _plan_lookup(layout: Layout, call: tuple, tensors: tuple) -> tuple[_Plan | None, tuple | None]:
    """(plan, key) of a call on ``tensors`` (``call``: what else its launches depend on): the plan where two
    earlier calls of the key launched alike, else None; key None where plans are off."""
    first = tensors[0]
    if not use_plans(first):
        return None, None
    g = globals()
    key = ("plan", call, tuple((t.shape, t.stride(), t.dtype, t.device, not t.data_ptr() & 15) for t in tensors),
           torch.cuda.current_device() if first.is_cuda else None, tuple(g[name] for name in _PLAN_SETTINGS),
           _environment_key(), tuple(sorted(_FORCED.items())))
    plan = layout.kernel_cache.get(key)
    return (plan if isinstance(plan, _Plan) else None), key


@contextlib.contextmanager
def _recorded(layout: Layout, key: tuple | None, slots: tuple):
    """Record the launches of the block (a call of ``key`` with its own tensors ``slots``); a plan is kept
    once two recorded calls launch alike, and none after ``PLAN_TRIES`` calls that did not."""
    if key is None or getattr(_RECORDING, "record", None) is not None:
        yield
        return
    record = _RECORDING.record = _Record(slots)
    try:
        yield
    finally:
        _RECORDING.record = None
    tries, last = layout.kernel_cache.get(key) or (0, None)
    if tries >= PLAN_TRIES:
        return
    template = record.template() if record.clean and record.launches else None
    if template is not None and last is not None and _same_launches(last[0], template):
        layout.kernel_cache[key] = _Plan(template, last[1] or record.allocator, slots[0].is_cuda)
        return
    layout.kernel_cache[key] = (tries + 1, None if template is None else (template, record.allocator))


def _tma_aligned(*tensors: torch.Tensor) -> bool:
    """Whether every tensor's last dim is contiguous and its base and row strides 16-byte aligned, as a TMA
    descriptor over it needs."""
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * size % 16 for st in t.stride()[:-1]):
            return False
    return True


def _desc_loads(meta: _PartMeta, *tensors: torch.Tensor) -> bool:
    """Whether the kernels load their full lists' tiles as TMA boxes (in-kernel tensor descriptors, DESC):
    chosen for the part's list lengths (``use_tma_loads``), a part in natural order (a tile's rows
    contiguous), a Hopper GPU or the interpreter, and every tensor's base and row strides 16-byte aligned,
    as TMA needs (else the pointer loads). Sets Triton's scratch allocator for the descriptors on the GPU."""
    if not use_tma_loads(meta.full_per_row) or meta.permuted or not (_INTERPRET or _has_tma(tensors[0])):
        return False
    if not _tma_aligned(*tensors):
        return False
    if not _INTERPRET:
        _ensure_allocator()
    return True


def _common(layout: Layout, meta: _PartMeta, q: torch.Tensor, load_prev: bool) -> dict:
    return dict(BUCKET=_bucket(layout.seq_len), BLOCK=layout.block, HEAD_DIM=q.shape[-1], PERMUTED=meta.perm_mode, RUN=meta.perm_run,
                NCOMP=meta.ncomp, KINDS=meta.kinds, LOAD_PREV=load_prev,
                DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32", **_pdl_consts(q))


def _check_inputs(q, k, v, layout: Layout) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one (B, H, T, D) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    _, heads, seq_len, head_dim = q.shape
    if seq_len != layout.seq_len or heads != layout.num_heads:
        raise ValueError(f"inputs have {heads} heads x {seq_len} positions; the layout is for "
                         f"{layout.num_heads} heads x {layout.seq_len}")
    if head_dim not in _HEAD_DIMS:
        raise ValueError(f"head dim {head_dim} is not one of {_HEAD_DIMS} (blocksparse_attention pads others)")
    if layout.block < 16 or layout.block & (layout.block - 1):
        raise ValueError(f"the kernels need a power-of-two block of at least 16, got {layout.block}")
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("q, k, v must be contiguous in the head dim")


def _schedule(layout: Layout):
    """(part, load_prev, fresh heads, last) per launch, in launch order: heads seen in an earlier part
    accumulate. The part with the most heads (the natural-order one on ties: a strided head's local
    half, most of its work) is launched last (``last``), so where a head is split into parts only the
    small parts go through the fp32 sums, and the last one writes the final outputs in the inputs'
    dtype directly (no fp32 round trip and cast pass for the bulk: ``_forward``, ``_backward``)."""
    seen: set[int] = set()
    parts = layout.launch_order()
    for i, part in enumerate(parts):
        prev = [h in seen for h in part.heads]
        yield part, any(prev), [h for h, p in zip(part.heads, prev) if not p], i == len(parts) - 1
        seen.update(part.heads)
    if len(seen) != layout.num_heads:
        raise ValueError(f"layout covers heads {sorted(seen)} of {layout.num_heads}")


def _forward(q, k, v, layout: Layout, scale: float):
    """(out, lse in base 2) of block-sparse attention; out in q's dtype, lse (B, H, T) fp32."""
    plan, key = _plan_lookup(layout, ("fwd", scale), (q, k, v))
    if plan is not None:
        out, lse = _forward_outputs(q)
        plan.replay((q, k, v, out, lse))
        return out, lse
    _check_inputs(q, k, v, layout)
    out, lse = _forward_outputs(q)
    with _recorded(layout, key, (q, k, v, out, lse)):
        return _forward_launches(q, k, v, out, lse, layout, scale)


def _forward_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) for a forward of q's shape: out in (B, T, H, D) memory order, seen as (B, H, T, D) (the
    model's out.transpose(1, 2).reshape(B, T, H*D) is then a view, not a copy; the kernels take any strides),
    lse (B, H, T) fp32."""
    batch, heads, seq_len, head_dim = q.shape
    return (_empty((batch, seq_len, heads, head_dim), q.dtype, q.device).transpose(1, 2),
            _empty((batch, heads, seq_len), torch.float32, q.device))


def _forward_launches(q, k, v, out, lse, layout: Layout, scale: float):
    batch, heads, seq_len, head_dim = q.shape
    multi = layout.merges()[0] and not partials_in_outputs(layout)
    # heads split into parts: the parts before the last add into fp32 sums (same strides as out), which
    # the last part merges into out; or (partials_in_outputs) the first part writes into out itself
    acc = _empty((batch, seq_len, heads, head_dim), torch.float32, q.device).transpose(1, 2) if multi else out
    if multi:
        _not_replayable()
    for part, load_prev, fresh, last in _schedule(layout):
        meta = _part_meta(part, seq_len, q.device)
        if load_prev and fresh:  # heads that start in this merging part merge with "nothing yet"
            _not_replayable()
            acc[:, fresh] = 0.0
            lse[:, fresh] = float("-inf")
        target = out if last else acc
        if gluon_forward(meta, layout, q, k, v, target, acc):
            from . import gluon_fwd

            _not_replayable()
            _ensure_allocator()  # its TMA descriptors
            gluon_fwd.forward_part(q, k, v, target, acc, lse, meta, _side_order(meta, "row"), layout.block, scale,
                                   load_prev)
            continue
        where = dict(part=part, meta=meta, layout=layout, scale=scale, load_prev=load_prev)
        setting = flat_setting()
        if setting != "0":
            from . import flat

            regular = functools.partial(_fwd_part_launch, q, k, v, **where) if setting == "auto" else None
            if flat.forward_part(q, k, v, target, acc, lse, meta, layout, scale, load_prev, regular):
                continue
        _fwd_part_launch(q, k, v, target, acc, lse, **where)
    _cast_rest(layout, acc, out)
    return out, lse


def _fwd_part_launch(q, k, v, target, prev, lse, *, part: LayoutPart, meta: _PartMeta, layout: Layout, scale: float, load_prev: bool):
    """One part's forward by the default kernel (a program a query tile, or a row segment of one: ``fwd_split``):
    its output into ``target`` (merged with ``prev``'s through ``lse`` where ``load_prev``)."""
    batch, _, seq_len, head_dim = q.shape
    lists = meta.lists
    runs = _runs_table(part, meta, "row")
    heads = len(part.heads)
    split = fwd_split()
    # programs over the rows' segments (row blocks heaviest first), merged by each row's last one; or whole rows
    order, tables, cols = _row_split_args(meta, split, batch, head_dim, layout.block, q.device, "fwd", lse)
    order_len = order.shape[1]
    args = (q, k, v, target, prev, lse, meta.heads, meta.head_csr, meta.min_off, meta.codes,
            lists["row_full_ptr"], lists["row_full_idx"], lists["row_part_ptr"], lists["row_part_idx"],
            order, lists["row_full_idx"] if runs is None else runs, *tables,
            *_strides(q, k, v, target), lse.stride(0), lse.stride(1),
            heads, batch * heads, layout.num_blocks, meta.perm_g, meta.perm_l, scale * LOG2E, order_len, cols,
            max(split, 1))
    grid = lambda m: (order_len * (layout.block // m["BLOCK_M"]) * batch * heads,)  # noqa: E731
    _launch(_fwd_tuned, _fwd_kernel, grid, args,
            {**_common(layout, meta, q, load_prev), "RUNS": runs is not None, "DESC": _desc_loads(meta, q, k, v),
             "SPLIT": bool(split)}, name="fwd")


# the forward's (dQ kernel's) programs take at most this many full entries of a row ("0": whole rows); an integer
# as a string
FWD_SPLIT = "0"
DQ_SPLIT = "0"
# the most bytes the row segments' slots may take (fp32 outputs and their max and sum, a slot per segment)
FWD_SPLIT_MAX_BYTES = 1 << 30


def fwd_split() -> int:
    """Most full entries a forward program takes of a row: 0 for whole rows (the default), else rows are cut
    into segments of that many, each its own program, and each row's last segment to finish merges them through
    their softmax states (``_merge_row_segments``): more programs, and shorter ones, where a launch has fewer
    query tiles than the GPU has room for (short sequences, few heads). ``FWD_SPLIT``;
    ``MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT`` (an integer >= 0) overrides it."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT", FWD_SPLIT)
    if not raw.isdigit():
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT must be an integer >= 0 (full entries a forward "
                         f"program takes of a row; 0: whole rows), got {raw!r}")
    return int(raw)


def dq_split() -> int:
    """Most full entries a separate dQ program takes of a row (``fwd_split``'s cut for the dQ kernel: its rows'
    segments sum their dQ in slot order; not the merged kernel's dQ programs): 0, whole rows, by default.
    ``DQ_SPLIT``; ``MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT`` (an integer >= 0) overrides it."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT", DQ_SPLIT)
    if not raw.isdigit():
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT must be an integer >= 0 (full entries a dQ program takes "
                         f"of a row; 0: whole rows), got {raw!r}")
    return int(raw)



def _row_split_args(meta: _PartMeta, split: int, batch: int, head_dim: int, block: int, device: torch.device,
                    kind: str, spare: torch.Tensor) -> tuple[torch.Tensor, tuple, int]:
    """(order, tables, rows of more than one segment a batch x head) of a ``kind`` ("fwd" or "dq") launch over the
    part's rows in segments of ``split`` full entries (``_row_split_workspace``): the segments' row blocks, then
    their ranges, first flags, counts, column indices, slots (and for "fwd" the max and sum slots) and
    counters; with ``split`` 0 the row order and tensors that are not read (``spare``: an fp32 one)."""
    if not split:
        order = _side_order(meta, "row")
        return order, (order,) * 5 + ((spare, spare) if kind == "fwd" else (spare,)) + (order,), 0
    key, seg = _segments(meta, split, "row")
    slots, cols = _row_split_workspace(meta, key, batch, head_dim, block, device, kind)
    return seg["seg_col"], (seg["seg_lo"], seg["seg_hi"], seg["seg_first"], seg["seg_count"], seg["seg_cidx"],
                            *slots), cols


def _row_split_workspace(meta: _PartMeta, key: tuple, batch: int, head_dim: int, block: int,
                         device: torch.device, kind: str) -> tuple[tuple, int]:
    """((slots, [max and sum slots,] counters), rows of more than one segment a batch x head) for a ``kind`` launch
    ("fwd" or "dq") over row segments ``key``: per segment index (up to the longest row's count) and row of such a
    row block, its fp32 sums (the forward's also its max and sum); one int32 counter a row (a query tile's first
    row counts its segments), zeroed once and kept zero by the launches. Refused in one line past
    ``FWD_SPLIT_MAX_BYTES``."""
    tables = meta.extra[key]
    cols, most = int(tables["ws_cols"][0]), int(tables["seg_count"].max())
    wkey = (key, batch, head_dim, kind)
    if wkey not in meta.workspaces:
        rows = batch * meta.heads.numel() * max(cols, 1) * block
        need = most * rows * (head_dim + (2 if kind == "fwd" else 0)) * 4
        if need > FWD_SPLIT_MAX_BYTES:
            name, value = (("FWD_SPLIT", fwd_split()) if kind == "fwd" else ("DQ_SPLIT", dq_split()))
            raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_{name}={value}: the row segments' slots would take "
                             f"{need / 2**20:,.0f} MiB (at most {FWD_SPLIT_MAX_BYTES / 2**20:,.0f}); take longer "
                             "segments or 0 (whole rows) at this length")
        slots = (torch.empty(most * rows * head_dim, dtype=torch.float32, device=device),)
        if kind == "fwd":
            slots += (torch.empty(most * rows * 2, dtype=torch.float32, device=device),)
        meta.workspaces[wkey] = slots + (torch.zeros(rows, dtype=torch.int32, device=device),)
    return meta.workspaces[wkey], cols


def _cast_rest(layout: Layout, acc: torch.Tensor, out: torch.Tensor, heads: list[int] | None = None) -> None:
    """Copy into ``out`` the heads whose final values are still in the fp32 sums ``acc``: those the last
    launch did not write (``heads``: those it did, default the last part's), all of them where ``heads``
    is empty; nothing where ``acc`` is ``out``."""
    if acc is out:
        return
    done = set(layout.launch_order()[-1].heads if heads is None else heads)
    rest = [h for h in range(layout.num_heads) if h not in done]
    if len(rest) == layout.num_heads:
        out.copy_(acc)
    elif rest:
        out[:, rest] = acc[:, rest].to(out.dtype)


DQ_MODES = ("auto", "separate", "atomic", "merged", "flat", "streams")


def dq_mode() -> str:
    """How the backward pass computes dQ: "separate" (a dQ kernel over the row lists: deterministic, two
    more matmuls per tile), "atomic" (the dK/dV kernel adds dS @ K to an fp32 dQ with atomics: one TMA
    reduce per tile on Hopper in natural order; not deterministic, and 2.4-12% slower than "auto" from
    262,144 tokens on the H200, docs/benchmarks.md "Sixth run"),
    "merged" (the separate dQ programs and the dK/dV programs in one launch: deterministic too), "flat"
    ("separate" with both kernels as flattened tiles, kernels/flat.py: as ``use_flat_dq`` and
    ``use_flat_dkdv`` on; slower than "separate" and "merged" at 3,072 and 12,288 tokens on an H100, docs/benchmarks.md
    "Forty-third run", so not in ``AUTO_MODES``), "streams" ("separate" with the delta kernel first, then the
    dQ kernel on a second stream of the device beside the dK/dV kernel on the caller's, joined before the
    backward returns: for short sequences, where neither kernel fills the GPU and the dK/dV launch waits on its
    longest columns; ``_on_side_stream``; replayed from a CUDA graph it was 2.7-6.4% faster at two short points and
    3-9% slower at two others, and eager calls pay its fork and join on the host, docs/benchmarks.md "Forty-sixth
    run", so not in ``AUTO_MODES``) or
    "auto" (whichever of ``AUTO_MODES`` ran faster, timed on the first backward of each layout and shape:
    merged wins at short lengths, where one launch fills the GPU better, separate at 1M tokens; on an
    H200 on 2026-11-30 by 1-23% either way, docs/benchmarks.md). ``MEGASTRIDE_BLOCKSPARSE_DQ``
    overrides ``DQ_MODE``."""
    mode = os.environ.get("MEGASTRIDE_BLOCKSPARSE_DQ", DQ_MODE)
    if mode not in DQ_MODES:
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_DQ must be one of {', '.join(DQ_MODES)}; got {mode!r}")
    return mode


def _auto_or_count(variable: str, default) -> str | int:
    """The environment ``variable`` where set, else ``default``: "auto" or an integer >= 0 (else a one-line
    error naming the variable)."""
    raw = os.environ.get(variable, str(default))
    if raw == "auto":
        return raw
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{variable} must be \"auto\" or an integer >= 0, got {raw!r}")
    return value


def dkdv_split_setting() -> str | int:
    """``DKDV_SPLIT`` or ``MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT`` where set: "auto" or an integer >= 0."""
    return _auto_or_count("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", DKDV_SPLIT)


def dkdv_split(layout: Layout | None = None, batch: int = 1, sms: int | None = None) -> int:
    """Most full entries (query blocks) one dK/dV program takes from a column; 0 = whole columns.
    "auto" (the default): ``SPLIT_SEGMENT`` where the layout's longest column (``Layout.column_work``) is at
    least ``SPLIT_RATIO`` times a fair share of all columns' blocks over ``sms`` streaming multiprocessors,
    else 0; 0 without a layout or an SM count (the interpreter). There one column is the kernel's critical
    path: the fixed pattern's summary columns at short lengths and few heads. On the H200 (2026-12-01,
    docs/benchmarks.md "Tenth run") columns of 8 query blocks took the fixed pattern at 12,288 tokens,
    H=2, D=128 (ratio 6.1) from 0.35 to 0.24 ms replayed, 65,536 tokens at H=2 (2.7) 3% faster, and made
    H=8, D=64 at 12,288 (1.5) 10% slower and 262,144 tokens at H=2 (1.35) 13% slower. Split columns add
    with atomics, so dK and dV are summed in a run-to-run varying order; ``DKDV_SPLIT`` (or
    ``MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT``, which overrides it) = 0 keeps every column whole."""
    return columns_split(layout.column_work() if layout is not None else None, batch, sms)


def columns_split(work: tuple[int, int] | None, batch: int = 1, sms: int | None = None) -> int:
    """``dkdv_split`` for a layout whose ``Layout.column_work`` is ``work`` (None: no layout): the planner
    asks it with the work of layouts it built on the CPU."""
    setting = dkdv_split_setting()
    if setting != "auto":
        return setting
    if work is None or not sms:
        return 0
    longest, total = work
    return SPLIT_SEGMENT if longest * sms >= SPLIT_RATIO * total * batch else 0


def delta_in_dq() -> bool:
    """Whether the separate dQ kernel computes the softmax backward's delta = rowsum(dO * O) for its rows
    and stores it for the dK/dV launch, instead of a delta kernel launched before it: one launch fewer
    per backward (the atomic and merged modes keep the delta kernel: their dK/dV programs need every row's
    delta from the start). On by default: with the "last" finish, forward+backward replayed from a CUDA
    graph at 12,288 tokens (fixed, 2 heads of 128, H200) took 0.226 ms against 0.241, and from 262,144 to
    1,048,576 tokens the two were within 1% either way (docs/benchmarks.md, thirteenth run).
    ``MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ`` ("0" or "1") overrides ``DELTA_IN_DQ``."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", DELTA_IN_DQ)


def split_finish() -> str:
    """How split dK/dV columns (``dkdv_split``) are completed: "cast" (every segment adds into fp32 dK and dV
    with atomics; zeroed before the launch, cast to the inputs' dtype after it: two fills and two casts of
    the whole gradients) or "last" (a column of one segment writes its rows as a whole column does; the
    segments of a longer column add into a small fp32 workspace of such columns and count themselves, and
    the last to count writes the final rows and zeroes its share of the workspace: no fills or casts).
    ``SPLIT_FINISH`` ("last"), or ``MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH`` where set. "last" matched "cast"
    on the H200 (eager and replayed, tests/test_kernels_gpu.py) and was faster where columns split
    (docs/benchmarks.md, thirteenth run).
    The workspace is the layout's: two backward passes of one layout must not run at once on different
    streams under "last"."""
    mode = os.environ.get("MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH", SPLIT_FINISH)
    if mode not in SPLIT_FINISHES:
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH must be one of {', '.join(SPLIT_FINISHES)}; "
                         f"got {mode!r}")
    return mode


def partials_in_outputs(layout: Layout) -> bool:
    """Whether the first launch of a head merged from two (``Layout.two_launch_merge``: the strided pattern)
    writes its partial output and gradients into the output tensors themselves, in the inputs' dtype, for
    the last launch to read and complete in place (``PARTIALS = "output"``, the default), instead of into
    fp32 sums beside them ("fp32"). It saves those sums: 4 bytes per output element in the forward, 12 in the
    backward (6 GB per layer at 1M tokens, H x D = 512), at one more rounding of the first launch's share to
    the inputs' dtype. On the H200 (2026-12-01, docs/benchmarks.md "Eleventh run") it took strided_matched's
    forward+backward peak from 650 to 266 MB at 65,536 tokens and from 10.4 to 4.3 GB at 1M (H=8, D=64), and
    the forward+backward 1.5-4% faster at 65,536 to 1M tokens (H=8, D=64 and H=2, D=128); bf16 and fp16
    within the fp32 sums' error there (gpu_check, tests/test_kernels_gpu.py). Gradients that split columns
    or atomic dQ add with atomics stay fp32."""
    return partials_setting() == "output" and layout.two_launch_merge()


def partials_setting() -> str:
    """``PARTIALS``, or ``MEGASTRIDE_BLOCKSPARSE_PARTIALS`` where set: "fp32" or "output"."""
    mode = os.environ.get("MEGASTRIDE_BLOCKSPARSE_PARTIALS", PARTIALS)
    if mode not in PARTIALS_MODES:
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_PARTIALS must be one of {', '.join(PARTIALS_MODES)}; got {mode!r}")
    return mode


def gpu_sms(q: torch.Tensor) -> int | None:
    """Streaming multiprocessors of q's GPU (``dkdv_split``'s ``sms``); None under the interpreter or off CUDA."""
    if not q.is_cuda or _INTERPRET:
        return None
    return sm_count(q.device.index)


def use_runs() -> bool:
    """Whether the kernels walk full block lists as arithmetic runs (``_block_runs``) instead of loading
    each block index: the tile loads then depend on the loop counter alone, and Triton's pipeliner
    prefetches them num_stages - 1 iterations ahead (behind an index load: one iteration at 3-4 stages,
    two at 5). Checked exact under the interpreter and on the H200 (gpu_check); timed there beside the
    default (2026-11-30, docs/benchmarks.md "Sixth run"): 1-3% faster from 262,144 tokens, 2% slower at
    65,536 (H=2, D=128), so off by default.
    ``MEGASTRIDE_BLOCKSPARSE_RUNS`` ("0" or "1") overrides ``RUNS``."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_RUNS", RUNS)


def use_direct_launch() -> bool:
    """Whether launches after a kernel's first with the same specialisation go straight to the compiled
    kernel's launcher (``_launch_chosen``): less host time per launch where the host issues the work
    slower than the GPU runs it (short sequences, eager calls). On the H200 (2026-12-01, docs/benchmarks.md
    "Fifteenth run"), alternating in one process (``python -m megastride.kernels.launch_ab``), an eager
    forward+backward took 0.758 against 0.887 ms at 12,288 tokens 8x64, 0.828 against 0.959 at 3,072 and
    0.990 against 1.128 at 12,288 2x128 (medians of three rounds; faster in all nine), and gave Triton's
    launches' bits (tests/test_kernels_gpu.py), so it is the default. ``MEGASTRIDE_BLOCKSPARSE_DIRECT``
    ("0" or "1") overrides ``DIRECT_LAUNCH``."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_DIRECT", DIRECT_LAUNCH)


def use_tma_loads(full_per_row: float | None = None) -> bool:
    """Whether the kernels load the tiles of their full block lists with the TMA unit (``_desc_loads``:
    where the layout's part is in natural order, on Hopper, aligned) instead of pointer loads: fewer
    address instructions and registers per tile, the copies asynchronous, but each program first builds
    its descriptors. So it is the default where a part's rows hold ``TMA_MIN_BLOCKS`` full blocks or more
    on average (``full_per_row``; None: any part). On the H200 (2026-11-30, docs/benchmarks.md "Eighth
    run") TMA took the fixed pattern's forward+backward 4-8% faster where its rows hold 23 (65,536 tokens),
    47, 95 full blocks, and the strided pattern's 3-8% where they hold 62 and 253; it was slower where they
    hold 9 (fixed, 12,288 tokens: 2-8% replayed) and 15 (strided at 65,536: 2% at H=8, D=64 and 24% at H=2,
    D=128); the threshold lies between. Exact in bf16 (gpu_check). Permuted parts and other GPUs keep the
    pointer loads. ``MEGASTRIDE_BLOCKSPARSE_TMA`` ("0" or "1") overrides the choice for every part."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_TMA", TMA_LOADS and (full_per_row is None or full_per_row >= TMA_MIN_BLOCKS))


def _gluon_switch(variable: str, default: str) -> str:
    """The environment ``variable`` where set, else ``default``: one of ``GLUON_SETTINGS`` (else a one-line
    error naming the variable)."""
    mode = os.environ.get(variable, default)
    if mode not in GLUON_SETTINGS:
        raise ValueError(f"{variable} must be one of {', '.join(GLUON_SETTINGS)}; got {mode!r}")
    return mode


def gluon_setting() -> str:
    """``GLUON_BWD``, or ``MEGASTRIDE_BLOCKSPARSE_GLUON`` where set: "0", "1" or "auto"."""
    return _gluon_switch("MEGASTRIDE_BLOCKSPARSE_GLUON", GLUON_BWD)


def _gluon_may_run(setting: str, auto_dims: tuple[int, ...], meta: "_PartMeta", layout: Layout,
                   q: torch.Tensor) -> bool:
    """What both Gluon paths need: the setting not "0" ("auto": a head dim of ``auto_dims`` from
    ``GLUON_MIN_LENGTH`` tokens), a part in natural order, a block of 64 or more, 16-bit inputs on a Hopper GPU
    (compute capability 9.x) with the TMA unit."""
    if setting == "0" or meta.permuted or layout.block % 64 or not _has_tma(q):
        return False
    if torch.cuda.get_device_capability(q.device)[0] != 9 or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    return setting != "auto" or (q.shape[-1] in auto_dims and layout.seq_len >= GLUON_MIN_LENGTH)


def gluon_dq_setting() -> str:
    """``GLUON_DQ``, or ``MEGASTRIDE_BLOCKSPARSE_GLUON_DQ`` where set: "auto", "0", "fp32" or "fp16"."""
    mode = os.environ.get("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", GLUON_DQ)
    if mode not in GLUON_DQ_SETTINGS:
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_GLUON_DQ must be one of {', '.join(GLUON_DQ_SETTINGS)}; got {mode!r}")
    return mode


def fused_dq_dtype(seq_len: int, head_dim: int, block: int) -> torch.dtype | None:
    """The dtype of the fused backward's dQ sums the setting (``gluon_dq_setting``; "auto": fp16 from
    ``GLUON_DQ_MIN_LENGTH`` tokens at ``GLUON_DQ_AUTO_DIMS``' head dims and blocks) takes at this length, head dim and layout block, or
    None: off, a head dim without ``gluon_bwd.FUSED_TILES``, or a block that does not hold their key tiles. What
    the layout's parts and the device must also allow is ``gluon_dq_sums``'s."""
    setting = gluon_dq_setting()
    if setting == "auto":
        auto = head_dim in GLUON_DQ_AUTO_DIMS and GLUON_DQ_AUTO_DIMS[head_dim] in (None, block)
        setting = "fp16" if seq_len >= GLUON_DQ_MIN_LENGTH and auto else "0"
    if setting == "0":
        return None
    try:
        from . import gluon_bwd
    except ImportError:  # a Triton without Gluon
        return None
    tiles = gluon_bwd.FUSED_TILES.get(head_dim)
    if tiles is None or block % tiles[0]:
        return None
    return torch.float32 if setting == "fp32" else torch.float16


def gluon_dq_sums(layout: Layout, q: torch.Tensor, *tensors: torch.Tensor) -> torch.dtype | None:
    """The dtype dQ is summed in where the backward's dQ comes from the Gluon dK/dV kernel (five products a
    tile: each step's dQ_t = dS_t K added into the sums by an asynchronous TMA reduce, FlashAttention-3's
    scheme; no dQ kernel recomputing S and dP), else None: ``fused_dq_dtype`` at the inputs' length, head dim
    and block, and every part of the layout able to run the Gluon backward (``gluon_backward``, whatever ``MEGASTRIDE_BLOCKSPARSE_GLUON`` says). The sums'
    adds come in no fixed order, so dQ is not bit-reproducible. "fp16" halves the reduce's bytes (the
    reduce's adds in L2 are what it costs: docs/benchmarks.md "Thirty-fourth run"); the sums are scaled by a
    power of two so no partial sum can pass ``GLUON_DQ_FP16_BOUND`` (``_dq_multiplier``), rounded at each add
    to fp16's 11 bits, and kept in dQ's own storage (``dq_sums_buffer``). "auto" (the default) takes fp16
    sums from ``GLUON_DQ_MIN_LENGTH`` tokens: on the H200 (2026-12-04, docs/benchmarks.md "Thirty-fifth run",
    8x64, fixed) the forward+backward took 2.6-8.1% less time than with the dQ kernel at 1M tokens and
    0.1-3.9% less at 262,144, 3.7-4.8% more at 131,072; with the backward's first launch doing the sums' zeroing
    and maxima (thirty-seventh run) 2.1% and 3.1% less at 131,072 in two calls (its dK/dV programs there take
    column segments, so ``gluon_bwd._dkdv_kernel``, not the warp-specialised kernel), 6.3% more at 65,536
    ("Thirty-eighth run"); with the warp-specialised halves kernel on whole columns (``gluon_split``, thirty-ninth
    run) 8.3% less at 65,536, so "auto" starts there. dQ's error on sampled rows stayed under the bf16
    reference's (1.4 times ours with the dQ kernel at most)."""
    seq_len = q.shape[2]
    dtype = fused_dq_dtype(seq_len, q.shape[-1], layout.block)
    if dtype is None or not all(gluon_backward(_part_meta(part, seq_len, q.device), layout, q, *tensors, setting="1")
                                for part in layout.parts):
        return None
    return dtype


def dq_sums_buffer(dq: torch.Tensor, dtype: torch.dtype, zeroed: bool = True) -> torch.Tensor:
    """(B, H, T, D) sums of ``dtype`` for the fused backward's dQ, zeroed unless ``zeroed`` is False (the
    backward's delta launch zeroes them then: ``_bwd_prep``): dQ's own storage seen as ``dtype`` where the two
    have one size (fp16 sums of a bf16 or fp16 dQ) and TMA can address its rows (unit channel stride, 16-byte
    aligned base and strides), so the sums take no memory of their own (1 GB at 1M tokens, 8x64) and
    ``finish_dq`` rewrites them in place; else a contiguous buffer (fp32 sums)."""
    if dq.element_size() == dtype.itemsize and _tma_aligned(dq):
        sums = dq.view(dtype)
    else:
        sums = torch.empty(dq.shape, dtype=dtype, device=dq.device)
    return sums.zero_() if zeroed else sums


def finish_dq(acc: torch.Tensor, dq: torch.Tensor, inverse: torch.Tensor) -> None:
    """dq (B, H, T, D, any strides) = acc ((B, H, T, D) sums, fp32 or fp16, any strides; dq's own storage
    included: ``dq_sums_buffer``) x inverse (one fp32 value on the device), computed in fp32 and rounded once
    to dq's dtype: one kernel reading the sums once (``_dq_finish_kernel``; a copy and a scaling of dq's
    (B, T, H, D) view took 3.6 ms at 1M tokens, 8x64)."""
    batch, heads, seq_len, head_dim = dq.shape
    if dq.stride(-1) != 1 or acc.stride(-1) != 1 or head_dim & (head_dim - 1):
        dq.copy_(acc.float() * inverse)  # not mul_: acc.float() is acc itself where the sums are fp32
        return
    block_t = 64
    _dq_finish_kernel[(triton.cdiv(seq_len, block_t), batch * heads)](
        acc, dq, inverse, *acc.stride()[:3], *dq.stride()[:3], heads, seq_len, HEAD_DIM=head_dim, BLOCK_T=block_t)


def _bwd_prep(out: torch.Tensor, do: torch.Tensor, delta: torch.Tensor, k: torch.Tensor | None = None,
              v: torch.Tensor | None = None, sums: torch.Tensor | None = None,
              maxes: torch.Tensor | None = None) -> None:
    """The backward's first launch (``_delta_kernel``, one pass over the rows): delta (B, H, T) fp32 =
    rowsum(dO * O); for the fused dQ also the sums zeroed (``sums``: (B, H, T, D), any row strides) and
    ``maxes`` (3 fp32, zeroed) raised to max|dO|, max|V|, max|K| for ``_dq_multiplier``. At 1M tokens, 8x64,
    on the H200 this pass takes 1.22 ms where the delta kernel (0.5 ms), the sums' zeroing (0.3) and three
    min/max passes with their small launches (1.1) took 1.9 (docs/benchmarks.md "Thirty-seventh run")."""
    batch, heads, seq_len, head_dim = do.shape
    zero, maxima = sums is not None, maxes is not None
    if maxima and (k is None or v is None):
        raise ValueError("_bwd_prep: the maxima need k and v")
    k, v = (k, v) if maxima else (do, do)  # not read without MAXIMA
    sums = sums if zero else do
    block_t = 64
    _launch_chosen(_delta_kernel, lambda m: (triton.cdiv(seq_len, block_t), batch * heads),
                   (out, do, delta, k, v, sums, maxes if maxima else delta, *_strides(out, do, k, v, sums),
                    delta.stride(0), delta.stride(1), heads, seq_len),
                   {"HEAD_DIM": head_dim, "BLOCK_T": block_t, "ZERO": zero, "MAXIMA": maxima, **_pdl_consts(do)})


def _dq_multiplier(maxes: torch.Tensor | None, head_dim: int, scale: float, dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier, inverse): one-element fp32 tensors on the device. The fused dK/dV kernel sends each step's
    dQ times ``multiplier`` into sums of ``dtype``; dQ is the sums times ``inverse``. fp32: scale and 1.
    fp16: scale x 2^e with e such that every partial sum stays under ``GLUON_DQ_FP16_BOUND``: a row's
    |dS| sums to at most 2 max|dP| (dS_j = P_j (dP_j - delta), the P_j sum to 1 and |delta| <= max|dP|),
    |dP| <= D max|dO| max|V|, so |dQ| <= scale x 2 D max|dO| max|V| max|K| (over every key, so also any
    part of a sum), as the bound; ``maxes``: those three maxima (``_bwd_prep``), turned into e on the device
    (``_dq_scale_kernel``, one launch). Powers of two: the scaling and its undoing are exact."""
    if dtype == torch.float32:
        return (torch.full((1,), scale, dtype=torch.float32, device=device),
                torch.ones((), dtype=torch.float32, device=device))
    out = torch.empty(2, dtype=torch.float32, device=device)
    _dq_scale_kernel[(1,)](maxes, out, math.log2(2 * head_dim * scale), scale,
                           BOUND_LOG2=math.log2(GLUON_DQ_FP16_BOUND))
    return out[:1], out[1]


def gluon_backward(meta: "_PartMeta", layout: Layout, q: torch.Tensor, *tensors: torch.Tensor,
                   setting: str | None = None) -> bool:
    """Whether a part's backward runs the Gluon kernels (kernels/gluon_bwd.py: each product of a step
    asynchronous, the exponentials and dS under the products) instead of the Triton ones: a part in natural
    order, a block of 64 or more, 16-bit inputs on a Hopper GPU (compute capability 9.x) with every tensor's
    base and row strides 16-byte aligned (TMA), at a head dim of ``gluon_bwd.HEAD_DIMS``, and the setting:
    "1" (there), "auto" (the default: at ``GLUON_AUTO_DIMS`` from ``GLUON_MIN_LENGTH`` tokens), "0" never.
    The backward's caller (``_backward``) also keeps the Triton kernels where dQ is atomic or the Triton
    dK/dV's split columns finish by "cast". On the H200 (2026-12-02, docs/benchmarks.md "Seventeenth run")
    the fixed pattern's forward+backward at H=2, D=128 took 2-6% less time than with the Triton backward at
    1M tokens (four runs), 13-15% less at 65,536 (two) and at 262,144 from 3% more (whole columns) to 4% less
    (column segments, the default); at H=8, D=64 4-6% more (so "auto" leaves head dim 64 to Triton), and
    forced at 12,288 tokens (H=2, D=128) 1.56 ms against 1.09 (so "auto" starts at 65,536)."""
    if not _gluon_may_run(setting or gluon_setting(), GLUON_AUTO_DIMS, meta, layout, q):
        return False
    try:
        from . import gluon_bwd
    except ImportError:  # a Triton without Gluon
        return False
    if q.shape[-1] not in gluon_bwd.HEAD_DIMS:
        return False
    if any(layout.block % t for kernel in ("dkdv", "dq") for t in gluon_bwd.tiles(kernel, q.shape[-1])[:2]):
        return False  # tiles the layout's blocks do not hold whole
    return _tma_aligned(q, *tensors)


def gluon_fwd_setting() -> str:
    """``GLUON_FWD``, or ``MEGASTRIDE_BLOCKSPARSE_GLUON_FWD`` where set: "0", "1" or "auto"."""
    return _gluon_switch("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD", GLUON_FWD)


def flat_setting() -> str:
    """Where the forward runs as one loop over each program's flattened tiles (kernels/flat.py, for short rows):
    ``FLAT``, or ``MEGASTRIDE_BLOCKSPARSE_FLAT`` where set: "0" (never: the default; timed slower than the default
    forward at 3,072 and 12,288 tokens, docs/benchmarks.md "Forty-third run"), "1"
    (every part whose lists fit ``flat.FLAT_MAX_TILES``) or "auto" (where it ran faster than the default forward,
    timed once per layout part and shape on a GPU; the default forward where nothing can be timed)."""
    return _gluon_switch("MEGASTRIDE_BLOCKSPARSE_FLAT", FLAT)


def use_flat_dq() -> bool:
    """Whether the separate dQ kernel runs as one loop over each program's flattened tiles (kernels/flat.py; delta
    computed in it or read from the delta kernel, as ``delta_in_dq`` says for the default one), in every part whose
    lists fit ``flat.FLAT_MAX_TILES``, where the dQ mode is "separate" or "auto" chose it (the mode "flat" turns it on
    too). ``MEGASTRIDE_BLOCKSPARSE_FLAT_DQ`` ("0" or "1") overrides ``FLAT_DQ`` (off: timed slower than the default dQ
    kernel, docs/benchmarks.md "Forty-third run")."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_FLAT_DQ", FLAT_DQ)


def use_flat_dkdv() -> bool:
    """Whether dK/dV runs as one loop over each program's flattened key tiles (kernels/flat.py; long columns cut into
    pieces added up by a second launch, ``flat.segment_setting``, in place of ``dkdv_split``'s), where ``use_flat_dq``
    would. ``MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV`` ("0" or "1") overrides ``FLAT_DKDV`` (off: timed slower than the default
    dK/dV kernel, docs/benchmarks.md "Forty-third run")."""
    return _switch("MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV", FLAT_DKDV)


def gluon_forward(meta: "_PartMeta", layout: Layout, q: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """Whether a part's forward runs the Gluon kernel (kernels/gluon_fwd.py: the score and value products
    asynchronous, the softmax under them) instead of the Triton one: a part in natural order, 16-bit inputs on
    a Hopper GPU with every tensor's base and row strides 16-byte aligned (TMA), at a head dim of
    ``gluon_fwd.HEAD_DIMS`` whose tiles fit the layout's block (``gluon_fwd.fits``), and the setting: "1"
    (there), "auto" (at ``GLUON_FWD_AUTO_DIMS`` from ``GLUON_MIN_LENGTH`` tokens: none), "0" (``GLUON_FWD``,
    the default) never. On the H200 (2026-12-02, docs/benchmarks.md "Nineteenth run") it was slower than the
    Triton forward at every point timed: forward+backward of the fixed pattern 2-4% slower at H=2, D=128
    (262,144 and 1M tokens) and 10-14% at H=8, D=64; its forward alone 3.93 against 3.34 ms at 262,144 tokens,
    2x128 (the Triton forward there runs at about 500 TFLOP/s of unmasked pairs)."""
    if not _gluon_may_run(gluon_fwd_setting(), GLUON_FWD_AUTO_DIMS, meta, layout, q):
        return False
    try:
        from . import gluon_fwd
    except ImportError:  # a Triton without Gluon
        return False
    if q.shape[-1] not in gluon_fwd.HEAD_DIMS or not gluon_fwd.fits(q.shape[-1], layout.block):
        return False
    return _tma_aligned(q, *tensors)


def gluon_split(layout: Layout, batch: int = 1, sms: int | None = None, block_n: int = 64, per_sm: int = 2) -> int:
    """Most full entries a Gluon dK/dV program (``block_n`` keys) takes from a column; 0 = whole columns.
    A program walks its whole column one step after another, and the Gluon kernel runs ``per_sm`` programs an
    SM (two of 128 threads of about 250 registers and 96 KB of shared memory each at four warps), so where the
    longest column (``Layout.column_work``) is more than ``GLUON_SPLIT_RATIO`` of an even share of all
    columns' work per program slot (per_sm x ``sms``), it is the launch's critical path: the fixed pattern's summary columns at
    262,144 tokens, H=2 (2,017 query blocks against a share of 1,489; at 1M, 8,129 against 11,915 stay
    whole: there segments measured 1.6% slower). The warp-specialised halves kernel (``gluon_bwd.warp_specialized``)
    runs one column a program and one program an SM (``per_sm`` 1): at 131,072 tokens, 8x64, its whole columns
    (993 query blocks against a share of 1,986) measured 8.9% faster than segments of the fused kernel
    (docs/benchmarks.md "Thirty-ninth run"). "auto" (``GLUON_SPLIT``) then cuts
    columns into segments of a quarter of that share (at least ``SPLIT_SEGMENT``), finished as
    ``split_finish`` "last" does; ``MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT`` ("auto" or an integer >= 0, 0 =
    whole columns) overrides it."""
    setting = _auto_or_count("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", GLUON_SPLIT)
    if setting != "auto":
        return setting
    if not sms:
        return 0
    longest, total = layout.column_work()
    share = total * batch * max(1, layout.block // block_n) / (per_sm * sms)
    return max(SPLIT_SEGMENT, math.ceil(share / 4)) if longest > GLUON_SPLIT_RATIO * share else 0


def block_order() -> str:
    """The order in which programs take blocks: "lpt" (longest row or column first, so the heaviest
    programs do not start last) or "chunked" (``_work_order``: chunks of ORDER_CHUNK consecutive blocks,
    heaviest chunk first, so the programs running at one time read the same windows' tiles from L2).
    Longest first mixed the rows of up to 11 windows among a head's first 66 programs under the fixed
    pattern at 1M tokens (and its columns those of 66 windows); chunked took the forward+backward 3.4-7.9%
    faster from 262,144 tokens on the H200 (2026-11-30; the forward 5% at H=8, D=64 and 3% at H=2, D=128 at
    1M; chunks of 8-256 blocks within 2%, 32 best at D=64; docs/benchmarks.md "Seventh run"), so it is the
    default. ``MEGASTRIDE_BLOCKSPARSE_ORDER`` overrides ``ORDER``."""
    mode = os.environ.get("MEGASTRIDE_BLOCKSPARSE_ORDER", ORDER)
    if mode not in ORDERS:
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_ORDER must be one of {', '.join(ORDERS)}; got {mode!r}")
    return mode


def _cuda_seconds(run) -> float:
    """Seconds of GPU work of ``run()`` on the current CUDA stream (events around it, then a synchronize).
    A sleep kernel of ``AUTO_LEAD_CYCLES`` first holds the stream, so the host
    issues run()'s launches while the GPU waits and the events time the GPU's work rather than the host's
    issue: at 12,288 tokens the host took about 0.4 ms to issue a backward the GPU ran in 0.2 (H200,
    2026-12-01, docs/benchmarks.md "Eleventh run"), and "auto" compared the modes' host times there."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(AUTO_LEAD_CYCLES)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _timing_possible(q: torch.Tensor) -> bool:
    """Whether "auto" may time the modes now: on a CUDA device and outside a CUDA-graph capture."""
    return q.is_cuda and not torch.cuda.is_current_stream_capturing()


def auto_mode_key(shape, dtype) -> tuple:
    """Key of "auto"'s choice in a layout's kernel cache for inputs of ``shape`` and ``dtype``, under the
    switches in force (split columns and their finish, block order, tile loads, partials, delta in dQ): one
    choice per combination."""
    return ("dq_mode", tuple(shape), dtype, dkdv_split_setting(), block_order(), ORDER_CHUNK, use_tma_loads(),
            partials_setting(), split_finish(), delta_in_dq(), use_flat_dq(), use_flat_dkdv())


def _auto_mode(layout: Layout, q: torch.Tensor, run) -> str:
    """The mode "auto" stands for at this layout and q's shape and dtype: the one of ``AUTO_MODES``
    whose backward (``run(mode)``) took least time, measured on first use (an untimed call each, which
    also autotunes its kernels, then ``AUTO_REPEATS`` timed ones; minimum kept; the first mode alone
    where its backward took longer than ``AUTO_LONG_S``) and remembered in the layout's cache.
    "separate" where no timing is possible (CPU, or first met inside a graph capture)."""
    key = auto_mode_key(q.shape, q.dtype)
    chosen = layout.kernel_cache.get(key)
    if chosen is None:
        if not _timing_possible(q):
            return "separate"
        seconds = {}
        for mode in AUTO_MODES:
            run(mode)
            seconds[mode] = min(_cuda_seconds(lambda m=mode: run(m)) for _ in range(AUTO_REPEATS))
            if seconds[mode] > AUTO_LONG_S:
                break
        chosen = layout.kernel_cache[key] = min(seconds, key=seconds.__getitem__)
        layout.kernel_cache[key + ("seconds",)] = seconds
    return chosen


def _has_tma(q: torch.Tensor) -> bool:
    """Whether the kernels may use the TMA unit for q's device: a compiled (not interpreted) launch on an
    NVIDIA GPU of compute capability 9.0 (Hopper) or later."""
    return (q.is_cuda and not _INTERPRET and torch.version.hip is None
            and torch.cuda.get_device_capability(q.device)[0] >= 9)


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Triton's global scratch from torch's caching allocator (its blocks are 512-byte aligned, more than
    the 128 bytes a TMA descriptor needs; graph captures take it from the graph's pool)."""
    return torch.empty(size, dtype=torch.int8, device=torch.cuda.current_device())


def _ensure_allocator() -> None:
    """Kernels that build TMA descriptors on the device need Triton's global scratch (128 bytes per
    program); its allocator is per thread (a ContextVar: autograd runs backward in a thread of its own), so
    it is set where none is, before such a launch. A user's own allocator is left alone."""
    record = getattr(_RECORDING, "record", None)
    if record is not None:
        record.allocator = True
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def _grad_like(q: torch.Tensor, dtype, make) -> torch.Tensor:
    """A (B, H, T, D) gradient buffer for ``q`` from ``make(shape, dtype=, device=)``, in q's memory order:
    (B, H, T, D) when q is laid out so (contiguous inputs, whose leaves' AccumulateGrad would otherwise copy
    each gradient into their layout: 1.4% of a 1M-token forward+backward, H200), else (B, T, H, D) (the
    model's head views of one (B, T, 3D) product, whose backward then takes them without copies)."""
    batch, heads, seq_len, head_dim = q.shape
    if heads > 1 and q.stride(1) > q.stride(2):
        return make((batch, heads, seq_len, head_dim), dtype=dtype, device=q.device)
    return make((batch, seq_len, heads, head_dim), dtype=dtype, device=q.device).transpose(1, 2)


def _backward(do, q, k, v, out, lse, layout: Layout, scale: float, into=None, mode: str | None = None):
    """(dq, dk, dv) given the merged output and lse of ``_forward``. ``into``: three (B, H, T, D) tensors
    of q's dtype to write them into (written directly where no fp32 accumulation is needed). ``mode``:
    the dQ mode (default ``dq_mode()``); every call writes its results afresh (accumulating buffers are
    its own), so "auto" may run the modes one after another into the same ``into``."""
    do = do if do.stride(-1) == 1 else do.contiguous()
    if mode is None:  # a plan replays only what the switches decide, not the timing runs of "auto"
        plan, key = _plan_lookup(layout, ("bwd", scale, into is None), (do, q, k, v, out, lse, *(into or ())))
        if plan is not None:
            delta, finals = _backward_outputs(q, lse, into)
            plan.replay((do, q, k, v, out, lse, delta, *finals))
            return tuple(finals)
    else:
        key = None
    mode = mode or dq_mode()
    batch, heads, seq_len, head_dim = q.shape
    split = dkdv_split(layout, batch, gpu_sms(q))
    # the parts whose backward runs in Gluon (gluon_backward; not where columns split or dQ is atomic); all of
    # them where their dK/dV kernel also sums dQ (gluon_dq_sums)
    gluon, dq_sums = set(), None
    if mode != "atomic" and (not split or split_finish() == "last"):
        dq_sums = gluon_dq_sums(layout, q, k, v, do)
        gluon = {id(part) for part in layout.parts
                 if dq_sums or gluon_backward(_part_meta(part, seq_len, q.device), layout, q, k, v, do)}
    if mode == "auto":
        if len(gluon) == len(layout.parts):  # no mode left to choose
            mode = "separate"
        else:
            mode = _auto_mode(layout, q, lambda m: _backward(do, q, k, v, out, lse, layout, scale, into, m))
    delta, finals = _backward_outputs(q, lse, into)
    with _recorded(layout, key, (do, q, k, v, out, lse, delta, *finals)):
        if gluon:
            _not_replayable()
        return _backward_launches(do, q, k, v, out, lse, delta, finals, layout, scale, mode, split, gluon, dq_sums)


def _backward_outputs(q: torch.Tensor, lse: torch.Tensor, into) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(delta, [dq, dk, dv]) for a backward: delta (B, H, T) fp32; the gradients ``into``'s tensors where given,
    else new ones in q's memory order (``_grad_like``)."""
    delta = _empty(lse.shape, torch.float32, lse.device)
    return delta, list(into) if into is not None else [_grad_like(q, q.dtype, _empty) for _ in range(3)]


def _backward_launches(do, q, k, v, out, lse, delta, finals, layout: Layout, scale: float, mode: str, split: int,
                       gluon: set, dq_sums: torch.dtype | None = None):
    batch, heads, seq_len, head_dim = q.shape
    fused, merged = mode == "atomic", mode == "merged"
    # the separate dQ kernel computes delta itself (delta_in_dq), else the delta kernel first (the Gluon
    # kernels read it too); so does its form as one loop over each program's flattened tiles (kernels/flat.py)
    flat_dq = (mode == "flat" or use_flat_dq()) and not (fused or merged)
    flat_dkdv = (mode == "flat" or use_flat_dkdv()) and not (fused or merged)
    delta_here = delta_in_dq() and not (fused or merged or gluon or mode == "streams")
    streams = streams_here(mode, q)  # dQ on a second stream beside dK/dV, joined below
    if gluon:
        _ensure_allocator()  # their TMA descriptors
    fused_dq = maxes = None
    if dq_sums is not None:  # every part's dK/dV kernel adds its dQ into dq_acc; dQ is made of it at the end
        _not_replayable()
        # zeroed (and, for fp16 sums, the three maxima of the scale taken) by the delta launch below
        dq_acc = dq_sums_buffer(finals[0], dq_sums, zeroed=False)
        maxes = torch.zeros(3, dtype=torch.float32, device=q.device) if dq_sums == torch.float16 else None
    if not delta_here or dq_sums is not None:
        _bwd_prep(out, do, delta, k, v, dq_acc if dq_sums is not None else None, maxes)
    if dq_sums is not None:
        multiplier, inverse = _dq_multiplier(maxes, head_dim, scale, dq_sums, q.device)
        fused_dq = (dq_acc, multiplier)
    tma = fused and _has_tma(q)
    multi = layout.merges()[0] and not partials_in_outputs(layout)  # the earlier part's sums: fp32 or the finals
    # gradients in q's memory order, seen as (B, H, T, D): (B, T, H, D) for the model, whose q, k and v
    # are head views of one (B, T, 3D) product (its backward then takes them as views instead of copying
    # each into (B, T, D) order first); (B, H, T, D) for contiguous inputs, whose leaves' AccumulateGrad
    # would otherwise copy each gradient into their layout (1.4% of a 1M-token forward+backward, H200)
    # split columns add into fp32 dK/dV with atomics, cast after the launches ("cast"), or finish in the
    # kernel ("last": their gradients then go where whole columns' do)
    finish = split_finish() if split else None
    cast = finish == "cast"
    atomic = (fused, cast, cast)

    def sums(i):
        """Where gradient i accumulates: atomic dQ / split columns: every part and segment adds into one
        zeroed fp32 buffer (rows without keys stay 0); heads split into parts: the parts before the
        last add into fp32 sums, which the last part adds to its own as it writes the final gradient.
        The sums have the final gradient's strides: a launch reads one with the strides of the other"""
        if not (atomic[i] or multi) or (i == 0 and fused_dq):  # the fused sums: dq_acc below
            return finals[i]
        _not_replayable()
        g = torch.empty_strided(finals[i].shape, finals[i].stride(), dtype=torch.float32, device=q.device)
        return g.zero_() if atomic[i] else g.fill_(float("nan")) if POISON else g

    dq_sum, dk_sum, dv_sum = (sums(i) for i in range(3))
    forked = False  # "streams": whether the side stream has waited for the caller's stream yet
    for part, load_prev, fresh, last in _schedule(layout):
        meta = _part_meta(part, seq_len, q.device)
        if load_prev and fresh:
            _not_replayable()
            for g in [t for i, (t, a) in enumerate(zip((dq_sum, dk_sum, dv_sum), atomic))
                      if not a and not (i == 0 and fused_dq)]:
                g[:, fresh] = 0.0
            forked = False  # zeroed on the caller's stream: this part's dQ waits for it
        # what this launch writes: the final gradients in the last launch, else the sums
        dq, dk, dv = (finals[i] if last and not atomic[i] else g for i, g in enumerate((dq_sum, dk_sum, dv_sum)))
        lists = meta.lists
        if id(part) in gluon:
            from . import gluon_bwd

            segments = None
            # the warp-specialised kernel whole columns of a fused launch take (the halves kernel: one column a
            # program, one program an SM)
            ws = gluon_bwd.warp_specialized(head_dim, layout.block, lse, delta) if fused_dq else None
            block_n = (gluon_bwd.HALVES_TILES[head_dim][0] if ws == "halves" else gluon_bwd.FUSED_TILES[head_dim][0]
                       if fused_dq else gluon_bwd.tiles("dkdv", head_dim)[0])
            per_sm = 1 if ws == "halves" else gluon_bwd.programs_per_sm("dkdv", head_dim)
            seg_len = gluon_split(layout, batch, gpu_sms(q), block_n, per_sm)
            if seg_len:
                key, seg = _segments(meta, seg_len)
                segments = (*(seg[name] for name in ("seg_col", "seg_lo", "seg_hi", "seg_first", "seg_count",
                                                     "seg_cidx")),
                            *_split_workspace(meta, key, batch, head_dim, layout.block, q.device))
            gluon_bwd.backward_part(q, k, v, do, lse, delta, (dq, dk, dv), (dq_sum, dk_sum, dv_sum), meta,
                                    (_side_order(meta, "row"), _side_order(meta, "col")), layout.block, scale,
                                    load_prev, segments, fused_dq, ws)
            continue
        consts = {**_common(layout, meta, q, load_prev), "DESC": _desc_loads(meta, q, k, v, do)}
        common = (len(part.heads), batch * len(part.heads), layout.num_blocks, meta.perm_g, meta.perm_l, scale * LOG2E, scale)
        row_runs, col_runs = _runs_table(part, meta, "row"), _runs_table(part, meta, "col")
        flat_here = False
        # "streams": the parts' dQ launches one after another on the side stream, beside the dK/dV launches on the
        # caller's; the side stream waits for the caller's before the first (the delta kernel, the sums' fills) and
        # again where a part's sums were zeroed on the caller's (nothing else there is read by a dQ launch)
        side = streams and not (fused or merged)
        with _on_side_stream(side, fork=not forked):
            forked = side
            if flat_dq:
                from . import flat

                flat_here = flat.dq_part(q, k, v, do, lse, delta, out, delta_here, dq, dq_sum, meta, layout, scale,
                                         load_prev)
            if not (fused or merged or flat_here):
                row_split = dq_split()
                row_order, row_tables, row_cols = _row_split_args(meta, row_split, batch, head_dim, layout.block,
                                                                  q.device, "dq", lse)
                args = (q, k, v, do, dq, dq_sum, lse, delta, out, meta.heads, meta.head_csr, meta.min_off,
                        meta.codes, lists["row_full_ptr"], lists["row_full_idx"], lists["row_part_ptr"],
                        lists["row_part_idx"], row_order, lists["row_full_idx"] if row_runs is None else row_runs,
                        *row_tables, *_strides(q, k, v, do, dq), lse.stride(0), lse.stride(1), *_strides(out),
                        *common, row_order.shape[1], row_cols, max(row_split, 1))
                grid = lambda m: (row_order.shape[1] * (layout.block // m["BLOCK_M"]) * batch * len(part.heads),)  # noqa: E731
                _launch(_dq_tuned, _bwd_dq_kernel, grid, args,
                        {**consts, "RUNS": row_runs is not None, "DELTA_HERE": delta_here, "SPLIT": bool(row_split)},
                        name="dq")
        if flat_dkdv:  # as flattened key tiles, long columns cut into pieces of its own (kernels/flat.py)
            from . import flat

            if flat.dkdv_part(q, k, v, do, lse, delta, dk, dv, dk_sum, dv_sum, meta, layout, scale, load_prev):
                continue
        if split:
            key, seg = _segments(meta, split)
            order, seg_lo, seg_hi, seg_first = seg["seg_col"], seg["seg_lo"], seg["seg_hi"], seg["seg_first"]
            seg_count, seg_cidx = seg["seg_count"], seg["seg_cidx"]
            if finish == "last":
                ws, ws_cnt, ws_cols = _split_workspace(meta, key, batch, head_dim, layout.block, q.device)
            else:
                ws, ws_cnt, ws_cols = lse, order, 0  # not read
        else:
            order = _side_order(meta, "col")
            seg_lo = seg_hi = seg_first = seg_count = seg_cidx = ws_cnt = order  # not read
            ws, ws_cols = lse, 0
        order_len = order.shape[1]
        # merged: one RUNS for both sides, so runs only where both sides have them
        col_runs = col_runs if not merged or row_runs is not None else None
        # the merged kernel also takes DQ_PREV (its dQ programs merge like the dq kernel's)
        outputs = (dk, dv, dk_sum, dv_sum, dq) + ((dq_sum,) if merged else ())
        columns = (q, k, v, do, *outputs, lse, delta, meta.heads, meta.head_csr, meta.min_off, meta.codes,
                   lists["col_full_ptr"], lists["col_full_idx"], lists["col_part_ptr"], lists["col_part_idx"], order,
                   seg_lo, seg_hi, seg_first, seg_count, seg_cidx, ws, ws_cnt, ws_cols, order_len,
                   lists["col_full_idx"] if col_runs is None else col_runs)
        strides = (*_strides(q, k, v, do, dk, dv, dq), lse.stride(0), lse.stride(1), *common)
        bh = batch * len(part.heads)
        consts = {**consts, "SPLIT": (2 if finish == "last" else 1) if split else 0, "RUNS": col_runs is not None}
        if merged:  # the dK/dV programs, then the dQ programs over the row lists, in one launch
            rows = (lists["row_full_ptr"], lists["row_full_idx"], lists["row_part_ptr"], lists["row_part_idx"],
                    _side_order(meta, "row"), lists["row_full_idx"] if col_runs is None else row_runs)
            grid = lambda m: (order_len * (layout.block // m["BLOCK_N"]) * bh + seq_len // m["DQ_M"] * bh,)  # noqa: E731
            _launch(_merged_tuned, _bwd_merged_kernel, grid, (*columns, *rows, *strides), consts, _MERGED_NAMES,
                    name="merged")
            continue
        grid = lambda m: (order_len * (layout.block // m["BLOCK_N"]) * bh,)  # noqa: E731
        fused_kind = (2 if tma and not meta.permuted else 1) if fused else 0
        if fused_kind == 2:
            _ensure_allocator()
        _launch(_dkdv_tuned, _bwd_dkdv_kernel, grid, (*columns, *strides), {**consts, "FUSED_DQ": fused_kind},
                name="dkdv")
    if streams:  # the caller's stream waits for the dQ launches before anything reads dQ (or frees its inputs)
        _stream_step("join")
    for i, (final, g, a) in enumerate(zip(finals, (dq_sum, dk_sum, dv_sum), atomic)):
        if i == 0 and fused_dq:  # the sums unscaled (exact: a power of two), in dQ's dtype and strides
            finish_dq(dq_acc, final, inverse)
            continue
        _cast_rest(layout, g, final, [] if a else None)  # atomics: no launch wrote the final gradient
    return tuple(finals)


# ---------------------------------------------------------------------------------------------
# Autograd: a torch.library custom op (so torch.compile traces through it) with its backward
# ---------------------------------------------------------------------------------------------

# Layouts are Python objects: the op takes an int id, resolved here. Weak values: a dropped
# layout frees its metadata; ids are never reused, so a compiled graph cannot pick up another one.
_LAYOUTS: "weakref.WeakValueDictionary[int, Layout]" = weakref.WeakValueDictionary()
_NEXT_ID = itertools.count(1)


def layout_id(layout: Layout) -> int:
    """The registry id of ``layout`` (assigned on first use)."""
    if "op_id" not in layout.kernel_cache:
        layout.kernel_cache["op_id"] = next(_NEXT_ID)
        _LAYOUTS[layout.kernel_cache["op_id"]] = layout
    return layout.kernel_cache["op_id"]


def _layout(key: int) -> Layout:
    try:
        return _LAYOUTS[key]
    except KeyError:
        raise RuntimeError(f"block-sparse layout {key} was freed while an op still refers to it") from None


@torch.library.custom_op("megastride::blocksparse_fwd", mutates_args=())
def blocksparse_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: int,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse base 2) of block-sparse attention under registered layout ``layout``."""
    return _forward(q, k, v, _layout(layout), scale)


@blocksparse_fwd.register_fake
def _(q, k, v, layout, scale):
    # fresh tensors whatever the inputs' strides: out in (B, T, H, D) memory order (as _forward), lse contiguous
    b, h, t, d = q.shape
    return q.new_empty((b, t, h, d)).transpose(1, 2), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("megastride::blocksparse_bwd", mutates_args=())
def blocksparse_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, layout: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``blocksparse_fwd``."""
    return _backward(do, q, k, v, out, lse, _layout(layout), scale)


@blocksparse_bwd.register_fake
def _(do, q, k, v, out, lse, layout, scale):
    # in q's memory order, as _backward allocates them (_grad_like)
    return tuple(_grad_like(q, q.dtype, lambda shape, dtype, device: q.new_empty(shape, dtype=dtype)) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, layout, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.layout, ctx.scale = layout, scale
    ctx.mark_non_differentiable(lse)


def _backward_op(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = blocksparse_bwd(grad_out, q, k, v, out, lse, ctx.layout, ctx.scale)
    return dq, dk, dv, None, None


blocksparse_fwd.register_autograd(_backward_op, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same forward and backward as the custom op, without the op's dispatch: eager calls take
    this path (the op's Python dispatch cost about half of a short sequence's forward+backward host
    time); torch.compile traces the op."""

    @staticmethod
    def forward(ctx, q, k, v, layout: Layout, scale: float):
        out, lse = attention_forward(lambda: _forward(q, k, v, layout, scale), (*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale = layout, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        return (*_backward(grad_out, q, k, v, out, lse, ctx.layout, ctx.scale), None, None)


class _EagerQKV(torch.autograd.Function):
    """Attention over the model's fused (B, T, 3 * H * D) q/k/v product: q, k and v are head views of
    it, and the backward writes dq, dk and dv straight into one (B, T, 3 * H * D) gradient, where the
    q, k, v path's split backward would concatenate three separate ones (a copy of 3 * B * T * D
    elements and a transient of that size per layer)."""

    @staticmethod
    def forward(ctx, qkv, heads: int, layout: Layout, scale: float):
        q, k, v = qkv_heads(qkv, heads)
        out, lse = attention_forward(lambda: _forward(q, k, v, layout, scale), (*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(qkv, out, lse)
        ctx.heads, ctx.layout, ctx.scale = heads, layout, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, out, lse = ctx.saved_tensors
        dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        _backward(grad_out, *qkv_heads(qkv, ctx.heads), out, lse, ctx.layout, ctx.scale,
                  into=qkv_heads(dqkv, ctx.heads))
        return dqkv, None, None, None


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def blocksparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout,
                          scale: float | None = None) -> torch.Tensor:
    """Causal block-sparse attention of (B, H, T, D) tensors under ``layout``; differentiable.

    Equals ``reference_attention(q, k, v, layout)`` (rows without keys give 0). fp16, bf16 and fp32;
    head dims other than 16/32/64/128/256 are zero-padded (exact: q.k and the output are unchanged).
    """
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    width = next((d for d in _HEAD_DIMS if d >= head_dim), None)
    if width is None:
        raise ValueError(f"head dim {head_dim} is larger than the kernels' {_HEAD_DIMS[-1]}")
    if width != head_dim:
        pad = lambda t: torch.nn.functional.pad(t, (0, width - head_dim))  # noqa: E731
        return blocksparse_attention(pad(q), pad(k), pad(v), layout, scale)[..., :head_dim]
    if torch.compiler.is_compiling():
        return blocksparse_fwd(q, k, v, layout_id(layout), scale)[0]
    return _Eager.apply(q, k, v, layout, scale)


def blocksparse_attention_qkv(qkv: torch.Tensor, heads: int, layout: Layout, scale: float | None = None) -> torch.Tensor:
    """``blocksparse_attention`` of the q, k, v held in one (B, T, 3 * H * D) tensor laid out [q | k | v]
    (the model's fused projection); returns (B, H, T, D). Its gradient is written as one tensor."""
    q, k, v = qkv_heads(qkv, heads)
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if head_dim not in _HEAD_DIMS or not qkv.is_contiguous() or torch.compiler.is_compiling():
        return blocksparse_attention(q, k, v, layout, scale)  # padded heads; the custom op
    return _EagerQKV.apply(qkv, heads, layout, scale)
