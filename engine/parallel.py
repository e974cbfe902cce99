"""Wrapping the single-device model from outside: activation recomputation, DeepSpeed engine.

``engine.model`` stays free of distributed code; everything here acts on a built model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .config import TrainConfig


def apply_activation_checkpointing(model: nn.Module, train: TrainConfig) -> None:
    """Recompute every residual block (attention and FFN) in the backward pass.

    With partition_activations or cpu_checkpointing the DeepSpeed implementation is used (it can
    keep block inputs in CPU memory); otherwise torch's non-reentrant checkpoint.
    """
    if not train.checkpoint_activations:
        return
    if train.partition_activations or train.cpu_checkpointing:
        import deepspeed

        deepspeed.checkpointing.configure(
            None, partition_activations=train.partition_activations, checkpoint_in_cpu=train.cpu_checkpointing
        )
        model.block_runner = lambda block, x: deepspeed.checkpointing.checkpoint(block, x)
    else:
        model.block_runner = lambda block, x: checkpoint(block, x, use_reentrant=False)


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
