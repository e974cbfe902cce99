"""The forward, the separate dQ kernel and dK/dV as one loop over a program's flattened tiles: for short sequences,
where each query tile's list (or key tile's column) is a few tiles long.

The default forward (``blocksparse._fwd_kernel``) runs one program per query tile: it loads the tile's queries,
fills its load pipeline, walks the row's key tiles and writes the output, and the next program on that SM starts
over. Where a row holds ten key tiles or fewer (the fixed pattern at 3,072 and 12,288 tokens: 5 and 10 on average)
that start and finish are a large share of the program: at 12,288 tokens, H=8, D=64 the forward ran at 264
TFLOP/s of unmasked pairs against 440 at 1M (H200, docs/benchmarks.md "Forty-first run"), and at 3,072 tokens
at about 120. Here a fixed number of programs (a few per SM) each walk the tiles of several items (query tiles) as
one loop, so Triton's pipeliner loads the next row's first key tiles while the current row finishes: every
iteration loads its query tile too (from L2: a row's iterations load the same one), starts a new online softmax
where its tile is a row's first, and masks where it is a partial block's; a finished row's output and log-sum-exp
are written at the top of the next row's first iteration (and after the loop), in a branch that yields the zeroed
sums the next product accumulates into, which keeps the write ahead of that product (written after a row's last
product, ptxas serialised every wgmma of the loop; docs/benchmarks.md "Built 2026-12-05").

The tile lists (``flat_lists``: a few int32 words a tile and a pointer a program, built once per layout part, side,
batch and tile shape) give each program whole items, heaviest first onto the least loaded program (greedy
longest-processing-time), so the programs end together. An item without pairs in its part gets one tile marked
``none`` (its rows: output 0, lse -inf; its keys: dK and dV 0, as in the default kernels). The output equals the
default forward's up to the order of the online softmax's sums (full tiles first, then the partial ones, as there).

``blocksparse.flat_setting`` decides where the forward runs (``MEGASTRIDE_BLOCKSPARSE_FLAT``: "0", the default; "1"
wherever the lists fit ``FLAT_MAX_TILES``; "auto" where it timed faster than the default forward), ``forward_part``
launches it. The dQ kernel (``_dq_flat_kernel``, ``dq_part``; ``use_flat_dq``,
``MEGASTRIDE_BLOCKSPARSE_FLAT_DQ``) walks the same lists with the dQ kernel's step, delta computed from the output
and written for the dK/dV launch where ``blocksparse.delta_in_dq`` (the default: no delta launch), else read;
the dK/dV kernel (``_dkdv_flat_kernel``, ``dkdv_part``; ``use_flat_dkdv``) walks the column side's lists (items
are key tiles, their steps query tiles), a key tile longer than a fair share cut into pieces (``segment_setting``)
whose sums ``_dkdv_finish_kernel`` adds up in order.

Timed on an H100 (2026-12-05, docs/benchmarks.md "Forty-third run"): at 3,072 and 12,288 tokens, 8 heads of 64, each
of the three is slower than the default kernel it replaces (13-19% and 27-83%), so every switch stays off and the dQ
mode "flat" out of "auto"; kept, tested, as the measured form of that idea."""

from __future__ import annotations

import heapq
import os
import re

import torch
import triton
import triton.language as tl

from . import blocksparse as bs

# the flattened lists' words: a tile's item word holds its item's first (part) position times 4, plus FIRST where
# it is the item's first tile and LAST where its last; its step word the walked tile's first position times 4, plus
# MASKED where the tile needs the part's token predicate and NONE where it stands for an item without pairs
FIRST, LAST = 1, 2
MASKED, NONE = 1, 2

# (BLOCK_M, BLOCK_N, warps, stages, programs per SM) per (layout block, head dim), the first entry the one
# taken where nothing is timed; timed in turn on first use on a GPU (``_choose``). Programs per SM: as many as
# fit at once, so none waits for another to finish. Compiled for sm_90 (2026-12-05, `python -m
# megastride.kernels.compile_check --only "flat natural" --all --ptxas --kinds 24 [--head-dim 128]`: natural order,
# the fixed pattern's mask kinds): at D=64 128x64 w4
# s3 255 registers and 74 KB of shared memory, 64x64 w4 s3 244 and 57 KB (two programs an SM by registers),
# 128x64 w8 s3 246 registers at 256 threads (one); at D=128 64x64 w4 s3 233 and 107 KB (two), 128x64 w8 s3 255
# and 164 KB (one); none spills. Key tiles 64 wide: a masked tile's token predicate on 128 keys spilled the
# default forward's 128-row tiles (blocksparse's MASK_N).
FLAT_TILES = {
    (128, 64): [(128, 64, 4, 3, 2), (64, 64, 4, 3, 2), (128, 64, 8, 3, 1)],
    (128, 128): [(64, 64, 4, 3, 2), (128, 64, 8, 3, 1)],
}
# the flat dQ kernel's (same fields): a tile loads the query rows and their output gradient, the keys and the values,
# and where it computes delta (DELTA_HERE, the default) the output's rows too. Compiled for sm_90 (2026-12-05, as
# above; delta loaded / computed): at D=64 64x64 w4 s3 248 / 254 registers and 74 KB (two an SM), 128x64 w8 s3
# 250 / 255 at 256 threads (one), 64x32 w4 s3 168 / 202 and 58 KB (two: three only with delta loaded); at D=128
# 64x64 w8 s3 200 / 230 at 256 threads and 148 KB (one), 64x32 w4 s3 215 / 240 and 107 KB (two), 32x64 w4 s3 153 /
# 168 and 54-62 KB (three); none spills (64x64 w4 at D=128 spilled 12 B computing delta: its 64x128 fp32 dQ sums
# hold 64 of a thread's registers at four warps)
FLAT_DQ_TILES = {
    (128, 64): [(64, 64, 4, 3, 2), (128, 64, 8, 3, 1), (64, 32, 4, 3, 2)],
    (128, 128): [(64, 64, 8, 3, 1), (64, 32, 4, 3, 2), (32, 64, 4, 3, 3)],
}
# the flat dK/dV kernel's (BLOCK_M query rows a step, BLOCK_N keys an item): a tile loads the keys, the values, the
# query rows and their output gradient. Compiled for sm_90 (2026-12-05, as above; natural order): at D=64 64x64 w4
# s3 255 registers and 82 KB (two an SM), 64x128 w8 s3 255 at 256 threads and 132 KB (one), 32x64 w4 s3 227 and 66 KB
# (two), 32x128 w8 s3 223 and 115 KB (one); at D=128 64x64 w8 s3 236 and 164 KB (one), 32x64 w4 s3 253 and 131 KB
# (one), 32x128 w8 s3 245 and 230 KB (one); none spills (64x64 w4 at D=128 did, 236 B: its two 64x128 fp32 sums hold
# 128 of a thread's registers at four warps)
FLAT_DKDV_TILES = {
    (128, 64): [(64, 64, 4, 3, 2), (64, 128, 8, 3, 1), (32, 64, 4, 3, 2), (32, 128, 8, 3, 1)],
    (128, 128): [(64, 64, 8, 3, 1), (32, 64, 4, 3, 1), (32, 128, 8, 3, 1)],
}
# lists longer than this many tiles are not built (16 bytes a tile): the flat loop is for short rows; at 1M
# tokens, 8 heads, the fixed pattern has about 13M 64-wide key tiles
FLAT_MAX_TILES = 1 << 22
# the timing of the configs on first use: untimed launch (compiles), then this many timed, minimum kept
CHOOSE_REPEATS = 3


