"""Sparse Transformer attention patterns (Child et al. 2019, section 4) as data.

Two levels, kept separate on purpose:

* **Token level** -- what the paper defines. A head's pattern is a union of *components*
  (``Dense``, ``Local``, ``Stride``, ``Window``, ``Summary``), always intersected with causality
  (key j <= query i). ``HeadPattern.allows(i, j)`` evaluates the paper's formulas directly; the
  reference attention uses nothing else.
* **Block level** -- what a kernel visits. ``build_layout`` compresses a pattern for one sequence
  length and block size into CSR lists of key blocks per query block (and the transpose for the
  backward pass), split into *full* blocks (every pair allowed: no mask) and *partial* blocks (the
  kernel re-evaluates the components inside the tile). Nothing is ever stored as a dense n x n or
  (heads, nb, nb) tensor: memory is O(non-zero blocks).

The strided half is laid out the way the reference code computes it: the sequence viewed as
[n/l, l] and transposed, so keys with equal i mod l become neighbours and the strided half is a
causal block-diagonal pattern with groups of n/l ("permuted part"). It is combined with the local
half through the two parts' log-sum-exps, each key counted exactly once (the permuted part skips
the offsets the local half already covers).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence, Union

import torch

# the largest width, stride or window a pattern may name: 2^40 positions, beyond any sequence
MAX_PARAMETER = 1 << 40
# the most block rows, and candidate blocks in one part, build_layout builds from: it holds a few int64 tensors
# of each (at the limits 128 MB a row tensor, 2 GB a candidate one). The longest sequences trained (8,388,608
# tokens) are 65,536 block rows of 128; the SPEC's fixed pattern there takes 8,421,376 (about 2^23) candidates
# in each of its two components.
MAX_BLOCK_ROWS = 1 << 24
MAX_CANDIDATES = 1 << 28


class LayoutTooLarge(ValueError):
    """A layout past MAX_BLOCK_ROWS or MAX_CANDIDATES: refused before its tensors are allocated."""

# ---------------------------------------------------------------------------------------------
# Token level: components and head patterns
# ---------------------------------------------------------------------------------------------

# Integer codes shared with the kernels (one row (kind, a, b, c) per component).
KIND_NONE, KIND_DENSE, KIND_LOCAL, KIND_STRIDE, KIND_WINDOW, KIND_SUMMARY = -1, 0, 1, 2, 3, 4
KIND_EARLIER_SUMMARIES = 5  # part coordinates only (a summary-first part), never in a head pattern


@dataclass(frozen=True)
class Dense:
    """Every earlier key: j <= i."""

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=i.device)

    def code(self) -> tuple[int, int, int, int]:
        return (KIND_DENSE, 0, 0, 0)


@dataclass(frozen=True)
class Local:
    """The previous ``width`` positions including i: j in [i - width + 1, i] (first half of strided)."""

    width: int

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (i - j) < self.width

    def code(self) -> tuple[int, int, int, int]:
        return (KIND_LOCAL, self.width, 0, 0)


@dataclass(frozen=True)
class Stride:
    """Every ``stride``-th earlier key: (i - j) mod stride == 0 (second half of strided)."""

    stride: int

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return torch.remainder(i - j, self.stride) == 0

    def code(self) -> tuple[int, int, int, int]:
        return (KIND_STRIDE, self.stride, 0, 0)


@dataclass(frozen=True)
class Window:
    """The query's own window of ``size``: floor(j / size) == floor(i / size) (fixed, A1)."""

    size: int

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return torch.div(i, self.size, rounding_mode="floor") == torch.div(j, self.size, rounding_mode="floor")

    def code(self) -> tuple[int, int, int, int]:
        return (KIND_WINDOW, self.size, 0, 0)


@dataclass(frozen=True)
class Summary:
    """Summary columns of every window (fixed, A2): j mod size in [size - (index+1)*width, size - index*width).

    ``index`` 0 is the paper's set (the last ``width`` positions of each window); the reference
    block code gives head h the summary slot ``h % num_patterns`` so heads together cover more.
    """

    size: int
    width: int
    index: int = 0

    @property
    def lo(self) -> int:
        return self.size - (self.index + 1) * self.width

    @property
    def hi(self) -> int:
        return self.size - self.index * self.width

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        r = torch.remainder(j, self.size)
        return ((r >= self.lo) & (r < self.hi)).expand(torch.broadcast_shapes(i.shape, j.shape))

    def code(self) -> tuple[int, int, int, int]:
        return (KIND_SUMMARY, self.size, self.lo, self.hi)


