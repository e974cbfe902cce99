"""One atomic-dQ case in this process: pattern, swap, layout (qkv|contig), split, n, heads, dim[, forced dK/dV
tile as MxNwWsS][, notma]; prints ok and the relative max errors of out, dq, dk, dv."""
import os, sys
pattern_name, swap, lay, split, n, heads, dim = sys.argv[1:8]
extra = sys.argv[8:]
os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] = "atomic"
os.environ["MEGASTRIDE_BLOCKSPARSE_DQ_SWAP"] = swap
os.environ["MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT"] = split
import contextlib, re
import torch
from megastride.kernels import patterns as P, blocksparse as B
from megastride.kernels.reference import reference_attention
if "notma" in extra:
    B._has_tma = lambda q: False
forced = [x for x in extra if "x" in x]
ctx = contextlib.nullcontext()
if forced:
    m, nn, w, s = (int(v) for v in re.match(r"(\d+)x(\d+)w(\d+)s(\d+)", forced[0]).groups())
    ctx = B.forced_tiles("dkdv", (m, nn, w, s))
n, heads, dim = int(n), int(heads), int(dim)
pat = P.fixed(1024, 128) if pattern_name == "fixed" else P.strided(128)
layout = P.build_layout(P.same_for_all_heads(pat, heads), n, 128, device="cuda")
gen = torch.Generator(device="cuda").manual_seed(0)
qkv = torch.randn(1, n, 3 * heads * dim, device="cuda", dtype=torch.bfloat16, generator=gen)
do = torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
def grads(fn):
    leaf = qkv.clone().requires_grad_()
    if lay == "qkv":
        q, k, v = leaf.view(1, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
    else:
        q, k, v = (t.contiguous() for t in leaf.view(1, n, 3, heads, dim).permute(2, 0, 3, 1, 4))
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, leaf, do)[0].view(1, n, 3, heads, dim).unbind(2)]
with ctx:
    got = grads(lambda *x: B.blocksparse_attention(*x, layout))
    torch.cuda.synchronize()
want = grads(lambda *x: reference_attention(*(t.float() for t in x), layout))
errs = [round((g.float() - w.float()).abs().max().item() / max(1.0, w.abs().max().item()), 5) for g, w in zip(got, want)]
print("ok", errs, "split", B.dkdv_split(layout, 1, B.gpu_sms(qkv)), "chosen", [B.tile_name(e) for e in B.chosen_tiles("dkdv")])
