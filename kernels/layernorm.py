"""LayerNorm over the last dim in Triton: the output written directly in the dtype its consumer wants.

Under CUDA autocast torch's layer_norm runs in fp32, writes an fp32 output and the next matmul casts
that to bf16 in a kernel of its own; its backward reduces the weight and bias gradients in a slow
kernel (GammaBetaBackward). Here:

* forward: one program normalises BLOCK_M rows (a (BLOCK_M, BLOCK_N) tile, BLOCK_N the width padded
  to a power of two), in fp32 whatever x's dtype, and stores y in the requested dtype (the autocast
  dtype: no cast kernel after it) plus the per-row mean and 1/std (fp32) for backward.
* backward: each program takes one contiguous group of rows (whole BLOCK_M tiles), writes dx for
  them in x's dtype, and accumulates dy * xhat and dy over its rows in fp32 registers; it stores one
  (D,) partial sum of each, and a torch ``.sum(0)`` over the (programs, D) partials gives dweight and
  dbias. No atomics: deterministic, run to run. With ``BWD_PREFETCH`` a program issues the next tile's loads
  before the current tile's reductions and stores (the same arithmetic: bitwise the same gradients), for twice
  the bytes in flight (on by default since 2026-12-05: 9-12% faster on H100s, ``ln_check --sweep``).

Around them, the residual stream's other two steps in a pre-LN block (``norm.layer_norm_keep``,
``norm.residual_add``):

* the block's first LayerNorm also hands on its input, as a view its autograd node makes
  (``_LayerNormKeep``), so the stream's gradient of the block input reaches that LayerNorm's backward
  and the kernel adds it to dx (HAS_DS) instead of autograd summing the two in a kernel of its own;
* the FFN's add of a 16-bit branch to the fp32 stream is one flat kernel of 16-byte accesses
  (``_residual_add_kernel``), the sum torch's add writes.

Tiles and warps come from the width (``tiles``) rather than autotuning: one compile per width and
nothing to benchmark before a CUDA graph is captured; ``python -m megastride.kernels.ln_check
--sweep`` times the alternatives on a GPU.

Row offsets are int64 (rows x D passes 2**31 elements at 4M tokens of width 512).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .norm import each_dtype
from .profiling import sm_count

# (elements of one program's tile (rows x padded width), elements per thread): the backward holds
# x, dy, xhat, w * dy and two accumulators, so half of each. Compiled for sm_90 at D = 512 (bf16 y):
# forward 8 x 512, 8 warps: 48 registers; backward 4 x 512, 8 warps: 80 registers (3 programs an
# SM), no spills at any width up to MAX_WIDTH (``python -m megastride.kernels.ln_check --compile``).
FWD_TILE, FWD_PER_THREAD = 4096, 16
BWD_TILE, BWD_PER_THREAD = 2048, 8
MAX_WIDTH = 8192  # widest row one tile holds; ``megastride.kernels.layer_norm`` takes torch's above
# row groups of the backward pass per SM: a few waves of ~3 resident programs, so the last, partly
# empty wave is short; the (programs, D) fp32 partials stay ~1% of the pass's traffic at D = 512
BWD_PROGRAMS_PER_SM = 8
# the backward issues each tile's loads a step ahead (``_layer_norm_bwd_kernel``'s PREFETCH): bitwise the same
# gradients; at the 1M step's shape the model's two backwards 9-12% faster in five sweeps on H100s
# (``python -m megastride.kernels.ln_check --sweep-long-only``, docs/scaling.md); not yet timed on an H200
BWD_PREFETCH = True
BWD_PREFETCH_MAX_WIDTH = 4096  # wider rows spill with the next tile held (16 warps, 128 registers; ``ln_check --compile``)
# the residual add: elements a program, warps (16 a thread: four 16-byte loads of an fp32 operand)
ADD_BLOCK, ADD_WARPS = 4096, 8
INTERPRET_PROGRAMS = 3  # row groups without a GPU (the interpreter): several, to exercise the partials
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
POISON = False  # tests: fill every output buffer with NaN first, so an element no program writes shows

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["rows"])
def _layer_norm_fwd_kernel(X, Y, W, B, MEAN, RSTD, R, S, stride_x, stride_y, stride_r, stride_s, rows, eps,
                N: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one program per BLOCK_M rows; statistics and affine in fp32, y stored in Y's dtype. HAS_RES:
    # the row is x + r, stored in S (S's dtype) and normalised as it was stored
    row = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.arange(0, BLOCK_N)
    live_row = row < rows
    live_col = col < N
    live = live_row[:, None] & live_col[None, :]
    x = tl.load(X + row[:, None] * stride_x + col[None, :], mask=live, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + row[:, None] * stride_r + col[None, :], mask=live, other=0.0).to(tl.float32)
        total = (x + r).to(S.dtype.element_ty)
        tl.store(S + row[:, None] * stride_s + col[None, :], total, mask=live)
        x = total.to(tl.float32)
    mean = tl.sum(x, 1) / N
    xc = tl.where(live_col[None, :], x - mean[:, None], 0.0)  # padding columns stay out of the variance
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / N + eps)
    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(W + col, mask=live_col, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(B + col, mask=live_col, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + row[:, None] * stride_y + col[None, :], y.to(Y.dtype.element_ty), mask=live)
    tl.store(MEAN + row, mean, mask=live_row)
    tl.store(RSTD + row, rstd, mask=live_row)


@triton.jit
def _bwd_tile_loads(X, DY, MEAN, RSTD, DS, stride_x, stride_dy, stride_ds, start, last, col, live_col,
                    HAS_DS: tl.constexpr, BLOCK_M: tl.constexpr):
    """The backward's loads for the BLOCK_M rows from ``start`` (rows from ``last`` on masked): x, dy and (HAS_DS)
    ds as loaded, mean and rstd."""
    row = start + tl.arange(0, BLOCK_M)
    live_row = row < last
    live = live_row[:, None] & live_col[None, :]
    x = tl.load(X + row[:, None] * stride_x + col[None, :], mask=live, other=0.0)
    dy = tl.load(DY + row[:, None] * stride_dy + col[None, :], mask=live, other=0.0)
    if HAS_DS:
        ds = tl.load(DS + row[:, None] * stride_ds + col[None, :], mask=live, other=0.0)
    else:
        ds = x
    mean = tl.load(MEAN + row, mask=live_row, other=0.0)
    rstd = tl.load(RSTD + row, mask=live_row, other=0.0)
    return x, dy, ds, mean, rstd


@triton.jit(do_not_specialize=["rows", "rows_per_program"])
def _layer_norm_bwd_kernel(X, DY, DX, W, MEAN, RSTD, DW_PART, DB_PART, DS, DR, stride_x, stride_dy, stride_dx,
                stride_ds, stride_dr, rows, rows_per_program, N: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_DS: tl.constexpr, HAS_DR: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr = False):
    # one program per group of rows_per_program rows (a multiple of BLOCK_M): dx of its rows, and
    # its partial sums of dy * xhat and dy over them in row DW_PART[pid], DB_PART[pid]. HAS_DS: x's
    # gradient from elsewhere (the residual stream past a fused add) is added to dx; HAS_DR: dx is
    # also stored in DR's dtype (the added branch's gradient). PREFETCH: each tile's loads are issued
    # before the previous tile's reductions and stores (twice the bytes in flight a program)
    pid = tl.program_id(0)
    first = pid.to(tl.int64) * rows_per_program
    last = tl.minimum(first + rows_per_program, rows)
    col = tl.arange(0, BLOCK_N)
    live_col = col < N
    if HAS_WEIGHT:
        w = tl.load(W + col, mask=live_col, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # summed over rows once, at the end
    db = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if PREFETCH:
        x_n, dy_n, ds_n, mean_n, rstd_n = _bwd_tile_loads(X, DY, MEAN, RSTD, DS, stride_x, stride_dy, stride_ds,
                                                          first, last, col, live_col, HAS_DS, BLOCK_M)
    for start in range(first, last, BLOCK_M):
        row = start + tl.arange(0, BLOCK_M)
        live_row = row < last
        live = live_row[:, None] & live_col[None, :]
        if PREFETCH:  # this tile's loads were issued a step ago; the next tile's go out now
            x_l, dy_l, ds_l, mean, rstd = x_n, dy_n, ds_n, mean_n, rstd_n
            x_n, dy_n, ds_n, mean_n, rstd_n = _bwd_tile_loads(X, DY, MEAN, RSTD, DS, stride_x, stride_dy, stride_ds,
                                                              start + BLOCK_M, last, col, live_col, HAS_DS, BLOCK_M)
        else:
            x_l, dy_l, ds_l, mean, rstd = _bwd_tile_loads(X, DY, MEAN, RSTD, DS, stride_x, stride_dy, stride_ds,
                                                          start, last, col, live_col, HAS_DS, BLOCK_M)
        x = x_l.to(tl.float32)
        dy = dy_l.to(tl.float32)
        xhat = (x - mean[:, None]) * rstd[:, None]  # dy = 0 wherever this is padding
        if HAS_WEIGHT:
            wdy = dy * w[None, :]
        else:
            wdy = dy
        # dx = rstd * (w dy - mean(w dy) - xhat * mean(w dy * xhat)), means over the row
        c1 = tl.sum(xhat * wdy, 1) / N
        c2 = tl.sum(wdy, 1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:
            dx += ds_l.to(tl.float32)
        tl.store(DX + row[:, None] * stride_dx + col[None, :], dx.to(DX.dtype.element_ty), mask=live)
        if HAS_DR:
            tl.store(DR + row[:, None] * stride_dr + col[None, :], dx.to(DR.dtype.element_ty), mask=live)
        if HAS_WEIGHT:
            dw += dy * xhat
        if HAS_BIAS:
            db += dy
    if HAS_WEIGHT:
        tl.store(DW_PART + pid.to(tl.int64) * N + col, tl.sum(dw, 0), mask=live_col)
    if HAS_BIAS:
        tl.store(DB_PART + pid.to(tl.int64) * N + col, tl.sum(db, 0), mask=live_col)


@triton.jit
def _residual_add_kernel(X, R, S, n, BLOCK: tl.constexpr):
    # S = X + R over n contiguous elements, added in fp32 and stored in S's dtype: what torch's add
    # writes for these dtypes, read and written with full-width vector accesses where torch's
    # mixed-dtype add (fp32 stream + bf16 branch) takes its unrolled, casting path
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    x = tl.load(X + offs, mask=live, other=0.0).to(tl.float32)
    r = tl.load(R + offs, mask=live, other=0.0).to(tl.float32)
    tl.store(S + offs, (x + r).to(S.dtype.element_ty), mask=live)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def tiles(width: int, tile: int, per_thread: int) -> tuple[int, int, int]:
    """(BLOCK_M rows, BLOCK_N padded width, warps) of a tile of about ``tile`` elements of rows
    ``width`` wide (one row at least), ``per_thread`` elements a thread (at most 16 warps)."""
    block_n = triton.next_power_of_2(width)
    block_m = max(1, tile // block_n)
    return block_m, block_n, min(16, max(1, block_m * block_n // (32 * per_thread)))


def prefetch_fits(width: int) -> bool:
    """Whether the backward can hold the next tile's loads for rows ``width`` wide without spilling (up to
    ``BWD_PREFETCH_MAX_WIDTH``)."""
    return triton.next_power_of_2(width) <= BWD_PREFETCH_MAX_WIDTH


def prefetches(width: int) -> bool:
    """Whether the backward issues each tile's loads a step ahead for rows ``width`` wide: ``BWD_PREFETCH``, where
    it fits (``prefetch_fits``)."""
    return BWD_PREFETCH and prefetch_fits(width)


def row_groups(rows: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) of the backward pass: whole tiles per program, about
    BWD_PROGRAMS_PER_SM programs per SM (INTERPRET_PROGRAMS off the GPU)."""
    wanted = BWD_PROGRAMS_PER_SM * sm_count(device.index) if device.type == "cuda" else INTERPRET_PROGRAMS
    return split_rows(rows, block_m, wanted)


