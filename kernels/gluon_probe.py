"""Probe: does a block-list attention forward written in Gluon, with the scores of the next key block in
flight on the tensor cores while this block's exponentials run, pass the rate of the loop Triton
compiles (``ws_probe``: 422 TFLOP/s at 1,048,576 tokens, head dim 64, on the H200)?

Triton issues a product and waits for it before anything reads its result, so a forward tile runs its
score product, its exponentials and its value product one after another; at head dim 64 the
exponentials alone take about as long as both products (the special-function unit does 16 a cycle
per SM). Gluon (``triton.experimental.gluon``, shipped with Triton 3.6) exposes the asynchronous
warpgroup products and their waits, so this kernel keeps the tensor cores busy during the softmax:

* ``AHEAD=0``: block j's score product and block j-1's value product are issued together, and the
  softmax of block j runs while the value product does (the overlap of FlashAttention-3's
  intra-warpgroup pipelining);
* ``AHEAD=1``: the score product of block j+1 is issued before the softmax of block j too, so both
  products of a step run under its exponentials (two score tiles live in registers: 64 rows on four
  warps, or 128 on eight).

K and V blocks arrive by TMA into a ring of ``STAGES`` shared-memory slots with one mbarrier each.
One program per (64 or 128 query rows, head) over ``ws_probe``'s lists (``--lists``); bf16 or fp16.

    python -m megastride.kernels.gluon_probe --out OUT     # on a Hopper GPU: prints, writes OUT/gluon_probe.json

Without a GPU ``compile_gluon`` compiles it for sm_90 (tests/test_gluon_probe.py); Gluon has no
interpreter, so its values are checked on the GPU against the Triton loop's (``ws_probe.probe_attention``).

On the H200 (docs/benchmarks.md, fourteenth run) the answer was: barely at head dim 64 (432-434 against
420-424 TFLOP/s: the exponentials bound the tile either way); at 128, 539-571 against Triton's 453-481 on
the same 128-key tiles, but not above Triton's 64-key loop (588).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)

from .ws_probe import BLOCK, _timed, add_list_options, gpu_cases, probe_attention, write_rows

_STAGES = 4


@gluon.jit
def _issue_kv(kd, vd, k_smem, v_smem, bars, IDX, lo, b, STAGES: gl.constexpr, BLOCK_N: gl.constexpr):
    """TMA loads of list entry ``b``'s K and V block into slot b % STAGES, both on that slot's barrier."""
    slot = b % STAGES
    start = gl.load(IDX + lo + b) * BLOCK_N
    mbarrier.expect(bars.index(slot), kd.block_type.nbytes + vd.block_type.nbytes)
    tma.async_copy_global_to_shared(kd, [start, 0], bars.index(slot), k_smem.index(slot))
    tma.async_copy_global_to_shared(vd, [start, 0], bars.index(slot), v_smem.index(slot))


@gluon.jit
def _issue_scores(q_smem, k_smem, bars, b, zero_s, STAGES: gl.constexpr):
    """Block b's scores Q K^T issued (asynchronous) once its slot's loads have landed."""
    slot = b % STAGES
    mbarrier.wait(bars.index(slot), (b // STAGES) & 1)
    return warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)


@gluon.jit
def _gluon_fwd_kernel(Q, K, V, O, PTR, IDX, N, qk_scale, D: gl.constexpr, BLOCK_M: gl.constexpr,
                      STAGES: gl.constexpr, AHEAD: gl.constexpr, num_warps: gl.constexpr):
    gl.static_assert(STAGES >= 2 + AHEAD, "AHEAD needs 3 slots: block j+1's scores are issued before block j-1's slot is free")
    BLOCK_N: gl.constexpr = 128
    dtype: gl.constexpr = Q.dtype.element_ty
    pid = gl.program_id(0)  # BLOCK_M rows of query block pid // (128 // BLOCK_M)
    bh = gl.program_id(1).to(gl.int64)
    Q += bh * N * D
    K += bh * N * D
    V += bh * N * D
    O += bh * N * D
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=2)
    qd = tma.make_tensor_descriptor(Q, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_M, D], layout=smem)
    kd = tma.make_tensor_descriptor(K, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D], layout=smem)
    vd = tma.make_tensor_descriptor(V, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_N, D], layout=smem)
    od = tma.make_tensor_descriptor(O, shape=[N, D], strides=[D, 1], block_shape=[BLOCK_M, D], layout=smem)

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    row_block = pid // (BLOCK_N // BLOCK_M)
    lo = gl.load(PTR + row_block)
    cnt = gl.load(PTR + row_block + 1) - lo
    if cnt > 0:
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, D], smem)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], smem)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], smem)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES + 1, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES + 1):
            mbarrier.init(bars.index(i), count=1)
        q_bar = bars.index(STAGES)
        mbarrier.expect(q_bar, qd.block_type.nbytes)
        tma.async_copy_global_to_shared(qd, [pid * BLOCK_M, 0], q_bar, q_smem)
        for b in gl.static_range(STAGES):
            if b < cnt:
                _issue_kv(kd, vd, k_smem, v_smem, bars, IDX, lo, b, STAGES, BLOCK_N)
        mbarrier.wait(q_bar, 0)

        # block 0's scores; under AHEAD block 1's are in flight during block 0's softmax
        zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
        mbarrier.wait(bars.index(0), 0)
        s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
        if AHEAD:
            s_next = _issue_scores(q_smem, k_smem, bars, gl.minimum(cnt - 1, 1), zero_s, STAGES)
        m_i = gl.max(s, 1) * qk_scale
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_i, 1))
        l_i = gl.sum(p, 1)
        p16 = gl.convert_layout(p.to(dtype), p_layout)
        if AHEAD:
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next, ))
        acc = gl.zeros([BLOCK_M, D], gl.float32, o_layout)

        for j in range(1, cnt):
            prev = (j - 1) % STAGES
            if AHEAD:
                # block j's scores are in registers: block j-1's values and block j+1's scores run under its
                # softmax (the last step's repeat its own block: one wasted score product per query tile)
                acc = warpgroup_mma(p16, v_smem.index(prev), acc, is_async=True)
                s_next = _issue_scores(q_smem, k_smem, bars, gl.minimum(cnt - 1, j + 1), zero_s, STAGES)
            else:
                s = _issue_scores(q_smem, k_smem, bars, j, zero_s, STAGES)
                acc = warpgroup_mma(p16, v_smem.index(prev), acc, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))
            # block j's softmax while block j-1's value product runs
            m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
            p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new
            p_cur = p.to(dtype)
            if AHEAD:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            else:
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
            p16 = gl.convert_layout(p_cur, p_layout)
            # block j-1's slot is read by nothing in flight now: it takes block j-1+STAGES
            if j - 1 + STAGES < cnt:
                _issue_kv(kd, vd, k_smem, v_smem, bars, IDX, lo, j - 1 + STAGES, STAGES, BLOCK_N)
            if AHEAD:
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next, ))

        acc = warpgroup_mma(p16, v_smem.index((cnt - 1) % STAGES), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        out = acc / gl.expand_dims(gl.convert_layout(l_i, o_rows), 1)
        for i in gl.static_range(STAGES + 1):
            mbarrier.invalidate(bars.index(i))
        q_smem.store(out.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(od, [pid * BLOCK_M, 0], q_smem)
        tma.store_wait(pendings=0)


def gluon_attention(q, k, v, ptr, idx, *, ahead: bool = True, rows: int = 64, stages: int = _STAGES,
                    num_warps: int = 4):
    """The Gluon probe on (heads, n, D) bf16/fp16 CUDA tensors over CSR block lists (block 128), ``rows``
    (64 or 128) query rows a program: (heads, n, D). Query blocks with an empty list are left unwritten."""
    heads, n, d = q.shape
    out = torch.empty_like(q)
    _gluon_fwd_kernel[(n // rows, heads)](q, k, v, out, ptr, idx, n, d ** -0.5 * 1.4426950408889634, D=d,
                                          BLOCK_M=rows, STAGES=stages, AHEAD=int(ahead), num_warps=num_warps)
    return out


def compile_gluon(ahead: bool = True, head_dim: int = 64, rows: int = 64, stages: int = _STAGES, num_warps: int = 4,
                  arch: int = 90):
    """The Gluon probe compiled for ``arch`` without a GPU (bf16)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    consts = {"D": head_dim, "BLOCK_M": rows, "STAGES": stages, "AHEAD": int(ahead), "num_warps": num_warps}
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "PTR": "*i32", "IDX": "*i32", "N": "i32",
           "qk_scale": "fp32", **{name: "constexpr" for name in consts}}
    src = GluonASTSource(fn=_gluon_fwd_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def loop_schedule(kernel) -> list[str]:
    """The order of the first loop's events in the compiled kernel's PTX: "qk" (a score product issued: its
    A operand in shared memory), "pv" (a value product: A, the probabilities, in registers), "exp" (a run
    of exponentials), "wait N" (until at most N products are in flight). What runs under the softmax is
    what was issued before its "exp" and waited for after it. The loop's blocks from its header on, in
    layout order (the blocks laid out before the header last)."""
    ptx = kernel.asm["ptx"]
    # basic blocks start at a label line ($L__BB0_5:) or an unlabelled fall-through (// %bb.7:); LLVM notes on
    # each whether it heads the innermost loop or belongs to it ("in Loop: Header=BB0_5")
    blocks = re.split(r"\n(?=\$L__BB\d+_\d+:|// %bb\.\d+:)", ptx)
    head = next(i for i, b in enumerate(blocks) if "Inner Loop Header" in b.splitlines()[0])
    name = re.match(r"\$L__(BB\d+_\d+)", blocks[head]).group(1)
    body = [b for b in blocks[head + 1:] + blocks[:head] if f"in Loop: Header={name} " in b.split("\n", 2)[0]
            + b.split("\n", 2)[1]]
    events = []
    kind = None
    for line in "\n".join([blocks[head], *body]).splitlines():  # in the order the loop runs them
        line = line.strip()
        if line.startswith("wgmma.mma_async"):
            kind = "pv" if re.search(r"\},\s*\{", line) else "qk"
        elif line.startswith("wgmma.commit_group"):
            events.append(kind)
        elif line.startswith("wgmma.wait_group"):
            events.append("wait " + re.search(r"(\d+);", line).group(1))
        elif line.startswith("ex2.") and (not events or events[-1] != "exp"):
            events.append("exp")
    return events

# (ahead, rows, warps, stages): a program of 64 rows is one warpgroup (two programs share an SM: their
# softmax and products interleave); one of 128 rows takes eight warps (four spill at 255 registers), whose
# two warpgroups the compiler's CTA-wide barriers around shared-memory operations keep in step
SETTINGS = ((1, 64, 4, 3), (1, 64, 4, 4), (0, 64, 4, 3), (0, 64, 4, 2), (1, 128, 8, 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastride.kernels.gluon_probe", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="1048576x64,262144x64,262144x128", help="comma-separated NxD (heads = 512 / D)")
    add_list_options(p)
    p.add_argument("--out", default=None, help="folder for gluon_probe.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a Hopper GPU (without one, compile_gluon compiles it for sm_90)")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    rows = []
    for n, d, heads, ptr, idx in gpu_cases(args):
        flops = 4 * BLOCK * BLOCK * int(ptr[-1]) * heads * d
        q, k, v = (torch.randn(heads, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        plain = probe_attention(q, k, v, ptr, idx)
        # Triton's best settings in the ws_probe runs: w4 s2 at head dim 64, w8 s2 at 128
        tw = 4 if d == 64 else 8
        runs = [("triton", dict(warps=tw, stages=2), lambda: probe_attention(q, k, v, ptr, idx, num_warps=tw,
                                                                             num_stages=2))]
        for ahead, rows_, warps, stages in SETTINGS:
            if d == 128 and stages > 3:
                continue  # 4 slots of 128-row K and V blocks at head dim 128 do not fit in shared memory
            runs.append(("gluon", dict(ahead=ahead, rows=rows_, warps=warps, stages=stages),
                         lambda a=ahead, r=rows_, w=warps, s=stages: gluon_attention(
                             q, k, v, ptr, idx, ahead=bool(a), rows=r, stages=s, num_warps=w)))
        # query blocks that visit nothing (the first; under fixed lists, those with masked blocks only) are left
        # out of the comparison
        seen = torch.repeat_interleave(ptr.diff() > 0, BLOCK)
        same = lambda got: {"max_diff_vs_triton": (got[:, seen].float() - plain[:, seen].float()).abs().max().item()}  # noqa: E731
        for name, setting, run in runs:
            rows.append(_timed(dict(n=n, head_dim=d, heads=heads, lists=args.lists, kernel=name, **setting), run,
                               flops, same))
    if args.out:
        write_rows(Path(args.out, "gluon_probe.json"), rows, visits=args.visits, lists=args.lists)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
