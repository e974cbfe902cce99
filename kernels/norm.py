"""The public LayerNorm entry point: the Triton kernel (``layernorm``) on CUDA, torch's elsewhere.

The output comes in the dtype its consumer would cast it to: under autocast the autocast dtype
(the next matmul reads it as it is, no cast kernel), otherwise x's dtype. Set
MEGASTRIDE_LAYERNORM=torch to force torch's layer_norm anywhere (A/B runs); on CPU tensors the
kernel runs only under the Triton interpreter with MEGASTRIDE_LAYERNORM=triton (tests), and CUDA
tensors never go through the interpreter.

The residual stream around the LayerNorms (``layer_norm_keep``, ``residual_add``) goes through kernels
of its own where the LayerNorm kernels run; MEGASTRIDE_RESIDUAL=plain keeps the LayerNorm kernels and
gives the stream back to torch's adds and autograd's gradient sums (A/B runs).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_KERNEL_MAX_WIDTH = 8192  # layernorm.MAX_WIDTH, without importing triton here


def kernel_switch(name: str) -> str:
    """A kernel family's switch, ``name`` in the environment: "" (unset), "torch" or "triton"; anything else is
    an error naming it."""
    choice = os.environ.get(name, "").lower()
    if choice not in ("", "torch", "triton"):
        raise ValueError(f"{name} must be unset, 'torch' or 'triton'; got {choice!r}")
    return choice


def kernels_reach(x: torch.Tensor, choice: str) -> bool:
    """Whether Triton kernels run on x under a switch's ``choice`` (not "torch"): CUDA tensors outside the
    interpreter; CPU tensors only under it (TRITON_INTERPRET=1: tests) with the switch at "triton"."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if x.is_cuda:  # not through the interpreter: a test session that sets it may also hold GPU tests
        return not interpreted
    return interpreted and choice == "triton"


def _use_triton(x: torch.Tensor) -> bool:
    choice = kernel_switch("MEGASTRIDE_LAYERNORM")
    if choice == "torch" or x.dtype not in _KERNEL_DTYPES or x.shape[-1] > _KERNEL_MAX_WIDTH or x.numel() == 0:
        return False
    return kernels_reach(x, choice)


def _fuse_residual() -> bool:
    choice = os.environ.get("MEGASTRIDE_RESIDUAL", "").lower()
    if choice not in ("", "fused", "plain"):
        raise ValueError(f"MEGASTRIDE_RESIDUAL must be unset, 'fused' or 'plain'; got {choice!r}")
    return choice != "plain"


