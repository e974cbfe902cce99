"""The public attention entry point: Triton kernels on CUDA, the exact reference elsewhere."""

from __future__ import annotations

import contextlib
import os
import threading

import torch

from .patterns import AttentionPattern, Dense, Layout, build_layout
from .reference import masked_sdpa_attention


# Attention outputs kept from a block's first forward for its recompute (``kept_attention``)
_KEPT = threading.local()


@contextlib.contextmanager
def kept_attention(store: list, reuse: bool = False):
    """Within this context the Triton path's attention calls append their (output, log-sum-exp) to
    ``store``, or with ``reuse`` take them from it in the same order instead of running the forward
    kernels: a recomputed block (``engine.parallel.BlockCheckpoint`` with ``train.keep_attention``)
    then recomputes its projections and FFN but not its attention, for the memory of one output and
    one log-sum-exp per layer. Other attention paths (dense SDPA, the CPU reference) keep nothing and
    run as usual in both passes."""
    outer = getattr(_KEPT, "state", None)
    _KEPT.state = (store, reuse, [0])
    try:
        yield store
    finally:
        _KEPT.state = outer


def attention_forward(run, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``run()``'s (out, lse), or the kept pair in a reuse context (checked to be the output this call
    makes, ``shape``); appended to the store in a keeping context."""
    state = getattr(_KEPT, "state", None)
    if state is None:
        return run()
    store, reuse, taken = state
    if not reuse:
        out, lse = run()
        store.append((out, lse))
        return out, lse
    if taken[0] >= len(store) or tuple(store[taken[0]][0].shape) != tuple(shape):
        raise RuntimeError(f"attention call {taken[0] + 1} of a recomputed block has no kept output of shape "
                           f"{tuple(shape)} ({len(store)} kept): the recompute ran other attention calls than the "
                           "forward pass (set train.keep_attention=false)")
    out, lse = store[taken[0]]
    taken[0] += 1
    return out, lse


def _attention_choice() -> str:
    """``MEGASTRIDE_ATTENTION``: "" (the kernels on CUDA), "reference" or "triton"; anything else is refused."""
    choice = os.environ.get("MEGASTRIDE_ATTENTION", "").lower()
    if choice not in ("", "reference", "triton"):
        raise ValueError(f"MEGASTRIDE_ATTENTION must be unset, 'reference' or 'triton'; got {choice!r}")
    return choice


def _use_triton(q: torch.Tensor) -> bool:
    choice = _attention_choice()
    if choice == "reference":
        return False
    if q.is_cuda:
        return True
    # the Triton interpreter runs the kernels on CPU tensors (tests); opt in explicitly
    return os.environ.get("TRITON_INTERPRET") == "1" and choice == "triton"


def _is_dense(layout: Layout) -> bool:
    return _all_dense(layout.pattern)


def _all_dense(pattern: AttentionPattern) -> bool:
    return all(head.components == (Dense(),) for head in pattern.heads)


def layout_for(pattern: AttentionPattern, seq_len: int, block: int, device: torch.device | str) -> Layout:
    """The layout ``sparse_attention`` needs on ``device``: without block lists for plain dense heads.

    Dense heads run SDPA on CUDA and the masked SDPA path on CPU, neither of which reads the block
    lists, and a dense layout is quadratic in n (8 GB over 30 layers at 1M tokens).
    """
    if _all_dense(pattern) and not (str(device) == "cpu" and _use_triton(torch.empty(0))):
        if seq_len % block:
            raise ValueError(f"sequence length {seq_len} is not divisible by the attention block size {block}")
        return Layout(pattern, seq_len, block, parts=[])
    return build_layout(pattern, seq_len, block, device=device)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout,
                     scale: float | None = None) -> torch.Tensor:
    """Causal block-sparse attention of (B, H, T, D) tensors under ``layout``.

    On CUDA tensors this runs the Triton kernels; on CPU the exact token mask through torch's SDPA
    (chunked over queries). Set MEGASTRIDE_ATTENTION=reference to force that path anywhere.
    """
    if q.shape[-2] != layout.seq_len:
        raise ValueError(f"inputs have {q.shape[-2]} positions but the layout was built for {layout.seq_len}")
    if q.is_cuda and _is_dense(layout) and _attention_choice() != "reference":
        # plain causal attention: torch's SDPA (FlashAttention) is the kernel to beat, not to redo
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if _use_triton(q):
        from .blocksparse import blocksparse_attention  # imported lazily: needs triton

        return blocksparse_attention(q, k, v, layout, scale=scale)
    return masked_sdpa_attention(q, k, v, layout, scale=scale)


def sparse_attention_qkv(qkv: torch.Tensor, heads: int, layout: Layout, scale: float | None = None) -> torch.Tensor:
    """``sparse_attention`` of the q, k and v held in one (B, T, 3 * H * D) tensor laid out [q | k | v]
    (the model's fused projection); returns (B, H, T, D). On the Triton path its gradient comes back
    as one tensor instead of three that autograd concatenates."""
    q, k, v = qkv_heads(qkv, heads)
    if q.shape[-2] != layout.seq_len:
        raise ValueError(f"inputs have {q.shape[-2]} positions but the layout was built for {layout.seq_len}")
    dense_on_gpu = qkv.is_cuda and _is_dense(layout) and _attention_choice() != "reference"
    if _use_triton(qkv) and not dense_on_gpu:
        from .blocksparse import blocksparse_attention_qkv  # imported lazily: needs triton

        return blocksparse_attention_qkv(qkv, heads, layout, scale=scale)
    return sparse_attention(q, k, v, layout, scale=scale)


def qkv_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as (B, H, T, D) tensors of a (B, T, 3 * H * D) one laid out [q | k | v]: views where its
    last dim is contiguous (the model's projection; the kernels take any strides)."""
    b, t, width = qkv.shape
    if width % (3 * heads):
        raise ValueError(f"a fused q/k/v of width {width} does not split into 3 x {heads} heads")
    return tuple(x.reshape(b, t, heads, width // (3 * heads)).transpose(1, 2) for x in qkv.split(width // 3, -1))
