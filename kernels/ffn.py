"""The FFN's first layer, ``silu(x W^T + b)``: the Triton kernels (``bias_silu``) on CUDA, torch elsewhere.

Where the kernels run, the product comes from cuBLAS without its bias and one kernel each way adds the
bias and applies the SiLU, its backward summing the bias's gradient as it writes dz (torch's linear
would read dz once more for that sum alone). Set MEGASTRIDE_FFN=torch to keep torch's path anywhere (A/B
runs); on CPU tensors the kernels run only under the Triton interpreter with MEGASTRIDE_FFN=triton
(tests), and CUDA tensors never go through the interpreter. Where the kernels run, MEGASTRIDE_FFN_GEMM=1 takes
the product too into Triton, one product each way whose epilogues apply the bias and SiLU and their backward
(``feed_forward``, the model's whole FFN as one node, and ``linear_silu``; ``ffn_gemm``: on an H100 at 1M rows
its forward without gradients ran 8% faster than cuBLAS's product and the SiLU kernel, its forward and backward
0.7% slower), and by default (unset, or MEGASTRIDE_FFN_GEMM=nograd) only where no gradient is recorded;
MEGASTRIDE_FFN_GEMM=0 never.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .norm import _KERNEL_DTYPES, kernel_switch, kernels_reach


def _use_triton(x: torch.Tensor) -> bool:
    choice = kernel_switch("MEGASTRIDE_FFN")
    if choice == "torch" or torch.compiler.is_compiling() or x.numel() == 0:
        return False
    return kernels_reach(x, choice)


def _gemm_dtype(x: torch.Tensor, weights, others=()) -> torch.dtype | None:
    """The dtype the one-kernel layer computes in (F.linear's: the autocast dtype under autocast, else x's, which
    the weights must share), or None where it does not run: MEGASTRIDE_FFN_GEMM=0 (or "nograd", the default, where
    a gradient of x, the weights or ``others`` is recorded), the kernels not reaching x, a dtype they do not take."""
    if not _use_triton(x):
        return None
    from . import ffn_gemm  # imported lazily: needs triton

    gemm = ffn_gemm.mode()
    if gemm == "off":
        return None
    if gemm == "nograd" and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, *weights, *others)):
        return None
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
    elif all(w.dtype == x.dtype for w in weights):
        dtype = x.dtype
    else:
        return None  # F.linear's own error
    return dtype if dtype in _KERNEL_DTYPES else None


def feed_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor | None,
                 unread: bool = False) -> torch.Tensor | None:
    """``F.linear(silu(F.linear(x, w1, b1)), w2, b2)`` through ``ffn_gemm.feed_forward`` (the first layer's bias and
    SiLU in its product's epilogue, their backward in dz's product), where MEGASTRIDE_FFN_GEMM=1 (or, by default,
    no gradient is recorded) and the kernels run; None elsewhere (the caller runs its own layers). ``unread``:
    proj's product left uncomputed."""
    dtype = _gemm_dtype(x, (w1, w2), (b1, b2))
    if dtype is None or b1 is None or b1.dtype not in _KERNEL_DTYPES:
        return None
    from . import ffn_gemm

    return ffn_gemm.feed_forward(x.to(dtype), w1.to(dtype), b1, w2.to(dtype), None if b2 is None else b2.to(dtype),
                                 unread)


def linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """silu(x weight^T + bias), in the dtype ``F.linear`` gives (under autocast the autocast dtype).

    Where the kernels run: ``F.linear(x, weight)`` without the bias, then ``bias_silu.triton_bias_silu``
    (the bias added in fp32, its gradient summed in the SiLU's backward); elsewhere and without a bias
    ``F.silu(F.linear(x, weight, bias))``."""
    if bias is None or not _use_triton(x):
        return F.silu(F.linear(x, weight, bias))
    dtype = _gemm_dtype(x, (weight,), (bias,))
    if dtype is not None and bias.dtype in _KERNEL_DTYPES:
        from . import ffn_gemm

        return ffn_gemm.linear_bias_silu(x.to(dtype), weight.to(dtype), bias)
    z0 = F.linear(x, weight)
    if z0.dtype not in _KERNEL_DTYPES or bias.dtype not in _KERNEL_DTYPES:
        return F.silu(z0 + bias)
    from .bias_silu import triton_bias_silu  # imported lazily: needs triton

    return triton_bias_silu(z0, bias)