def _lists_cpu(meta: "bs._PartMeta", side: str) -> dict[str, torch.Tensor]:
    return {name: meta.lists[f"{side}_{name}"].detach().to("cpu", torch.int64) for name in
            ("full_ptr", "full_idx", "part_ptr", "part_idx")}


def _side_tiles(lists: dict, side: str, csr: int, min_off: int, num_blocks: int, n: int, block: int, item_tile: int,
                step_tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, words) of one CSR and min offset: tiles per item and their step words in item order (each item's
    full tiles, then its masked ones; an item without any: one ``none`` tile). ``side`` "row": the items are query
    tiles of ``item_tile`` rows and the steps key tiles of ``step_tile`` keys from the row lists; "col": the items
    key tiles, the steps query tiles, from the column (transposed) lists. A partial block's sub-tiles wholly above
    the (shifted) diagonal hold no allowed pair and are left out."""
    sub, per = block // step_tile, block // item_tile
    count_items = n // item_tile
    it = torch.arange(count_items)
    base = csr * (num_blocks + 1) + it // per
    first = it * item_tile
    pieces_item, pieces_word = [], []
    for kind in ("full", "part"):
        ptr, idx = lists[f"{kind}_ptr"], lists[f"{kind}_idx"]
        lo, hi = ptr[base], ptr[base + 1]
        count = hi - lo
        item = torch.repeat_interleave(it, count)
        starts = torch.cumsum(count, 0) - count
        entry = lo[item] + (torch.arange(item.numel()) - starts[item])
        blocks = idx[entry] if entry.numel() else entry
        step = (blocks[:, None] * block + torch.arange(sub)[None, :] * step_tile)  # (entries, sub)
        item = item[:, None].expand(-1, sub)
        if kind == "part":
            if side == "row":  # key sub-tile from ``step``: some key at or below the last row's reach
                keep = step <= first[item] + item_tile - 1 - min_off
            else:  # query sub-tile from ``step`` whose last row reaches the item's first key
                keep = step + step_tile - 1 - min_off >= first[item]
            step, item = step[keep], item[keep]
            word = step * 4 + MASKED
        else:
            step, item = step.reshape(-1), item.reshape(-1)
            word = step * 4
        pieces_item.append(item.reshape(-1))
        pieces_word.append(word.reshape(-1))
    item = torch.cat(pieces_item)
    word = torch.cat(pieces_word)
    counts = torch.bincount(item, minlength=count_items)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():  # one tile standing for the item's (no) pairs: its zero results are written
        item = torch.cat([item, empty])
        word = torch.cat([word, torch.full_like(empty, MASKED | NONE)])
        counts = torch.bincount(item, minlength=count_items)
    order = torch.argsort(item, stable=True)  # full tiles before masked ones within an item (concatenated so)
    return counts, word[order]


def _assign(work: list[int], programs: int) -> list[list[int]]:
    """Items (indices of ``work``) per program: heaviest first, each to the least loaded program so far
    (greedy longest-processing-time; ties to the lower program). A program's items in the order it was given
    them."""
    order = sorted(range(len(work)), key=lambda i: -work[i])
    heap = [(0, p) for p in range(programs)]
    out: list[list[int]] = [[] for _ in range(programs)]
    for i in order:
        load, p = heapq.heappop(heap)
        out[p].append(i)
        heapq.heappush(heap, (load + work[i], p))
    return out


def flat_lists(meta: "bs._PartMeta", n: int, batch: int, block: int, block_m: int, block_n: int, programs: int,
               device, side: str = "row", segment: int = 0) -> dict[str, torch.Tensor] | None:
    """The part's tiles flattened for ``programs`` programs, built once per (side, batch, tile shape, programs) and
    kept in the part's metadata; None where they would pass ``FLAT_MAX_TILES``. ``side`` "row": items are query tiles
    of ``block_m`` rows walking key tiles of ``block_n`` (forward, dQ); "col": items are key tiles of ``block_n``
    walking query tiles of ``block_m`` (dK/dV). ``PROG_PTR`` (programs + 1,) and, a tile each (int32, on ``device``):
    ``TILE_ITEM`` (its item's first part position x 4, + ``FIRST`` where it is the item's first tile, + ``LAST``
    where its last), ``TILE_STEP`` (the walked tile's first position x 4, + ``MASKED``, + ``NONE``), ``TILE_BH``
    (batch x part head), ``TILE_SEG`` (0 for a whole item; for a piece of an item cut into pieces of at most
    ``segment`` tiles (-1: a fair share of all tiles a program) its workspace slot + 1), ``SLOTS`` (pieces of cut
    items), and per cut item ``UNIT_SLOT`` (its first piece's slot; its pieces' slots follow), ``UNIT_PIECES``,
    ``UNIT_FIRST`` (its first position) and ``UNIT_BH``. Positions stay below
    2**29: the cap allows at most 4M items of 64 or more positions."""
    key = ("flat", side, batch, block_m, block_n, programs, str(device), segment)
    if key in meta.extra:
        return meta.extra[key]
    head_csr = meta.head_csr.tolist()
    min_off = meta.min_off.tolist()
    part_heads = len(head_csr)
    # the full blocks alone (their tiles, exactly) already past the cap: nothing copied to the host or built
    full_ptr = meta.lists["row_full_ptr"]
    per_csr = (full_ptr.view(-1, meta.num_blocks + 1)[:, -1] - full_ptr.view(-1, meta.num_blocks + 1)[:, 0]).tolist()
    if batch * sum(per_csr[c] for c in head_csr) * (block // block_m) * (block // block_n) > FLAT_MAX_TILES:
        meta.extra[key] = None
        return None
    lists = _lists_cpu(meta, side)
    item_tile, step_tile = (block_m, block_n) if side == "row" else (block_n, block_m)
    groups = {}  # (csr, min_off) -> (counts, words, item starts)
    for csr, off in set(zip(head_csr, min_off)):
        counts, words = _side_tiles(lists, side, csr, off, meta.num_blocks, n, block, item_tile, step_tile)
        groups[(csr, off)] = (counts, words, torch.cumsum(counts, 0) - counts)
    per_head = n // item_tile
    total = batch * sum(int(groups[(c, o)][0].sum()) for c, o in zip(head_csr, min_off))
    if total > FLAT_MAX_TILES:
        meta.extra[key] = None
        return None
    # items: (batch x part head, tile), numbered bh * per_head + tile. An item longer than ``segment`` tiles (the column
    # side) is cut into pieces of near-equal length, each walked as an item of its own and writing its sums to a
    # slot of a workspace, which a finishing launch adds up in order (deterministic). A piece's last tile writes,
    # so it weighs one more
    counts = torch.cat([groups[(c, o)][0] for c, o in zip(head_csr, min_off)] * batch)
    nseg = torch.ones_like(counts)
    if segment < 0:  # "auto": a fair share of all the tiles a program, so no item outweighs one
        segment = max(2, -(-int(counts.sum()) // programs))
    if segment:
        nseg = torch.where(counts > segment, (counts + segment - 1) // segment, nseg)
    piece_item = torch.repeat_interleave(torch.arange(counts.numel()), nseg)
    piece_k = torch.arange(piece_item.numel()) - (torch.cumsum(nseg, 0) - nseg)[piece_item]
    base, extra = counts[piece_item] // nseg[piece_item], counts[piece_item] % nseg[piece_item]
    piece_len = base + (piece_k < extra).long()
    piece_off = piece_k * base + torch.minimum(piece_k, extra)
    split = nseg > 1
    cut = split[piece_item]  # the pieces of cut items, each a slot of the workspace (numbered in piece order)
    slot = torch.cumsum(cut.long(), 0) - 1
    piece_seg = torch.where(cut, slot + 1, torch.zeros_like(piece_item))
    units = torch.nonzero(split).flatten()  # the cut items, their slots consecutive from their first piece's
    first_piece = torch.cumsum(nseg, 0) - nseg
    work = (piece_len + 1).tolist()
    per_program = _assign(work, min(programs, len(work)))
    programs = len(per_program)
    piece = torch.tensor([i for pieces in per_program for i in pieces], dtype=torch.int64)
    item = piece_item[piece]
    bh, it = item // per_head, item % per_head
    hp = bh % part_heads
    cnt = piece_len[piece]
    # each piece's tiles, gathered from its (csr, min_off) group's
    group_of = [list(groups).index((c, o)) for c, o in zip(head_csr, min_off)]
    values = list(groups.values())
    offsets = torch.tensor([0] + [g[1].numel() for g in values]).cumsum(0)[:-1]
    words_all = torch.cat([g[1] for g in values])
    starts_all = torch.cat([g[2] + off for g, off in zip(values, offsets.tolist())])
    g = torch.tensor(group_of, dtype=torch.int64)[hp]
    piece_start = starts_all[g * per_head + it] + piece_off[piece]  # every group has per_head items
    tile_piece = torch.repeat_interleave(torch.arange(piece.numel()), cnt)
    first_of = torch.cumsum(cnt, 0) - cnt
    within = torch.arange(tile_piece.numel()) - first_of[tile_piece]
    words = words_all[piece_start[tile_piece] + within]
    flags = (within == 0).long() * FIRST + (within == cnt[tile_piece] - 1).long() * LAST
    item_words = (it[tile_piece] * item_tile) * 4 + flags
    sizes = torch.tensor([sum(work[i] - 1 for i in pieces) for pieces in per_program], dtype=torch.int64)
    prog_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
    to = lambda t: t.to(torch.int32).to(device).contiguous()  # noqa: E731
    out = {"PROG_PTR": to(prog_ptr), "TILE_ITEM": to(item_words), "TILE_STEP": to(words), "TILE_BH": to(bh[tile_piece]),
           "TILE_SEG": to(piece_seg[piece][tile_piece]), "SLOTS": int(cut.sum()), "programs": programs,
           # per cut item: its first slot, its pieces, its first position, its batch x part head
           "UNIT_SLOT": to(slot[first_piece[units]]), "UNIT_PIECES": to(nseg[units]),
           "UNIT_FIRST": to((units % per_head) * item_tile), "UNIT_BH": to(units // per_head)}
    meta.extra[key] = out
    return out


@triton.jit
def _program_range(PROG_PTR):
    """The program's tiles: PROG_PTR[pid] up to PROG_PTR[pid + 1]."""
    pid = tl.program_id(0)
    return tl.load(PROG_PTR + pid), tl.load(PROG_PTR + pid + 1)


@triton.jit
def _locate(bh, first_row, first_col, HEADS, part_heads, perm_g, perm_l, seq, PERMUTED: tl.constexpr,
            RUN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A tile's batch (int64), part head, head (int64) and its rows' and keys' natural positions."""
    hp = bh % part_heads
    return ((bh // part_heads).to(tl.int64), hp, tl.load(HEADS + hp).to(tl.int64),
            bs._natural_tile(first_row, BLOCK_M, perm_g, perm_l, PERMUTED, RUN, seq),
            bs._natural_tile(first_col, BLOCK_N, perm_g, perm_l, PERMUTED, RUN, seq))


@triton.jit
def _rows_of(X, batch, head, rows, offs_d, stride_b, stride_h, stride_t):
    """The (rows, head dim) tile of X at natural positions ``rows`` of one batch and head."""
    return tl.load(X + batch * stride_b + head * stride_h + rows[:, None] * stride_t + offs_d[None, :])


@triton.jit
def _write_row(O, O_PREV, LSE, acc, l_i, m_i, qw, bh, HEADS, part_heads, stride_ob, stride_oh, stride_ot, stride_lb,
               stride_lh, perm_g, perm_l, seq, PERMUTED: tl.constexpr, RUN: tl.constexpr, LOAD_PREV: tl.constexpr,
               BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A finished query tile's output and lse (``qw``, ``bh``: its query word and batch x part head), as the default
    forward writes them: merged with the earlier parts' through the two lse where LOAD_PREV."""
    batch = (bh // part_heads).to(tl.int64)
    head = tl.load(HEADS + bh % part_heads).to(tl.int64)
    rows = bs._natural_tile(qw >> 2, BLOCK_M, perm_g, perm_l, PERMUTED, RUN, seq)
    bs._store_rows(O, O_PREV, LSE, acc, l_i, m_i, batch, head, rows, tl.arange(0, HEAD_DIM), stride_ob, stride_oh,
                   stride_ot, stride_lb, stride_lh, LOAD_PREV)


@triton.jit(do_not_specialize=["part_heads", "num_blocks", "perm_g", "perm_l"])
def _fwd_flat_kernel(Q, K, V, O, O_PREV, LSE, HEADS, MIN_OFF, CODES, PROG_PTR, TILE_ITEM, TILE_STEP, TILE_BH,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                     stride_ob, stride_oh, stride_ot, stride_lb, stride_lh,
                     part_heads, num_blocks, perm_g, perm_l, qk_scale,
                     BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                     NCOMP: tl.constexpr, KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one program walks its tiles (PROG_PTR[pid] to PROG_PTR[pid + 1]) as one loop; see the module's docstring.
    # A row is written at the top of the iteration that starts the next one (and after the loop), where the sums
    # are read anyway (the rescale): written right after a row's last product, the read of its sums made ptxas
    # serialise the loop's wgmma (compile_check, sm_90)
    lo, hi = _program_range(PROG_PTR)
    seq = num_blocks * BLOCK
    offs_d = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    done_qw = lo * 0  # the row in the sums: its query word and batch x part head
    done_bh = lo * 0
    for t in range(lo, hi):
        qw = tl.load(TILE_ITEM + t)
        kw = tl.load(TILE_STEP + t)
        bh = tl.load(TILE_BH + t)
        start = (qw & 1) != 0
        if start and t > lo:
            _write_row(O, O_PREV, LSE, acc, l_i, m_i, done_qw, done_bh, HEADS, part_heads, stride_ob, stride_oh,
                       stride_ot, stride_lb, stride_lh, perm_g, perm_l, seq, PERMUTED, RUN, LOAD_PREV, BLOCK_M, HEAD_DIM)
            # the next product accumulates into what this branch yields, so the write stays before it is issued
            acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        first_row = qw >> 2
        first_col = kw >> 2
        batch, hp, head, rows, cols = _locate(bh, first_row, first_col, HEADS, part_heads, perm_g, perm_l, seq, PERMUTED,
                                              RUN, BLOCK_M, BLOCK_N)
        q = _rows_of(Q, batch, head, rows, offs_d, stride_qb, stride_qh, stride_qt)
        k = _rows_of(K, batch, head, cols, offs_d, stride_kb, stride_kh, stride_kt)
        v = _rows_of(V, batch, head, cols, offs_d, stride_vb, stride_vh, stride_vt)
        # a row's first tile starts a new softmax: with m at -inf the rescale below (alpha) is 0, so the sums drop
        # the previous row's (finite) values
        m_i = tl.where(start, float("-inf"), m_i)
        l_i = tl.where(start, 0.0, l_i)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        if (kw & 1) != 0:  # a partial block's tile: the part's token predicate (none: nothing allowed)
            offs_m = first_row + tl.arange(0, BLOCK_M)
            offs_n = first_col + tl.arange(0, BLOCK_N)
            ok = bs._allowed(offs_m[:, None], offs_n[None, :], CODES + hp * (NCOMP * 4), tl.load(MIN_OFF + hp),
                             NCOMP, KINDS)
            ok = ok & ((kw & 2) == 0)
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        p = tl.math.exp2(s * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
        done_qw = qw
        done_bh = bh
    if hi > lo:
        _write_row(O, O_PREV, LSE, acc, l_i, m_i, done_qw, done_bh, HEADS, part_heads, stride_ob, stride_oh, stride_ot,
                   stride_lb, stride_lh, perm_g, perm_l, seq, PERMUTED, RUN, LOAD_PREV, BLOCK_M, HEAD_DIM)


@triton.jit(do_not_specialize=["part_heads", "num_blocks", "perm_g", "perm_l"])
def _dq_flat_kernel(Q, K, V, DO, DQ, DQ_PREV, LSE, DELTA, O, HEADS, MIN_OFF, CODES, PROG_PTR, TILE_ITEM, TILE_STEP,
                    TILE_BH,
                    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                    stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt, stride_lb, stride_lh,
                    stride_ob, stride_oh, stride_ot,
                    part_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale,
                    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                    NCOMP: tl.constexpr, KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                    DELTA_HERE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # the dQ kernel (blocksparse._dq_program's step) over the forward's flattened lists: a query tile's dQ is written
    # where the next one starts (and after the loop), before the product that accumulates into the zeros the write's
    # branch yields (as the forward's rows). DELTA_HERE: every tile computes its rows' delta = rowsum(dO * O) from
    # the output O (its rows come from L2 after a row's first tile) instead of reading the delta kernel's, and the
    # row's write stores it for the dK/dV launch that follows (as the default dQ kernel's DELTA_HERE: no delta launch)
    lo, hi = _program_range(PROG_PTR)
    seq = num_blocks * BLOCK
    offs_d = tl.arange(0, HEAD_DIM)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    delta = tl.zeros([BLOCK_M], tl.float32)  # the row in the sums' delta, for its write
    done_qw = lo * 0
    done_bh = lo * 0
    for t in range(lo, hi):
        qw = tl.load(TILE_ITEM + t)
        kw = tl.load(TILE_STEP + t)
        bh = tl.load(TILE_BH + t)
        if ((qw & 1) != 0) and t > lo:
            _write_dq(DQ, DQ_PREV, DELTA, dq, delta, done_qw, done_bh, HEADS, part_heads, stride_dqb, stride_dqh,
                      stride_dqt, stride_lb, stride_lh, sm_scale, perm_g, perm_l, seq, PERMUTED, RUN, LOAD_PREV,
                      DELTA_HERE, BLOCK_M, HEAD_DIM)
            dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        first_row = qw >> 2
        first_col = kw >> 2
        batch, hp, head, rows, cols = _locate(bh, first_row, first_col, HEADS, part_heads, perm_g, perm_l, seq, PERMUTED,
                                              RUN, BLOCK_M, BLOCK_N)
        q = _rows_of(Q, batch, head, rows, offs_d, stride_qb, stride_qh, stride_qt)
        do = _rows_of(DO, batch, head, rows, offs_d, stride_dob, stride_doh, stride_dot)
        k = _rows_of(K, batch, head, cols, offs_d, stride_kb, stride_kh, stride_kt)
        v = _rows_of(V, batch, head, cols, offs_d, stride_vb, stride_vh, stride_vt)
        lse = tl.load(LSE + batch * stride_lb + head * stride_lh + rows)
        if DELTA_HERE:
            o = _rows_of(O, batch, head, rows, offs_d, stride_ob, stride_oh, stride_ot)
            delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        else:
            delta = tl.load(DELTA + batch * stride_lb + head * stride_lh + rows)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        p = tl.math.exp2(s - lse[:, None])
        if (kw & 1) != 0:  # a partial block's tile: the part's token predicate (none: nothing allowed)
            offs_m = first_row + tl.arange(0, BLOCK_M)
            offs_n = first_col + tl.arange(0, BLOCK_N)
            ok = bs._allowed(offs_m[:, None], offs_n[None, :], CODES + hp * (NCOMP * 4), tl.load(MIN_OFF + hp),
                             NCOMP, KINDS)
            ok = ok & ((kw & 2) == 0)
            p = tl.where(ok, p, 0.0)
        ds = p * (dp - delta[:, None])
        dq = dq + tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
        done_qw = qw
        done_bh = bh
    if hi > lo:
        _write_dq(DQ, DQ_PREV, DELTA, dq, delta, done_qw, done_bh, HEADS, part_heads, stride_dqb, stride_dqh, stride_dqt,
                  stride_lb, stride_lh, sm_scale, perm_g, perm_l, seq, PERMUTED, RUN, LOAD_PREV, DELTA_HERE, BLOCK_M,
                  HEAD_DIM)


@triton.jit
def _write_dq(DQ, DQ_PREV, DELTA, dq, delta, qw, bh, HEADS, part_heads, stride_dqb, stride_dqh, stride_dqt, stride_lb,
              stride_lh, sm_scale, perm_g, perm_l, seq, PERMUTED: tl.constexpr, RUN: tl.constexpr,
              LOAD_PREV: tl.constexpr, DELTA_HERE: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A finished query tile's dQ, as the default dQ kernel writes it: scaled, plus the earlier parts' where
    LOAD_PREV; where DELTA_HERE also its rows' delta."""
    batch = (bh // part_heads).to(tl.int64)
    head = tl.load(HEADS + bh % part_heads).to(tl.int64)
    rows = bs._natural_tile(qw >> 2, BLOCK_M, perm_g, perm_l, PERMUTED, RUN, seq)
    offs = batch * stride_dqb + head * stride_dqh + rows[:, None] * stride_dqt + tl.arange(0, HEAD_DIM)[None, :]
    dq = dq * sm_scale
    if LOAD_PREV:
        dq += tl.load(DQ_PREV + offs).to(tl.float32)
    tl.store(DQ + offs, dq.to(DQ.dtype.element_ty))
    if DELTA_HERE:
        tl.store(DELTA + batch * stride_lb + head * stride_lh + rows, delta)


@triton.jit(do_not_specialize=["part_heads", "num_blocks", "perm_g", "perm_l", "slots"])
def _dkdv_flat_kernel(Q, K, V, DO, DK, DV, DK_PREV, DV_PREV, LSE, DELTA, HEADS, MIN_OFF, CODES, PROG_PTR, TILE_ITEM,
                      TILE_STEP, TILE_BH, TILE_SEG, WS, slots,
                      stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                      stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkt,
                      stride_dvb, stride_dvh, stride_dvt, stride_lb, stride_lh,
                      part_heads, num_blocks, perm_g, perm_l, qk_scale, sm_scale,
                      BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                      NCOMP: tl.constexpr, KINDS: tl.constexpr, LOAD_PREV: tl.constexpr, DOT_PREC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # the dK/dV kernel (blocksparse._dkdv_step) over the column side's flattened lists: an item is a key tile of
    # BLOCK_N keys, or a piece of one (TILE_SEG), its steps query tiles of BLOCK_M rows; a key tile's dK and dV are
    # written where the next item starts (and after the loop), before the products that accumulate into the zeros
    # the branch yields; a piece stores its sums in its workspace slot, for _dkdv_finish_kernel
    lo, hi = _program_range(PROG_PTR)
    seq = num_blocks * BLOCK
    offs_d = tl.arange(0, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    done_iw = lo * 0
    done_bh = lo * 0
    done_seg = lo * 0
    for t in range(lo, hi):
        iw = tl.load(TILE_ITEM + t)
        sw = tl.load(TILE_STEP + t)
        bh = tl.load(TILE_BH + t)
        seg = tl.load(TILE_SEG + t)
        if ((iw & 1) != 0) and t > lo:
            _write_dkdv(DK, DV, DK_PREV, DV_PREV, WS, slots, dk, dv, done_iw, done_bh, done_seg, HEADS,
                        part_heads, stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt, sm_scale,
                        perm_g, perm_l, seq, PERMUTED, RUN, LOAD_PREV, BLOCK_N, HEAD_DIM)
            dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
            dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        first_col = iw >> 2
        first_row = sw >> 2
        batch, hp, head, rows, cols = _locate(bh, first_row, first_col, HEADS, part_heads, perm_g, perm_l, seq, PERMUTED,
                                              RUN, BLOCK_M, BLOCK_N)
        k = _rows_of(K, batch, head, cols, offs_d, stride_kb, stride_kh, stride_kt)
        v = _rows_of(V, batch, head, cols, offs_d, stride_vb, stride_vh, stride_vt)
        q = _rows_of(Q, batch, head, rows, offs_d, stride_qb, stride_qh, stride_qt)
        do = _rows_of(DO, batch, head, rows, offs_d, stride_dob, stride_doh, stride_dot)
        lse = tl.load(LSE + batch * stride_lb + head * stride_lh + rows)
        delta = tl.load(DELTA + batch * stride_lb + head * stride_lh + rows)
        st = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # (keys, queries)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        pt = tl.math.exp2(st - lse[None, :])
        if (sw & 1) != 0:  # a partial block's tile: the part's token predicate (none: nothing allowed)
            offs_m = first_row + tl.arange(0, BLOCK_M)
            offs_n = first_col + tl.arange(0, BLOCK_N)
            ok = bs._allowed(offs_m[None, :], offs_n[:, None], CODES + hp * (NCOMP * 4), tl.load(MIN_OFF + hp),
                             NCOMP, KINDS)
            ok = ok & ((sw & 2) == 0)
            pt = tl.where(ok, pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
        dst = (pt * (dpt - delta[None, :])).to(q.dtype)
        dk += tl.dot(dst, q, input_precision=DOT_PREC)
        done_iw = iw
        done_bh = bh
        done_seg = seg
    if hi > lo:
        _write_dkdv(DK, DV, DK_PREV, DV_PREV, WS, slots, dk, dv, done_iw, done_bh, done_seg, HEADS,
                    part_heads, stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt, sm_scale,
                    perm_g, perm_l, seq, PERMUTED, RUN, LOAD_PREV, BLOCK_N, HEAD_DIM)


@triton.jit
def _write_dkdv(DK, DV, DK_PREV, DV_PREV, WS, slots, dk, dv, iw, bh, seg, HEADS, part_heads, stride_dkb, stride_dkh,
                stride_dkt, stride_dvb, stride_dvh, stride_dvt, sm_scale, perm_g, perm_l, seq, PERMUTED: tl.constexpr,
                RUN: tl.constexpr, LOAD_PREV: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A finished key tile's dK (scaled) and dV, as the default dK/dV kernel writes whole columns: plus the earlier
    parts' where LOAD_PREV. A piece of a cut key tile (``seg``: its workspace slot + 1) stores its sums in its slot
    instead (dK's rows, then after every slot's, dV's), for ``_dkdv_finish_kernel``. (A count of arrived pieces, with
    the last one finishing, needs a barrier between the sums and the count: inside the loop that barrier stopped
    Triton from pipelining it, sm_90 compile.)"""
    offs_d = tl.arange(0, HEAD_DIM)
    dk = dk * sm_scale
    if seg > 0:
        ws_offs = ((seg - 1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N))[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(WS + ws_offs, dk)
        tl.store(WS + slots.to(tl.int64) * BLOCK_N * HEAD_DIM + ws_offs, dv)
    else:
        _store_key_tile(DK, DV, DK_PREV, DV_PREV, dk, dv, bh, iw >> 2, HEADS, part_heads, stride_dkb, stride_dkh,
                        stride_dkt, stride_dvb, stride_dvh, stride_dvt, perm_g, perm_l, seq, PERMUTED, RUN, LOAD_PREV,
                        BLOCK_N, HEAD_DIM)


@triton.jit
def _store_key_tile(DK, DV, DK_PREV, DV_PREV, dk, dv, bh, first, HEADS, part_heads, stride_dkb, stride_dkh, stride_dkt,
                    stride_dvb, stride_dvh, stride_dvt, perm_g, perm_l, seq, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                    LOAD_PREV: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A whole key tile's dK and dV (its first part position ``first``, of batch x part head ``bh``) written to the
    final gradients, plus the earlier parts' sums where LOAD_PREV."""
    offs_d = tl.arange(0, HEAD_DIM)
    batch = (bh // part_heads).to(tl.int64)
    head = tl.load(HEADS + bh % part_heads).to(tl.int64)
    cols = bs._natural_tile(first, BLOCK_N, perm_g, perm_l, PERMUTED, RUN, seq)
    dk_offs = batch * stride_dkb + head * stride_dkh + cols[:, None] * stride_dkt + offs_d[None, :]
    dv_offs = batch * stride_dvb + head * stride_dvh + cols[:, None] * stride_dvt + offs_d[None, :]
    if LOAD_PREV:
        dk += tl.load(DK_PREV + dk_offs).to(tl.float32)
        dv += tl.load(DV_PREV + dv_offs).to(tl.float32)
    tl.store(DK + dk_offs, dk.to(DK.dtype.element_ty))
    tl.store(DV + dv_offs, dv.to(DV.dtype.element_ty))


@triton.jit(do_not_specialize=["part_heads", "num_blocks", "perm_g", "perm_l", "slots"])
def _dkdv_finish_kernel(DK, DV, DK_PREV, DV_PREV, WS, slots, UNIT_SLOT, UNIT_PIECES, UNIT_FIRST, UNIT_BH, HEADS,
                        stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                        part_heads, num_blocks, perm_g, perm_l,
                        BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PERMUTED: tl.constexpr, RUN: tl.constexpr,
                        LOAD_PREV: tl.constexpr, BLOCK_N: tl.constexpr):
    # one program a cut key tile: its pieces' slots added in order, then written as a whole key tile is
    unit = tl.program_id(0)
    first_slot = tl.load(UNIT_SLOT + unit).to(tl.int64)
    pieces = tl.load(UNIT_PIECES + unit)
    bh = tl.load(UNIT_BH + unit)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = tl.arange(0, BLOCK_N)[:, None] * HEAD_DIM + offs_d[None, :]
    dv_base = slots.to(tl.int64) * BLOCK_N * HEAD_DIM
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for i in range(pieces):
        at = (first_slot + i) * BLOCK_N * HEAD_DIM + rows
        dk += tl.load(WS + at)
        dv += tl.load(WS + dv_base + at)
    _store_key_tile(DK, DV, DK_PREV, DV_PREV, dk, dv, bh, tl.load(UNIT_FIRST + unit), HEADS, part_heads, stride_dkb,
                    stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt, perm_g, perm_l, num_blocks * BLOCK,
                    PERMUTED, RUN, LOAD_PREV, BLOCK_N, HEAD_DIM)


def tile_name(entry: tuple[int, int, int, int, int]) -> str:
    """A config in short form: "128x64w4s3p2" (programs per SM last)."""
    return "{}x{}w{}s{}p{}".format(*entry)


def choices(layout, kind: str = "fwd") -> list[str]:
    """What the layout's flat ``kind`` kernels ("fwd" or "dq") chose so far, one line each: the config or "default",
    and the timings it chose from."""
    out = []
    for key, value in layout.kernel_cache.items():
        if isinstance(key, tuple) and key and key[0] == f"flat_{kind}" and key[-1] != "seconds":
            seconds = layout.kernel_cache.get(key + ("seconds",), {})
            timed = ", ".join(f"{name} {s * 1e6:.1f} us" for name, s in seconds.items())
            out.append(f"{tile_name(value[0]) if value else 'default'}" + (f" (timed {timed})" if timed else ""))
    return out


def candidates(block: int, head_dim: int, kind: str = "fwd") -> list[tuple[int, int, int, int, int]]:
    """The configs (BLOCK_M, BLOCK_N, warps, stages, programs per SM) ``_choose`` times for a kernel ("fwd" or
    "dq"), a layout block and head dim: ``FLAT_TILES``' or ``FLAT_DQ_TILES``' entry, or one of 64-wide tiles (the
    block's where smaller); the interpreter's: half-block tiles (as blocksparse's), so its tests walk a block's
    sub-tiles. ``MEGASTRIDE_BLOCKSPARSE_FLAT_TILES`` / ``MEGASTRIDE_BLOCKSPARSE_FLAT_DQ_TILES`` ("MxNwWsSpP", e.g.
    128x64w4s3p2) force one."""
    variable = _FORCE[kind]
    forced = os.environ.get(variable)
    if forced:
        m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)p(\d+)", forced)
        if not m:
            raise ValueError(f"{variable} must look like 128x64w4s3p2, got {forced!r}")
        entry = tuple(int(x) for x in m.groups())
        if max(entry[:2]) > block or min(entry[:2]) < 16:
            raise ValueError(f"{variable} {forced!r}: tiles must be 16 to the layout's block {block}")
        return [entry]
    if bs._INTERPRET:
        half = max(16, block // 2)
        return [(half, half, 4, 1, 1)]
    listed = {"fwd": FLAT_TILES, "dq": FLAT_DQ_TILES, "dkdv": FLAT_DKDV_TILES}[kind].get((block, head_dim))
    if listed:
        return listed
    side = min(64, block)
    return [(side, side, 4, 3, 2)]


_FORCE = {"fwd": "MEGASTRIDE_BLOCKSPARSE_FLAT_TILES", "dq": "MEGASTRIDE_BLOCKSPARSE_FLAT_DQ_TILES",
          "dkdv": "MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV_TILES"}


def segment_setting() -> int:
    """Most tiles a piece of a flat dK/dV item takes (``MEGASTRIDE_BLOCKSPARSE_FLAT_SEGMENT``: "auto", the default, a
    fair share of all the launch's tiles a program, so the fixed pattern's long summary columns are cut; an integer,
    0 = whole key tiles): -1 for "auto"."""
    raw = os.environ.get("MEGASTRIDE_BLOCKSPARSE_FLAT_SEGMENT", "auto")
    if raw == "auto":
        return -1
    if not raw.isdigit():
        raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_FLAT_SEGMENT must be \"auto\" or an integer >= 0, got {raw!r}")
    return int(raw)


def _programs(q: torch.Tensor, per_sm: int) -> int:
    """Programs of one launch: ``per_sm`` an SM on a GPU; under the interpreter 4 (so a program walks several
    query tiles, which is what its tests check); ``MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS`` forces a count."""
    forced = os.environ.get("MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS")
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise ValueError(f"MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS must be an integer >= 1, got {forced!r}")
        return int(forced)
    sms = bs.gpu_sms(q)
    return 4 if sms is None else sms * per_sm


def _consts(layout, meta, q, load_prev, entry) -> dict:
    block_m, block_n, warps, stages, _ = entry
    consts = {key: value for key, value in bs._common(layout, meta, q, load_prev).items()
              if key not in ("BUCKET", "GDC", "launch_pdl")}  # the flat kernels: no dependent launch
    return {**consts, "BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}


def _list_args(meta, lists) -> tuple:
    return (meta.heads, meta.min_off, meta.codes, lists["PROG_PTR"], lists["TILE_ITEM"], lists["TILE_STEP"], lists["TILE_BH"])


def _launch_fwd(q, k, v, outs, meta, layout, scale, load_prev, entry, lists) -> None:
    target, prev, lse = outs
    args = (q, k, v, target, prev, lse, *_list_args(meta, lists), *bs._strides(q, k, v, target), lse.stride(0),
            lse.stride(1), len(meta.heads), layout.num_blocks, meta.perm_g, meta.perm_l, scale * bs.LOG2E)
    programs = lists["programs"]
    bs._launch_chosen(_fwd_flat_kernel, lambda _: (programs,), args, _consts(layout, meta, q, load_prev, entry))


def _launch_dq(q, k, v, do, lse, out, delta_here, outs, meta, layout, scale, load_prev, entry, lists) -> None:
    """The flat dQ launch into ``outs`` = (dq, dq_prev, delta): delta computed from the output ``out`` and written
    where ``delta_here`` (DELTA_HERE), else read."""
    dq, dq_prev, delta = outs
    args = (q, k, v, do, dq, dq_prev, lse, delta, out, *_list_args(meta, lists), *bs._strides(q, k, v, do, dq),
            lse.stride(0), lse.stride(1), *bs._strides(out), len(meta.heads), layout.num_blocks, meta.perm_g,
            meta.perm_l, scale * bs.LOG2E, scale)
    programs = lists["programs"]
    consts = {**_consts(layout, meta, q, load_prev, entry), "DELTA_HERE": delta_here}
    bs._launch_chosen(_dq_flat_kernel, lambda _: (programs,), args, consts)


def _copies(outs) -> list[torch.Tensor]:
    """Copies of the output tensors for a timed launch, one per distinct tensor (an alias stays an alias)."""
    made = {}
    for t in outs:
        if id(t) not in made:
            made[id(t)] = t.clone()
    return [made[id(t)] for t in outs]


def _choose(kind, q, layout, meta, load_prev, outs, launch, regular, delta_here=False) -> tuple | None:
    """(config, lists) of the part's flat ``kind`` kernel ("fwd" or "dq"), or None for the default kernel: the one
    config of ``candidates`` where there is one or nothing can be timed, else the fastest, timed on first use by
    ``launch(outs, entry, lists)`` on copies of the outputs ``outs`` (a merging part reads what it writes); with
    ``regular(outs)`` (the default kernel's launch: "auto") that one is timed too and kept where faster, and where
    nothing can be timed it is kept. None also where no config's lists fit ``FLAT_MAX_TILES``. Kept in the layout's
    cache per part, shape, dtype and forced setting (and, for dQ, whether it computes delta: ``delta_here``)."""
    batch, _, seq_len, head_dim = q.shape
    key = (f"flat_{kind}", id(meta), tuple(q.shape), q.dtype, load_prev, regular is not None,
           os.environ.get(_FORCE[kind]), os.environ.get("MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS"),
           segment_setting() if kind == "dkdv" else 0, delta_here)
    if key in layout.kernel_cache:
        return layout.kernel_cache[key]
    timing = bs._timing_possible(q)
    if regular is not None and not timing:
        return None  # not remembered: a later call outside a capture times them
    options = []
    for entry in candidates(layout.block, head_dim, kind):
        lists = flat_lists(meta, seq_len, batch, layout.block, entry[0], entry[1], _programs(q, entry[4]), q.device,
                           "col" if kind == "dkdv" else "row", segment_setting() if kind == "dkdv" else 0)
        if lists is not None:
            options.append((entry, lists))
    if regular is not None and options:
        options.append(None)
    chosen = None
    if len(options) == 1 or (options and not timing):
        chosen = options[0]
    elif options:
        bs._not_replayable()
        best, timings = None, {}
        for option in options:
            copies = _copies(outs)
            if option is None:
                run = lambda: regular(*copies)  # noqa: E731
            else:
                run = lambda: launch(copies, *option)  # noqa: E731
            run()
            seconds = min(bs._cuda_seconds(run) for _ in range(CHOOSE_REPEATS))
            timings[tile_name(option[0]) if option else "default"] = seconds
            if best is None or seconds < best[0]:
                best = (seconds, option)
        chosen = best[1]
        layout.kernel_cache[key + ("seconds",)] = timings
    layout.kernel_cache[key] = chosen
    return chosen


def forward_part(q, k, v, target, prev, lse, meta, layout, scale, load_prev, regular=None) -> bool:
    """Launch the part's forward as flattened tiles (``_fwd_flat_kernel``) into ``target`` (merging with ``prev``
    through ``lse`` where ``load_prev``); False (nothing launched: the caller launches the default kernel) where
    ``_choose`` keeps the default one. ``regular(target, prev, lse)``: the default kernel's launch ("auto")."""
    outs = (target, prev, lse)
    launch = lambda o, entry, lists: _launch_fwd(q, k, v, o, meta, layout, scale, load_prev, entry, lists)  # noqa: E731
    chosen = _choose("fwd", q, layout, meta, load_prev, outs, launch, regular)
    if chosen is None:
        return False
    launch(outs, *chosen)
    return True


def dq_part(q, k, v, do, lse, delta, out, delta_here, dq, dq_prev, meta, layout, scale, load_prev) -> bool:
    """Launch the part's dQ as flattened tiles (``_dq_flat_kernel``) into ``dq`` (adding ``dq_prev`` where
    ``load_prev``): delta computed from the output ``out`` and written into ``delta`` for the dK/dV launch where
    ``delta_here`` (``blocksparse.delta_in_dq``), else read from it; False where its lists would pass
    ``FLAT_MAX_TILES``."""
    outs = (dq, dq_prev, delta)
    launch = lambda o, entry, lists: _launch_dq(q, k, v, do, lse, out, delta_here, o, meta, layout,  # noqa: E731
                                                scale, load_prev, entry, lists)
    chosen = _choose("dq", q, layout, meta, load_prev, outs, launch, None, delta_here=delta_here)
    if chosen is None:
        return False
    launch(outs, *chosen)
    return True


def _workspace(meta, lists, block_n: int, head_dim: int, device) -> torch.Tensor:
    """The fp32 slots the pieces of cut key tiles store their sums in (dK's, then dV's; ``SLOTS`` of ``block_n`` rows
    each): one per part, list and head dim, every slot written before it is read; a stand-in where nothing is cut."""
    key = ("flat", lists["SLOTS"], block_n, head_dim, str(device))
    if key not in meta.workspaces:
        meta.workspaces[key] = torch.empty(max(1, 2 * lists["SLOTS"] * block_n * head_dim), dtype=torch.float32,
                                           device=device)
    return meta.workspaces[key]


def _launch_dkdv(q, k, v, do, lse, delta, outs, meta, layout, scale, load_prev, entry, lists) -> None:
    dk, dv, dk_prev, dv_prev = outs
    ws = _workspace(meta, lists, entry[1], q.shape[-1], q.device)
    args = (q, k, v, do, dk, dv, dk_prev, dv_prev, lse, delta, *_list_args(meta, lists), lists["TILE_SEG"], ws,
            lists["SLOTS"], *bs._strides(q, k, v, do, dk, dv), lse.stride(0), lse.stride(1), len(meta.heads),
            layout.num_blocks, meta.perm_g, meta.perm_l, scale * bs.LOG2E, scale)
    programs = lists["programs"]
    consts = _consts(layout, meta, q, load_prev, entry)
    bs._launch_chosen(_dkdv_flat_kernel, lambda _: (programs,), args, consts)
    units = lists["UNIT_SLOT"].numel()
    if units:  # the cut key tiles, finished from their pieces' slots
        args = (dk, dv, dk_prev, dv_prev, ws, lists["SLOTS"], lists["UNIT_SLOT"], lists["UNIT_PIECES"],
                lists["UNIT_FIRST"], lists["UNIT_BH"], meta.heads, *bs._strides(dk, dv), len(meta.heads),
                layout.num_blocks, meta.perm_g, meta.perm_l)
        finish = {name: consts[name] for name in ("BLOCK", "HEAD_DIM", "PERMUTED", "RUN", "LOAD_PREV", "BLOCK_N")}
        bs._launch_chosen(_dkdv_finish_kernel, lambda _: (units,), args, {**finish, "num_warps": 4, "num_stages": 1})


def dkdv_part(q, k, v, do, lse, delta, dk, dv, dk_prev, dv_prev, meta, layout, scale, load_prev) -> bool:
    """Launch the part's dK/dV as flattened key tiles (``_dkdv_flat_kernel``, then ``_dkdv_finish_kernel`` for key
    tiles cut into pieces) into ``dk``, ``dv`` (adding ``dk_prev``, ``dv_prev`` where ``load_prev``); False where its
    lists would pass ``FLAT_MAX_TILES``."""
    outs = (dk, dv, dk_prev, dv_prev)
    launch = lambda o, entry, lists: _launch_dkdv(q, k, v, do, lse, delta, o, meta, layout, scale,  # noqa: E731
                                                  load_prev, entry, lists)
    chosen = _choose("dkdv", q, layout, meta, load_prev, outs, launch, None)
    if chosen is None:
        return False
    launch(outs, *chosen)
    return True