@dataclass(frozen=True)
class EarlierSummaries:
    """The summary columns of the windows before the query's own, in a summary-first part's coordinates.

    A summary-first part (``LayoutPart.summary_first`` = (l, c)) orders the sequence as every window's
    ``width`` = c summary positions (window by window) and then the ``rest`` = l - c other positions of each
    window, so part positions below ``boundary`` = c * n / l are the summary keys, contiguous. Query part
    position i belongs to window i // c (summary positions) or (i - boundary) // rest (the others); it may
    attend summary key j < boundary of an earlier window, j // c < that. The query's own window, summary
    columns included, is the natural part's ``Window``: each key counted once. Not a paper component:
    ``build_layout`` makes it from ``Window(l) + Summary(l, c)`` where the summary columns are not
    block-aligned (the paper's fixed(128, 32) in 128-blocks touches every earlier block in natural order).
    """

    width: int
    rest: int
    boundary: int

    def query_window(self, i: torch.Tensor) -> torch.Tensor:
        return torch.where(i < self.boundary, torch.div(i, self.width, rounding_mode="floor"),
                           torch.div(i - self.boundary, self.rest, rounding_mode="floor"))

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (j < self.boundary) & (torch.div(j, self.width, rounding_mode="floor") < self.query_window(i))

    def code(self) -> tuple[int, int, int, int]:
        return (KIND_EARLIER_SUMMARIES, self.width, self.rest, self.boundary)


Component = Union[Dense, Local, Stride, Window, Summary, EarlierSummaries]


@dataclass(frozen=True)
class HeadPattern:
    """One head's pattern: the union of its components, intersected with causality."""

    components: tuple[Component, ...]
    name: str = ""

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Token-level truth: may query position i attend to key position j (broadcasting)."""
        out = j <= i
        union = torch.zeros_like(out)
        for comp in self.components:
            union = union | comp.allows(i, j)
        return out & union

    def validate(self, seq_len: int) -> None:
        """Raise ValueError naming the problem if the pattern's parameters are unusable."""
        if not self.components:
            raise ValueError(f"pattern {self.name or '?'} has no components")
        for comp in self.components:
            for key, value in vars(comp).items():
                if value < (0 if key == "index" else 1):
                    raise ValueError(f"pattern {self.name or '?'}: {type(comp).__name__}.{key}={value} must be positive")
                if value > MAX_PARAMETER:  # past any sequence (and past the index types the layouts use)
                    raise ValueError(f"pattern {self.name or '?'}: {type(comp).__name__}.{key}={value} is beyond any "
                                     f"sequence length (at most {MAX_PARAMETER:,})")
            if isinstance(comp, Summary) and comp.lo < 0:
                raise ValueError(
                    f"pattern {self.name or '?'}: summary slot {comp.index} of width {comp.width} "
                    f"does not fit in a window of {comp.size}"
                )



def dense() -> HeadPattern:
    """Full causal attention."""
    return HeadPattern((Dense(),), name="dense")


def local(stride: int) -> HeadPattern:
    """The local half of strided attention: the previous ``stride`` positions."""
    return HeadPattern((Local(stride),), name=f"local({stride})")


def strided_half(stride: int) -> HeadPattern:
    """The strided half alone: every stride-th earlier position."""
    return HeadPattern((Stride(stride),), name=f"stride({stride})")


def strided(stride: int) -> HeadPattern:
    """The paper's strided pattern: local(l) merged with every l-th position."""
    return HeadPattern((Local(stride), Stride(stride)), name=f"strided({stride})")


def fixed_window(stride: int) -> HeadPattern:
    """A1 of the fixed pattern alone: the query's own window of ``stride``."""
    return HeadPattern((Window(stride),), name=f"window({stride})")


def summary(stride: int, width: int, index: int = 0) -> HeadPattern:
    """A2 of the fixed pattern alone: the summary columns of every window."""
    return HeadPattern((Summary(stride, width, index),), name=f"summary({stride},{width},{index})")


def fixed(stride: int, width: int, index: int = 0) -> HeadPattern:
    """The paper's fixed pattern: own window (A1) merged with every window's summary columns (A2)."""
    return HeadPattern((Window(stride), Summary(stride, width, index)), name=f"fixed({stride},{width})")


def merged(*patterns: HeadPattern) -> HeadPattern:
    """One head attending to the union of several patterns ("merged" in the paper)."""
    comps: list[Component] = []
    for p in patterns:
        comps += [c for c in p.components if c not in comps]
    return HeadPattern(tuple(comps), name="+".join(p.name for p in patterns))


