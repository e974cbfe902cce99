"""Tune the block-sparse kernels for one layer's attention at one length before a training run, so the
run's first step finds Triton's autotune cache filled (its tuning trials would otherwise add their saved
outputs to the step's peak). Usage: python pretune.py SEQ_LEN HEADS HEAD_DIM PATTERN [BLOCK]"""
import sys
import time

import torch

from megastride.engine.config import layer_pattern
from megastride.kernels import sparse_attention_qkv
from megastride.kernels.attention import layout_for

n, heads, dim, spec = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
block = int(sys.argv[5]) if len(sys.argv) > 5 else 128
layout = layout_for(layer_pattern(spec, heads, n, block), n, block, "cuda")
qkv = (0.5 * torch.randn(1, n, 3 * heads * dim, device="cuda", dtype=torch.bfloat16)).requires_grad_()
for i in range(2):
    t = time.time()
    out = sparse_attention_qkv(qkv, heads, layout, scale=dim ** -0.5)
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    print(f"pretune {spec} n={n} H={heads} D={dim}: pass {i} {time.time() - t:.1f} s, "
          f"peak {torch.cuda.max_memory_allocated() / 1e9:.1f} GB", flush=True)
