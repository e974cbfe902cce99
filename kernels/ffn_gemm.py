"""The FFN's first layer as one Triton matrix product each way, its bias and SiLU in the products' epilogues
(``MEGASTRIDE_FFN_GEMM=1`` everywhere; by default, ``nograd``, only for the forward where no gradient is recorded:
on an H100 at 1M rows the forward without gradients ran 8% faster than cuBLAS and the SiLU kernel, the forward and
backward 0.7% slower, docs/kernels.md; ``0`` never).

By default (``ffn.linear_silu``) cuBLAS writes the product z0 = x W1^T (T x ffn width, 16-bit) and a second kernel
(``bias_silu``) reads it back to write a = silu(z0 + b1); in the backward proj's product writes da = dY W2 and
``bias_silu``'s backward reads it back with z0 to write dz. At 1M tokens and width 2048 each of those round trips
moves 8-13 GB: the two SiLU kernels took 229 ms of the 1M step's 8.05 s (docs/scaling.md, "Where the 8 s step goes
now"). Here:

* forward (``_linear_silu_kernel``): fc's product, whose tiles stay in registers for the epilogue: a =
  silu(float(z0) + b1) stored in x's dtype (the autocast dtype), z0 rounded to that dtype first, so a is the
  function the default path computes, to the product's own rounding; z0 stored too only where a backward will
  read it (gradients on): under ``torch.no_grad`` (a recomputed block's first forward) the layer writes a alone;
* backward (``_silu_grad_kernel``): dz = (dY W2) * silu'(z0 + b1), the product with proj's weight in registers,
  its epilogue also summing each row tile's dz columns in fp32 (b1's gradient once those partials are summed: no
  atomics); da is never stored. The weights' products (dW1, dW2) and dx stay cuBLAS's.

``feed_forward`` is the model's FFN as one autograd node (proj's forward product by cuBLAS, or left uncomputed
for the recompute that never reads it); ``linear_bias_silu`` is the first layer alone (its backward the default
path's). Tiles: autotuned per (width, depth, bucketed rows) over ``TILES`` (forward) and ``GRAD_TILES`` (dz),
each by pointer loads and stores and, where TMA can take the operands and outputs (``tma_ok``), by TMA descriptors
(the products' tiles and the epilogues'; the dz kernel also at ``GRAD_TMA_TILES``), and as persistent programs
(``PERSIST_TILES``, ``GRAD_PERSIST_TILES``: TMA, the H100's choice at 1M rows); under the interpreter (CPU tests)
one small fixed tile, by pointers, descriptors or three persistent programs. Row offsets are int64 (T x width
passes 2**31 elements at 1M tokens).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .blocksparse import _bucket, _ensure_allocator, gpu_sms  # rows bucketed as the attention's lengths; Triton's
# scratch; the GPU's multiprocessors
from .layernorm import as_rows, new_buffer

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): Triton's Hopper matmul tutorial's bf16 tiles and two around them
TILES = [(128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4)]
# the backward's dz kernel holds z0's tile and dz beside the product (its column sums too): the tiles above spill
# 8-1,436 B there on sm_90; these compile without spills (``ffn_check --compile``)
GRAD_TILES = [(64, 128, 64, 4, 4), (64, 128, 64, 4, 3), (64, 256, 64, 8, 4), (128, 64, 64, 8, 4)]
# ... and these with TMA descriptors only, whose epilogue holds far fewer registers (z0's tile arrives as a box):
# spill-free there, 8-1,436 B of spills by pointers
GRAD_TMA_TILES = [(128, 128, 64, 8, 4), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3)]
# persistent programs (TMA only; ``PERSIST_TILES`` forward, ``GRAD_PERSIST_TILES`` dz), (BLOCK_M, BLOCK_N, BLOCK_K,
# warps, stages, programs per SM): each program walks tiles a grid's width apart in one loop flattened with the depth
# loop (``tl.range(..., flatten=True)``), so the next tile's loads are in flight during this one's epilogue; at depth
# 512 a tile is 8 steps of its product and then an epilogue that reads and writes as much as the product's operands
PERSIST_TILES = [(128, 256, 64, 8, 3, 1), (128, 128, 64, 8, 4, 1), (128, 128, 64, 4, 2, 2)]
GRAD_PERSIST_TILES = [(128, 128, 64, 8, 3, 1), (128, 128, 64, 8, 4, 1), (64, 128, 64, 4, 3, 2)]
# persistent and warp-specialised by Triton (``tl.range(..., warp_specialize=True)``: a loading warp group and two
# computing ones, 12 warps, one program an SM), (BLOCK_M, BLOCK_N, BLOCK_K, warps of a group, stages): the tiles
# Triton 3.6 partitions on sm_90 without spills (``ffn_check --compile``; the dz kernel's 128-row tiles fail there)
WS_TILES = [(128, 128, 64, 4, 3), (128, 128, 64, 4, 2), (64, 128, 64, 4, 4)]
GRAD_WS_TILES = [(64, 128, 64, 4, 3), (64, 128, 64, 4, 4)]
INTERPRET_TILE = (32, 32, 32)  # under the interpreter: small, several tiles each way in the tests' shapes
INTERPRET_DESC = False  # under the interpreter: pointers (tests set True: TMA descriptors where ``_aligned``)
INTERPRET_PERSIST = 0  # under the interpreter: >0 (tests) that many persistent programs, TMA descriptors, as on sm_90
INTERPRET_WS = False  # ... their loop marked for warp specialisation (the interpreter runs it as written)
GROUP_M = 8  # row tiles a group walks before the next column tile (L2 reuse of W's tiles)
POISON = False  # tests: fill every output buffer with NaN first, so an element no program writes shows
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def mode() -> str:
    """``MEGASTRIDE_FFN_GEMM``: unset or "nograd" (the default) only where no gradient is recorded ("nograd": a
    recomputed block's first forward, evaluation and sampling), where the forward in one product ran 8% faster
    than cuBLAS and the SiLU kernel at 1M rows (on an H100) and took 35 ms off the fixed 1M step on an H200; "1"
    everywhere the FFN's kernels run ("on": the one-product backward did not gain); "0" never ("off")."""
    value = os.environ.get("MEGASTRIDE_FFN_GEMM", "")
    if value not in ("", "0", "1", "nograd"):
        raise ValueError(f"MEGASTRIDE_FFN_GEMM must be unset, '0', '1' or 'nograd'; got {value!r}")
    return {"": "nograd", "0": "off", "1": "on"}.get(value, value)


def enabled() -> bool:
    """Whether ``MEGASTRIDE_FFN_GEMM`` is "1" (``mode``)."""
    return mode() == "on"


@triton.jit
def _tile(rows, N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """This program's (row tile, column tile) and the tile's row (int64) and column offsets (``_tile_at``)."""
    return _tile_at(tl.program_id(0), rows, N, BLOCK_M, BLOCK_N, GROUP)


@triton.jit
def _tile_at(pid, rows, N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Tile ``pid``'s (row tile, column tile), GROUP row tiles a column tile before the next (grouped order: the
    weight's tiles reused from L2), and the tile's row (int64) and column offsets."""
    tiles_m = tl.cdiv(rows, BLOCK_M)
    tiles_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP * tiles_n
    first_m = (pid // per_group) * GROUP
    size_m = tl.minimum(tiles_m - first_m, GROUP)
    tile_m = first_m + (pid % per_group) % size_m
    tile_n = (pid % per_group) // size_m
    return (tile_m, tile_n, tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M),
            tile_n * BLOCK_N + tl.arange(0, BLOCK_N))


@triton.jit
def _product(X, W, rows, stride_x, stride_w, tile_m, tile_n, row, col, N: tl.constexpr, K: tl.constexpr,
             W_KN: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr, DESC: tl.constexpr):
    """The fp32 (BLOCK_M, BLOCK_N) tile of X W^T (W (N, K) rows: fc's weight) or, with W_KN, of X W (W (K, N):
    proj's weight), X (rows, K). DESC: the operands' tiles loaded by TMA descriptors (rows past the end come back
    as zeros), else by pointer loads under masks."""
    if DESC:
        x_desc = _boxes(X, rows, K, stride_x, BLOCK_M, BLOCK_K)
        if W_KN:
            w_desc = _boxes(W, K, N, stride_w, BLOCK_K, BLOCK_N)
        else:
            w_desc = _boxes(W, N, K, stride_w, BLOCK_N, BLOCK_K)
        acc = _desc_product(x_desc, w_desc, tile_m, tile_n, K, W_KN, IEEE, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        ks = tl.arange(0, BLOCK_K)
        live_row, live_col = row < rows, col < N
        x_ptrs = X + row[:, None] * stride_x + ks[None, :]
        if W_KN:
            w_ptrs = W + ks[:, None].to(tl.int64) * stride_w + col[None, :]
            w_step = BLOCK_K * stride_w
        else:
            w_ptrs = W + col[None, :].to(tl.int64) * stride_w + ks[:, None]  # (BLOCK_K, BLOCK_N): a tile of W^T
            w_step = BLOCK_K
        for k in range(0, K, BLOCK_K):
            x = tl.load(x_ptrs, mask=live_row[:, None] & (k + ks < K)[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=(k + ks < K)[:, None] & live_col[None, :], other=0.0)
            acc = _dot(x, w, acc, IEEE)
            x_ptrs += BLOCK_K
            w_ptrs += w_step
    return acc


@triton.jit
def _boxes(P, rows, cols, stride, BOX_R: tl.constexpr, BOX_C: tl.constexpr):
    """A TMA descriptor of P's (rows, cols) rows ``stride`` elements apart, in (BOX_R, BOX_C) boxes."""
    return tl.make_tensor_descriptor(P, shape=[rows, cols], strides=[stride, 1], block_shape=[BOX_R, BOX_C])


@triton.jit
def _dot(x, w, acc, IEEE: tl.constexpr):
    """acc + x w, in fp32 at full precision where IEEE (fp32 operands), else on the tensor cores."""
    if IEEE:
        return tl.dot(x, w, acc, input_precision="ieee")
    else:
        return tl.dot(x, w, acc)


@triton.jit
def _tiles(rows, N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """How many (BLOCK_M, BLOCK_N) tiles cover (rows, N)."""
    return tl.cdiv(rows, BLOCK_M) * ((N + BLOCK_N - 1) // BLOCK_N)


@triton.jit
def _desc_product(x_desc, w_desc, tile_m, tile_n, K: tl.constexpr, W_KN: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The fp32 (BLOCK_M, BLOCK_N) tile (tile_m, tile_n) of X W^T (w_desc over W (N, K)) or, with W_KN, of X W
    (w_desc over W (K, N)), X's and W's tiles by descriptors made once (the persistent programs')."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, K, BLOCK_K):
        x = x_desc.load([tile_m * BLOCK_M, k])
        if W_KN:
            w = w_desc.load([k, tile_n * BLOCK_N])
        else:
            w = w_desc.load([tile_n * BLOCK_N, k]).T
        acc = _dot(x, w, acc, IEEE)
    return acc


@triton.jit
def _store_tile(P, value, rows, stride, tile_m, tile_n, row, col, N: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, DESC: tl.constexpr):
    """value into P's (rows, N) tile: a TMA box store with DESC (rows past the end dropped), else masked stores."""
    if DESC:
        desc = _boxes(P, rows, N, stride, BLOCK_M, BLOCK_N)
        desc.store([tile_m * BLOCK_M, tile_n * BLOCK_N], value.to(P.dtype.element_ty))
    else:
        live = (row < rows)[:, None] & (col < N)[None, :]
        tl.store(P + row[:, None] * stride + col[None, :], value.to(P.dtype.element_ty), mask=live)


@triton.jit
def _load_tile(P, rows, stride, tile_m, tile_n, row, col, N: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, DESC: tl.constexpr):
    """P's (rows, N) tile: a TMA box load with DESC (rows past the end read as zeros), else masked loads."""
    if DESC:
        desc = _boxes(P, rows, N, stride, BLOCK_M, BLOCK_N)
        return desc.load([tile_m * BLOCK_M, tile_n * BLOCK_N])
    else:
        live = (row < rows)[:, None] & (col < N)[None, :]
        return tl.load(P + row[:, None] * stride + col[None, :], mask=live, other=0.0)


@triton.jit(do_not_specialize=["rows", "ROWS_BUCKET", "TMA_OK"])
def _linear_silu_kernel(X, W, B, Z0, A, rows, stride_x, stride_w, stride_z, stride_a, N: tl.constexpr,
                        K: tl.constexpr, SAVE_Z: tl.constexpr, IEEE: tl.constexpr, ROWS_BUCKET,
                        TMA_OK, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP: tl.constexpr, DESC: tl.constexpr = False, PERSIST: tl.constexpr = False,
                        OCC: tl.constexpr = 1, WS: tl.constexpr = False):
    # a = silu(X W^T + B) for a (BLOCK_M, BLOCK_N) tile (and z0 = X W^T where SAVE_Z). ROWS_BUCKET and TMA_OK: the
    # autotuner's key and pruning only (``_bucket``, ``_prune``), plain ints so that no value compiles a kernel again.
    # PERSIST (TMA descriptors only): every tile a grid's width apart, in one loop flattened with the depth loop, or
    # with WS warp-specialised by Triton instead (a loading warp group and two computing ones taking turns, so one's
    # epilogue runs under the other's products); OCC (programs per SM) sizes the grid only
    if PERSIST:
        x_desc = _boxes(X, rows, K, stride_x, BLOCK_M, BLOCK_K)
        w_desc = _boxes(W, N, K, stride_w, BLOCK_N, BLOCK_K)
        a_desc = _boxes(A, rows, N, stride_a, BLOCK_M, BLOCK_N)
        if SAVE_Z:
            z_desc = _boxes(Z0, rows, N, stride_z, BLOCK_M, BLOCK_N)
        for t in tl.range(tl.program_id(0), _tiles(rows, N, BLOCK_M, BLOCK_N), tl.num_programs(0), flatten=not WS,
                          warp_specialize=WS):
            tile_m, tile_n, row, col = _tile_at(t, rows, N, BLOCK_M, BLOCK_N, GROUP)
            acc = _desc_product(x_desc, w_desc, tile_m, tile_n, K, False, IEEE, BLOCK_M, BLOCK_N, BLOCK_K)
            z0 = acc.to(A.dtype.element_ty)
            if SAVE_Z:
                z_desc.store([tile_m * BLOCK_M, tile_n * BLOCK_N], z0)
            z = z0.to(tl.float32) + tl.load(B + col, mask=col < N, other=0.0).to(tl.float32)[None, :]
            a_desc.store([tile_m * BLOCK_M, tile_n * BLOCK_N], (z * tl.sigmoid(z)).to(A.dtype.element_ty))
        return
    tile_m, tile_n, row, col = _tile(rows, N, BLOCK_M, BLOCK_N, GROUP)
    acc = _product(X, W, rows, stride_x, stride_w, tile_m, tile_n, row, col, N, K, False, IEEE, BLOCK_M, BLOCK_N,
                   BLOCK_K, DESC)
    z0 = acc.to(A.dtype.element_ty)  # the product as F.linear returns it, in x's dtype
    if SAVE_Z:
        _store_tile(Z0, z0, rows, stride_z, tile_m, tile_n, row, col, N, BLOCK_M, BLOCK_N, DESC)
    z = z0.to(tl.float32) + tl.load(B + col, mask=col < N, other=0.0).to(tl.float32)[None, :]
    _store_tile(A, z * tl.sigmoid(z), rows, stride_a, tile_m, tile_n, row, col, N, BLOCK_M, BLOCK_N, DESC)


@triton.jit(do_not_specialize=["rows", "ROWS_BUCKET", "TMA_OK"])
def _silu_grad_kernel(DY, W, Z0, B, DZ, DB_PART, rows, stride_dy, stride_w, stride_z, stride_dz, N: tl.constexpr,
                      K: tl.constexpr, IEEE: tl.constexpr, ROWS_BUCKET, TMA_OK,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
                      DESC: tl.constexpr = False, PERSIST: tl.constexpr = False, OCC: tl.constexpr = 1,
                      WS: tl.constexpr = False):
    # The FFN's backward through proj and the SiLU in one product: da = dY W (dY (rows, K), W proj's (K, N) weight)
    # stays in registers, dz = da * silu'(z0 + b) is stored, and each tile's fp32 column sums of dz go to its row
    # of DB_PART (tiles_m, N): the bias's gradient once summed over them (no atomics). PERSIST, OCC and WS: as the
    # forward's
    if PERSIST:
        dy_desc = _boxes(DY, rows, K, stride_dy, BLOCK_M, BLOCK_K)
        w_desc = _boxes(W, K, N, stride_w, BLOCK_K, BLOCK_N)
        z_desc = _boxes(Z0, rows, N, stride_z, BLOCK_M, BLOCK_N)
        dz_desc = _boxes(DZ, rows, N, stride_dz, BLOCK_M, BLOCK_N)
        for t in tl.range(tl.program_id(0), _tiles(rows, N, BLOCK_M, BLOCK_N), tl.num_programs(0), flatten=not WS,
                          warp_specialize=WS):
            tile_m, tile_n, row, col = _tile_at(t, rows, N, BLOCK_M, BLOCK_N, GROUP)
            acc = _desc_product(dy_desc, w_desc, tile_m, tile_n, K, True, IEEE, BLOCK_M, BLOCK_N, BLOCK_K)
            live_col = col < N
            live = (row < rows)[:, None] & live_col[None, :]
            z = z_desc.load([tile_m * BLOCK_M, tile_n * BLOCK_N]).to(tl.float32)
            z += tl.load(B + col, mask=live_col, other=0.0).to(tl.float32)[None, :]
            sg = tl.sigmoid(z)
            dz = tl.where(live, acc * sg * (1.0 + z * (1.0 - sg)), 0.0)
            dz_desc.store([tile_m * BLOCK_M, tile_n * BLOCK_N], dz.to(DZ.dtype.element_ty))
            tl.store(DB_PART + tile_m.to(tl.int64) * N + col, tl.sum(dz, 0), mask=live_col)
        return
    tile_m, tile_n, row, col = _tile(rows, N, BLOCK_M, BLOCK_N, GROUP)
    acc = _product(DY, W, rows, stride_dy, stride_w, tile_m, tile_n, row, col, N, K, True, IEEE, BLOCK_M, BLOCK_N,
                   BLOCK_K, DESC)
    live_col = col < N
    live = (row < rows)[:, None] & live_col[None, :]
    z = _load_tile(Z0, rows, stride_z, tile_m, tile_n, row, col, N, BLOCK_M, BLOCK_N, DESC).to(tl.float32)
    z += tl.load(B + col, mask=live_col, other=0.0).to(tl.float32)[None, :]
    sg = tl.sigmoid(z)
    dz = tl.where(live, acc * sg * (1.0 + z * (1.0 - sg)), 0.0)  # silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))
    _store_tile(DZ, dz, rows, stride_dz, tile_m, tile_n, row, col, N, BLOCK_M, BLOCK_N, DESC)
    tl.store(DB_PART + tile_m.to(tl.int64) * N + col, tl.sum(dz, 0), mask=live_col)


def compiles_at(config, depth: int) -> bool:
    """Whether ``config`` compiles at this depth (K): a warp-specialised one needs a depth loop of two steps or
    more. At one step (K <= BLOCK_K: a model of d_model 64 or less) the loop folds away and Triton 3.6's
    warp-specialisation pass aborts the 128-row forward's compile on sm_90 ("operation destroyed but still has
    uses"; found by the GPU tests of 2026-12-06, and by ``ffn_check.gemm_compile_report`` at depths 32 and 64)."""
    return not (config.kwargs["WS"] and depth <= config.kwargs["BLOCK_K"])


def _prune(configs, named_args, **kwargs):
    """The TMA-descriptor configs (the persistent ones among them) only where the launch can take them
    (``tma_ok``), and only those that compile at the launch's depth (``compiles_at``)."""
    return [c for c in configs if (kwargs["TMA_OK"] or not c.kwargs["DESC"]) and compiles_at(c, kwargs["K"])]


def configs(kernel) -> list:
    """``kernel``'s autotuning list (``triton.Config``): ``TILES`` for the forward (``GRAD_TILES``, and with TMA
    only ``GRAD_TMA_TILES``, for dz), each by pointers and by TMA descriptors; then the persistent programs
    (``PERSIST_TILES``, ``GRAD_PERSIST_TILES``) and the warp-specialised ones (``WS_TILES``, ``GRAD_WS_TILES``)."""
    forward = kernel is _linear_silu_kernel
    tiles = [(t + (1,), desc, False, False) for t in (TILES if forward else GRAD_TILES) for desc in (False, True)]
    tiles += [] if forward else [(t + (1,), True, False, False) for t in GRAD_TMA_TILES]
    tiles += [(t, True, True, False) for t in (PERSIST_TILES if forward else GRAD_PERSIST_TILES)]
    tiles += [(t + (1,), True, True, True) for t in (WS_TILES if forward else GRAD_WS_TILES)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "DESC": desc, "PERSIST": persist, "OCC": occ,
                           "WS": ws}, num_warps=w, num_stages=s)
            for (m, n, k, w, s, occ), desc, persist, ws in tiles]


@functools.cache
def _smallest_block_m(kernel) -> int:
    """The fewest rows a tile of ``kernel``'s autotuning list has (the most row tiles a launch may write)."""
    return min(c.kwargs["BLOCK_M"] for c in configs(kernel))


def _autotuned(kernel):
    """``kernel`` autotuned over ``configs(kernel)``, the TMA ones pruned where the launch cannot take them. The
    dz kernel's column sums go to a zeroed buffer, ``DB_PART``, which the tuner zeroes again before each trial and
    after its last: a trial with fewer rows per tile writes more of its rows than the chosen config then
    overwrites, and the bias's gradient sums them all."""
    forward = kernel is _linear_silu_kernel
    key = ["N", "K", "SAVE_Z", "ROWS_BUCKET", "TMA_OK"] if forward else ["N", "K", "ROWS_BUCKET", "TMA_OK"]
    return triton.autotune(configs(kernel), key=key, prune_configs_by={"early_config_prune": _prune},
                           reset_to_zero=None if forward else ["DB_PART"], cache_results=True)(kernel)


def _aligned(*tensors: torch.Tensor) -> bool:
    """Whether the (rows, columns) tensors can be TMA boxes' sources: 16-byte aligned, 16-byte row strides."""
    return all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in tensors)


def tma_ok(*tensors: torch.Tensor) -> bool:
    """Whether a launch's operands' and outputs' tiles can be TMA boxes: a Hopper or later GPU, compiled (not
    interpreted), every one ``_aligned``."""
    first = tensors[0]
    return (first.is_cuda and not _INTERPRET and torch.version.hip is None
            and torch.cuda.get_device_capability(first.device)[0] >= 9 and _aligned(*tensors))


_TUNED: dict = {}  # kernel -> its autotuner, made at its first launch
FORCED: dict = {}  # kernel -> a config of ``configs(kernel)`` its launches take instead of the autotuner's (tests)


def _run(kernel, args, rows: int, width: int, operands, **consts) -> None:
    """One launch of ``kernel`` over (rows, width) output tiles: under the interpreter at ``INTERPRET_TILE`` (TMA
    descriptors with ``INTERPRET_DESC`` where ``operands`` are aligned for them), else autotuned, TMA configs only
    where ``tma_ok(*operands)``."""
    if _INTERPRET:
        bm, bn, bk = INTERPRET_TILE
        tiles = triton.cdiv(rows, bm) * triton.cdiv(width, bn)
        persist = INTERPRET_PERSIST > 0 and _aligned(*operands)
        kernel[(min(tiles, INTERPRET_PERSIST) if persist else tiles,)](
            *args, **consts, ROWS_BUCKET=0, TMA_OK=0, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP=GROUP_M,
            DESC=persist or (INTERPRET_DESC and _aligned(*operands)), PERSIST=persist, WS=persist and INTERPRET_WS)
        return
    if kernel not in _TUNED:
        _TUNED[kernel] = _autotuned(kernel)
    tma = tma_ok(*operands)
    if tma:
        _ensure_allocator()  # the descriptors are built on the device: Triton's global scratch
    sms = gpu_sms(operands[0])

    def grid(m):
        tiles = triton.cdiv(rows, m["BLOCK_M"]) * triton.cdiv(width, m["BLOCK_N"])
        return (min(tiles, sms * m["OCC"]) if m["PERSIST"] else tiles,)
    forced = FORCED.get(kernel)
    if forced is not None:
        if forced.kwargs["DESC"] and not tma:
            raise ValueError(f"ffn_gemm: the forced config {forced} needs TMA descriptors, which this launch "
                             f"cannot take")
        if not compiles_at(forced, consts["K"]):
            raise ValueError(f"ffn_gemm: the forced config {forced} is warp-specialised, which needs a depth of "
                             f"more than its BLOCK_K; this launch's is {consts['K']}")
        kernel[grid(forced.kwargs)](*args, **consts, ROWS_BUCKET=_bucket(rows), TMA_OK=int(tma), GROUP=GROUP_M,
                                    **forced.all_kwargs())
        return
    _TUNED[kernel][grid](*args, **consts, ROWS_BUCKET=_bucket(rows), TMA_OK=int(tma), GROUP=GROUP_M)


def _launch(x2, weight, bias, z0, a, save: bool) -> None:
    rows, depth = x2.shape
    width = weight.shape[0]
    z = z0 if save else a  # not written without SAVE_Z
    args = (x2, weight, bias, z, a, rows, x2.stride(0), weight.stride(0), z.stride(0), a.stride(0))
    operands = (x2, weight, a, z0) if save else (x2, weight, a)  # what the TMA descriptors would address
    _run(_linear_silu_kernel, args, rows, width, operands, N=width, K=depth, SAVE_Z=save,
         IEEE=x2.dtype == torch.float32)


def _silu_grad(dy2: torch.Tensor, w2: torch.Tensor, z0: torch.Tensor, bias: torch.Tensor):
    """(dz in z0's dtype, the bias's gradient in its dtype) of a = silu(z0 + bias) and y = a w2^T + ...: dz =
    (dy2 w2) * silu'(z0 + bias), the product never stored (``_silu_grad_kernel``)."""
    rows, depth = dy2.shape
    width = w2.shape[1]
    z2 = as_rows(z0, width)
    dz = new_buffer(z0.shape, z0.dtype, z0.device, POISON)
    smallest_m = INTERPRET_TILE[0] if _INTERPRET else _smallest_block_m(_silu_grad_kernel)
    part = torch.zeros((triton.cdiv(rows, smallest_m), width), dtype=torch.float32, device=z0.device)
    dz2 = dz.view(-1, width)
    if rows:
        args = (dy2, w2, z2, bias, dz2, part, rows, dy2.stride(0), w2.stride(0), z2.stride(0), width)
        _run(_silu_grad_kernel, args, rows, width, (dy2, w2, z2, dz2), N=width, K=depth,
             IEEE=dy2.dtype == torch.float32)
    return dz, part.sum(0).to(bias.dtype)


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


class _FeedForward(torch.autograd.Function):
    """y = silu(x w1^T + b1) w2^T + b2 (proj's product left uncomputed with ``unread``, as the model's
    recompute asks), the first layer in one kernel each way: forward ``_linear_silu_kernel`` (z0 and a kept), and
    backward ``_silu_grad_kernel`` (dz from dy and w2, da never stored) beside cuBLAS's products for the weights."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, unread: bool):
        a, z0 = _forward(x, w1, b1, save=True)
        y = a.new_empty(*a.shape[:-1], w2.shape[0]) if unread else torch.nn.functional.linear(a, w2, b2)
        ctx.save_for_backward(x, w1, z0, b1, a, w2)
        ctx.has_b2 = b2 is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w1, z0, b1, a, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        dy2 = as_rows(dy.to(w2.dtype), dy.shape[-1])
        db2 = dy2.sum(0, dtype=torch.float32).to(w2.dtype) if ctx.has_b2 and need[4] else None
        dw2 = dy2.t() @ a.reshape(-1, a.shape[-1]) if need[3] else None
        dz, db1 = _silu_grad(dy2, w2 if w2.stride(-1) == 1 else w2.contiguous(), z0, b1)
        dz2 = dz.view(-1, dz.shape[-1])
        dw1 = dz2.t() @ x.reshape(-1, x.shape[-1]) if need[1] else None
        dx = (dz2 @ w1).view(x.shape) if need[0] else None
        return dx, dw1, db1 if need[2] else None, dw2, db2, None


def feed_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor | None,
                 unread: bool = False) -> torch.Tensor:
    """silu(x w1^T + b1) w2^T + b2, x, w1 and w2 (and b2) in one dtype (cast them to the autocast dtype first), b1
    any float dtype; the first layer in one Triton kernel each way (its bias and SiLU in the product's epilogue,
    its backward's product with proj's weight in dz's kernel). ``unread``: proj's product is not computed (its
    output allocated; the backward as usual). Without gradients only a and y are written."""
    check(x, w1, b1)
    bad_b2 = b2 is not None and (b2.shape != (w2.shape[0],) or b2.dtype != x.dtype)
    if w2.dtype != x.dtype or w2.dim() != 2 or w2.shape[1] != w1.shape[0] or bad_b2:
        raise ValueError(f"ffn_gemm: proj's weight must be (D, {w1.shape[0]}) in {x.dtype} and its bias (D,); got "
                         f"{tuple(w2.shape)} {w2.dtype}, bias {None if b2 is None else tuple(b2.shape)}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w1, b1, w2, b2)):
        return _FeedForward.apply(x, w1, b1, w2, b2, unread)
    a = _forward(x, w1, b1, save=False)[0]
    return torch.nn.functional.linear(a, w2, b2)


def chosen() -> dict[str, str]:
    """The autotuners' choices so far: the kernel and its key (width, depth, z0 stored, rows bucket, ...) -> the
    config."""
    out = {}
    for kernel, tuner in _TUNED.items():
        name = "forward" if kernel is _linear_silu_kernel else "backward"
        out.update({f"{name} {key}": str(config) for key, config in getattr(tuner, "cache", {}).items()})
    return out
