"""The Sparse Transformer (Child et al. 2019, sections 5-6) over a byte vocabulary.

Single-device code only: no torch.distributed, no deepspeed. Activation checkpointing, ZeRO and
the like are applied from outside (``engine.parallel``) through ``SparseTransformer.block_runner``.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from megastride.kernels import (FusedLayerNorm, Layout, feed_forward, linear_silu, residual_add, sparse_attention,
                                sparse_attention_qkv)
from megastride.kernels.attention import layout_for
from megastride.kernels.patterns import AttentionPattern

from .config import ModelConfig


GELU_SCALE = 1.702


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The paper's GELU approximation: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(GELU_SCALE * x)


class SparseAttention(nn.Module):
    """Multi-head attention under one layer's sparse pattern."""

    def __init__(self, cfg: ModelConfig, pattern_fn: Callable[[int], AttentionPattern]):
        super().__init__()
        self.n_heads, self.block = cfg.n_heads, cfg.attention.block
        self.qk_head, self.v_head = cfg.qk_width // cfg.n_heads, cfg.d_model // cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.qk_width)
        self.k = nn.Linear(cfg.d_model, cfg.qk_width)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)  # W_p: scaled by 1/sqrt(2N) at init
        self.pattern_fn = pattern_fn
        self._layouts: dict[tuple[int, str], Layout] = {}

    def layout(self, seq_len: int, device: torch.device) -> Layout:
        """The compressed layout for this length on this device (built once, cached)."""
        key = (seq_len, str(device))
        if key not in self._layouts:
            self._layouts[key] = layout_for(self.pattern_fn(seq_len), seq_len, self.block, device)
        return self._layouts[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # q, k and v in one matmul over the three weights stacked (small): x is read, and under
        # autocast cast and saved for backward, once instead of three times
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        qkv = F.linear(x, weight, bias)
        scale = 1.0 / math.sqrt(self.qk_head)
        if self.qk_head == self.v_head:  # the attention takes the product whole: one gradient, not three to concatenate
            out = sparse_attention_qkv(qkv, self.n_heads, self.layout(t, x.device), scale=scale)
            return self.proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)
        q, k, v = qkv.split([self.q.out_features, self.k.out_features, self.v.out_features], -1)
        q = q.view(b, t, self.n_heads, self.qk_head).transpose(1, 2)  # (B, H, T, Dqk), views of the product
        k = k.view(b, t, self.n_heads, self.qk_head).transpose(1, 2)  # (B, H, T, Dqk)
        v = v.view(b, t, self.n_heads, self.v_head).transpose(1, 2)  # (B, H, T, Dv)
        # the kernels take one head dim: zero-padding q and k leaves q.k unchanged (exact)
        width = max(self.qk_head, self.v_head)
        q, k = F.pad(q, (0, width - self.qk_head)), F.pad(k, (0, width - self.qk_head))
        v = F.pad(v, (0, width - self.v_head))
        out = sparse_attention(q, k, v, self.layout(t, x.device), scale=scale)[..., : self.v_head]
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


