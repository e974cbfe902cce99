"""SiLU of a matrix product plus its bias in Triton, the bias's gradient summed in the SiLU's backward.

The FFN's first layer is ``silu(x W1^T + b1)`` (``engine.model.FeedForward``, the paper's GELU as a
scaled SiLU). Written as ``F.silu(F.linear(x, W1, b1))``, cuBLAS adds the bias in its epilogue and the
SiLU's backward writes the (T, ffn width) gradient dz, which the linear's backward then reads once more
for the bias's gradient alone (a column sum: at 1M tokens and width 2048, 4 GB read a block). Here the
product comes without the bias, and one kernel each way takes it:

* forward (``_bias_silu_fwd_kernel``): a = silu(z0 + b) in fp32, stored in a's dtype (the autocast dtype:
  the next product's input);
* backward (``_bias_silu_bwd_kernel``): dz = da * silu'(z0 + b), stored in z0's dtype, and, as for the
  LayerNorm's weights (``layernorm``), each program's fp32 column sums of dz over its rows, which a torch
  ``.sum(0)`` over the (row groups, width) partials turns into the bias's gradient. No atomics.

The sum z0 + b is never rounded to the 16-bit dtype (the epilogue rounds it once): the same function, to
rounding. Row offsets are int64 (T x width reaches 2**31 elements at 1M tokens and width 2048).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layernorm import _DTYPES, as_rows, new_buffer, split_rows
from .profiling import sm_count

# (rows, columns) of a program's tile, warps; the backward's row groups per SM (as the LayerNorm's)
FWD_BLOCK_M, FWD_BLOCK_N, FWD_WARPS = 8, 512, 8
BWD_BLOCK_M, BWD_BLOCK_N, BWD_WARPS = 8, 256, 8
BWD_PROGRAMS_PER_SM = 8
INTERPRET_ROW_GROUPS = 3  # without a GPU (the interpreter): several, to exercise the partials
POISON = False  # tests: fill every output buffer with NaN first, so an element no program writes shows


@triton.jit(do_not_specialize=["rows"])
def _bias_silu_fwd_kernel(Z0, B, A, rows, stride_z, stride_a, N: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = (row < rows)[:, None] & (col < N)[None, :]
    z = tl.load(Z0 + row[:, None] * stride_z + col[None, :], mask=live, other=0.0).to(tl.float32)
    z += tl.load(B + col, mask=col < N, other=0.0).to(tl.float32)[None, :]
    a = z * tl.sigmoid(z)
    tl.store(A + row[:, None] * stride_a + col[None, :], a.to(A.dtype.element_ty), mask=live)


@triton.jit(do_not_specialize=["rows", "rows_per_program"])
def _bias_silu_bwd_kernel(Z0, B, DA, DZ, DB_PART, rows, rows_per_program, stride_z, stride_da, stride_dz,
                          N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # program (g, c): rows [g * rows_per_program, ...) of column block c; dz of them, and their column sums
    # in DB_PART[g, columns]
    group = tl.program_id(0)
    first = group.to(tl.int64) * rows_per_program
    last = tl.minimum(first + rows_per_program, rows)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    live_col = col < N
    b = tl.load(B + col, mask=live_col, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(first, last, BLOCK_M):
        row = start + tl.arange(0, BLOCK_M)
        live = (row < last)[:, None] & live_col[None, :]
        z = tl.load(Z0 + row[:, None] * stride_z + col[None, :], mask=live, other=0.0).to(tl.float32) + b[None, :]
        da = tl.load(DA + row[:, None] * stride_da + col[None, :], mask=live, other=0.0).to(tl.float32)
        sg = tl.sigmoid(z)
        dz = da * sg * (1.0 + z * (1.0 - sg))  # silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z))); 0 where masked
        tl.store(DZ + row[:, None] * stride_dz + col[None, :], dz.to(DZ.dtype.element_ty), mask=live)
        acc += dz
    tl.store(DB_PART + group.to(tl.int64) * N + col, tl.sum(acc, 0), mask=live_col)


def _empty(shape, dtype, device) -> torch.Tensor:
    return new_buffer(shape, dtype, device, POISON)


def row_groups(rows: int, col_blocks: int, device: torch.device) -> tuple[int, int]:
    """(row groups, rows per group) of the backward: whole BWD_BLOCK_M tiles a group, about
    BWD_PROGRAMS_PER_SM programs an SM over the groups and column blocks together."""
    if device.type == "cuda":
        wanted = max(1, BWD_PROGRAMS_PER_SM * sm_count(device.index) // col_blocks)
    else:
        wanted = INTERPRET_ROW_GROUPS
    return split_rows(rows, BWD_BLOCK_M, wanted)


def _forward(z0: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    width = z0.shape[-1]
    z2 = as_rows(z0, width)
    rows = z2.shape[0]
    a = _empty(z0.shape, out_dtype, z0.device)
    grid = (triton.cdiv(rows, FWD_BLOCK_M), triton.cdiv(width, FWD_BLOCK_N))
    _bias_silu_fwd_kernel[grid](z2, bias, a, rows, z2.stride(0), width, N=width, BLOCK_M=FWD_BLOCK_M,
                                BLOCK_N=FWD_BLOCK_N, num_warps=FWD_WARPS)
    return a


def _backward(da: torch.Tensor, z0: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz in z0's dtype, the bias's gradient in its dtype)."""
    width = z0.shape[-1]
    z2, da2 = as_rows(z0, width), as_rows(da, width)
    rows = z2.shape[0]
    dz = _empty(z0.shape, z0.dtype, z0.device)
    col_blocks = triton.cdiv(width, BWD_BLOCK_N)
    groups, per = row_groups(rows, col_blocks, z0.device)
    part = _empty((groups, width), torch.float32, z0.device)
    _bias_silu_bwd_kernel[(groups, col_blocks)](z2, bias, da2, dz, part, rows, per, z2.stride(0), da2.stride(0), width,
                                                N=width, BLOCK_M=BWD_BLOCK_M, BLOCK_N=BWD_BLOCK_N, num_warps=BWD_WARPS)
    return dz, part.sum(0).to(bias.dtype)


def _check(z0: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype) -> None:
    width = z0.shape[-1]
    if z0.dtype not in _DTYPES or bias.dtype not in _DTYPES or out_dtype not in _DTYPES:
        raise ValueError(f"bias_silu kernel takes and writes float16, bfloat16 or float32; got z0 {z0.dtype}, bias "
                         f"{bias.dtype}, output {out_dtype}")
    if bias.shape != (width,) or bias.device != z0.device:
        raise ValueError(f"bias_silu: the bias must be ({width},) on {z0.device}, got {tuple(bias.shape)} on "
                         f"{bias.device}")


class _BiasSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z0, bias, out_dtype: torch.dtype):
        a = _forward(z0, bias, out_dtype)
        ctx.save_for_backward(z0, bias)
        return a

    @staticmethod
    def backward(ctx, da):
        z0, bias = ctx.saved_tensors
        dz, db = _backward(da, z0, bias)
        return dz, db, None


def triton_bias_silu(z0: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """silu(z0 + bias) over z0's last dim (fp32 math, stored in ``out_dtype``, default z0's dtype);
    differentiable in both, the bias's gradient summed in the SiLU's backward kernel."""
    out_dtype = out_dtype or z0.dtype
    _check(z0, bias, out_dtype)
    return _BiasSiLU.apply(z0, bias, out_dtype)
