"""Probe: how fast the simplest block-list attention forward loop runs on this GPU, with and without
Triton's warp specialisation.

Our forward walks each query tile's list of key blocks with TMA tile loads and an online softmax
(``blocksparse._fwd_kernel``). This probe strips that loop to its bones (one list per 128-query tile, TMA
boxes, no masks, no parts, no permutation) and times it at the settings Triton 3.6 offers for Hopper,
including ``tl.range(..., warp_specialize=True)`` (a producer warp group issuing the loads, consumer groups
the products). Two questions it answers on the device: is our forward below what such a loop reaches
(if so, the gap is ours to close), and does warp specialisation lift the loop (if so, it is worth
restructuring the kernel for it: on our forward, with its pointer-loaded query tile and the masked
tiles' second loop, the flag compiled and left the loop unpartitioned, and on this probe a pointer-loaded
query tile or a second loop after it made the pass fail, so a kernel for it needs TMA loads throughout
and the masked tiles in a launch of their own).

    python -m megastride.kernels.ws_probe --out OUT      # on a GPU: prints and writes OUT/ws_probe.json

A third question (``--kernels poly``): at head dim 64 the exponentials keep the special-function unit
about as busy as the two products keep the tensor cores; does computing a quarter or half of them by a
polynomial on the multiply-add pipes (``_exp2_poly``) shorten a tile? On the H200 it did not (the
fourteenth run, docs/benchmarks.md: 423 TFLOP/s with none, 398 with a quarter, 367 with a half at
1,048,576 tokens, head dim 64), and our forward no longer carries the option.

Each query tile visits up to ``--visits`` earlier blocks (96: about what the fixed pattern's rows visit
at 1,048,576 tokens, block 128). TFLOP/s counts the products of every visited block: two in the forward
(4 M N D), four in the dK/dV probe (8 M N D), the backward's loop over each key tile's query blocks with
both score products issued first, as ours (``--kernels dkdv``): the same question for the backward's
largest kernel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl

BLOCK = 128


# 2^f on [-0.5, 0.5], degree 3, fitted for relative error (7.5e-5 at most in fp32: under half a bf16 or fp16
# rounding step, so P rounded for its product is nearly always the same)
_C0, _C1, _C2, _C3 = (tl.constexpr(c) for c in (0.9999281167984009, 0.6932609677314758, 0.24261033535003662,
                                                  0.05517134442925453))
_ROUND = tl.constexpr(12582912.0)  # 1.5 * 2^23: x + _ROUND rounds x to an integer held in the low mantissa bits


@triton.jit
def _exp2_poly(x):
    """2^x for x <= 0 without the special-function unit, for unmasked tiles: x is clamped to -126 (below
    it about 2^-126, not 0: a masked score's -inf must not come here). x = j + f with j an integer by the
    add-and-subtract of 1.5 * 2^23 (no conversion instruction), 2^f by a degree-3 polynomial in three
    multiply-adds, 2^j added into the exponent bits. The multiply-add pipes have eight times the
    special-function unit's rate; at head dim 64 the exponentials are about as much work for that unit as
    the two products are for the tensor cores, so moving part of them across can shorten a tile."""
    x = tl.maximum(x, -126.0)
    t = x + _ROUND
    j = t - _ROUND
    f = x - j
    p = tl.fma(tl.fma(tl.fma(f, _C3, _C2), f, _C1), f, _C0)
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _exp2_mixed(x, POLY: tl.constexpr):
    """2^x of a (rows, cols) tile with POLY quarters of its columns (0, 1 or 2) from ``_exp2_poly`` and the
    rest from the special-function unit; the tile is split in halves along its columns (each thread of a
    Hopper MMA accumulator holds columns of both halves, so the split moves no data between threads:
    compiled for sm_90, no shuffles added)."""
    if POLY == 0:
        return tl.math.exp2(x)
    else:
        R: tl.constexpr = x.shape[0]
        C: tl.constexpr = x.shape[1]
        a, b = tl.split(tl.permute(tl.reshape(x, [R, 2, C // 2]), [0, 2, 1]))
        if POLY == 2:
            b = _exp2_poly(b)
        else:
            b0, b1 = tl.split(tl.permute(tl.reshape(b, [R, 2, C // 4]), [0, 2, 1]))
            b = tl.reshape(tl.permute(tl.join(tl.math.exp2(b0), _exp2_poly(b1)), [0, 2, 1]), [R, C // 2])
        return tl.reshape(tl.permute(tl.join(tl.math.exp2(a), b), [0, 2, 1]), [R, C])


@triton.jit
def _exp2_x2(x):
    """2^x of a 16-bit tile as PTX's packed ``ex2.approx.ftz.bf16x2`` / ``ex2.approx.f16x2`` (sm_90), two
    elements an instruction. Compile-only (``compile_probe(exp16=1)``): ptxas for sm_90 splits each into two
    scalar MUFU.EX2 with the packing around them, so the special-function unit does the same work
    (tests/test_kernels_compile.py)."""
    if x.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x], dtype=tl.bfloat16,
                                         is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x], dtype=tl.float16, is_pure=True,
                                         pack=2)


@triton.jit
def _probe_kernel(Q, K, V, O, PTR, IDX, N, qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  D: tl.constexpr, WS: tl.constexpr, POLY: tl.constexpr = 0, EXP16: tl.constexpr = 0):
    """One program per (128-query tile, head): the online softmax over the key blocks IDX[PTR[i]:PTR[i+1]]
    (each BLOCK_M // BLOCK_N sub-tiles), K and V read as TMA boxes; rows with no key give NaN."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * N * D
    K += bh * N * D
    V += bh * N * D
    O += bh * N * D
    qd = tl.make_tensor_descriptor(Q, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    kd = tl.make_tensor_descriptor(K, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    vd = tl.make_tensor_descriptor(V, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    od = tl.make_tensor_descriptor(O, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    q = qd.load([pid * BLOCK_M, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    SUB: tl.constexpr = BLOCK_M // BLOCK_N
    for t in tl.range(tl.load(PTR + pid), tl.load(PTR + pid + 1), warp_specialize=WS):
        start = tl.load(IDX + t // SUB) * BLOCK_M + (t % SUB) * BLOCK_N
        k = kd.load([start, 0])
        s = tl.dot(q, tl.trans(k))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        v = vd.load([start, 0])
        if EXP16:  # the exponentials in 16 bits, two an instruction; the row sums from the P the product takes
            p16 = _exp2_x2((s * qk_scale - m_new[:, None]).to(v.dtype))
            l_i = l_i * alpha + tl.sum(p16.to(tl.float32), 1)
        else:
            p = _exp2_mixed(s * qk_scale - m_new[:, None], POLY)
            l_i = l_i * alpha + tl.sum(p, 1)
            p16 = p.to(v.dtype)
        acc = acc * alpha[:, None] + tl.dot(p16, v)
        m_i = m_new
    od.store([pid * BLOCK_M, 0], (acc / l_i[:, None]).to(O.dtype.element_ty))


@triton.jit
def _probe_dkdv_step(k, v, q, do, LSE, DELTA, rows, dk, dv, qk_scale):
    """One query tile of a key tile's dK and dV (rows: the tile's rows in LSE and DELTA), both score products
    issued before the exponentials."""
    st = tl.dot(k, tl.trans(q)) * qk_scale
    dpt = tl.dot(v, tl.trans(do))
    pt = tl.math.exp2(st - tl.load(LSE + rows)[None, :])
    dv += tl.dot(pt.to(do.dtype), do)
    dst = (pt * (dpt - tl.load(DELTA + rows)[None, :])).to(q.dtype)
    dk += tl.dot(dst, q)
    return dk, dv


@triton.jit
def _probe_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, PTR, IDX, N, qk_scale, sm_scale, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, D: tl.constexpr, REVERSE: tl.constexpr = False):
    """One program per (128-key tile, head): dK and dV over the query blocks that visit it,
    IDX[PTR[j]:PTR[j+1]] (each BLOCK_N // BLOCK_M sub-tiles of BLOCK_M queries), Q and dO read as TMA boxes,
    LSE (base 2, scaled scores) and DELTA = rowsum(dO * O) given; both score products issued before the
    exponentials, as ``blocksparse._dkdv_step`` does. REVERSE: the query tiles last first (timed on
    the fixed pattern's lists at 1M on the H200: 128.50 ms against 128.55 forwards, docs/benchmarks.md
    "Fifteenth run"; no production switch)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * N * D
    K += bh * N * D
    V += bh * N * D
    DO += bh * N * D
    DK += bh * N * D
    DV += bh * N * D
    LSE += bh * N
    DELTA += bh * N
    qd = tl.make_tensor_descriptor(Q, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    dod = tl.make_tensor_descriptor(DO, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    kd = tl.make_tensor_descriptor(K, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    vd = tl.make_tensor_descriptor(V, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    k = kd.load([pid * BLOCK_N, 0])
    v = vd.load([pid * BLOCK_N, 0])
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    SUB: tl.constexpr = BLOCK_N // BLOCK_M
    lo = tl.load(PTR + pid)
    hi = tl.load(PTR + pid + 1)
    for t in tl.range(lo, hi):
        if REVERSE:
            t = lo + hi - 1 - t
        start = tl.load(IDX + t // SUB) * BLOCK_N + (t % SUB) * BLOCK_M
        dk, dv = _probe_dkdv_step(k, v, qd.load([start, 0]), dod.load([start, 0]), LSE, DELTA,
                                  start + tl.arange(0, BLOCK_M), dk, dv, qk_scale)
    dkd = tl.make_tensor_descriptor(DK, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    dvd = tl.make_tensor_descriptor(DV, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    dkd.store([pid * BLOCK_N, 0], (dk * sm_scale).to(DK.dtype.element_ty))
    dvd.store([pid * BLOCK_N, 0], dv.to(DV.dtype.element_ty))


@triton.jit
def _probe_dkdv_persistent_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, PTR, IDX, ORDER, total, N, qk_scale, sm_scale,
                                  HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                                  FLATTEN: tl.constexpr):
    """The dK/dV probe with a fixed number of programs, each walking (key tile, head) items ORDER[pid::G]
    (heaviest first). FLATTEN asks Triton to fuse the walk and the per-column loop into one pipelined loop
    (one column's first loads under the previous column's last products and store); Triton 3.6 fuses only
    inner loops with constant bounds, so with a column's own bounds the two loops stay apart (compiled for
    sm_90: two loops either way, tests/test_kernels_compile.py)."""
    pid = tl.program_id(0)
    # one descriptor per tensor over every head's rows (heads x N rows: under 2^31 at 8 x 1M)
    qd = tl.make_tensor_descriptor(Q, shape=[HEADS * N, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    dod = tl.make_tensor_descriptor(DO, shape=[HEADS * N, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    kd = tl.make_tensor_descriptor(K, shape=[HEADS * N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    vd = tl.make_tensor_descriptor(V, shape=[HEADS * N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    dkd = tl.make_tensor_descriptor(DK, shape=[HEADS * N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    dvd = tl.make_tensor_descriptor(DV, shape=[HEADS * N, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    SUB: tl.constexpr = BLOCK_N // BLOCK_M
    for w in tl.range(pid, total, tl.num_programs(0), flatten=FLATTEN):
        item = tl.load(ORDER + w)
        col = item // HEADS
        row0 = (item % HEADS) * N  # the head's first row
        k = kd.load([row0 + col * BLOCK_N, 0])
        v = vd.load([row0 + col * BLOCK_N, 0])
        dk = tl.zeros([BLOCK_N, D], tl.float32)
        dv = tl.zeros([BLOCK_N, D], tl.float32)
        for t in tl.range(tl.load(PTR + col), tl.load(PTR + col + 1)):
            start = tl.load(IDX + t // SUB) * BLOCK_N + (t % SUB) * BLOCK_M
            dk, dv = _probe_dkdv_step(k, v, qd.load([row0 + start, 0]), dod.load([row0 + start, 0]), LSE, DELTA,
                                      row0 + start + tl.arange(0, BLOCK_M), dk, dv, qk_scale)
        dkd.store([row0 + col * BLOCK_N, 0], (dk * sm_scale).to(DK.dtype.element_ty))
        dvd.store([row0 + col * BLOCK_N, 0], dv.to(DV.dtype.element_ty))


def block_lists(blocks: int, visits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR lists: query block i visits the min(i, visits) blocks just before it. (ptr, idx) as int32."""
    counts = torch.clamp(torch.arange(blocks), max=visits)
    idx = torch.cat([torch.arange(i - c, i) for i, c in enumerate(counts.tolist())])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    return ptr.int(), idx.int()


def fixed_lists(n: int, heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The full (unmasked) 128-blocks of the bench's fixed pattern at length n as CSR row lists (ptr, idx)
    int32: our kernels' real list lengths (rows of about the window's blocks plus the summary columns; the
    masked diagonal blocks left out), instead of ``block_lists``' even ones."""
    from . import patterns as P
    from .bench import Case, case_pattern

    pattern, _, block, _ = case_pattern(Case("fixed", n, heads, head_dim))
    assert block == BLOCK, block
    csr = P.build_layout(pattern, n, block).parts[0].csr[0]
    return csr.row_full_ptr.int(), csr.row_full_idx.int()


def column_lists(ptr: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The transpose of CSR row lists: for each key block, the query blocks that visit it (ascending)."""
    blocks = len(ptr) - 1
    rows = torch.repeat_interleave(torch.arange(blocks), (ptr[1:] - ptr[:-1]).long())
    order = torch.argsort(idx.long() * blocks + rows, stable=True)
    counts = torch.bincount(idx.long(), minlength=blocks)
    col_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    return col_ptr.int(), rows[order].int()


def probe_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx, *, block_m=32, reverse=False, num_warps=4, num_stages=5):
    """The dK/dV probe on (heads, n, D) tensors, lse and delta (heads, n) fp32: (dk, dv). ``reverse``: each
    column's query tiles last first."""
    heads, n, d = q.shape
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    scale = d ** -0.5
    _probe_dkdv_kernel[(n // BLOCK, heads)](q, k, v, do, dk, dv, lse, delta, col_ptr * (BLOCK // block_m), col_idx, n,
                                            scale * 1.4426950408889634, scale, BLOCK_M=block_m, BLOCK_N=BLOCK, D=d,
                                            REVERSE=reverse, num_warps=num_warps, num_stages=num_stages)
    return dk, dv


def heaviest_first(col_ptr: torch.Tensor, heads: int) -> torch.Tensor:
    """(key tile, head) items as col * heads + head, int32, longest column first."""
    work = (col_ptr[1:] - col_ptr[:-1]).long()
    cols = torch.argsort(-work, stable=True)
    return (cols[:, None] * heads + torch.arange(heads, device=cols.device)).reshape(-1).int()


def probe_dkdv_persistent(q, k, v, do, lse, delta, col_ptr, col_idx, order, programs, *, block_m=32, flatten=False,
                          num_warps=4, num_stages=5):
    """The persistent dK/dV probe: ``programs`` programs walk ``order`` (``heaviest_first``). (dk, dv)."""
    heads, n, d = q.shape
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    scale = d ** -0.5
    _probe_dkdv_persistent_kernel[(programs,)](q, k, v, do, dk, dv, lse, delta, col_ptr * (BLOCK // block_m), col_idx,
                                               order, order.numel(), n, scale * 1.4426950408889634, scale, HEADS=heads,
                                               BLOCK_M=block_m, BLOCK_N=BLOCK, D=d, FLATTEN=flatten,
                                               num_warps=num_warps, num_stages=num_stages)
    return dk, dv


def lse_and_delta(q, k, v, do, ptr, idx):
    """The backward's inputs from an fp32 forward over the block lists: lse in base 2 of the scaled scores
    (what our kernels keep) and delta = rowsum(dO * O); -inf and 0 for rows with no key."""
    heads, n, d = q.shape
    lse = torch.full((heads, n), float("-inf"))
    delta = torch.zeros(heads, n)
    qf, kf, vf, dof = (t.float().cpu() for t in (q, k, v, do))
    for i in range(n // BLOCK):
        cols = idx[ptr[i]:ptr[i + 1]].long().cpu()
        if not len(cols):
            continue
        keys = (cols[:, None] * BLOCK + torch.arange(BLOCK)).reshape(-1)
        rows = slice(i * BLOCK, (i + 1) * BLOCK)
        s2 = qf[:, rows] @ kf[:, keys].transpose(1, 2) * (d ** -0.5 * 1.4426950408889634)
        lse[:, rows] = torch.logsumexp(s2 * 0.6931471805599453, -1) * 1.4426950408889634
        delta[:, rows] = (torch.softmax(s2 * 0.6931471805599453, -1) @ vf[:, keys] * dof[:, rows]).sum(-1)
    return lse.to(q.device), delta.to(q.device)


def probe_attention(q, k, v, ptr, idx, *, block_n=BLOCK, warp_specialize=False, poly=0, num_warps=4, num_stages=3):
    """The probe kernel on (heads, n, D) tensors: the (heads, n, D) output. ``poly``: quarters of each
    tile's exponentials computed by ``_exp2_poly`` (0, 1 or 2)."""
    heads, n, d = q.shape
    out = torch.empty_like(q)
    scale = d ** -0.5 * 1.4426950408889634  # base-2 units
    _probe_kernel[(n // BLOCK, heads)](q, k, v, out, ptr * (BLOCK // block_n), idx, n, scale, BLOCK_M=BLOCK,
                                       BLOCK_N=block_n, D=d, WS=warp_specialize, POLY=poly, num_warps=num_warps,
                                       num_stages=num_stages)
    return out


def reference(q, k, v, ptr, idx):
    """The same block-list attention in fp32 PyTorch, one query block at a time."""
    out = torch.full(q.shape, float("nan"))
    qf, kf, vf = q.float().cpu(), k.float().cpu(), v.float().cpu()
    ptr, idx = ptr.cpu(), idx.cpu()
    for i in range(q.shape[1] // BLOCK):
        cols = idx[ptr[i]:ptr[i + 1]].long()
        if not len(cols):
            continue
        keys = (cols[:, None] * BLOCK + torch.arange(BLOCK)).reshape(-1)
        s = qf[:, i * BLOCK:(i + 1) * BLOCK] @ kf[:, keys].transpose(1, 2) * q.shape[-1] ** -0.5
        out[:, i * BLOCK:(i + 1) * BLOCK] = torch.softmax(s, -1) @ vf[:, keys]
    return out


SETTINGS = ((4, 2), (4, 3), (4, 4), (8, 3))  # (warps, stages)


def _compile(kernel, sig: dict, constexprs: dict, num_warps: int, num_stages: int, arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(sig, **{name: "constexpr" for name in constexprs})
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages})


def compile_probe(warp_specialize: bool, head_dim: int = 64, block_n: int = BLOCK, num_warps: int = 4,
                  num_stages: int = 3, arch: int = 90, poly: int = 0, exp16: int = 0, dtype: str = "bf16"):
    """The forward probe compiled for ``arch`` without a GPU (bf16): whether Triton's pass partitions its
    loop shows in the TTGIR (a ``ttg.warp_specialize`` op) and in the warps the kernel launches with."""
    sig = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "O": f"*{dtype}", "PTR": "*i32", "IDX": "*i32",
           "N": "i32", "qk_scale": "fp32"}
    return _compile(_probe_kernel, sig, {"BLOCK_M": BLOCK, "BLOCK_N": block_n, "D": head_dim, "WS": warp_specialize,
                                         "POLY": poly, "EXP16": exp16}, num_warps, num_stages, arch)


def compile_probe_dkdv_persistent(flatten: bool = False, block_m: int = 32, head_dim: int = 64, heads: int = 8,
                                  num_warps: int = 4, num_stages: int = 5, arch: int = 90):
    """The persistent dK/dV probe compiled for ``arch`` without a GPU (bf16)."""
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "DO": "*bf16", "DK": "*bf16", "DV": "*bf16", "LSE": "*fp32",
           "DELTA": "*fp32", "PTR": "*i32", "IDX": "*i32", "ORDER": "*i32", "total": "i32", "N": "i32",
           "qk_scale": "fp32", "sm_scale": "fp32"}
    return _compile(_probe_dkdv_persistent_kernel, sig, {"HEADS": heads, "BLOCK_M": block_m, "BLOCK_N": BLOCK,
                                                         "D": head_dim, "FLATTEN": flatten}, num_warps, num_stages, arch)


def compile_probe_dkdv(block_m: int = 32, head_dim: int = 64, num_warps: int = 4, num_stages: int = 5, arch: int = 90):
    """The dK/dV probe compiled for ``arch`` without a GPU (bf16), to set its loop beside our dK/dV kernel's
    (``compile_check.first_mma_loop``)."""
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "DO": "*bf16", "DK": "*bf16", "DV": "*bf16", "LSE": "*fp32",
           "DELTA": "*fp32", "PTR": "*i32", "IDX": "*i32", "N": "i32", "qk_scale": "fp32", "sm_scale": "fp32"}
    return _compile(_probe_dkdv_kernel, sig, {"BLOCK_M": block_m, "BLOCK_N": BLOCK, "D": head_dim}, num_warps,
                    num_stages, arch)


POLY_SETTINGS = ((4, 2), (4, 3), (8, 2), (8, 3))  # (warps, stages) of the 128x128 forward tile
DKDV_SETTINGS = ((32, 4, 5), (32, 4, 3), (64, 4, 4), (64, 4, 5), (64, 8, 3), (64, 8, 4))  # (query rows, warps, stages)


def add_list_options(p: argparse.ArgumentParser) -> None:
    """The probes' --visits and --lists options (which block lists they walk)."""
    p.add_argument("--visits", type=int, default=96, help="key blocks each query tile visits (at most)")
    p.add_argument("--lists", choices=["window", "fixed"], default="window",
                   help="window: each query tile visits the --visits blocks before it; fixed: the full blocks of the "
                        "bench's fixed pattern (ws_probe.fixed_lists)")


def gpu_cases(args: argparse.Namespace):
    """(n, head dim, heads = 512 / head dim, ptr, idx on the GPU) for each NxD of ``args.cases``, over the
    lists ``args.lists`` names."""
    for case in args.cases.split(","):
        n, d = (int(x) for x in case.split("x"))
        heads = 512 // d
        lists = fixed_lists(n, heads, d) if args.lists == "fixed" else block_lists(n // BLOCK, args.visits)
        yield (n, d, heads, *(t.cuda() for t in lists))


def write_rows(path: Path, rows: list[dict], **settings) -> None:
    """A probe's rows as JSON at ``path`` with the device, versions and the run's settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            **settings, "rows": rows}
    path.write_text(json.dumps(meta, indent=1))


def _median_ms(run, reps: int = 5) -> float:
    """Median of ``reps`` timed calls of ``run`` (CUDA events, synchronised after each)."""
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        run()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    return sorted(times)[len(times) // 2]


def _timed(row: dict, run, flops: float, check=None) -> dict:
    """``row`` with the median ms and TFLOP/s of ``run`` (and what ``check`` says of its first result), or
    the error of a setting the GPU cannot hold (shared memory): reported, not fatal."""
    try:
        got = run()
        if check is not None:
            row.update(check(got))
        ms = _median_ms(run)
        row.update(ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1))
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.ws_probe", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="262144x64,1048576x64,262144x128", help="comma-separated NxD (heads = 512 / D)")
    add_list_options(p)
    p.add_argument("--kernels", default="fwd,poly,dkdv", help="which probes: fwd (with and without warp "
                   "specialisation), poly (a quarter or half of the exponentials by polynomial), dkdv (the "
                   "backward's dK/dV loop: four products a block), dkdvp (the same on one or two programs an SM "
                   "walking the columns heaviest first)")
    p.add_argument("--out", default=None, help="folder for ws_probe.json")
    args = p.parse_args(argv)
    kernels = set(args.kernels.split(","))
    if not kernels <= {"fwd", "poly", "dkdv", "dkdvp"}:
        p.error(f"--kernels takes fwd, poly, dkdv and dkdvp, got {args.kernels!r}")
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the CPU tests run the kernel under TRITON_INTERPRET=1)")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    rows = []
    for n, d, heads, ptr, idx in gpu_cases(args):
        pairs = BLOCK * BLOCK * int(ptr[-1]) * heads  # score entries of the visited blocks
        q, k, v, do = (torch.randn(heads, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        base = dict(n=n, head_dim=d, heads=heads, lists=args.lists)
        plain = probe_attention(q, k, v, ptr, idx)
        same = lambda got: {"max_diff_vs_plain": torch.nan_to_num(got.float() - plain.float()).abs().max().item()}  # noqa: E731
        if "poly" in kernels:
            for poly in (0, 1, 2):
                for warps, stages in POLY_SETTINGS:
                    rows.append(_timed(
                        dict(base, kernel="fwd", block_n=BLOCK, poly_quarters=poly, warps=warps, stages=stages),
                        lambda: probe_attention(q, k, v, ptr, idx, poly=poly, num_warps=warps, num_stages=stages),
                        4 * pairs * d, same))
        if "fwd" in kernels:
            for block_n in (BLOCK, 64):
                for ws in (False, True):
                    for warps, stages in SETTINGS:
                        rows.append(_timed(
                            dict(base, kernel="fwd", block_n=block_n, warp_specialize=ws, warps=warps, stages=stages),
                            lambda: probe_attention(q, k, v, ptr, idx, block_n=block_n, warp_specialize=ws,
                                                    num_warps=warps, num_stages=stages), 4 * pairs * d, same))
        if "dkdv" in kernels:
            # timing only: lse 0 and delta 0 keep every exponential finite (the CPU tests check the values)
            lse, delta = torch.zeros(heads, n, device="cuda"), torch.zeros(heads, n, device="cuda")
            col_ptr, col_idx = (t.cuda() for t in column_lists(ptr.cpu(), idx.cpu()))
            for (block_m, warps, stages), reverse in [(s, False) for s in DKDV_SETTINGS] + [(DKDV_SETTINGS[0], True)]:
                rows.append(_timed(dict(base, kernel="dkdv", block_m=block_m, warps=warps, stages=stages,
                                        reverse=reverse),
                                   lambda: probe_dkdv(q, k, v, do, lse, delta, col_ptr, col_idx, block_m=block_m,
                                                      reverse=reverse, num_warps=warps, num_stages=stages),
                                   8 * pairs * d))
        if "dkdvp" in kernels:
            lse, delta = torch.zeros(heads, n, device="cuda"), torch.zeros(heads, n, device="cuda")
            col_ptr, col_idx = (t.cuda() for t in column_lists(ptr.cpu(), idx.cpu()))
            order = heaviest_first(col_ptr, heads)
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            for block_m, warps, stages in DKDV_SETTINGS[:1] + DKDV_SETTINGS[-2:-1]:
                for per_sm in (1, 2):
                    rows.append(_timed(dict(base, kernel="dkdv persistent", block_m=block_m, warps=warps, stages=stages,
                                            programs=per_sm * sms),
                                       lambda: probe_dkdv_persistent(q, k, v, do, lse, delta, col_ptr, col_idx, order,
                                                                     per_sm * sms, block_m=block_m, num_warps=warps,
                                                                     num_stages=stages), 8 * pairs * d))
    if args.out:
        write_rows(Path(args.out, "ws_probe.json"), rows, visits=args.visits, lists=args.lists)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
