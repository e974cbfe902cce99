"""Issue 5's baseline: the plain PyTorch training script a user would write instead of megastride.

A pre-LN byte transformer with our config's shapes (``configs/enwik8.yaml``: 30 layers, d 512, 8
heads, the same 94.7M non-embedding parameters as ``engine.model.SparseTransformer``): a byte
embedding plus a learned factorised position embedding (window index + offset in the window, the
config's window), one fused qkv linear per block, an ``nn.GELU`` FFN, bf16 autocast,
``torch.utils.checkpoint`` per block, the output layer and loss in checkpointed chunks, fused AdamW.
Its attention is one of

* ``dense``: ``F.scaled_dot_product_attention(is_causal=True)`` (FlashAttention on an H200);
* ``flex``: ``torch.compile(flex_attention)`` with a BlockMask (128-blocks) of the fixed pattern our
  kernels run at that length -- the config's ``fixed(l,c)``, e.g. ``fixed(auto,128)``: l ~ sqrt(128 n),
  one summary block per window (SPEC section 3). FlexAttention has no backward on the CPU.

Nothing of megastride's runs inside it (no Triton kernels, layouts or BlockCheckpoint): only the
config's shapes and the pattern's (l, c) come from us. ``time_steps`` times it with the protocol of
``engine.bench_scaling.time_steps``; ``megastride bench scaling --baseline`` puts it beside our kinds.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megastride.kernels import patterns as P
from megastride.kernels.bench import fixed_mask_mod, flex_block_mask, flex_compiled

from .config import Config, ConfigError, ModelConfig

ATTENTIONS = ("dense", "flex")
FLEX_BLOCK = 128  # FlexAttention's default BLOCK_SIZE


class SelfAttention(nn.Module):
    """Causal multi-head self-attention: dense SDPA, or Flex under a BlockMask when one is given."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, block_mask=None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, Dh)
        if block_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = flex_compiled()(q, k, v, block_mask=block_mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Block(nn.Module):
    """Pre-LN residual block."""

    def __init__(self, d_model: int, n_heads: int, ffn_width: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, ffn_width), nn.GELU(), nn.Linear(ffn_width, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, block_mask=None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), block_mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class BaselineTransformer(nn.Module):
    """Byte transformer: embeddings, pre-LN blocks (each recomputed in backward), final LN, 256-way head.

    ``block_mask`` (a Flex BlockMask, see ``fixed_block_mask``) switches every layer to Flex.
    """

    def __init__(self, seq_len: int, d_model: int = 512, n_layers: int = 30, n_heads: int = 8,
                 vocab_size: int = 256, pos_window: int = 128, ffn_width: int = 2048, dropout: float = 0.0,
                 loss_chunk: int = 8192, checkpoint_blocks: bool = True):
        super().__init__()
        self.pos_window, self.loss_chunk, self.checkpoint_blocks = pos_window, loss_chunk, checkpoint_blocks
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos_window_index = nn.Embedding(-(-seq_len // pos_window), d_model)
        self.pos_offset = nn.Embedding(pos_window, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, ffn_width, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.block_mask = None
        self.apply(_init_weights)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) of (B, T) byte ids against (B, T) targets."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos_window_index(pos // self.pos_window) + self.pos_offset(pos % self.pos_window)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, self.block_mask, use_reentrant=False)
            else:
                x = block(x, self.block_mask)
        return chunked_cross_entropy(self.ln_f(x), self.head, targets, self.loss_chunk)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(e.weight.numel() for e in (self.tok, self.pos_window_index, self.pos_offset))
        return n


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _chunk_loss(h: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), targets, reduction="sum")


def chunked_cross_entropy(h: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean cross-entropy of h (B, T, D) through ``head``, ``chunk`` positions at a time, each chunk
    recomputed in backward: the (B, T, 256) logits never exist at once."""
    h, targets = h.flatten(0, 1), targets.flatten()
    total = 0.0
    for i in range(0, targets.numel(), chunk):
        total = total + checkpoint(_chunk_loss, h[i : i + chunk], head, targets[i : i + chunk], use_reentrant=False)
    return total / targets.numel()


# ---------------------------------------------------------------------------------------------
# Built from our config: same shapes, the same fixed pattern for Flex
# ---------------------------------------------------------------------------------------------


def fixed_stride_width(cfg: ModelConfig) -> tuple[int, int]:
    """(l, c) of the config's fixed pattern at its length (every layer and head must share it)."""
    heads = {h for pattern in cfg.patterns() for h in pattern.heads}
    if len(heads) == 1:
        comps = heads.pop().components
        if len(comps) == 2 and isinstance(comps[0], P.Window) and isinstance(comps[1], P.Summary):
            window, summary = comps
            if summary.size == window.size and summary.index == 0:
                return window.size, summary.width
    raise ConfigError(f"the flex baseline runs one plain fixed(l,c) pattern in every layer and head, "
                      f"not {list(cfg.attention.layers)}")


def fixed_block_mask(seq_len: int, stride: int, width: int, device: torch.device | str):
    """Flex's BlockMask (FLEX_BLOCK-token blocks) of the fixed pattern, from ``kernels.bench``'s mask_mod."""
    return flex_block_mask(fixed_mask_mod(stride, width), seq_len, device, FLEX_BLOCK)


def build(cfg: ModelConfig, attention: str = "dense", device: torch.device | str = "cpu",
          checkpoint_blocks: bool = True) -> BaselineTransformer:
    """The baseline at ``cfg``'s shapes on ``device``; ``flex`` adds the fixed pattern's BlockMask."""
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown baseline attention {attention!r} (known: {', '.join(ATTENTIONS)})")
    model = BaselineTransformer(cfg.seq_len, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.vocab_size,
                                cfg.position_window(), cfg.ffn_width, cfg.dropout, cfg.loss_chunk,
                                checkpoint_blocks).to(device)
    if attention == "flex":
        model.block_mask = fixed_block_mask(cfg.seq_len, *fixed_stride_width(cfg), device)
    return model


@lru_cache(maxsize=32)
def _count_params(model_json: str) -> tuple[int, int]:
    with torch.device("meta"):
        model = build(ModelConfig.model_validate_json(model_json), device="meta")
    return model.num_params(), model.num_params(non_embedding=True)


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """(all, non-embedding) parameters of the baseline at ``cfg``'s shapes (built on the meta device)."""
    return _count_params(cfg.model_dump_json())


# ---------------------------------------------------------------------------------------------
# Timing: engine.bench_scaling.time_steps's protocol
# ---------------------------------------------------------------------------------------------


def train_step(model: BaselineTransformer, optimizer, batch: torch.Tensor, autocast) -> None:
    """The user's step: loss under autocast, backward, clip the gradient norm at 1.0, AdamW, zero grads."""
    with autocast:
        loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(cfg: Config, attention: str, device: torch.device, batch: int, steps: int, warmup: int,
               profile: dict | None = None, trace=None, allocator: dict | None = None, alternate=None,
               medians: dict | None = None) -> tuple[float, float | None]:
    """(median step seconds, peak allocated bytes over the timed steps or None off CUDA) of the baseline
    at ``cfg``'s shapes and length: ``warmup`` untimed steps (compilation, optimizer states), then
    ``steps`` synchronised timed ones; with a ``profile`` dict on CUDA, ``profile_calls`` of 2 more; with a
    ``trace`` path, what the peak was made of; an ``allocator`` dict gets the allocator's counts over the timed
    steps; ``alternate`` and ``medians`` as ``bench_scaling.timed_calls``'s."""
    if attention == "flex" and device.type != "cuda":
        raise ValueError("FlexAttention has no backward pass on the CPU: time the flex baseline on CUDA")
    if cfg.train.precision == "fp16":
        raise ConfigError("the baseline times bf16 or fp32 steps (fp16 needs loss scaling): set train.precision")
    if attention == "flex":
        # compile for this length alone, as a script run at one length does (kernels.bench.flex_compiled:
        # in a sweep the second length would recompile with dynamic shapes, a slower Flex step; 262,144
        # tokens on the H200, 2026-11-29: 3.50 s/step after 65,536 in the same process, 2.00 s alone)
        flex_compiled(fresh=True)
    torch.manual_seed(cfg.run.seed)
    model = build(cfg.model, attention, device, cfg.train.checkpoint_activations)
    t = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, eps=t.eps,
                                  weight_decay=t.weight_decay, fused=device.type == "cuda")
    data = torch.randint(0, cfg.model.vocab_size, (batch, cfg.model.seq_len + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")

    from .bench_scaling import timed_calls  # imported here: bench_scaling imports this module

    return timed_calls(lambda: train_step(model, optimizer, data, autocast), device, steps, warmup, profile,
                       trace=trace, allocator=allocator, alternate=alternate, medians=medians)