def split_rows(rows: int, block_m: int, wanted: int) -> tuple[int, int]:
    """(groups, rows per group): ``rows`` in about ``wanted`` groups of whole ``block_m``-row tiles, the last
    group short where they do not divide."""
    rows_per_group = triton.cdiv(triton.cdiv(rows, block_m), wanted) * block_m
    return triton.cdiv(rows, rows_per_group), rows_per_group


def new_buffer(shape, dtype, device, poison: bool) -> torch.Tensor:
    """An output buffer: empty, or NaN-filled under ``poison`` (tests: an element no program writes shows)."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _empty(shape, dtype, device) -> torch.Tensor:
    return new_buffer(shape, dtype, device, POISON)


def as_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, width) view of t (a copy only where the last dim is not contiguous)."""
    t = t.reshape(-1, width)
    return t if t.stride(-1) == 1 else t.contiguous()


def _check(x: torch.Tensor, weight, bias, out_dtype: torch.dtype) -> None:
    width = x.shape[-1]
    if x.dtype not in _DTYPES or out_dtype not in _DTYPES:
        raise ValueError(f"layer_norm kernel takes and writes float16, bfloat16 or float32; got x {x.dtype}, "
                         f"output {out_dtype}")
    if width > MAX_WIDTH:
        raise ValueError(f"layer_norm kernel handles rows up to {MAX_WIDTH} wide, got {width}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != (width,) or p.device != x.device):
            raise ValueError(f"{name} must be ({width},) on {x.device}, got {tuple(p.shape)} on {p.device}")


def _forward(x: torch.Tensor, weight, bias, eps: float, out_dtype: torch.dtype, residual: torch.Tensor | None = None):
    """(y in out_dtype with x's shape, mean (rows,), rstd (rows,), s) of LayerNorm over x's last dim;
    with ``residual``, of s = x + residual (stored in their promoted dtype, the 4th result; else None)."""
    _check(x, weight, bias, out_dtype)
    width = x.shape[-1]
    x2 = as_rows(x, width)  # (rows, D)
    rows = x2.shape[0]
    y = _empty(x.shape, out_dtype, x.device)
    mean = _empty((rows,), torch.float32, x.device)
    rstd = _empty((rows,), torch.float32, x.device)
    s = r2 = s2 = None
    if residual is not None:
        _check_residual(x, residual)
        r2 = as_rows(residual, width)
        s = _empty(x.shape, torch.result_type(x, residual), x.device)
        s2 = s.view(rows, width)
    block_m, block_n, warps = tiles(width, FWD_TILE, FWD_PER_THREAD)
    _layer_norm_fwd_kernel[(triton.cdiv(rows, block_m),)](
        x2, y, weight if weight is not None else x2, bias if bias is not None else x2, mean, rstd,
        r2 if r2 is not None else x2, s2 if s2 is not None else x2,
        x2.stride(0), width, r2.stride(0) if r2 is not None else 0, width, rows, eps,
        N=width, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return y, mean, rstd, s


def _backward(dy: torch.Tensor, x: torch.Tensor, weight, bias, mean: torch.Tensor, rstd: torch.Tensor,
              dx_more: torch.Tensor | None = None, branch_dtype: torch.dtype | None = None):
    """(dx in x's dtype, dweight, dbias in the parameters' dtypes or None where absent, dbranch).
    ``dx_more``: a gradient of x from elsewhere, added to dx in the kernel; ``branch_dtype``: dx also
    written in that dtype (dbranch, the gradient of a residual added in ``_forward``; None without)."""
    width = x.shape[-1]
    x2, dy2 = as_rows(x, width), as_rows(dy, width)  # (rows, D)
    rows = x2.shape[0]
    dx = _empty(x.shape, x.dtype, x.device)
    ds2 = as_rows(dx_more, width) if dx_more is not None else None
    dr = _empty(x.shape, branch_dtype, x.device) if branch_dtype not in (None, x.dtype) else None
    block_m, block_n, warps = tiles(width, BWD_TILE, BWD_PER_THREAD)
    programs, rows_per_program = row_groups(rows, block_m, x.device)
    part = lambda p: None if p is None else _empty((programs, width), torch.float32, x.device)  # noqa: E731
    dw_part, db_part = part(weight), part(bias)  # (programs, D) fp32 partial sums
    _layer_norm_bwd_kernel[(programs,)](
        x2, dy2, dx, weight if weight is not None else x2, mean, rstd,
        dw_part if dw_part is not None else x2, db_part if db_part is not None else x2,
        ds2 if ds2 is not None else x2, dr.view(rows, width) if dr is not None else x2,
        x2.stride(0), dy2.stride(0), width, ds2.stride(0) if ds2 is not None else 0, width, rows, rows_per_program,
        N=width, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_DS=ds2 is not None,
        HAS_DR=dr is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        PREFETCH=prefetches(width), num_warps=warps)
    dw = None if weight is None else dw_part.sum(0).to(weight.dtype)
    db = None if bias is None else db_part.sum(0).to(bias.dtype)
    dbranch = None if branch_dtype is None else dx if dr is None else dr
    return dx, dw, db, dbranch


def _check_residual(x: torch.Tensor, residual: torch.Tensor) -> None:
    if residual.shape != x.shape or residual.device != x.device or residual.dtype not in _DTYPES:
        raise ValueError(f"the residual added before the layer_norm must be x's shape {tuple(x.shape)} on {x.device} "
                         f"in float16, bfloat16 or float32; got {tuple(residual.shape)} {residual.dtype} on "
                         f"{residual.device}")


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


class _LayerNorm(torch.autograd.Function):
    """Eager autograd over the two kernels; under torch.compile ``megastride.kernels.layer_norm``
    calls torch's layer_norm instead (inductor fuses it with its neighbours itself)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, out_dtype: torch.dtype):
        y, mean, rstd, _ = _forward(x, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        return (*_backward(dy, x, weight, bias, mean, rstd)[:3], None, None)


class _AddLayerNorm(torch.autograd.Function):
    """(s, y) = (x + r, LayerNorm(x + r)) in one pass each way: the forward writes the sum and the
    normalised row together, the backward adds the sum's own incoming gradient (the residual stream
    past it) to the LayerNorm's dx in the kernel and writes the branch's gradient in r's dtype, where
    a plain ``s = x + r; y = ln(s)`` spends an add kernel each way and a cast."""

    @staticmethod
    def forward(ctx, x, r, weight, bias, eps: float, out_dtype: torch.dtype):
        y, mean, rstd, s = _forward(x, weight, bias, eps, out_dtype, residual=r)
        ctx.save_for_backward(s, weight, bias, mean, rstd)
        ctx.dtypes = (x.dtype, r.dtype)
        return s, y

    @staticmethod
    def backward(ctx, ds, dy):
        s, weight, bias, mean, rstd = ctx.saved_tensors
        x_dtype, r_dtype = ctx.dtypes  # ds, dy: zeros where unused (autograd materialises them)
        dx, dw, db, dr = _backward(dy, s, weight, bias, mean, rstd, dx_more=ds, branch_dtype=r_dtype)
        return dx.to(x_dtype), dr, dw, db, None, None


class _LayerNormKeep(torch.autograd.Function):
    """(y, x) = (LayerNorm(x), x as a view): for the pre-LN block's first LayerNorm, whose input also runs
    on down the residual stream. Its users take the view, so that stream's gradient of x reaches this
    backward beside y's, and the kernel adds it to dx; with x used twice directly, autograd sums the two
    gradients in an add kernel of its own (an fp32 read of two and a write at the stream's width)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, out_dtype: torch.dtype):
        y, mean, rstd, _ = _forward(x, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.set_materialize_grads(False)  # no zeros made for an output without a gradient
        return y, x.view_as(x)

    @staticmethod
    def backward(ctx, dy, dx_more):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if dy is None:  # y did not reach the loss: x's gradient is the stream's alone
            return dx_more, None, None, None, None
        dx, dw, db, _ = _backward(dy, x, weight, bias, mean, rstd, dx_more=dx_more)
        return dx, dw, db, None, None


class _ResidualAdd(torch.autograd.Function):
    """s = x + r (x, r contiguous, one shape) by ``_residual_add_kernel``; the gradient passes to both, in
    each one's dtype, as torch's add passes it."""

    @staticmethod
    def forward(ctx, x, r):
        s = torch.empty(x.shape, dtype=torch.result_type(x, r), device=x.device)
        n = s.numel()
        _residual_add_kernel[(triton.cdiv(n, ADD_BLOCK),)](x, r, s, n, BLOCK=ADD_BLOCK, num_warps=ADD_WARPS)
        ctx.dtypes = (x.dtype, r.dtype)
        return s

    @staticmethod
    def backward(ctx, ds):
        return each_dtype(ds, ctx.dtypes)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def triton_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                      out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LayerNorm of x over its last dim by the Triton kernels; differentiable in x, weight and bias.

    Math in fp32; y in ``out_dtype`` (default x's dtype), dx in x's dtype, dweight and dbias in the
    parameters' dtypes. x in float16, bfloat16 or float32, rows up to MAX_WIDTH wide.
    """
    return _LayerNorm.apply(x, weight, bias, float(eps), out_dtype or x.dtype)


def triton_add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                          bias: torch.Tensor | None, eps: float, out_dtype: torch.dtype | None = None):
    """(s, y): s = x + residual in their promoted dtype and y = LayerNorm(s) in ``out_dtype`` (default
    s's dtype), by the Triton kernels in one pass each way; differentiable in all four tensors."""
    out_dtype = out_dtype or torch.result_type(x, residual)
    return _AddLayerNorm.apply(x, residual, weight, bias, float(eps), out_dtype)


def triton_layer_norm_keep(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                           out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x as a view): ``triton_layer_norm``'s y, and x for the residual stream, whose gradient the
    backward adds to dx in the kernel (``_LayerNormKeep``)."""
    return _LayerNormKeep.apply(x, weight, bias, float(eps), out_dtype or x.dtype)


def triton_residual_add(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """x + r in their promoted dtype (as torch adds them) by one Triton kernel; x and r contiguous, one
    shape, float16, bfloat16 or float32; differentiable in both."""
    if x.shape != r.shape or x.device != r.device or not (x.is_contiguous() and r.is_contiguous()):
        raise ValueError(f"residual add kernel takes two contiguous tensors of one shape on one device; got "
                         f"{tuple(x.shape)} and {tuple(r.shape)}")
    if x.dtype not in _DTYPES or r.dtype not in _DTYPES:
        raise ValueError(f"residual add kernel takes float16, bfloat16 or float32; got {x.dtype} and {r.dtype}")
    return _ResidualAdd.apply(x, r)
