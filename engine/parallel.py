"""Wrapping the single-device model from outside: activation recomputation, DeepSpeed engine.

``engine.model`` stays free of distributed code; everything here acts on a built model.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .config import TrainConfig


class HostCheckpoint(torch.autograd.Function):
    """Run ``block(x)`` (a block, or any callable of one tensor) keeping nothing on the device:
    ``x`` is copied to host memory (pinned when it lives on a GPU) and the block is recomputed from
    it in the backward pass.

    At 1M tokens the checkpointed block inputs are the largest item of a step (1 GiB per layer for
    d_model 512 in bf16, 32 GB over 30 layers); here they cost host memory and two copies per
    layer instead. DeepSpeed's ``checkpoint_in_cpu`` only offloads model-parallel partitions (it
    fails without ``partition_activations``). Parameter gradients accumulate through the nested
    backward, as in reentrant checkpointing; the RNG states and the autocast state are replayed so
    dropout and the compute dtype match.
    """

    @staticmethod
    def forward(ctx, block, x: torch.Tensor) -> torch.Tensor:
        ctx.block, ctx.device = block, x.device
        host = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=x.is_cuda)
        host.copy_(x, non_blocking=x.is_cuda)
        ctx.host = host
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        ctx.autocast = [(kind, torch.get_autocast_dtype(kind)) for kind in ("cuda", "cpu")
                        if torch.is_autocast_enabled(kind)]
        with torch.no_grad():
            return block(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x = ctx.host.to(ctx.device, non_blocking=True).requires_grad_(True)
        devices = [ctx.device] if ctx.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), contextlib.ExitStack() as stack:
            for kind, dtype in ctx.autocast:
                stack.enter_context(torch.autocast(kind, dtype=dtype))
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            out = ctx.block(x)
        torch.autograd.backward(out, grad)
        ctx.host = ctx.block = None
        return None, x.grad


class Segment:
    """Consecutive blocks recomputed as one unit, each block recomputed again inside it.

    The outer runner keeps only the segment's input; while the segment is recomputed in the
    backward pass every block in it is checkpointed, so k block inputs and one block's activations
    are live: n/k + k inputs instead of n, for one more forward pass of most blocks (torch's
    checkpoint stops recomputing a segment once it holds what backward needs, before its last block).
    """

    def __init__(self, blocks, inner):
        self.blocks, self.inner = list(blocks), inner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = self.inner(block, x) if torch.is_grad_enabled() else block(x)
        return x


def apply_activation_checkpointing(model: nn.Module, train: TrainConfig) -> None:
    """Recompute every residual block (attention and FFN) in the backward pass.

    cpu_checkpointing keeps the block inputs in host memory (HostCheckpoint); partition_activations
    uses DeepSpeed's implementation; otherwise torch's non-reentrant checkpoint. checkpoint_group
    k > 1 recomputes k blocks at a time as one Segment (the runner above keeps segment inputs).
    """
    if not train.checkpoint_activations:
        return
    torch_checkpoint = lambda fn, x: checkpoint(fn, x, use_reentrant=False)  # noqa: E731
    if train.cpu_checkpointing:
        model.block_runner = lambda fn, x: HostCheckpoint.apply(fn, x)
    elif train.partition_activations:
        import deepspeed

        deepspeed.checkpointing.configure(None, partition_activations=True)
        model.block_runner = lambda fn, x: deepspeed.checkpointing.checkpoint(fn, x)
    else:
        model.block_runner = torch_checkpoint
    k = train.checkpoint_group
    if k > 1:
        blocks = list(model.blocks)
        model.segments = [Segment(blocks[i:i + k], torch_checkpoint) for i in range(0, len(blocks), k)]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, LayerNorm gains and embeddings are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and "tok." not in name and "pos." not in name
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as a torch optimizer (fused on CUDA): no DeepSpeed op to JIT-build.

    Under ZeRO-Offload the step runs on the CPU copies DeepSpeed keeps, so the fused flag is off.
    """
    fused = device.type == "cuda" and not train.offload_optimizer and train.zero_stage == 0
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay), lr=train.lr, betas=train.betas, eps=train.eps, fused=fused or None
    )