class FeedForward(nn.Module):
    """W2(GELU(W1 x)).

    With ``ffn_chunk`` > 0, positions are processed ``ffn_chunk`` at a time, each chunk recomputed
    in the backward pass when gradients are on: the (T, ffn width) intermediates, the largest
    tensors of a block at long lengths (fc output, its GELU, their gradients), exist for one chunk
    at a time.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_width)
        self.proj = nn.Linear(cfg.ffn_width, cfg.d_model)  # W2: scaled by 1/sqrt(2N) at init
        self.chunk = cfg.ffn_chunk

    def _ffn(self, x: torch.Tensor, unread: bool = False) -> torch.Tensor:
        # proj(gelu(fc(x))) with gelu(y) = silu(1.702 y) / 1.702: the two constants go into the
        # small weight matrices instead of the (T, ffn width) activations, so the activation sees
        # one fused kernel each way (silu and its backward) instead of three forward and about five
        # backward, and the FFN saves two wide tensors for backward instead of three. Same
        # parameters, same function (to rounding).
        # Where the kernels run, fc's bias is added in the SiLU's kernel, whose backward also sums its gradient
        # (kernels.linear_silu): F.linear's backward would read the (T, ffn width) gradient again for it.
        s = GELU_SCALE
        w1, b1 = self.fc.weight * s, self.fc.bias * s
        weight, bias = self.proj.weight * (1.0 / s), self.proj.bias
        # where the kernels run and no gradient is recorded (by default; everywhere with MEGASTRIDE_FFN_GEMM=1), the
        # first layer is one Triton product, its bias and SiLU in the forward's epilogue (with =1 also proj's
        # product with dy in the backward's; kernels.ffn_gemm)
        y = feed_forward(x, w1, b1, weight, bias, unread)
        if y is not None:
            return y
        a = linear_silu(x, w1, b1)
        if not unread:
            return F.linear(a, weight, bias)
        kind = a.device.type
        if torch.is_autocast_enabled(kind):  # as F.linear under autocast: the parameters cast, their casts recorded
            dtype = torch.get_autocast_dtype(kind)
            weight, bias = weight.to(dtype), bias.to(dtype) if bias is not None else None
        return _UnevaluatedLinear.apply(a, weight, bias)

    def forward(self, x: torch.Tensor, unread: bool = False) -> torch.Tensor:
        """The FFN of x. ``unread``: for a recompute that never reads the block's output
        (``Block.output_unread``), proj's product is left uncomputed (``_UnevaluatedLinear``: its output
        allocated, its backward the product's, which needs only proj's input, the SiLU's output); chunked
        (``ffn_chunk``), computed as always."""
        t, c = x.shape[1], self.chunk
        if not c or t <= c:
            return self._ffn(x, unread)
        if torch.is_grad_enabled():  # no randomness inside: no RNG state to stash (nor to read under a CUDA graph)
            # split, not x[:, i : i + c]: a slice's backward writes its chunk into a zeroed tensor of x's
            # full size, and T / c of those are summed; split's backward concatenates the chunks once
            parts = [torch.utils.checkpoint.checkpoint(self._ffn, part, use_reentrant=False, preserve_rng_state=False)
                     for part in x.split(c, dim=1)]
            return torch.cat(parts, dim=1)
        first = self._ffn(x[:, :c])  # no graph to keep: write each chunk into one output
        out = first.new_empty(*x.shape[:-1], first.shape[-1])
        out[:, :c] = first
        for i in range(c, t, c):
            out[:, i : i + c] = self._ffn(x[:, i : i + c])
        return out


class Block(nn.Module):
    """Pre-activation residual block; dropout only where the residual is added."""

    def __init__(self, cfg: ModelConfig, pattern_fn: Callable[[int], AttentionPattern]):
        super().__init__()
        self.ln1, self.ln2 = FusedLayerNorm(cfg.d_model), FusedLayerNorm(cfg.d_model)  # output in the autocast dtype
        self.attn = SparseAttention(cfg, pattern_fn)
        self.ffn = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        # set by engine.parallel.BlockCheckpoint around its recompute, which reads only the output's gradient
        # edge, never its value: the FFN's proj product and the residual add after it are then left uncomputed
        # (their backward needs neither); the graph, hooks and dropout masks are forward's
        self.output_unread = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # where the LayerNorm kernels run: ln1's backward adds the residual stream's gradient of x to its
        # own (kernels.layer_norm_keep), the attention branch's residual add and ln2 are one kernel each
        # way (kernels.add_layer_norm), and the FFN's add is one vectorised kernel (kernels.residual_add);
        # elsewhere ln1(x), x + branch, ln2 and x + branch
        h, x = _norm_keep(self.ln1, x)
        x, h = _add_norm(self.ln2, x, self.drop(self.attn(h)))
        if self.output_unread and torch.is_grad_enabled():  # dropout draws its mask from the replayed RNG as before
            return residual_add(x, self.drop(self.ffn(h, unread=True)), unread=True)
        return residual_add(x, self.drop(self.ffn(h)))


class _UnevaluatedLinear(torch.autograd.Function):
    """``F.linear(a, weight, bias)`` (weight and bias already in a's dtype) whose value nobody reads: the output
    is allocated (uninitialised: a dropout after it draws its mask as it would on the product) and not computed;
    the backward is the product's."""

    @staticmethod
    def forward(ctx, a, weight, bias):
        ctx.save_for_backward(a, weight)
        ctx.bias = bias is not None
        return a.new_empty(*a.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        a, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        da = (g2 @ weight).view(a.shape) if ctx.needs_input_grad[0] else None
        dw = g2.t() @ a.reshape(-1, a.shape[-1]) if ctx.needs_input_grad[1] else None
        db = g2.sum(0) if ctx.bias and ctx.needs_input_grad[2] else None
        return da, dw, db


def _norm_keep(ln: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ln of x, x for the residual stream): ``FusedLayerNorm.keep_forward``, else ``ln(x)`` and x."""
    return ln.keep_forward(x) if isinstance(ln, FusedLayerNorm) else (ln(x), x)


def _add_norm(ln: nn.Module, x: torch.Tensor, branch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + branch, ln of it): fused for a FusedLayerNorm (``add_forward``), else the add, then ``ln``."""
    if isinstance(ln, FusedLayerNorm):
        return ln.add_forward(x, branch)
    s = x + branch
    return s, ln(s)


class PositionEmbedding(nn.Module):
    """Learned, factorised position embeddings summed over the data's own coordinates.

    1-D data ("window"): window index t // W and offset t % W, W the pattern's stride.
    Images ("image"): row, column and channel of byte t in an (H, W, C) raster.
    "absolute": one embedding per position (for comparison).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kind, n, d = cfg.embedding.kind, cfg.seq_len, cfg.d_model
        if kind == "image":
            self.sizes = tuple(cfg.embedding.image_shape)  # (H, W, C)
        elif kind == "window":
            window = cfg.position_window()
            self.sizes = (-(-n // window), window)  # (windows, offsets)
        else:
            self.sizes = (n,)
        self.tables = nn.ModuleList(nn.Embedding(s, d) for s in self.sizes)

    def coordinates(self, t: int, device) -> list[torch.Tensor]:
        pos = torch.arange(t, device=device)
        coords = []
        for size in reversed(self.sizes):  # innermost coordinate first
            coords.append(pos % size)
            pos = pos // size
        return coords[::-1]

    def forward(self, t: int, device) -> torch.Tensor:
        if t > math.prod(self.sizes):
            raise ValueError(f"sequence of {t} positions is longer than the model's context {math.prod(self.sizes)}")
        return sum(table(c) for table, c in zip(self.tables, self.coordinates(t, device)))  # (T, D)


class SparseTransformer(nn.Module):
    """Byte-level Sparse Transformer: embeddings, N residual blocks, final LN, 256-way logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = PositionEmbedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, self._pattern_fn(r)) for r in range(cfg.n_layers))
        self.ln_f = FusedLayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # how each block is run: plain by default; engine.parallel swaps in recomputation, and may
        # set ``segments`` (callables running consecutive blocks) for the runner to take instead
        self.block_runner: Callable[[Callable, torch.Tensor], torch.Tensor] = lambda block, x: block(x)
        self.segments: list[Callable[[torch.Tensor], torch.Tensor]] | None = None
        self.reset_parameters()

    def _pattern_fn(self, layer: int) -> Callable[[int], AttentionPattern]:
        # on the config, not on self: a block holding a function of the model would make a reference cycle, and
        # a model no longer used would stay allocated (on the GPU too) until the cycle collector ran
        cfg = self.cfg
        return lambda seq_len: cfg.patterns(seq_len)[layer]

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit LayerNorms; W_p and W2 scaled by 1/sqrt(2N)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.ffn.proj):
                nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layers))

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) byte ids -> (B, T, D) final-LN hidden states."""
        if idx.dim() != 2:
            raise ValueError(f"expected (batch, time) byte ids, got shape {tuple(idx.shape)}")
        x = self.tok(idx) + self.pos(idx.shape[1], idx.device)
        for unit in self.segments or self.blocks:
            x = self.block_runner(unit, x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, 256) without targets; with targets the mean cross-entropy in nats.

        The loss never materialises (B, T, 256) logits at once: the output layer and the loss run
        over ``loss_chunk`` positions at a time, each chunk recomputed in backward.
        """
        h = self.hidden(idx)
        if targets is None:
            return self.head(h)
        return chunked_cross_entropy(h, self.head.weight, targets, self.cfg.loss_chunk)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok.weight.numel() + sum(t.weight.numel() for t in self.pos.tables)
        return n


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight).float()  # (chunk, V)
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean next-byte cross-entropy (nats) of hidden states h (B, T, D) under output weights (V, D)."""
    flat_h, flat_t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    total = h.new_zeros((), dtype=torch.float32)
    # split, not slices: each slice's backward would zero-fill a gradient of h's full size (FeedForward)
    for args in zip(flat_h.split(chunk), itertools.repeat(weight), flat_t.split(chunk)):
        if torch.is_grad_enabled() and h.requires_grad:  # deterministic: no RNG state to stash
            total = total + torch.utils.checkpoint.checkpoint(_chunk_loss, *args, use_reentrant=False,
                                                                 preserve_rng_state=False)
        else:
            total = total + _chunk_loss(*args)
    return total / flat_t.numel()