@dataclass(frozen=True)
class AttentionPattern:
    """A pattern for every head of one attention layer ("multi-head" when heads differ)."""

    heads: tuple[HeadPattern, ...]

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def mask(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(H, len(rows), len(cols)) boolean token mask; True where attention is allowed."""
        i, j = rows[:, None], cols[None, :]
        return torch.stack([h.allows(i, j) for h in self.heads])

    def to_dense_mask(self, seq_len: int) -> torch.Tensor:
        """(H, n, n) boolean mask, for small n only (tests and pictures)."""
        pos = torch.arange(seq_len)
        return self.mask(pos, pos)


def same_for_all_heads(pattern: HeadPattern, num_heads: int) -> AttentionPattern:
    """Every head uses the same pattern (the paper's "merged" heads)."""
    return AttentionPattern((pattern,) * num_heads)


def multi_head(patterns: Sequence[HeadPattern], num_heads: int) -> AttentionPattern:
    """Head h uses patterns[h % len(patterns)] (the paper's "multi-head" combination)."""
    if not patterns:
        raise ValueError("multi_head needs at least one pattern")
    return AttentionPattern(tuple(patterns[h % len(patterns)] for h in range(num_heads)))


def fixed_per_head(stride: int, width: int, num_heads: int, num_patterns: int) -> AttentionPattern:
    """The reference block code's fixed variant: head h reads summary slot h % num_patterns."""
    return AttentionPattern(tuple(fixed(stride, width, h % num_patterns) for h in range(num_heads)))


# ---------------------------------------------------------------------------------------------
# Block level: compressed layouts
# ---------------------------------------------------------------------------------------------


@dataclass
class BlockCSR:
    """Non-zero blocks of one head's part, by query-block row and (transposed) by key-block column.

    ``row_full_ptr[r]:row_full_ptr[r+1]`` slices ``row_full_idx`` to the key blocks of query block r
    where every pair is allowed; ``row_part_*`` the blocks that need the in-tile mask. ``col_*`` hold
    the transpose (query blocks per key block) for dK/dV. Indices are sorted ascending.
    """

    row_full_ptr: torch.Tensor
    row_full_idx: torch.Tensor
    row_part_ptr: torch.Tensor
    row_part_idx: torch.Tensor
    col_full_ptr: torch.Tensor
    col_full_idx: torch.Tensor
    col_part_ptr: torch.Tensor
    col_part_idx: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return list(vars(self).values())

    @property
    def nnz(self) -> int:
        return self.row_full_idx.numel() + self.row_part_idx.numel()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def to(self, device: torch.device | str) -> "BlockCSR":
        return BlockCSR(*(t.to(device) for t in self.tensors()))


def part_permutation(n: int, stride: int | None = None, summary_first: tuple[int, int] | None = None) -> torch.Tensor:
    """perm with x_part = x[..., perm, :] for a part permuted by ``stride`` ((l, n/l) flattened), ordered with
    ``summary_first`` = (l, c) (every window's last c positions, then the other l - c of each), or neither
    (natural order)."""
    if stride:
        return torch.arange(n).view(n // stride, stride).t().reshape(-1)
    if summary_first:
        l, c = summary_first
        windows = torch.arange(n).view(n // l, l)
        return torch.cat([windows[:, l - c:].reshape(-1), windows[:, : l - c].reshape(-1)])
    return torch.arange(n)


@dataclass
class LayoutPart:
    """One kernel launch worth of heads sharing an ordering of the sequence.

    ``permute_stride`` is None for natural order, or l: the part works on the sequence permuted by
    position i -> (i mod l) * (n / l) + i // l. ``summary_first`` (l, c) instead orders it as the c
    summary positions of every window of l, window by window, then the other l - c of each window
    (``EarlierSummaries``). ``components[h]`` are the in-tile predicates of head
    ``heads[h]`` in the part's own coordinates, and ``min_offset[h]`` strengthens causality to
    j <= i - min_offset (the permuted strided half skips offsets its local half already covers).
    """

    permute_stride: int | None
    heads: tuple[int, ...]
    components: tuple[tuple[Component, ...], ...]
    min_offset: tuple[int, ...]
    csr: list[BlockCSR]  # unique block structures
    head_csr: tuple[int, ...]  # heads[h] uses csr[head_csr[h]]
    summary_first: tuple[int, int] | None = None
    _codes: torch.Tensor | None = field(default=None, repr=False)
    kernel_cache: dict = field(default_factory=dict, repr=False, compare=False)  # packed metadata, per device

    @property
    def natural(self) -> bool:
        """Whether the part works in natural order (no permutation)."""
        return self.permute_stride is None and self.summary_first is None

    def describe_order(self) -> str:
        if self.permute_stride:
            return f"permuted by stride {self.permute_stride}"
        if self.summary_first:
            return "summary positions first (window {}, width {})".format(*self.summary_first)
        return "natural order"

    def permutation(self, n: int) -> torch.Tensor:
        """perm with x_part = x[..., perm, :]: part position p holds natural position perm[p]."""
        return part_permutation(n, self.permute_stride, self.summary_first)

    def component_codes(self) -> torch.Tensor:
        """(len(heads), K, 4) int32 table of (kind, a, b, c) per component, KIND_NONE padded."""
        if self._codes is None:
            k = max(len(c) for c in self.components)
            codes = torch.full((len(self.heads), k, 4), 0, dtype=torch.int32)
            codes[..., 0] = KIND_NONE
            for h, comps in enumerate(self.components):
                for m, comp in enumerate(comps):
                    codes[h, m] = torch.tensor(comp.code(), dtype=torch.int32)
            self._codes = codes
        return self._codes

    def allows(self, h: int, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The part's predicate for its h-th head in part coordinates (what a kernel evaluates)."""
        ok = (i - j) >= self.min_offset[h]
        union = torch.zeros_like(ok)
        for comp in self.components[h]:
            union = union | comp.allows(i, j)
        return ok & union


@dataclass
class Layout:
    """A pattern compressed for one sequence length and block size."""

    pattern: AttentionPattern
    seq_len: int
    block: int
    parts: list[LayoutPart]
    kernel_cache: dict = field(default_factory=dict, repr=False, compare=False)  # kernel-side state (op id)

    @property
    def num_heads(self) -> int:
        return self.pattern.num_heads

    @property
    def num_blocks(self) -> int:
        return self.seq_len // self.block

    @property
    def nbytes(self) -> int:
        """Bytes of block metadata (all parts, unique structures only)."""
        return sum(c.nbytes for p in self.parts for c in p.csr)

    def to(self, device: torch.device | str) -> "Layout":
        parts = [
            LayoutPart(p.permute_stride, p.heads, p.components, p.min_offset, [c.to(device) for c in p.csr], p.head_csr,
                       p.summary_first)
            for p in self.parts
        ]
        return Layout(self.pattern, self.seq_len, self.block, parts)

    def launch_order(self) -> list[LayoutPart]:
        """The parts in the order the kernels launch them (kernels.blocksparse._schedule): by head count,
        natural order last on ties (a stable sort: otherwise this layout's order). The last one writes a
        split head's final outputs; the earlier ones add into fp32 sums it merges."""
        return sorted(self.parts, key=lambda p: (len(p.heads), p.natural))

    def merges(self) -> tuple[bool, bool]:
        """(some head is merged from two parts, some part merges into its sums in place, before the last
        launch): what the kernels' fp32 buffers and autotuning restores are for (engine.plan)."""
        order, seen = self.launch_order(), set()
        merged = in_place = False
        for i, part in enumerate(order):
            merging = any(h in seen for h in part.heads)
            merged, in_place = merged or merging, in_place or (merging and i < len(order) - 1)
            seen.update(part.heads)
        return merged, in_place

    def two_launch_merge(self) -> bool:
        """Whether heads are merged from exactly two launches and the last holds every head of the first (the
        strided pattern: its permuted half, then its local half): the first launch's partial results then need
        no sums of their own, the last completes each of them (``blocksparse.partials_in_outputs``)."""
        order = self.launch_order()
        return len(order) == 2 and set(order[0].heads) <= set(order[1].heads)

    def column_work(self) -> tuple[int, int]:
        """(longest key-block column, all columns summed over heads), in blocks (full and partial): the
        dK/dV kernel's longest serial chain of tiles and its whole work, per batch row (``blocksparse.dkdv_split``
        and the planner compare the two). Cached per layout."""
        key = ("column_work",)
        if key not in self.kernel_cache:
            longest = total = 0
            for part in self.parts:
                for h in range(len(part.heads)):
                    csr = part.csr[part.head_csr[h]]
                    work = csr.col_full_ptr.long().diff() + csr.col_part_ptr.long().diff()
                    longest = max(longest, int(work.max()) if work.numel() else 0)
                    total += int(csr.col_full_ptr[-1]) + int(csr.col_part_ptr[-1])
            self.kernel_cache[key] = (longest, total)
        return self.kernel_cache[key]

    def density(self) -> float:
        """Fraction of causal pairs (i >= j) that are attended, averaged over heads (token level)."""
        allowed = sum(self.count_pairs(h) for h in range(self.num_heads))
        return allowed / (self.num_heads * self.seq_len * (self.seq_len + 1) / 2)

    def count_pairs(self, head: int) -> int:
        """Number of allowed (i, j) pairs of one head, counted from the blocks (O(nnz * block))."""
        total = 0
        for part in self.parts:
            if head not in part.heads:
                continue
            h = part.heads.index(head)
            csr = part.csr[part.head_csr[h]]
            total += csr.row_full_idx.numel() * self.block * self.block
            rows = _rows_of(csr.row_part_ptr)
            for start in range(0, rows.numel(), 4096):
                r, c = rows[start : start + 4096], csr.row_part_idx[start : start + 4096]
                total += int(_tile_mask(part, h, r, c, self.block).sum())
        return total

    def to_dense_mask(self) -> torch.Tensor:
        """(H, n, n) boolean mask rebuilt from the compressed blocks (small n only).

        Independent of ``pattern.mask``: it expands each listed block, applies the part's in-tile
        predicate on partial blocks, and undoes the part's permutation -- exactly what a kernel sees.
        """
        n, b = self.seq_len, self.block
        mask = torch.zeros(self.num_heads, n, n, dtype=torch.bool)
        for part in self.parts:
            perm = part.permutation(n)
            for h, head in enumerate(part.heads):
                local = torch.zeros(n, n, dtype=torch.bool)  # in part coordinates
                csr = part.csr[part.head_csr[h]].to("cpu")
                for full, ptr, idx in ((True, csr.row_full_ptr, csr.row_full_idx), (False, csr.row_part_ptr, csr.row_part_idx)):
                    rows = _rows_of(ptr)
                    for r, c in zip(rows.tolist(), idx.tolist()):
                        rr, cc = torch.arange(r * b, r * b + b)[:, None], torch.arange(c * b, c * b + b)[None, :]
                        tile = torch.ones(b, b, dtype=torch.bool) if full else part.allows(h, rr, cc)
                        local[r * b : r * b + b, c * b : c * b + b] |= tile
                # part position p is natural position perm[p]
                mask[head][perm[:, None], perm[None, :]] |= local
        return mask

    def describe(self) -> str:
        """A few human-readable lines: parts, heads, non-zero blocks, metadata bytes."""
        lines = [f"n={self.seq_len} block={self.block} heads={self.num_heads} metadata={self.nbytes / 2**20:.2f} MiB"]
        for p in self.parts:
            order = p.describe_order()
            nnz = [p.csr[c].nnz for c in p.head_csr]
            lines.append(f"  part ({order}): heads {list(p.heads)} non-zero blocks per head {nnz}")
        return "\n".join(lines)


def _rows_of(ptr: torch.Tensor) -> torch.Tensor:
    """Row index of every CSR entry."""
    counts = (ptr[1:] - ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts)


def _tile_mask(part: LayoutPart, h: int, r: torch.Tensor, c: torch.Tensor, b: int) -> torch.Tensor:
    """(len(r), b, b) in-tile masks of blocks (r, c) for the part's h-th head."""
    off = torch.arange(b, device=r.device)
    i = (r.long()[:, None, None] * b) + off[None, :, None]
    j = (c.long()[:, None, None] * b) + off[None, None, :]
    return part.allows(h, i, j)


# --- exact per-component block classification -------------------------------------------------
# For a tile of query rows [r0, r1] and key columns [c0, c1] (inclusive) and causality
# j <= i - m, each function returns (any, full): does some pair / every pair satisfy the component.
# The difference D = i - j takes every integer value in [r0 - c1, r1 - c0] over such a tile.


def _classify(comp: Component, r0, r1, c0, c1, m: int):
    dmin, dmax = r0 - c1, r1 - c0
    causal_any, causal_full = dmax >= m, dmin >= m
    if isinstance(comp, Dense):
        return causal_any, causal_full
    if isinstance(comp, Local):
        return causal_any & (dmin <= comp.width - 1), causal_full & (dmax <= comp.width - 1)
    if isinstance(comp, Stride):
        lo = torch.clamp(dmin, min=m)
        first = torch.div(lo + comp.stride - 1, comp.stride, rounding_mode="floor") * comp.stride
        full = causal_full if comp.stride == 1 else torch.zeros_like(causal_full)
        return causal_any & (first <= dmax), full
    if isinstance(comp, Window):
        return _classify_window(comp.size, r0, r1, c0, c1, m)
    if isinstance(comp, EarlierSummaries):
        # a row tile never straddles the boundary (build_layout: boundary % b == 0), so the query window
        # grows along it: its least at r0, its most at r1; every allowed pair has j < i, so causality holds
        any_ = (c0 < comp.boundary) & (torch.div(c0, comp.width, rounding_mode="floor") < comp.query_window(r1))
        full = (c1 < comp.boundary) & (torch.div(c1, comp.width, rounding_mode="floor") < comp.query_window(r0))
        return any_ & causal_any, full & causal_full
    if isinstance(comp, Summary):
        s, lo, hi = comp.size, comp.lo, comp.hi
        base, rem = torch.div(c0, s, rounding_mode="floor") * s, torch.remainder(c0, s)
        first = torch.where(rem < lo, base + lo, torch.where(rem < hi, c0, base + s + lo))
        any_ = (first <= c1) & (first <= r1 - m)
        same = torch.div(c0, s, rounding_mode="floor") == torch.div(c1, s, rounding_mode="floor")
        full = causal_full & same & (rem >= lo) & (torch.remainder(c1, s) < hi)
        return any_, full
    raise TypeError(f"unknown component {comp!r}")


def _classify_window(s: int, r0, r1, c0, c1, m: int):
    def win(x):
        return torch.div(x, s, rounding_mode="floor")

    # windows touched by both the row range and the column range; interior ones lie inside both
    w_lo, w_hi = torch.maximum(win(r0), win(c0)), torch.minimum(win(r1), win(c1))
    overlap = w_lo <= w_hi

    def best(w):  # the largest i - j with i and j both in window w (and in the tile)
        imax = torch.minimum(r1, w * s + s - 1)
        jmin = torch.maximum(c0, w * s)
        return imax - jmin

    gap = torch.maximum(best(w_lo), best(w_hi))
    gap = torch.where(w_hi - w_lo >= 2, torch.clamp(gap, min=s - 1), gap)
    any_ = overlap & (gap >= m)
    full = (win(r0) == win(c1)) & (win(c0) == win(r1)) & (r0 - c1 >= m)
    return any_, full


# --- candidate generation: a superset of the blocks a component touches, O(its nnz) -------------


def _check_candidates(total: int) -> None:
    if total > MAX_CANDIDATES:
        raise LayoutTooLarge(f"its layout would take {total:,} candidate blocks in one part, more than the "
                             f"{MAX_CANDIDATES:,} a layout is built from")


def _expand(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All (row, col) with lo <= col <= hi per entry (empty where hi < lo)."""
    counts = torch.clamp(hi - lo + 1, min=0)
    _check_candidates(int(counts.sum()))
    r = torch.repeat_interleave(rows, counts)
    start = torch.repeat_interleave(lo - torch.cumsum(counts, 0) + counts, counts)
    c = start + torch.arange(r.numel(), device=rows.device)
    return r, c


def _candidates(comp: Component, nb: int, b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(nb, device=device)
    r0 = rows * b
    if isinstance(comp, Stride) and comp.stride > b:
        # the keys of a query block's rows, b consecutive positions, shifted back by k * l: one interval of
        # at most two key blocks per k (natural order, where n is not a multiple of l): O(nb * n / l), not
        # the O(nb^2) of every earlier block (which a 8M-token layout could not hold)
        shifts = (r0 + b - 1) // comp.stride + 1
        rk = torch.repeat_interleave(rows, shifts)
        k = torch.arange(rk.numel(), device=device) - torch.repeat_interleave(torch.cumsum(shifts, 0) - shifts, shifts)
        top = rk * b + b - 1 - k * comp.stride
        return _expand(rk, torch.clamp(top - b + 1, min=0) // b, top // b)
    if isinstance(comp, (Dense, Stride)):
        return _expand(rows, torch.zeros_like(rows), rows)
    if isinstance(comp, Local):
        return _expand(rows, torch.clamp(r0 - comp.width + 1, min=0) // b, rows)
    if isinstance(comp, Window):
        return _expand(rows, (r0 // comp.size) * comp.size // b, rows)
    if isinstance(comp, EarlierSummaries):
        # the summary keys of the windows before the row's last query: a prefix of the key blocks
        keys = comp.width * comp.query_window(r0 + b - 1)
        return _expand(rows, torch.zeros_like(rows), torch.div(keys - 1, b, rounding_mode="floor"))
    if isinstance(comp, Summary):
        # one (row, window) pair per window that starts at or before the row's last position
        nwin = (r0 + b - 1) // comp.size + 1
        _check_candidates(int(nwin.sum()))
        rw = torch.repeat_interleave(rows, nwin)
        w = torch.arange(rw.numel(), device=device) - torch.repeat_interleave(torch.cumsum(nwin, 0) - nwin, nwin)
        lo = (w * comp.size + comp.lo) // b
        hi = torch.minimum((w * comp.size + comp.hi - 1) // b, rw)
        return _expand(rw, lo, hi)
    raise TypeError(f"unknown component {comp!r}")


def _block_csr(components: Sequence[Component], min_offset: int, n: int, b: int, device) -> BlockCSR:
    """Exact block classification of a union of components (in one ordering) as a BlockCSR."""
    nb = n // b
    keys, fulls = [], []
    for comp in components:
        r, c = _candidates(comp, nb, b, device)
        any_, full = _classify(comp, r * b, r * b + b - 1, c * b, c * b + b - 1, min_offset)
        keys.append((r * nb + c)[any_])
        fulls.append(full[any_])
    key = torch.cat(keys)
    full = torch.cat(fulls).to(torch.uint8)
    uniq, inverse = torch.unique(key, return_inverse=True)  # sorted: row-major order
    is_full = torch.zeros(uniq.numel(), dtype=torch.uint8, device=device).scatter_reduce(0, inverse, full, "amax").bool()
    rows, cols = torch.div(uniq, nb, rounding_mode="floor"), torch.remainder(uniq, nb)
    return _csr_pair(rows, cols, is_full, nb)


def _csr_pair(rows, cols, is_full, nb) -> BlockCSR:
    def csr(major, minor, select):
        major, minor = major[select], minor[select]
        order = torch.argsort(major * nb + minor)
        ptr = torch.zeros(nb + 1, dtype=torch.int64, device=major.device)
        ptr[1:] = torch.cumsum(torch.bincount(major, minlength=nb), 0)
        return ptr.to(torch.int32), minor[order].to(torch.int32)

    return BlockCSR(
        *csr(rows, cols, is_full), *csr(rows, cols, ~is_full), *csr(cols, rows, is_full), *csr(cols, rows, ~is_full)
    )


def _split_head(pattern: HeadPattern, n: int, b: int):
    """(natural components, permuted (stride, min_offset) or None) for one head.

    The strided half goes to a permuted part when the reference code's layout applies: exactly one
    Stride(l), every other component a Local, and n divisible by l. (When n/l is not a multiple of
    the block, tiles straddle two groups and are masked inside: still far denser than natural order.) The permuted
    part then skips the first ceil(w/l) offsets of each group, which Local(w) already covers, so
    every key is counted once.
    """
    strides = [c for c in pattern.components if isinstance(c, Stride)]
    others = [c for c in pattern.components if not isinstance(c, Stride)]
    if len(strides) != 1 or not all(isinstance(c, Local) for c in others):
        return list(pattern.components), None
    l = strides[0].stride
    if n % l or l == 1:
        return list(pattern.components), None
    width = max((c.width for c in others), default=0)
    return others, (l, -(-width // l))


def summary_first_on() -> bool:
    """Whether ``build_layout`` gives fixed patterns with summaries off block boundaries a summary-first part:
    ``MEGASTRIDE_SUMMARY_FIRST`` "1" (the default) or "0" (the natural-order layout before it, for A/B runs;
    read when a layout is built)."""
    raw = os.environ.get("MEGASTRIDE_SUMMARY_FIRST", "1")
    if raw not in ("0", "1"):
        raise ValueError(f"MEGASTRIDE_SUMMARY_FIRST must be 0 or 1, got {raw!r}")
    return raw == "1"


def _summary_first(pattern: HeadPattern, n: int, b: int) -> tuple[int, int] | None:
    """(l, c) where the head is the paper's fixed pattern, Window(l) + Summary(l, c) (slot 0), whose summary
    columns are not whole blocks, so that in natural order nearly every earlier block holds a few of them
    and the kernels would walk them all, masked: then the summaries go to a summary-first part
    (``EarlierSummaries``), where they are contiguous and their tiles full. None otherwise, and where the
    summary positions (c * n / l) are not whole blocks or n is not a multiple of l."""
    if not summary_first_on():
        return None
    comps = pattern.components
    windows = [c for c in comps if isinstance(c, Window)]
    summaries = [c for c in comps if isinstance(c, Summary)]
    if len(comps) != 2 or len(windows) != 1 or len(summaries) != 1:
        return None
    l, c = summaries[0].size, summaries[0].width
    if windows[0].size != l or summaries[0].index != 0 or c >= l or n % l or (c * (n // l)) % b:
        return None
    if summaries[0].lo % b == 0 and c % b == 0:  # whole blocks already: full tiles in natural order
        return None
    return l, c


_WARNED: set[tuple[int, int, int]] = set()


def dividing_strides(seq_len: int, stride: int) -> tuple[int | None, int | None]:
    """The nearest strides below and above ``stride`` that divide ``seq_len`` (None where there is none)."""
    below = next((d for d in range(stride - 1, 1, -1) if seq_len % d == 0), None)
    above = next((d for d in range(stride + 1, min(2 * stride, seq_len) + 1) if seq_len % d == 0), None)
    return below, above


# block-list entries above which an unpermuted Stride(l) is refused (about nb * n / l of them; 2^26 entries,
# a quarter GB of int32 lists, and several GB of temporaries to build them)
NATURAL_STRIDE_LIMIT = 1 << 26


def check_strides(pattern: "AttentionPattern | HeadPattern", n: int, b: int) -> None:
    """Where a Stride(l) wider than a block runs in natural order because n is not a multiple of l, each of
    its tiles holds about b of b * b pairs and its block lists grow as n^2 / (l * b), not the permuted
    layout's n^2 / l^2 (the kernels slow down alike): warn once per (n, l, b), or raise ValueError naming
    the strides that divide n where the lists would pass ``NATURAL_STRIDE_LIMIT`` entries."""
    heads = pattern.heads if isinstance(pattern, AttentionPattern) else (pattern,)
    for head in heads:
        if _split_head(head, n, b)[1] is not None:
            continue
        for comp in head.components:
            if not (isinstance(comp, Stride) and comp.stride > b and n % comp.stride):
                continue
            near = " or ".join(str(d) for d in dividing_strides(n, comp.stride) if d)
            entries = (n // b) * (n // comp.stride)  # a row: n / (2 l) shifts on average, two blocks each
            what = (f"{head.name or 'pattern'}: {n} tokens are not a multiple of the stride {comp.stride}, so its "
                    f"strided half runs unpermuted")
            advice = f"; a stride dividing {n} ({near}) runs permuted" if near else ""
            if entries > NATURAL_STRIDE_LIMIT:
                raise ValueError(f"{what} with about {entries:,} block-list entries (at most "
                                 f"{NATURAL_STRIDE_LIMIT:,}){advice}")
            if (n, comp.stride, b) not in _WARNED:
                _WARNED.add((n, comp.stride, b))
                warnings.warn(f"{what}, about {b} of {b * b} pairs used per tile{advice}", stacklevel=2)


def check_tiling(seq_len: int, block: int) -> None:
    """Raises ValueError unless ``seq_len`` tokens split into whole ``block``-token tiles."""
    if block <= 0 or seq_len <= 0:
        raise ValueError(f"sequence length {seq_len} and block size {block} must be positive")
    if seq_len % block:
        raise ValueError(f"sequence length {seq_len} is not divisible by the attention block size {block}")


def build_layout(pattern: AttentionPattern | HeadPattern, seq_len: int, block: int = 128,
                 num_heads: int | None = None, device: torch.device | str = "cpu") -> Layout:
    """Compress ``pattern`` for ``seq_len`` tokens in ``block``-sized tiles.

    Runs on ``device`` (vectorised torch; on a GPU the 1M-token layouts build in milliseconds).
    Raises ValueError naming the problem for lengths not divisible by the block and bad parameters.
    """
    if isinstance(pattern, HeadPattern):
        pattern = same_for_all_heads(pattern, num_heads or 1)
    check_tiling(seq_len, block)
    for head in pattern.heads:
        head.validate(seq_len)
    advice = "a shorter sequence, larger blocks or a sparser pattern"
    if seq_len // block > MAX_BLOCK_ROWS:
        raise LayoutTooLarge(f"sequence length {seq_len:,} in {block}-token blocks is {seq_len // block:,} block rows, "
                             f"more than the {MAX_BLOCK_ROWS:,} a layout is built for ({advice})")
    try:
        return _build_layout(pattern, seq_len, block, device)
    except LayoutTooLarge as err:
        names = ", ".join(dict.fromkeys(h.name or "a head" for h in pattern.heads))
        raise LayoutTooLarge(f"{names} at {seq_len:,} tokens in {block}-token blocks: {err} ({advice})") from None


def _build_layout(pattern: AttentionPattern, seq_len: int, block: int, device) -> Layout:
    natural: dict[int, tuple] = {}
    permuted: dict[int, dict[int, tuple]] = {}
    summary_first: dict[tuple[int, int], dict[int, tuple]] = {}
    for h, head in enumerate(pattern.heads):
        gathered = _summary_first(head, seq_len, block)
        if gathered:
            l, c = gathered
            natural[h] = ((Window(l),), 0)
            summary_first.setdefault(gathered, {})[h] = ((EarlierSummaries(c, l - c, c * (seq_len // l)),), 0)
            continue
        comps, perm = _split_head(head, seq_len, block)
        if perm is None:
            check_strides(head, seq_len, block)
        if comps:
            natural[h] = (tuple(comps), 0)
        if perm:
            l, offset = perm
            permuted.setdefault(l, {})[h] = ((Window(seq_len // l),), offset)
    parts = [_make_part(None, natural, seq_len, block, device)] if natural else []
    parts += [_make_part(l, heads, seq_len, block, device) for l, heads in sorted(permuted.items())]
    parts += [_make_part(None, heads, seq_len, block, device, summary_first=lc) for lc, heads in sorted(summary_first.items())]
    return Layout(pattern, seq_len, block, parts)


def _make_part(stride, heads: dict[int, tuple], n: int, b: int, device,
               summary_first: tuple[int, int] | None = None) -> LayoutPart:
    unique: dict[tuple, int] = {}
    csrs, head_csr = [], []
    for comps, offset in heads.values():
        key = (comps, offset)
        if key not in unique:
            unique[key] = len(csrs)
            csrs.append(_block_csr(comps, offset, n, b, device))
        head_csr.append(unique[key])
    return LayoutPart(
        permute_stride=stride,
        heads=tuple(heads),
        components=tuple(v[0] for v in heads.values()),
        min_offset=tuple(v[1] for v in heads.values()),
        csr=csrs,
        head_csr=tuple(head_csr),
        summary_first=summary_first,
    )


# ---------------------------------------------------------------------------------------------
# Named patterns, as configs spell them
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Attended pairs in closed form (no layout: milliseconds at 1M tokens)
# ---------------------------------------------------------------------------------------------


def _query_counts(component: Component, i: torch.Tensor) -> torch.Tensor | None:
    """Allowed keys j <= i of one component, for every query i (an int64 tensor), or None."""
    if isinstance(component, Dense):
        return i + 1
    if isinstance(component, Local):
        return torch.clamp(i + 1, max=component.width)
    if isinstance(component, Stride):
        return i // component.stride + 1
    if isinstance(component, Window):
        return i % component.size + 1
    if isinstance(component, Summary):
        m, s, w = i + 1, component.size, component.hi - component.lo
        return (m // s) * w + torch.clamp(m % s - component.lo, min=0, max=w)
    return None


def _overlap_counts(a: Component, b: Component, i: torch.Tensor) -> torch.Tensor | None:
    """Keys both components allow, for the merged pairs the named patterns use, or None."""
    if isinstance(a, Stride):
        a, b = b, a
    if isinstance(a, Local) and isinstance(b, Stride):  # offsets k*l below the local width
        return torch.minimum(i // b.stride, torch.tensor((a.width - 1) // b.stride)) + 1
    if isinstance(a, Summary):
        a, b = b, a
    if isinstance(a, Window) and isinstance(b, Summary) and a.size == b.size:  # summary slots in own window
        return torch.clamp(i % a.size + 1 - b.lo, min=0, max=b.hi - b.lo)
    return None


def closed_form_pairs(head: HeadPattern, seq_len: int) -> int | None:
    """Unmasked (i, j) pairs of one head pattern in O(n) arithmetic; None for unions it cannot do.

    Covers one component, or two whose overlap has a formula (strided = local + stride, fixed =
    window + summary). Agrees with ``Layout.count_pairs`` (tested) and takes milliseconds at 1M.
    """
    comps = head.components
    i = torch.arange(seq_len, dtype=torch.int64)
    if len(comps) == 1:
        counts = _query_counts(comps[0], i)
    elif len(comps) == 2:
        a, b = (_query_counts(c, i) for c in comps)
        overlap = _overlap_counts(comps[0], comps[1], i)
        counts = None if a is None or b is None or overlap is None else a + b - overlap
    else:
        counts = None
    return None if counts is None else int(counts.sum())


def optimal_stride(seq_len: int, kind: str, width: int = 128, block: int = 128) -> int:
    """The paper's cost-optimal stride, rounded to a block multiple dividing n where possible.

    l ~ sqrt(n) for strided, l ~ sqrt(c * n) for fixed (section 4.3).
    """
    target = math.sqrt(seq_len * (width if kind == "fixed" else 1))
    best = max(block, int(round(target / block)) * block)
    return min(_block_divisors(seq_len, block), key=lambda d: abs(d - target), default=best)


def _block_divisors(seq_len: int, block: int) -> list[int]:
    """The multiples of ``block`` that divide ``seq_len``, ascending: ``block`` times the divisors of
    seq_len / block, found up to its square root (a scan of every multiple took minutes at 2^34 tokens)."""
    if seq_len % block:
        return []
    m = seq_len // block
    small = [k for k in range(1, math.isqrt(m) + 1) if m % k == 0]
    return [block * k for k in sorted(set(small + [m // k for k in small]))]
