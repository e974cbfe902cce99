"""The FFN's first layer, ``silu(x W^T + b)``, as one Triton matrix product whose epilogue adds the bias and applies
the SiLU (``MEGASTRIDE_FFN_GEMM=1``; off by default until timed against cuBLAS on a GPU).

By default (``ffn.linear_silu``) cuBLAS writes the product z0 = x W^T (T x ffn width, 16-bit) and a second kernel
(``bias_silu``) reads it back to write a = silu(z0 + b). At 1M tokens and width 2048 that is 4 GB written and
8 GB more moved per call, about 2.1 ms of the H200's bandwidth, sixty times a step (each block's forward and its
recompute): 126 ms of the 1M step's 8.05 s (docs/scaling.md, "Where the 8 s step goes now"). Here the product's
tiles stay in registers for the epilogue:

* a = silu(float(z0) + b) is stored in x's dtype (the autocast dtype), z0 rounded to that dtype first, so a is
  the function the default path computes, to the product's own rounding;
* z0 is stored too only where a backward will need it (``save``: gradients on), as ``bias_silu``'s backward reads
  it: under ``torch.no_grad`` (a recomputed block's first forward) the layer writes a alone;
* the backward is the default path's: ``bias_silu``'s kernel for dz and the bias's gradient, then cuBLAS for
  dx = dz W and dW = dz^T x.

Tiles: autotuned per (width, depth, bucketed rows) over the configs of ``TILES``, each with pointer loads and,
where TMA can take the operands (``tma_ok``), with TMA-descriptor loads; under the interpreter (CPU tests) one
small fixed tile. Row offsets are int64 (T x width passes 2**31 elements at 1M tokens).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .layernorm import as_rows, new_buffer

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): Triton's Hopper matmul tutorial's bf16 tiles and two around them
TILES = [(128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4)]
INTERPRET_TILE = (32, 32, 32)  # under the interpreter: small, several tiles each way in the tests' shapes
INTERPRET_DESC = False  # under the interpreter: pointer loads (tests set True to run the TMA-descriptor path)
GROUP_M = 8  # row tiles a group walks before the next column tile (L2 reuse of W's tiles)
POISON = False  # tests: fill every output buffer with NaN first, so an element no program writes shows
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def enabled() -> bool:
    """``MEGASTRIDE_FFN_GEMM``: unset or "0" off (the default), "1" on where the FFN's kernels run."""
    value = os.environ.get("MEGASTRIDE_FFN_GEMM", "")
    if value not in ("", "0", "1"):
        raise ValueError(f"MEGASTRIDE_FFN_GEMM must be unset, '0' or '1'; got {value!r}")
    return value == "1"


@triton.jit(do_not_specialize=["rows"])
def _linear_silu_kernel(X, W, B, Z0, A, rows, stride_x, stride_w, stride_z, stride_a, N: tl.constexpr,
                        K: tl.constexpr, SAVE_Z: tl.constexpr, IEEE: tl.constexpr, ROWS_BUCKET: tl.constexpr,
                        TMA_OK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP: tl.constexpr, DESC: tl.constexpr = False):
    # ROWS_BUCKET and TMA_OK: the autotuner's key and pruning only (``_bucket``, ``_prune``). DESC: x's and W's tiles
    # loaded by TMA descriptors (rows past the end come back as zeros), else by pointer loads under masks
    # program -> (row tile, column tile), GROUP row tiles a column tile before the next (grouped order)
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(rows, BLOCK_M)
    tiles_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP * tiles_n
    first_m = (pid // per_group) * GROUP
    size_m = tl.minimum(tiles_m - first_m, GROUP)
    tile_m = first_m + (pid % per_group) % size_m
    tile_n = (pid % per_group) // size_m
    row = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    live_row, live_col = row < rows, col < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if DESC:
        x_desc = tl.make_tensor_descriptor(X, shape=[rows, K], strides=[stride_x, 1], block_shape=[BLOCK_M, BLOCK_K])
        w_desc = tl.make_tensor_descriptor(W, shape=[N, K], strides=[stride_w, 1], block_shape=[BLOCK_N, BLOCK_K])
        for k in range(0, K, BLOCK_K):
            x = x_desc.load([tile_m * BLOCK_M, k])
            w = w_desc.load([tile_n * BLOCK_N, k])
            if IEEE:
                acc = tl.dot(x, w.T, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w.T, acc)
    else:
        ks = tl.arange(0, BLOCK_K)
        x_ptrs = X + row[:, None] * stride_x + ks[None, :]
        w_ptrs = W + col[None, :].to(tl.int64) * stride_w + ks[:, None]  # (BLOCK_K, BLOCK_N): a tile of W^T
        for k in range(0, K, BLOCK_K):
            x = tl.load(x_ptrs, mask=live_row[:, None] & (k + ks < K)[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=live_col[None, :] & (k + ks < K)[:, None], other=0.0)
            if IEEE:
                acc = tl.dot(x, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
    live = live_row[:, None] & live_col[None, :]
    z0 = acc.to(A.dtype.element_ty)  # the product as F.linear returns it, in x's dtype
    if SAVE_Z:
        tl.store(Z0 + row[:, None] * stride_z + col[None, :], z0, mask=live)
    z = z0.to(tl.float32) + tl.load(B + col, mask=live_col, other=0.0).to(tl.float32)[None, :]
    tl.store(A + row[:, None] * stride_a + col[None, :], (z * tl.sigmoid(z)).to(A.dtype.element_ty), mask=live)


def _bucket(rows: int) -> int:
    """Rows in factors of 4 from 8,192 (as the attention kernels' lengths): one tuning per bucket."""
    bucket, top = 0, 8192
    while rows > top:
        bucket, top = bucket + 1, top * 4
    return bucket


def _prune(configs, named_args, **kwargs):
    """The TMA-descriptor configs only where the launch can take them (``tma_ok``)."""
    return [c for c in configs if kwargs["TMA_OK"] or not c.kwargs["DESC"]]


def _autotuned():
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "DESC": desc}, num_warps=w, num_stages=s)
               for m, n, k, w, s in TILES for desc in (False, True)]
    return triton.autotune(configs, key=["N", "K", "SAVE_Z", "ROWS_BUCKET", "TMA_OK"],
                           prune_configs_by={"early_config_prune": _prune}, cache_results=True)(_linear_silu_kernel)