def output_dtype(x: torch.Tensor, default: torch.dtype | None = None) -> torch.dtype:
    """The autocast dtype where autocast is on for x's device, else ``default`` (x's dtype)."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else default or x.dtype


def reference_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch's layer_norm over the last dim, cast to ``out_dtype``: the reference and the fallback."""
    y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return y if out_dtype is None else y.to(out_dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LayerNorm of x over its last dim (fp32 math); y in ``out_dtype``, by default ``output_dtype(x)``.

    The Triton kernel on CUDA (float16/bfloat16/float32, rows up to 8192 wide); torch's layer_norm
    otherwise and under torch.compile (inductor fuses it with its neighbours itself).
    """
    if torch.compiler.is_compiling():
        return reference_layer_norm(x, weight, bias, eps, out_dtype)
    out_dtype = out_dtype or output_dtype(x)
    if not _use_triton(x) or out_dtype not in _KERNEL_DTYPES:
        return reference_layer_norm(x, weight, bias, eps, out_dtype)
    from .layernorm import triton_layer_norm  # imported lazily: needs triton

    return triton_layer_norm(x, weight, bias, eps, out_dtype)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, y) with s = x + residual (their promoted dtype) and y = LayerNorm(s) in ``out_dtype`` (default
    ``output_dtype(s)``): the pre-LN block's residual add fused with the next LayerNorm. The Triton
    kernels where ``layer_norm`` uses them (one read of x and residual, s and y written together; in
    the backward the residual stream's gradient added to dx and the branch's gradient written in its
    dtype, no add or cast kernels); elsewhere the add and ``layer_norm``."""
    s_dtype = torch.result_type(x, residual)
    out_dtype = out_dtype or output_dtype(x, s_dtype)
    if (torch.compiler.is_compiling() or residual.shape != x.shape or not _use_triton(x)
            or not {residual.dtype, s_dtype, out_dtype} <= set(_KERNEL_DTYPES)):
        s = x + residual  # layer_norm picks its own path (torch's where the kernel cannot run)
        return s, layer_norm(s, weight, bias, eps, out_dtype)
    from .layernorm import triton_add_layer_norm  # imported lazily: needs triton

    return triton_add_layer_norm(x, residual, weight, bias, eps, out_dtype)


def layer_norm_keep(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5,
                    out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x2): y = ``layer_norm(x, ...)`` and x2 = x for the residual stream, which its users take
    instead of x. Where the kernels run, x2 is a view made by the LayerNorm's autograd node, so x2's
    gradient meets y's in one backward and the kernel adds it to dx (``layernorm._LayerNormKeep``):
    the pre-LN block's input feeds its first LayerNorm and its residual add, and autograd would
    otherwise sum the two gradients in a kernel of its own. Elsewhere x2 is x."""
    out_dtype = out_dtype or output_dtype(x)
    if (torch.compiler.is_compiling() or not _fuse_residual() or not _use_triton(x)
            or out_dtype not in _KERNEL_DTYPES):
        return layer_norm(x, weight, bias, eps, out_dtype), x
    from .layernorm import triton_layer_norm_keep  # imported lazily: needs triton

    return triton_layer_norm_keep(x, weight, bias, eps, out_dtype)


def each_dtype(g: torch.Tensor, dtypes) -> tuple[torch.Tensor, ...]:
    """An add's gradient for each of its inputs, in that input's dtype (as torch's add passes it on)."""
    return tuple(g if g.dtype == t else g.to(t) for t in dtypes)


class _UnreadAdd(torch.autograd.Function):
    """x + r whose value nobody reads: a zero-stride placeholder of the sum's shape and dtype; the add's
    gradient to both."""

    @staticmethod
    def forward(ctx, x, r):
        ctx.dtypes = (x.dtype, r.dtype)
        return x.new_empty((), dtype=torch.result_type(x, r)).expand(x.shape)

    @staticmethod
    def backward(ctx, g):
        return each_dtype(g, ctx.dtypes)


def residual_add(x: torch.Tensor, r: torch.Tensor, unread: bool = False) -> torch.Tensor:
    """x + r. Where the LayerNorm kernels run and the two differ in dtype (the fp32 residual stream plus a
    bf16 or fp16 branch under autocast) by a Triton kernel of full-width vector loads
    (``layernorm.triton_residual_add``), with the sum torch's add would write: torch's mixed-dtype add
    casts element by element on its unrolled path. One dtype, other shapes, strides or devices: torch's add.
    ``unread`` (with gradients on, one shape): the sum is not computed, only its autograd node made
    (``_UnreadAdd``), for a recompute that reads the output's gradient edge alone
    (``engine.model.Block.output_unread``)."""
    if unread and torch.is_grad_enabled() and r.shape == x.shape:
        return _UnreadAdd.apply(x, r)
    if (torch.compiler.is_compiling() or not _fuse_residual() or x.dtype == r.dtype or r.shape != x.shape
            or not {x.dtype, r.dtype} <= set(_KERNEL_DTYPES) or not (x.is_contiguous() and r.is_contiguous())
            or r.device != x.device or not _use_triton(x)):
        return x + r
    from .layernorm import triton_residual_add  # imported lazily: needs triton

    return triton_residual_add(x, r)


class FusedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state_dict keys) computed by ``layer_norm``: under autocast
    its output is already in the autocast dtype."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"FusedLayerNorm normalises the last dim only, got normalized_shape "
                             f"{self.normalized_shape}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + residual, this LayerNorm of it), fused where the kernels run (``add_layer_norm``)."""
        return add_layer_norm(x, residual, self.weight, self.bias, self.eps)

    def keep_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(this LayerNorm of x, x for the residual stream): ``layer_norm_keep``."""
        return layer_norm_keep(x, self.weight, self.bias, self.eps)
