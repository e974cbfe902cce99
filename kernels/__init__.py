"""megastride.kernels: attention patterns, the exact reference attention and the Triton kernels.

Importing this package needs only torch; Triton is imported when a CUDA (or interpreted) kernel runs.
"""

from .attention import sparse_attention, sparse_attention_qkv
from .ffn import feed_forward, linear_silu
from .norm import FusedLayerNorm, add_layer_norm, layer_norm, layer_norm_keep, residual_add
from .patterns import (
    AttentionPattern,
    HeadPattern,
    Layout,
    build_layout,
    dense,
    fixed,
    fixed_per_head,
    local,
    merged,
    multi_head,
    optimal_stride,
    same_for_all_heads,
    strided,
)
from .reference import naive_attention, reference_attention

__all__ = [
    "AttentionPattern", "HeadPattern", "Layout", "build_layout", "dense", "fixed", "fixed_per_head",
    "local", "merged", "multi_head", "optimal_stride", "same_for_all_heads", "strided",
    "naive_attention", "reference_attention", "sparse_attention", "sparse_attention_qkv", "FusedLayerNorm",
    "add_layer_norm", "layer_norm", "layer_norm_keep", "residual_add", "linear_silu", "feed_forward",
]
