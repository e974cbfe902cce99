"""The FFN's first layer, ``silu(x W^T + b)``: the Triton kernels (``bias_silu``) on CUDA, torch elsewhere.

Where the kernels run, the product comes from cuBLAS without its bias and one kernel each way adds the
bias and applies the SiLU, its backward summing the bias's gradient as it writes dz (torch's linear
would read dz once more for that sum alone). Set MEGASTRIDE_FFN=torch to keep torch's path anywhere (A/B
runs); on CPU tensors the kernels run only under the Triton interpreter with MEGASTRIDE_FFN=triton
(tests), and CUDA tensors never go through the interpreter. Where the kernels run, MEGASTRIDE_FFN_GEMM=1 takes
the product too into Triton, its epilogue adding the bias and applying the SiLU (``ffn_gemm``; off by default,
not yet timed against cuBLAS).
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


def linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """silu(x weight^T + bias), in the dtype ``F.linear`` gives (under autocast the autocast dtype).

    Where the kernels run: ``F.linear(x, weight)`` without the bias, then ``bias_silu.triton_bias_silu``
    (the bias added in fp32, its gradient summed in the SiLU's backward); elsewhere and without a bias
    ``F.silu(F.linear(x, weight, bias))``."""
    if bias is None or not _use_triton(x):
        return F.silu(F.linear(x, weight, bias))
    from . import ffn_gemm  # imported lazily: needs triton

    if ffn_gemm.enabled():
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        if weight.dtype == x.dtype or torch.is_autocast_enabled(kind):  # else F.linear's own error below
            if dtype in _KERNEL_DTYPES and bias.dtype in _KERNEL_DTYPES:
                return ffn_gemm.linear_bias_silu(x.to(dtype), weight.to(dtype), bias)
    z0 = F.linear(x, weight)
    if z0.dtype not in _KERNEL_DTYPES or bias.dtype not in _KERNEL_DTYPES:
        return F.silu(z0 + bias)
    from .bias_silu import triton_bias_silu  # imported lazily: needs triton

    return triton_bias_silu(z0, bias)
