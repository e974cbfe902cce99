"""Predict per-GPU memory and step FLOPs of a config before queuing it (`megastride plan`).

Everything is arithmetic on the config except two cheap, exact pieces of real data: the parameter
count (the model built on the ``meta`` device, so it never drifts from ``engine.model``) and the
attention layouts (``kernels.patterns.build_layout`` at the planned length, for their metadata bytes
and unmasked pair counts).

Memory is predicted as the bytes the caching allocator has handed out (``max_memory_allocated``)
at each phase of a step -- forward, loss, the first and the last block of the backward pass, the
optimizer step -- and the plan's peak is the largest. Two runtimes:

* ``deepspeed`` (``megastride train``): 16-bit weights and gradients with fp32 master weights and
  Adam moments in the optimizer for bf16/fp16; fp32 everything for fp32. ZeRO stage 1 shards the
  optimizer states over the data-parallel world, stage 2 also the gradients, stage 3 also the
  weights; offload moves the optimizer states (and, stage 3, the weights) to host memory.
* ``torch`` (``megastride bench scaling``): fp32 weights, gradients and AdamW moments, bf16
  ``torch.autocast`` (which keeps fp32 residuals and casts each matmul input), one GPU.

The per-token byte counts of one residual block follow ``engine.model`` op by op (see
``block_saved_parts``), and the attention workspace the kernels' backward buffers; one block's
backward peaks in the worse of its two halves (the FFN half first, with everything the block saved,
then the attention half, with the FFN half's tensors freed). The constants that could not be derived
(DeepSpeed buckets) are named at the top.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from megastride.kernels.patterns import closed_form_pairs

from .config import (Config, ConfigError, ModelConfig, TrainConfig, apply_overrides, config_from_dict,
                     keep_attention_conflict)

H200_PEAK_FLOPS = 790e12  # measured bf16 matrix rate of one H200 (SPEC section 3)
PLAN_SMS = 132  # streaming multiprocessors the plan assumes (an H200's): where the kernels split dK/dV columns
GB = 1e9
# What the caching allocator holds for cuBLAS on the one stream a step's products run on (torch keeps a
# cuBLAS and a cuBLASLt workspace per handle and stream, never freed): measured on the H200 (torch 2.11) as
# the bytes allocated before every traced step beyond the parameters and optimizer states, eager or from a
# CUDA graph, 0.067-0.068 GB (docs/scaling.md, "The CUDA graph's extra memory, traced").
CUBLAS_WORKSPACE_BYTES = 64 * 2 ** 20
DEEPSPEED_BUCKET = 500_000_000  # elements: DeepSpeed's default reduce/allgather bucket (stages 1-2)
DEEPSPEED_PREFETCH = 50_000_000  # elements: DeepSpeed's default stage-3 prefetch bucket
LN_STATS = 8  # bytes per token per LayerNorm: fp32 mean and rstd
LSE = 4  # bytes per token per head: the fp32 log-sum-exp the attention saves
RUNTIMES = ("deepspeed", "torch")
# share of the GPU that train.checkpoint_blocks=auto fills: room for the planner's error and the
# allocator's fragmentation. Measured peaks (docs/scaling.md) came within -1.5%..+7.2% of the plan in
# the plain configurations; with host offload or a chunked FFN up to 15.6% above it until the planner
# counted their FFN-width gradient (they had an 80% share until then), within -2.1%..+1.7% since, and
# +0.6% at a 90% fit of the fixed 1M step with block inputs on the host (2026-12-04, run to its end)
AUTO_MEMORY_FRACTION = 0.90


def gb_words(nbytes: float) -> str:
    """A memory size in GB for a line of text: whole GB from 10 on, three significant digits below."""
    gb = nbytes / GB
    return f"{gb:.0f} GB" if gb >= 10 else f"{gb:.3g} GB"


def auto_budget(cfg: Config, gpu_bytes: float) -> tuple[float, str]:
    """(bytes, words) of what "auto" fits the planned first-step peak into on a GPU of ``gpu_bytes``: the
    share ``AUTO_MEMORY_FRACTION`` of it, or ``train.memory_budget_gb`` where that is less."""
    fraction = AUTO_MEMORY_FRACTION
    share = fraction * gpu_bytes
    given = cfg.train.memory_budget_gb
    if given is not None and given * GB < share:
        return given * GB, f"train.memory_budget_gb={given:g}"
    return share, f"{fraction:.0%} of {gb_words(gpu_bytes)}"


# ---------------------------------------------------------------------------------------------
# Parameters and unmasked pairs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int  # everything but the byte and position embeddings (the head is a matmul)
    per_block: int


def count_params(model: ModelConfig) -> ParamCount:
    """Exact parameter counts, from the real model built on the meta device (no memory, no init cost)."""
    return _count_params_cached(model.model_dump_json())


@lru_cache(maxsize=32)
def _count_params_cached(model_json: str) -> ParamCount:
    import torch

    from .model import SparseTransformer

    model_cfg = ModelConfig.model_validate_json(model_json)
    with torch.device("meta"):
        model = SparseTransformer(model_cfg)
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    return ParamCount(model.num_params(), model.num_params(non_embedding=True), per_block)


def layer_pairs(pattern, seq_len: int, layout=None) -> list[int]:
    """Unmasked pairs per head of one layer: closed form where known, else counted from the layout."""
    out = []
    for h, head in enumerate(pattern.heads):
        pairs = closed_form_pairs(head, seq_len)
        if pairs is None:
            pairs = layout.count_pairs(h)
        out.append(pairs)
    return out


def layer_patterns(model: ModelConfig, seq_len: int | None = None) -> tuple:
    """The distinct layer patterns at ``seq_len`` (default: the configured context), one per entry of
    model.attention.layers (layer r runs entry r % len): cached, since "auto" strides take a search per
    head (0.1 s per model at 1M tokens) and choose_recompute plans one model many times."""
    return _layer_patterns_cached(model.model_dump_json(), seq_len or model.seq_len)


@lru_cache(maxsize=32)
def _layer_patterns_cached(model_json: str, seq_len: int) -> tuple:
    model = ModelConfig.model_validate_json(model_json)
    return tuple(model.patterns(seq_len)[: len(model.attention.layers)])


# ---------------------------------------------------------------------------------------------
# Layout metadata
# ---------------------------------------------------------------------------------------------


@dataclass
class LayoutStats:
    nbytes: int  # metadata bytes, all layers (each attention module caches its own layout)
    pairs: list[list[int]]  # per layer, per head
    merged: bool = False  # some layer merges a head from two parts (kernels.patterns.Layout.merges)
    merged_in_place: bool = False  # some layer merges a part into its sums before its last launch
    columns: list = field(default_factory=list)  # (longest column, all columns) in blocks per sparse layout
    two_launch: bool = True  # every merging layout merges exactly two launches (Layout.two_launch_merge)


def layout_stats(model: ModelConfig, seq_len: int) -> LayoutStats:
    """Build each distinct layer pattern once at ``seq_len`` for metadata bytes and pair counts
    (cached: building them takes tens of seconds at 1M tokens, and choose_checkpoint_blocks plans
    one model many times)."""
    return _layout_stats_cached(model.model_dump_json(), seq_len)


@lru_cache(maxsize=8)
def _layout_stats_cached(model_json: str, seq_len: int) -> LayoutStats:
    from megastride.kernels.patterns import Dense, build_layout

    model = ModelConfig.model_validate_json(model_json)
    cache: dict = {}
    nbytes, pairs, merged, in_place = 0, [], False, False
    for pattern in model.patterns(seq_len):
        if pattern not in cache:
            if all(h.components == (Dense(),) for h in pattern.heads):
                # dense layers run causal SDPA and keep no block lists (kernels.attention.layout_for)
                size, layout = 0, None
            else:
                layout = build_layout(pattern, seq_len, model.attention.block)
                size = layout.nbytes
            merges = layout.merges() if layout else (False, False)
            cache[pattern] = (size, layer_pairs(pattern, seq_len, layout), merges,
                              layout.column_work() if layout else None,
                              layout.two_launch_merge() if merges[0] else True)
        nbytes += cache[pattern][0]
        pairs.append(cache[pattern][1])
        merged, in_place = merged or cache[pattern][2][0], in_place or cache[pattern][2][1]
    columns = [c[3] for c in cache.values() if c[3] is not None]
    return LayoutStats(nbytes, pairs, merged, in_place, columns, all(c[4] for c in cache.values()))


def partials_in_outputs(model: ModelConfig, seq_len: int) -> bool:
    """Whether every merged head's first launch writes its partial results into the outputs (kernels.blocksparse
    ``partials_in_outputs``: PARTIALS "output", two launches per merging layout) instead of fp32 sums."""
    from megastride.kernels import blocksparse

    stats = layout_stats(model, seq_len)
    return stats.merged and stats.two_launch and blocksparse.partials_setting() == "output"


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def attention_flops(model: ModelConfig, pairs: list[list[int]], sequences: int) -> float:
    """Forward + backward FLOPs of QK^T and PV over the unmasked pairs: 12 * pairs * d per layer.

    Per head: 2 * pairs * (qk_head + v_head) forward, three times that with backward; this is
    the issue's 12 * pairs * d * layers when the query-key width equals d.
    """
    head_width = (model.qk_width + model.d_model) / model.n_heads
    return 6.0 * head_width * sequences * sum(sum(layer) for layer in pairs)


def step_flops(model: ModelConfig, params: ParamCount, pairs: list[list[int]], seq_len: int, sequences: int) -> float:
    """MFU numerator: 6 * non-embedding params * tokens + 12 * pairs * d * layers."""
    return 6.0 * params.non_embedding * seq_len * sequences + attention_flops(model, pairs, sequences)


def recompute_flops(model: ModelConfig, params: ParamCount, pairs: list[list[int]], recomputed: int,
                    kept: int, sequences: int = 1, unread_tail: bool = False) -> float:
    """Forward FLOPs the backward pass spends recomputing the first ``recomputed`` blocks: each block's
    matmuls (2 * its parameters per token; with ``unread_tail``, as ``BlockCheckpoint`` recomputes a block
    alone, not the FFN's last: ``engine.model.Block.output_unread``, ``unread_tail_recompute``) and its
    attention's QK^T and PV (the forward third of ``attention_flops``), which the first ``kept`` of them
    skip where they keep their attention outputs (``kept_attention_blocks``; not in dense layers: SDPA keeps
    nothing). What ``choose_recompute`` weighs: at 1M tokens a fixed layer's attention forward is several
    times its matmuls'."""
    from megastride.kernels.attention import _all_dense

    assert type(kept) is int, f"kept is a number of blocks (kept_attention_blocks), not {kept!r}"  # not a bool
    head_width = (model.qk_width + model.d_model) / model.n_heads
    patterns = layer_patterns(model)
    total = 0.0
    matmuls = params.per_block - (model.ffn_width * model.d_model if unread_tail else 0)
    for r in range(recomputed):
        total += 2.0 * matmuls * model.seq_len
        if not (r < kept and not _all_dense(patterns[r % len(patterns)])):
            total += 2.0 * head_width * sum(pairs[r])
    return total * sequences


def unread_tail_recompute(train, model: ModelConfig) -> bool:
    """Whether recomputed blocks skip the FFN's last product (``recompute_flops``): ``engine.parallel.
    BlockCheckpoint`` recomputing one block at a time (not torch's or DeepSpeed's checkpoint: train.compile,
    train.partition_activations, train.checkpoint_group > 1), its FFN not in chunks (model.ffn_chunk)."""
    chunked = model.ffn_chunk and model.ffn_chunk < model.seq_len
    return not (train.compile or train.partition_activations or train.checkpoint_group > 1 or chunked)


def mfu(flops: float, step_s: float, peak_flops: float = H200_PEAK_FLOPS) -> float:
    """Model FLOPs utilisation of one step."""
    return flops / step_s / peak_flops


# ---------------------------------------------------------------------------------------------
# Bytes per element and per token
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Element sizes of one runtime + precision: weights, grads, optimizer state per parameter,
    the residual stream, matmul inputs/outputs, and whether autocast keeps cast copies."""

    weight: int
    grad: int
    optimizer: int  # fp32 master (16-bit only) + Adam m + v
    residual: int
    compute: int
    autocast: bool


def precision_of(runtime: str, precision: str) -> Precision:
    """Element sizes for ``runtime`` (deepspeed | torch) and ``precision`` (fp32 | bf16 | fp16)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if precision == "fp32":
        return Precision(4, 4, 8, 4, 4, False)
    if runtime == "torch":  # fp32 weights; autocast: fp32 residuals, 16-bit matmuls
        return Precision(4, 4, 8, 4, 2, True)
    return Precision(2, 2, 12, 2, 2, False)


def block_saved_parts(model: ModelConfig, prec: Precision) -> tuple[float, float]:
    """Bytes per token one residual block keeps for its backward pass (engine.model, op by op), apart
    from the FFN's intermediates (``ffn_saved_bytes``: they may cover one chunk of positions), as
    (attention half, FFN half): the FFN half's tensors are freed once the backward pass has gone
    through it, before the attention half's backward runs.

    Attention half: LN1's output as the qkv matmul's input (under autocast its cast copy), q, k, v
    as the attention saves them (zero-padded to one head width when query-key and value widths
    differ), the attention output, and its (B, T, D) re-layout for proj where that is a copy (dense
    SDPA layers, padded heads; the block-sparse kernels write the output time-major, so proj's
    input is a view of it), LN1's statistics, the log-sum-exp, a dropout mask. FFN half: x1 = x +
    attn(LN1 x), which LN2 saves; LN2's output as fc's input; LN2's statistics; a dropout mask.
    """
    d, c = model.d_model, prec.compute
    width = _attention_width(model)
    qkv = c * (2 * model.qk_width + d) if width == d == model.qk_width else 3 * c * width
    relayout = width != d or _any_dense_layer(model)
    attn_out = c * width + (c * d if relayout else 0)
    mask = d if model.dropout > 0 else 0
    attention = c * d + qkv + attn_out + LN_STATS + LSE * model.n_heads + mask
    ffn_side = prec.residual * d + c * d + LN_STATS + mask
    return attention, ffn_side


def _any_dense_layer(model: ModelConfig) -> bool:
    """Whether some layer runs dense causal SDPA (its (B, H, T, D) output is re-laid out by a copy)."""
    from megastride.kernels.attention import _all_dense

    return any(_all_dense(p) for p in layer_patterns(model))


def ffn_saved_bytes(model: ModelConfig, prec: Precision) -> float:
    """Bytes per token the FFN keeps for backward: the (scaled) fc output that silu saves and the
    GELU output that proj saves (engine.model.FeedForward)."""
    return 2 * prec.compute * model.ffn_width


def ffn_tokens(model: ModelConfig, tokens: int) -> int:
    """Tokens whose FFN intermediates exist at once: a chunk of positions under model.ffn_chunk."""
    if not model.ffn_chunk or model.ffn_chunk >= model.seq_len:
        return tokens
    return tokens // model.seq_len * model.ffn_chunk


def _attention_width(model: ModelConfig) -> int:
    """Total head width the attention runs at: q, k and v are padded to the wider head."""
    return max(model.qk_width, model.d_model) // model.n_heads * model.n_heads


def splits_columns(model: ModelConfig, seq_len: int, batch: int, sms: int = PLAN_SMS) -> bool:
    """Whether some sparse layer's backward splits its dK/dV columns (kernels.blocksparse ``columns_split``, the
    rule of ``dkdv_split``, on a GPU of ``sms`` streaming multiprocessors): by default where a column is the
    kernel's critical path."""
    from megastride.kernels import blocksparse

    return any(blocksparse.columns_split(work, batch, sms) for work in layout_stats(model, seq_len).columns)


def attention_workspace_bytes(model: ModelConfig, prec: Precision, seq_len: int, batch: int = 1) -> float:
    """Bytes per token the attention backward adds (kernels/blocksparse.py ``_backward``): dq, dk, dv
    in the input dtype, the incoming output gradient dO and the fp32 row sums (delta); where some
    head is split into a local and a permuted (strided-half) part, the earlier part adds into fp32 dq,
    dk, dv, which exist beside the final gradients the last part writes; else, where the dK/dV columns
    are split among programs (``splits_columns``: short sequences, few heads), the zeroed fp32 dk and dv
    they add into (their "cast" finish, ``blocksparse.split_finish``; the "last" finish adds only the long
    columns' rows into a small workspace kept with the layout: not counted); and the dQ sums of the fused
    backward (``fused_dq_bytes``) where it runs."""
    from megastride.kernels import blocksparse

    h, c, w = model.n_heads, prec.compute, _attention_width(model)
    sums = fused_dq_bytes(model, prec, seq_len)
    if layout_stats(model, seq_len).merged and not partials_in_outputs(model, seq_len):
        return (3 * 4 + 3 * c + c) * w + LSE * h  # fp32 dq, dk, dv the earlier part adds into, the final ones, dO
    if splits_columns(model, seq_len, batch) and blocksparse.split_finish() == "cast":
        return (2 * 4 + 3 * c + c) * w + LSE * h + sums
    return (3 * c + c) * w + LSE * h + sums


def fused_dq_bytes(model: ModelConfig, prec: Precision, seq_len: int) -> float:
    """Bytes per token of the dQ sums the Gluon dK/dV kernel adds into where no dQ kernel runs (kernels.blocksparse
    ``gluon_dq_sums``, on a Hopper GPU, the planner's target): 4 per attention channel for fp32 sums, where
    ``fused_dq_dtype`` takes them at ``seq_len``, head dim and block and the sparse layers can run them
    (16-bit compute, no head merged from two parts: a strided head's permuted part keeps Triton's kernels);
    else 0: fp16 sums (the default) live in dQ's own storage (``blocksparse.dq_sums_buffer``)."""
    from megastride.kernels import blocksparse

    w = _attention_width(model)
    dtype = blocksparse.fused_dq_dtype(seq_len, w // model.n_heads, model.attention.block)
    if dtype is None or prec.compute != 2:
        return 0.0
    stats = layout_stats(model, seq_len)
    if stats.merged or not stats.columns:
        return 0.0
    return 0.0 if dtype.itemsize == prec.compute else float(dtype.itemsize * w)


def pinned_bytes(request: float) -> float:
    """Host bytes a pinned allocation of ``request`` bytes takes: torch's caching host allocator (which
    ``pin_memory=True`` and DeepSpeed's pinned buffers go through) rounds every allocation up to the next
    power of two, so a 6.4 GB block input of a d-3072 model at 1M tokens holds 8.6 GB (measured on the
    H200's host: docs/scaling.md, "The two axes pushed")."""
    return float(1 << (math.ceil(request) - 1).bit_length()) if request > 0 else 0.0


def kept_attention_bytes(model: ModelConfig, prec: Precision, seq_len: int) -> float:
    """Bytes per token a recomputed block keeps under ``train.keep_attention``: its attention output in the
    compute dtype and the fp32 log-sum-exps (kernels.attention.kept_attention); nothing where every layer
    is dense (SDPA runs those; counted for every recomputed block when some layer is sparse)."""
    from megastride.kernels.attention import _all_dense

    if all(_all_dense(p) for p in layer_patterns(model, seq_len)):
        return 0.0
    return prec.compute * _attention_width(model) + LSE * model.n_heads


def autotune_saved_bytes(model: ModelConfig, seq_len: int, compute: float) -> tuple[float, float]:
    """Bytes per token that the kernels' autotuning trials save and restore in a layer's (forward,
    backward) on a length not tuned before (the first step on a cold Triton cache; kernels.blocksparse
    ``_read_back``): only where a head is split into parts: the lse its later part merges into
    (forward); and where a merging part is not the layer's last launch (``Layout.launch_order``: the part
    with the most heads runs last, which reads the earlier parts' fp32 sums and writes the final outputs
    apart), the fp32 sums it adds to in place as well: the running output (forward), dK and dV
    (backward, separate dQ; the merged mode, tried by DQ_MODE "auto" only where a backward takes under
    50 ms, also saves dQ). Where the first part's partial results go into the outputs themselves
    (``partials_in_outputs``), the last part merges in place there: the output (forward), dK and dV
    (backward), in the compute dtype (``compute`` bytes)."""
    stats = layout_stats(model, seq_len)
    if not stats.merged:
        return 0.0, 0.0
    w = _attention_width(model)
    if partials_in_outputs(model, seq_len):  # the last part merges into the outputs in place
        return compute * w + LSE * model.n_heads, 2 * compute * w
    if not stats.merged_in_place:
        return LSE * model.n_heads, 0.0
    return 4.0 * w + LSE * model.n_heads, 2 * 4.0 * w


def backward_transient_bytes(model: ModelConfig, prec: Precision) -> float:
    """Bytes per token of gradients in flight inside one block's backward: the residual gradient
    and its accumulator (the FFN's own: ``ffn_transient_bytes``)."""
    return 2 * prec.residual * model.d_model


def ffn_transient_bytes(model: ModelConfig, prec: Precision) -> float:
    """Bytes per token of FFN-width gradients in flight in the FFN's backward: one. proj's backward
    allocates the gradient of the SiLU output while both saved intermediates (``ffn_saved_bytes``)
    are still held, the block's largest moment; SiLU's backward then writes its input's gradient as
    proj's saved input is freed, so no moment holds two (traced on the H200, docs/scaling.md)."""
    return prec.compute * model.ffn_width


def loss_chunk_bytes(model: ModelConfig, prec: Precision, tokens: int) -> float:
    """The chunked output layer's working set: one chunk's logits, their fp32 copy, log-softmax
    and its gradient (the chunk is recomputed in backward)."""
    chunk = min(model.loss_chunk, tokens)
    return chunk * model.vocab_size * (prec.compute + 4 + 4 + 4)


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Predicted per-GPU memory (bytes, itemised by phase) and FLOPs of one optimizer step."""

    seq_len: int
    micro_batch: int
    grad_accum: int
    world_size: int
    runtime: str
    precision: str
    zero_stage: int
    checkpoint_activations: bool
    checkpoint_blocks: int  # blocks recomputed in backward, the first ones (train.checkpoint_blocks resolved)
    keep_attention: int  # first recomputed blocks that keep their attention outputs (train.keep_attention resolved)
    n_layers: int
    params: int
    non_embedding_params: int
    phases: dict[str, dict[str, float]]  # phase -> item -> bytes allocated on one GPU
    cpu: dict[str, float]  # item -> bytes held in host memory per rank (offload)
    flops: float  # one optimizer step on one GPU (all micro-batches)
    attention_pairs: int  # unmasked pairs summed over layers and heads, one sequence
    density: float  # attention_pairs / (layers * heads * n (n + 1) / 2)
    layout_bytes: int
    notes: list[str] = field(default_factory=list)
    # the first step on lengths not autotuned before: the phase where autotuning's saved outputs add
    # the most, and its items (empty where no launch saves anything; see autotune_saved_bytes)
    first_step_phase: str = ""
    kept_on_host: bool = False  # the kept attention outputs wait in host memory (train.offload_attention)
    first_step: dict[str, float] = field(default_factory=dict)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: sum(self.phases[p].values()))

    @property
    def peak_bytes(self) -> float:
        return sum(self.phases[self.peak_phase].values())

    @property
    def first_step_peak_bytes(self) -> float:
        """The peak of a first step that autotunes the kernels (cold Triton cache): ``peak_bytes``
        or more; later steps (and runs with the cache warm) peak at ``peak_bytes``."""
        return max(self.peak_bytes, sum(self.first_step.values()))

    @property
    def items(self) -> dict[str, float]:
        """The itemised bytes at the predicted peak."""
        return self.phases[self.peak_phase]

    @property
    def recompute(self) -> str:
        """What the backward pass recomputes: "off", "every block" or "k of n blocks"."""
        k, n = self.checkpoint_blocks, self.n_layers
        return "off" if k == 0 else "every block" if k == n else f"{k} of {n} blocks"

    @property
    def host_bytes(self) -> float:
        """Host memory one rank holds (offloaded states, pinned block inputs)."""
        return sum(self.cpu.values())

    def fits(self, gpu_bytes: float, host_bytes: float | None = None) -> bool:
        """True if the predicted peak fits in ``gpu_bytes`` of GPU memory and, when given, the
        rank's host memory in ``host_bytes`` (its share of the node's RAM)."""
        return self.first_step_peak_bytes <= gpu_bytes and (host_bytes is None or self.host_bytes <= host_bytes)

    def mfu(self, step_s: float, peak_flops: float = H200_PEAK_FLOPS) -> float:
        return mfu(self.flops, step_s, peak_flops)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(peak_phase=self.peak_phase, peak_bytes=self.peak_bytes, peak_gb=self.peak_bytes / GB,
                   first_step_peak_bytes=self.first_step_peak_bytes)
        return out

    def table(self, gpu_bytes: float | None = None, host_bytes: float | None = None, host_basis: str = "") -> str:
        """Human-readable summary: the peak's items, the other phases, host bytes, FLOPs; ``host_basis`` says
        where ``host_bytes`` comes from (``host_basis_words``)."""
        head = (f"plan: n={self.seq_len:,} x {self.micro_batch} seq/micro-batch x {self.grad_accum} accum, "
                f"world {self.world_size}, {self.runtime} {self.precision}, ZeRO {self.zero_stage}, "
                f"recompute {self.recompute}"
                f"{_comma(kept_words(self.keep_attention, self.checkpoint_blocks, self.kept_on_host))}")
        lines = [head, f"params {self.params / 1e6:.1f}M ({self.non_embedding_params / 1e6:.1f}M non-embedding); "
                       f"attention density {self.density:.4f} of causal", "",
                 f"per-GPU memory at the peak ({self.peak_phase}):"]
        lines += [f"  {name:<34} {value / GB:10.3f} GB" for name, value in self.items.items() if value]
        lines.append(f"  {'total':<34} {self.peak_bytes / GB:10.3f} GB")
        lines.append("other phases: " + ", ".join(
            f"{p} {sum(v.values()) / GB:.2f} GB" for p, v in self.phases.items() if p != self.peak_phase))
        if self.first_step_peak_bytes > self.peak_bytes:
            lines.append(f"first step on a cold autotuning cache: {self.first_step_peak_bytes / GB:.3f} GB "
                         f"({self.first_step_phase}, +{self.first_step['autotuning saved outputs'] / GB:.2f} GB "
                         "of outputs the tuning trials save)")
        if any(self.cpu.values()):
            lines.append("host memory per rank: " + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in self.cpu.items() if v))
        tokens = self.seq_len * self.micro_batch * self.grad_accum
        lines.append(f"step FLOPs per GPU {self.flops:.3e} ({tokens:,} tokens); at MFU 0.45 on an H200: "
                     f"{self.flops / (0.45 * H200_PEAK_FLOPS):.3f} s/step")
        if gpu_bytes:
            verdict = "fits" if self.fits(gpu_bytes) else "does NOT fit"
            lines.append(f"{verdict} in {gb_words(gpu_bytes)} ({self.first_step_peak_bytes / gpu_bytes:.0%} used)")
        if host_bytes and self.host_bytes:
            verdict = "fits" if self.host_bytes <= host_bytes else "does NOT fit"
            lines.append(f"host memory {verdict} in this rank's {host_bytes / GB:.0f} GB "
                         f"({self.host_bytes / host_bytes:.0%} used{'; ' + host_basis if host_basis else ''})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def plan(cfg: Config, seq_len: int | None = None, world_size: int = 1, runtime: str = "deepspeed",
         micro_batch: int | None = None, gpu_bytes: float | None = None, host_bytes: float | None = None) -> Plan:
    """Predict per-GPU memory and step FLOPs of ``cfg`` at ``seq_len`` on ``world_size`` GPUs.

    ``runtime``: "deepspeed" (what ``megastride train`` runs) or "torch" (a plain fp32-weight loop
    with bf16 autocast and fused AdamW, what ``megastride bench scaling`` runs; ZeRO is ignored).
    ``gpu_bytes``: one GPU's memory, which ``train.checkpoint_blocks: auto`` and ``train.keep_attention: auto``
    are fitted to (``choose_recompute`` within ``auto_budget``: ``AUTO_MEMORY_FRACTION`` of it, or
    ``train.memory_budget_gb`` where that is less); without it "auto" recomputes
    every block and keeps no attention outputs, as on a CPU. ``Plan.checkpoint_blocks`` and
    ``Plan.keep_attention`` (the number of recomputed blocks that keep them) are what is in use
    (``with_resolved`` writes them into the config).
    ``train.offload_attention: auto`` is resolved with them: the kept attention outputs go to host memory
    where that lets the two "auto"s plan less recompute work (``recompute_flops``) and the plan's host memory
    fits ``host_bytes`` (the rank's share of the host's RAM; default: this machine's, ``host_share_bytes``,
    shared by ``world_size`` ranks); else, and without ``gpu_bytes``, they stay on the GPU.
    ``Plan.kept_on_host`` says which.
    """
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    cfg = _at_length(cfg, seq_len)
    auto_blocks = cfg.train.checkpoint_blocks == "auto" and cfg.train.checkpoint_activations
    auto_keep = cfg.train.keep_attention == "auto"
    auto_host = cfg.train.offload_attention == "auto"
    if auto_host:
        options = [False]
        if gpu_bytes and (auto_blocks or auto_keep) and _may_offload_attention(cfg.train):
            options.append(True)
        share = host_bytes if host_bytes is not None else host_share_bytes(world_size)
        cfg = _with_offload(cfg, False)
    else:
        options, share = [cfg.train.offload_attention], None
    if (auto_blocks or auto_keep) and gpu_bytes:
        budget, _ = auto_budget(cfg, gpu_bytes)
        params = count_params(cfg.model)
        pairs = layout_stats(cfg.model, cfg.model.seq_len).pairs
        best = None
        for on in options:  # kept on the GPU first: in host memory only where that is less recompute work
            option = _with_offload(cfg, on)
            k, keep = choose_recompute(option, None, world_size, runtime, micro_batch, budget_bytes=budget)
            chosen = with_checkpoint_blocks(option, k if auto_blocks else cfg.train.checkpoint_blocks, keep)
            if auto_host and on and (share is None
                                     or plan(chosen, None, world_size, runtime, micro_batch).host_bytes > share):
                continue  # "auto": the host cannot hold them (or its RAM is unknown)
            r = recomputed_blocks(chosen.train, cfg.model.n_layers)
            work = recompute_flops(cfg.model, params, pairs, r, kept_attention_blocks(chosen.train, r),
                                   unread_tail=unread_tail_recompute(chosen.train, cfg.model))
            if best is None or work < best[0]:
                best = (work, chosen)
        cfg = best[1]
    model, t = cfg.model, cfg.train
    recomputed = recomputed_blocks(t, model.n_layers)
    keep = kept_attention_blocks(t, recomputed)  # an unresolved "auto" (no GPU to fit) keeps nothing
    prec = precision_of(runtime, t.precision)
    params = count_params(model)
    stats = layout_stats(model, model.seq_len)
    batch = micro_batch or t.micro_batch_size
    weights, cpu = _weight_bytes(cfg, params.total, prec, runtime, world_size)
    host_inputs = recomputed > 0 and t.cpu_checkpointing  # BlockCheckpoint: either runtime
    group = t.checkpoint_group if recomputed else 1
    kept = batch * model.seq_len * kept_attention_bytes(model, prec, model.seq_len) if keep else 0.0
    # train.offload_attention: the kept outputs wait in host memory; the GPU holds one block's at a time, two
    # under offload_overlap (one copied out while the next block runs; one prefetched beside the one in use)
    on_host = bool(host_inputs and t.offload_attention is True and kept)  # an unresolved "auto": on the GPU
    live = min(keep, 2 if t.offload_overlap else 1) if on_host else keep
    phases, first = _phases(model, recomputed, prec, params, weights, stats.nbytes, batch * model.seq_len, runtime,
                            host_inputs, group, host_inputs and t.offload_overlap, kept, live, on_host)
    first_phase = max(first, key=lambda p: sum(first[p].values()), default="")
    if host_inputs:  # BlockCheckpoint: every segment input waits in (pinned) host memory
        segments = -(-recomputed // group)
        cpu["block inputs"] = segments * pinned_bytes(batch * model.seq_len * prec.residual * model.d_model)
    if on_host:  # each kept block's output and log-sum-exps, two pinned buffers
        tokens = batch * model.seq_len
        out = tokens * prec.compute * _attention_width(model)
        cpu["kept attention outputs"] = keep * (pinned_bytes(out) + pinned_bytes(kept - out))
    pairs = sum(sum(layer) for layer in stats.pairs)
    causal = model.n_layers * model.n_heads * model.seq_len * (model.seq_len + 1) / 2
    result = Plan(
        seq_len=model.seq_len, micro_batch=batch, grad_accum=t.grad_accum, world_size=world_size, runtime=runtime,
        precision=t.precision, zero_stage=t.zero_stage if runtime == "deepspeed" else 0,
        checkpoint_activations=t.checkpoint_activations, checkpoint_blocks=recomputed, keep_attention=keep,
        n_layers=model.n_layers,
        params=params.total, non_embedding_params=params.non_embedding, phases=phases, cpu=cpu,
        flops=step_flops(model, params, stats.pairs, model.seq_len, batch * t.grad_accum),
        attention_pairs=pairs, density=pairs / causal, layout_bytes=stats.nbytes, notes=_notes(cfg, runtime, world_size),
        first_step_phase=first_phase, first_step=first.get(first_phase, {}), kept_on_host=on_host,
    )
    if auto_blocks or (auto_keep and recomputed):
        result.notes.append(_auto_note(result, auto_blocks, auto_keep, keep_attention_conflict(t),
                                       auto_budget(cfg, gpu_bytes) if gpu_bytes else None, auto_host and on_host))
    return result


def recomputed_blocks(train: TrainConfig, n_layers: int) -> int:
    """How many blocks are recomputed in the backward pass (the first ones): train.checkpoint_blocks,
    where null and an unresolved "auto" mean every block; 0 without train.checkpoint_activations. Checks
    that train.checkpoint_blocks and a train.keep_attention count are within the blocks there are."""
    k, keep = train.checkpoint_blocks, train.keep_attention
    if isinstance(k, int) and k > n_layers:
        raise ConfigError(f"train.checkpoint_blocks={k} exceeds model.n_layers={n_layers} "
                          f"(the blocks to recompute: 0 to {n_layers}, auto, or null for every block)")
    most = k if isinstance(k, int) else n_layers  # the blocks that may be recomputed
    if type(keep) is int and keep > most:
        of = f"train.checkpoint_blocks={k}" if isinstance(k, int) else f"model.n_layers={n_layers}"
        raise ConfigError(f"train.keep_attention={keep} exceeds {of} (the recomputed blocks that keep their "
                          f"attention outputs: 0 to {most}, true for every one, false, or auto)")
    if not train.checkpoint_activations:
        return 0
    return n_layers if k is None or k == "auto" else k


def kept_attention_blocks(train: TrainConfig, recomputed: int) -> int:
    """How many of the ``recomputed`` blocks (``recomputed_blocks``) keep their attention outputs, the
    first ones: train.keep_attention, where true means every recomputed block, false and an unresolved
    "auto" none, and a count k the first k (all of them where fewer are recomputed)."""
    keep = train.keep_attention
    if keep is True:
        return recomputed
    if keep is False or keep == "auto":
        return 0
    return min(keep, recomputed)


def kept_words(kept: int, recomputed: int, on_host: bool = False) -> str:
    """``kept`` of the ``recomputed`` blocks keeping their attention outputs, in words: "attention outputs
    kept" (every one), "attention outputs kept in 21 of 30 recomputed blocks", or "" (none); ``on_host``
    (train.offload_attention) adds " in host memory"."""
    if not kept:
        return ""
    return "attention outputs kept" + ("" if kept == recomputed else
                                       f" in {kept} of {recomputed} recomputed blocks") \
        + (" in host memory" if on_host else "")


def _comma(words: str) -> str:
    return f", {words}" if words else ""


def with_checkpoint_blocks(cfg: Config, k: int | str | None, keep_attention: bool | int | None = None) -> Config:
    """``cfg`` with ``train.checkpoint_blocks = k`` and, where given, ``train.keep_attention``."""
    update = {"checkpoint_blocks": k} | ({} if keep_attention is None else {"keep_attention": keep_attention})
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def _with_offload(cfg: Config, on: bool | str) -> Config:
    """``cfg`` with ``train.offload_attention = on``."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"offload_attention": on})})


def _may_offload_attention(t: TrainConfig) -> bool:
    """Whether kept attention outputs could wait in host memory: block inputs there (cpu_checkpointing), blocks
    recomputed, outputs kept (keep_attention not false or 0, nothing ruling it out)."""
    return (t.cpu_checkpointing and t.checkpoint_activations and t.keep_attention not in (False, 0)
            and not keep_attention_conflict(t))


def with_resolved(cfg: Config, p: Plan) -> Config:
    """``cfg`` with the "auto" of ``train.checkpoint_blocks`` and ``train.keep_attention`` replaced by what
    ``p``, its plan (``plan(..., gpu_bytes=...)`` on a GPU), uses: what the model is then wrapped with.
    The keep is written as true where every recomputed block keeps its attention outputs, false where none
    does and the count between; also where only the blocks were "auto" (an explicit count stays within them)."""
    t = cfg.train
    k = p.checkpoint_blocks if t.checkpoint_blocks == "auto" else t.checkpoint_blocks
    keep = p.keep_attention
    keep = bool(keep) if keep in (0, p.checkpoint_blocks) else keep  # none: false, every one: true
    if t.offload_attention == "auto":
        cfg = _with_offload(cfg, p.kept_on_host)
    return with_checkpoint_blocks(cfg, k, keep if "auto" in (t.checkpoint_blocks, t.keep_attention) else None)


def choose_checkpoint_blocks(cfg: Config, seq_len: int | None = None, world_size: int = 1,
                             runtime: str = "deepspeed", micro_batch: int | None = None, *,
                             budget_bytes: float) -> int:
    """The fewest blocks to recompute (``train.checkpoint_blocks``) for the planned peak per GPU, that
    of a first step which autotunes included, to fit in ``budget_bytes``; every block when none does
    (the plan then says it does not fit), 0 without ``train.checkpoint_activations``; the blocks keep their
    attention outputs only under an explicit ``train.keep_attention`` (true or a count). What
    ``train.checkpoint_blocks: auto`` becomes on a GPU beside an explicit keep_attention (``choose_recompute``
    weighs both)."""
    keep = cfg.train.keep_attention
    keep = False if keep == "auto" else keep  # "auto" (unresolved) keeps nothing here
    return choose_recompute(with_checkpoint_blocks(cfg, "auto", keep), seq_len, world_size, runtime, micro_batch,
                            budget_bytes=budget_bytes)[0]


def choose_recompute(cfg: Config, seq_len: int | None = None, world_size: int = 1, runtime: str = "deepspeed",
                     micro_batch: int | None = None, *, budget_bytes: float) -> tuple[int, int]:
    """``(train.checkpoint_blocks, train.keep_attention)`` with their "auto" resolved, the keep as the number
    of recomputed blocks that keep their attention outputs (``kept_attention_blocks``): of the candidates (k
    recomputed blocks, the first c <= k of them keeping the outputs) whose planned first-step peak per GPU
    fits in ``budget_bytes``, the least recompute work (``recompute_flops``), ties to the smaller peak. A block that
    keeps its attention outputs holds one (B, T, D) output more, a block not recomputed its whole saved set,
    and the kept outputs save the attention forward (by this count about 4 times the block's matmuls at 1M
    tokens in configs/enwik8.yaml): where they fit, they cost less time than fewer blocks, and where only
    some fit, keeping those beats keeping none.

    The peak grows with c for a given k, so each k's best is the most outputs that fit, searched from the
    previous k's (a few plans per k); k stops growing once its matmuls alone are more work than the best.
    An explicit value stays; "auto" keeps nothing where it cannot work (``keep_attention_conflict``) or
    nothing is recomputed. Where nothing fits: every block (or the explicit count), no attention outputs kept
    unless asked for; the plan then says it does not fit. (0, 0) without ``train.checkpoint_activations``."""
    cfg = _at_length(cfg, seq_len)
    t, n = cfg.train, cfg.model.n_layers
    recomputed = recomputed_blocks(t, n)  # checks the given counts against the layers
    if not t.checkpoint_activations:
        return 0, 0
    counts = range(n + 1) if t.checkpoint_blocks == "auto" else [recomputed]
    peaks: dict[tuple[int, int], float] = {}

    def fits(k: int, c: int) -> bool:
        if (k, c) not in peaks:
            p = plan(with_checkpoint_blocks(cfg, k, c), None, world_size, runtime, micro_batch)
            peaks[k, c] = p.first_step_peak_bytes
        return peaks[k, c] <= budget_bytes

    if t.keep_attention != "auto" or keep_attention_conflict(t):  # the keep is given (or ruled out): fewest blocks
        k = next((k for k in counts if fits(k, kept_attention_blocks(t, k))), counts[-1])
        return k, kept_attention_blocks(t, k)
    params, pairs = count_params(cfg.model), layout_stats(cfg.model, cfg.model.seq_len).pairs
    tail = unread_tail_recompute(t, cfg.model)
    best, c = None, 0
    for k in counts:  # one more block is more work: the fewest that fit, each with the most outputs kept
        if best is not None and recompute_flops(cfg.model, params, pairs, k, k, unread_tail=tail) > best[0]:
            break
        c = _most_kept(fits, k, min(c, k))
        if c is None:  # k does not fit even keeping nothing
            c = 0
            continue
        candidate = (recompute_flops(cfg.model, params, pairs, k, c, unread_tail=tail), peaks[k, c], k, c)
        best = candidate if best is None else min(best, candidate)
    if best is None:
        return counts[-1], 0
    return best[2], best[3]


def _most_kept(fits, k: int, start: int) -> int | None:
    """The largest c in 0..k with ``fits(k, c)`` (which holds for every c below one that fits), searched
    from ``start``; None where not even c = 0 fits."""
    c = start
    if fits(k, c):
        while c < k and fits(k, c + 1):
            c += 1
        return c
    while c > 0:
        c -= 1
        if fits(k, c):
            return c
    return None


def _auto_note(p: Plan, blocks: bool, keep: bool, conflict: str | None, budget: tuple[float, str] | None,
               host: bool = False) -> str:
    """What "auto" train.checkpoint_blocks (``blocks``) and train.keep_attention (``keep``) became, and why
    (``budget``: ``auto_budget``'s bytes and words; None without GPU memory to fit); ``host``: an "auto"
    train.offload_attention put the kept outputs in host memory."""
    keys = ", ".join(f"train.{key}=auto" for key, on in (("checkpoint_blocks", blocks), ("keep_attention", keep),
                                                          ("offload_attention", host)) if on)
    head = f"{keys}: {p.checkpoint_blocks} of {p.n_layers} blocks recomputed"
    if keep or p.keep_attention:
        head += ", " + (kept_words(p.keep_attention, p.checkpoint_blocks, p.kept_on_host)
                        or "attention outputs not kept")
    if keep and conflict:  # no choice: as an explicit false
        head, keep = head + f" (not with {conflict})", False
        if not blocks:
            return head
    if budget is None:
        rule = ("the least recompute work that fits" if blocks and keep else "the fewest that fit" if blocks
                else "kept where the plan with them fits")
        return head + f" (no GPU memory given to fit; on a GPU: {rule})"
    limit, share = budget
    if p.first_step_peak_bytes > limit:
        return head + f"; even so the planned peak exceeds {share}"
    if blocks and keep:
        return head + f" (the least recompute work that fits {share})"
    if blocks:
        return head + f", the fewest whose planned peak fits {share}"
    if p.keep_attention == p.checkpoint_blocks:
        return head + f" (the plan with them fits {share})"
    if p.keep_attention:
        return head + f" (the most whose planned peak fits {share})"
    return head + f" (with them the planned peak would exceed {share})"


def physical_memory_bytes() -> float:
    """RAM of this machine (0 where the platform does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


# A cgroup limit at or above this is "no limit" (cgroup v1 writes 2^63 rounded down to a page)
_NO_CGROUP_LIMIT = 2.0 ** 62


def cgroup_memory_limit_bytes(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """The tightest memory limit of this process's cgroup and the cgroups above it (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``): what a container or a Slurm job's ``--mem`` lets it use, whatever RAM the
    machine has. None where no limit is set or none can be read. Where the cgroup's own folder is not mounted
    (a container that sees only its own cgroup, at the root) the root's limit is read."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    candidates = []  # (limit file's folder under root, the path of this process's cgroup below it)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            candidates.append(("", "memory.max", path))
        elif "memory" in controllers.split(","):
            candidates.append(("memory", "memory.limit_in_bytes", path))
    limits = []
    for mount, name, path in candidates:
        base = os.path.join(root, mount)
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # this cgroup, then each one above it up to the root
            value = _read_limit(os.path.join(base, *parts[:depth], name))
            if value is not None:
                limits.append(value)
    finite = [v for v in limits if v < _NO_CGROUP_LIMIT]
    return min(finite) if finite else None


def _read_limit(path: str) -> float | None:
    """A cgroup memory limit file's value in bytes, inf for "max", None where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return math.inf
    try:
        return float(int(text))
    except ValueError:
        return None


def host_memory_bytes() -> float:
    """The host memory this process may use: the machine's RAM, or its cgroup's limit where that is lower
    (``cgroup_memory_limit_bytes``); 0 where neither is known."""
    ram, limit = physical_memory_bytes(), cgroup_memory_limit_bytes()
    if limit is None:
        return ram
    return min(ram, limit) if ram else limit


# Share of the RAM that pinned buffers may take: the OS, the Python processes and the page cache need the rest
HOST_USABLE_FRACTION = 0.85


def host_basis_words(ranks_per_node: int, node_bytes: float | None = None) -> str:
    """Where ``host_share_bytes`` takes a rank's share from, in words: "85% of this machine's 135 GB of RAM",
    "... of this process's cgroup limit of 64 GB" where that limit is lower, "... of the node's 256 GB" where
    ``node_bytes`` is given; over how many ranks."""
    over = f" over {ranks_per_node} ranks" if ranks_per_node > 1 else ""
    if node_bytes is not None:
        return f"{HOST_USABLE_FRACTION:.0%} of the node's {node_bytes / GB:.0f} GB{over}"
    ram, usable = physical_memory_bytes(), host_memory_bytes()
    if usable and usable < ram:
        return f"{HOST_USABLE_FRACTION:.0%} of this process's cgroup limit of {usable / GB:.0f} GB{over}"
    return f"{HOST_USABLE_FRACTION:.0%} of this machine's {ram / GB:.0f} GB of RAM{over}"


def host_share_bytes(ranks_per_node: int, node_bytes: float | None = None) -> float | None:
    """Host memory one rank may pin: the usable share of the node's RAM (this machine's, within its cgroup's
    limit, ``host_memory_bytes``, unless ``node_bytes`` is given); None where the RAM is unknown."""
    node_bytes = host_memory_bytes() if node_bytes is None else node_bytes
    return HOST_USABLE_FRACTION * node_bytes / ranks_per_node if node_bytes else None


def check_host_memory(p: Plan, ranks_per_node: int, host_bytes: float | None = None) -> str | None:
    """A one-line problem if the ranks of one node need more host memory than the node has, else None."""
    share = host_share_bytes(ranks_per_node, host_bytes)
    if share is None or p.host_bytes <= share:
        return None
    node = share * ranks_per_node / HOST_USABLE_FRACTION
    limited = host_bytes is None and node < physical_memory_bytes()  # the cgroup's limit, not the RAM
    whose = "this job's cgroup limit of" if limited else "this node's"
    items = ", ".join(f"{k} {v / GB:.1f} GB" for k, v in p.cpu.items() if v)
    return (f"host memory: {ranks_per_node} rank(s) x {p.host_bytes / GB:.1f} GB ({items}) = "
            f"{p.host_bytes * ranks_per_node / GB:.1f} GB exceeds {HOST_USABLE_FRACTION:.0%} of {whose} "
            f"{node / GB:.0f} GB; use train.checkpoint_group to keep fewer block inputs, or fewer ranks per node")


HOST_OFFLOAD_SETS = ("train.cpu_checkpointing=true", "train.offload_overlap=true")


def offload_hint(cfg: Config, seq_len: int | None = None, world_size: int = 1, runtime: str = "deepspeed",
                 micro_batch: int | None = None, *, gpu_bytes: float, limit_bytes: float,
                 host_bytes: float | None = None) -> str | None:
    """For a config whose planned peak does not fit: whether its block inputs in host memory
    (``HOST_OFFLOAD_SETS``; the recompute's "auto"s fitted again to ``gpu_bytes``) would plan a first-step peak
    within ``limit_bytes`` and host memory within ``host_bytes`` (the rank's share of the node's RAM; default this
    machine's, ``host_share_bytes``), as one line naming the overrides and the plan; None where they are set
    already, the blocks are not recomputed, or it would not fit either."""
    t = cfg.train
    if t.cpu_checkpointing or not t.checkpoint_activations:
        return None
    try:
        alt = config_from_dict(apply_overrides(cfg.model_dump(), list(HOST_OFFLOAD_SETS)), "the config with host offload")
        p = plan(alt, seq_len, world_size, runtime, micro_batch, gpu_bytes=gpu_bytes, host_bytes=host_bytes)
    except (ConfigError, ValueError):
        return None
    if not p.fits(limit_bytes, host_bytes if host_bytes is not None else host_share_bytes(world_size)):
        return None
    return ("would fit with " + " ".join(f"--set {s}" for s in HOST_OFFLOAD_SETS)
            + f": plan {p.first_step_peak_bytes / GB:.1f} GB on the GPU, {p.host_bytes / GB:.1f} GB of host memory"
            + (" a rank" if world_size > 1 else ""))


def _at_length(cfg: Config, seq_len: int | None) -> Config:
    """The config with model.seq_len = seq_len (image embeddings become 1-D windows off their size)."""
    if not seq_len or seq_len == cfg.model.seq_len:
        return cfg
    tree = cfg.model_dump()
    tree["model"]["seq_len"] = seq_len
    if tree["model"]["embedding"]["kind"] == "image":
        tree["model"]["embedding"] = {"kind": "window", "window": "auto", "image_shape": None}
    return config_from_dict(tree, source=f"config at seq_len={seq_len}")


def _weight_bytes(cfg: Config, n_params: int, prec: Precision, runtime: str, world: int):
    """(GPU items, host items): weights, gradients, optimizer states under ZeRO and offload."""
    t = cfg.train
    stage = t.zero_stage if runtime == "deepspeed" else 0
    params, grads, optim = n_params * prec.weight, n_params * prec.grad, n_params * prec.optimizer
    optim /= world if stage >= 1 else 1
    grads /= world if stage >= 2 else 1
    params /= world if stage >= 3 else 1
    gpu = {"parameters": params, "gradients": grads, "optimizer states": optim, "ZeRO buffers": 0.0}
    cpu = {"parameters": 0.0, "optimizer states": 0.0, "fp32 gradients": 0.0}
    if runtime == "deepspeed" and t.offload_optimizer and stage >= 1:
        # DeepSpeed's host partition: fp32 weights and their fp32 gradients in pinned buffers (each rounded
        # to a power of two), the Adam moments beside them (engine.parallel.HostAdamW's, not pinned)
        share = n_params / world
        cpu["optimizer states"], gpu["optimizer states"] = pinned_bytes(4 * share) + 8 * share, 0.0
        cpu["fp32 gradients"] = pinned_bytes(4 * share)
    if runtime == "deepspeed" and t.offload_params and stage == 3:
        cpu["parameters"], gpu["parameters"] = params, 0.0
    if stage in (1, 2):
        gpu["ZeRO buffers"] = min(DEEPSPEED_BUCKET, n_params) * prec.grad
    elif stage == 3:
        gpu["ZeRO buffers"] = 2 * min(DEEPSPEED_PREFETCH, n_params) * prec.weight
    return gpu, cpu


def _phases(model: ModelConfig, recomputed: int, prec: Precision, params: ParamCount, weights: dict,
            layout_bytes: int, tokens: int, runtime: str, host_inputs: bool = False,
            group: int = 1, prefetch: bool = False, kept: float = 0.0,
            keeping: int = 0, kept_on_host: bool = False) -> dict[str, dict[str, float]]:
    """Allocated bytes at forward end, loss backward, first and last block backward, optimizer step.

    recomputed: the first k blocks are recomputed (train.checkpoint_blocks); the other L - k keep
    their saved activations, input included, until their own backward, which runs first: for
    0 < k < L, "backward, last block" is a kept block's with every kept activation still live, and
    "backward, last recomputed block" the worst recomputed segment's after they are freed.
    host_inputs: the recomputed blocks' (segments') inputs live in host memory (cpu_checkpointing);
    the GPU holds only those of the segment being recomputed, and in the forward pass the last input
    and output; prefetch (train.offload_overlap): plus the previous segment's input, fetched back early.
    group: blocks per recomputed segment (train.checkpoint_group); with S = ceil(k / group)
    segments the forward keeps S inputs, and a segment's backward adds the inputs of its blocks.
    kept: bytes each block that keeps its attention outputs (train.keep_attention) holds for its backward;
    keeping: how many do, the first ones of the k recomputed (``kept_attention_blocks``): all of them live
    from the forward until the recomputed blocks' backward, the first block's (a keeping one) last.
    kept_on_host (train.offload_attention): they wait in host memory, ``keeping`` of them on the GPU while
    the forward pass copies them out and the recomputed blocks' backward copies them back; none between the
    two (the loss's backward, the backward of the blocks not recomputed; but the last two when every block is
    recomputed under offload_overlap, held until the backward starts, ``engine.parallel._CopiesOut``): the copies
    out end under the last blocks' forward, and the first copy back starts with the last recomputed block's backward, or (under
    offload_overlap with two or more blocks not recomputed) with the first kept block's, when the last
    block's activations, more bytes than that copy, are already freed: below the peak either way.
    """
    L, d = model.n_layers, model.d_model
    resid = tokens * prec.residual * d  # one (B, T, D) residual
    hidden = tokens * (prec.residual if prec.autocast else prec.compute) * d  # final-LN output
    f_tokens = ffn_tokens(model, tokens)  # all tokens, or one chunk of positions under ffn_chunk
    attn_half, ffn_half = block_saved_parts(model, prec)
    block = tokens * (attn_half + ffn_half) + f_tokens * ffn_saved_bytes(model, prec)
    attn = tokens * attention_workspace_bytes(model, prec, model.seq_len, max(1, tokens // model.seq_len))
    resid_grads = tokens * backward_transient_bytes(model, prec)
    ffn_grads = f_tokens * ffn_transient_bytes(model, prec)
    chunk = loss_chunk_bytes(model, prec, tokens)
    cast = 2 * params.total if prec.autocast else 0.0  # bf16 copies of the weights autocast caches
    grads_persist = runtime == "deepspeed"  # torch: zero_grad(set_to_none) frees them between steps
    static = {k: v for k, v in weights.items() if k != "gradients"} | {"layouts": float(layout_bytes),
                                                                         "cuBLAS workspaces": float(CUBLAS_WORKSPACE_BYTES)}
    grads = weights["gradients"]
    k, kept_blocks = recomputed, L - recomputed
    segments = -(-k // group)
    k_last = k - (segments - 1) * group if k else 0  # blocks in the last segment
    saved = kept_blocks * (resid + block)  # the kept blocks' activations, their inputs included
    kept_cast = cast * kept_blocks / L  # the kept blocks' weight copies, saved by their matmuls
    if host_inputs:
        inputs, worst = 0.0, max(k_last, group if segments > 1 else 0) * resid
        worst += resid if prefetch and segments > 1 else 0.0
        kept_acts = max(2 * resid, saved + resid)
    else:  # the segments' inputs before the one in backward, plus the inputs of its blocks
        inputs = segments * resid
        worst = max(segments - 1 + k_last, segments - 2 + group if segments > 1 else 0) * resid
        kept_acts = inputs + saved + resid
    def g(fraction: float) -> dict:  # noqa: E306 - gradients present at this moment
        return {"gradients": grads if grads_persist else grads * fraction}
    def halves(recompute: bool) -> tuple[dict, dict]:  # noqa: E306 - one block's backward, its two halves
        # FFN half first: the block's whole saved set (if recomputed) and the FFN's gradients; then the
        # attention half: the FFN half's tensors freed, the attention kernels' workspace instead
        ffn = {"one block recomputed": block if recompute else 0.0, "attention workspace": 0.0,
               "backward transients": resid_grads + ffn_grads}
        att = {"one block recomputed": tokens * attn_half if recompute else 0.0, "attention workspace": attn,
               "backward transients": resid_grads}
        return ffn, att
    def working(recompute: bool) -> dict:  # noqa: E306 - the worse of the two halves
        return max(halves(recompute), key=lambda items: sum(items.values()))
    outputs = {"kept attention outputs": keeping * kept} if kept and keeping else {}
    # from the forward's end to the first recomputed block's backward: on the GPU every kept output; in host
    # memory none, but where every block is recomputed under offload_overlap the last ones the side stream copied
    # out, let go when the backward starts (engine.parallel._CopiesOut; else the first block not recomputed does)
    between = outputs if not kept_on_host or (prefetch and kept_blocks == 0) else {}
    recomputing = {"block inputs": worst} | working(True) | {"autocast weight copies": 0.0} | outputs
    if kept_blocks == 0:
        last = recomputing
    else:  # a kept block: nothing recomputed yet, every kept activation live
        last = ({"block inputs": inputs} if k else {}) | {"saved activations": saved} | working(False) \
            | {"autocast weight copies": kept_cast} | between
    first = {"block inputs": min(group, k) * resid} if k else {"saved activations": resid + block}
    if outputs:
        first["kept attention outputs"] = kept
    phases = {
        "forward": static | g(0) | {"activations": kept_acts + hidden, "loss (chunked)": chunk,
                                    "autocast weight copies": cast} | outputs,
        "loss backward": static | g(0) | {"activations": kept_acts + 2 * hidden, "loss (chunked)": 2 * chunk,
                                          "autocast weight copies": kept_cast} | between,
        "backward, last block": static | g(0) | last,
    }
    if 0 < k < L:
        phases["backward, last recomputed block"] = static | g(kept_blocks / L) | recomputing
    phases["backward, first block"] = static | g(1) | first | working(k > 0) | {"autocast weight copies": cast / L}
    phases["optimizer step"] = static | g(1)
    # a first step that autotunes: the first backward (the last block's attention half) and the forward
    # carry the outputs the tuning trials save
    fwd_saved, bwd_saved = autotune_saved_bytes(model, model.seq_len, prec.compute)
    first = {}
    if bwd_saved:
        first["backward, last block"] = phases["backward, last block"] | halves(kept_blocks == 0)[1] \
            | {"autotuning saved outputs": tokens * bwd_saved}
    if fwd_saved:
        first["forward"] = phases["forward"] | {"autotuning saved outputs": tokens * fwd_saved}
    return phases, first


def _notes(cfg: Config, runtime: str, world: int) -> list[str]:
    notes = []
    if runtime == "torch" and (cfg.train.zero_stage or world > 1):
        notes.append("runtime torch ignores ZeRO and plans one GPU")
    if runtime == "deepspeed" and cfg.train.zero_stage and world == 1:
        notes.append("ZeRO on one GPU shards nothing; its buffers still cost memory")
    return notes