def tma_ok(x2: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x's and the weight's tiles can be TMA boxes: a Hopper or later GPU, compiled (not interpreted), both
    16-byte aligned with 16-byte row strides."""
    return (x2.is_cuda and not _INTERPRET and torch.version.hip is None
            and torch.cuda.get_device_capability(x2.device)[0] >= 9
            and all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in (x2, weight)))


_tuned = None


def _launch(x2, weight, bias, z0, a, save: bool) -> None:
    global _tuned
    rows, depth = x2.shape
    width = weight.shape[0]
    args = (x2, weight, bias, z0 if save else a, a, rows, x2.stride(0), weight.stride(0),
            (z0 if save else a).stride(0), a.stride(0))
    ieee = x2.dtype == torch.float32
    if _INTERPRET:
        bm, bn, bk = INTERPRET_TILE
        grid = (triton.cdiv(rows, bm) * triton.cdiv(width, bn),)
        _linear_silu_kernel[grid](*args, N=width, K=depth, SAVE_Z=save, IEEE=ieee, ROWS_BUCKET=0, TMA_OK=False,
                                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP=GROUP_M, DESC=INTERPRET_DESC)
        return
    if _tuned is None:
        _tuned = _autotuned()
    tma = tma_ok(x2, weight)
    if tma:
        from .blocksparse import _ensure_allocator  # the descriptors are built on the device: Triton's scratch

        _ensure_allocator()
    grid = lambda m: (triton.cdiv(rows, m["BLOCK_M"]) * triton.cdiv(width, m["BLOCK_N"]),)  # noqa: E731
    _tuned[grid](*args, N=width, K=depth, SAVE_Z=save, IEEE=ieee, ROWS_BUCKET=_bucket(rows), TMA_OK=tma, GROUP=GROUP_M)


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, save: bool):
    """(a, z0 or None): a = silu(x weight^T + bias) in x's dtype; z0 = x weight^T (x's dtype) where ``save``."""
    depth, width = x.shape[-1], weight.shape[0]
    x2 = as_rows(x, depth)
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    shape = (*x.shape[:-1], width)
    a = new_buffer(shape, x.dtype, x.device, POISON)
    z0 = new_buffer(shape, x.dtype, x.device, POISON) if save else None
    if x2.shape[0]:
        _launch(x2, w, bias, z0.view(-1, width) if save else None, a.view(-1, width), save)
    return a, z0


def check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """One-line errors for inputs the kernel does not take."""
    if x.dtype not in _DTYPES or weight.dtype != x.dtype or bias.dtype not in _DTYPES:
        raise ValueError(f"ffn_gemm takes x and weight in one of float16, bfloat16, float32 and a float bias; got x "
                         f"{x.dtype}, weight {weight.dtype}, bias {bias.dtype}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1] or bias.shape != (weight.shape[0],):
        raise ValueError(f"ffn_gemm: x (..., {x.shape[-1]}) needs weight (N, {x.shape[-1]}) and bias (N,); got "
                         f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
    if not (x.device == weight.device == bias.device):
        raise ValueError(f"ffn_gemm: x, weight and bias on one device; got {x.device}, {weight.device}, "
                         f"{bias.device}")


class _LinearSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        a, z0 = _forward(x, weight, bias, save=True)
        ctx.save_for_backward(x, weight, z0, bias)
        return a

    @staticmethod
    def backward(ctx, da):
        from .bias_silu import _backward as bias_silu_backward

        x, weight, z0, bias = ctx.saved_tensors
        dz, db = bias_silu_backward(da, z0, bias)
        dz2 = dz.reshape(-1, dz.shape[-1])
        dx = (dz2 @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
        dw = dz2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        return dx, dw, db if ctx.needs_input_grad[2] else None


def linear_bias_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """silu(x weight^T + bias) in x's dtype (x and weight in one dtype: cast them to the autocast dtype first),
    the bias added and the SiLU applied in the product's epilogue; differentiable in all three. Without gradients
    (``torch.no_grad`` or no input requiring them) only a is written."""
    check(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return _LinearSiLU.apply(x, weight, bias)
    return _forward(x, weight, bias, save=False)[0]


def chosen() -> dict[str, str]:
    """The autotuner's choices so far: its key (width, depth, z0 stored, rows bucket, ...) -> the config."""
    if _tuned is None:
        return {}
    return {str(key): str(config) for key, config in getattr(_tuned, "cache", {}).items()}
