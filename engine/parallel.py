"""Wrapping the single-device model from outside: activation recomputation, DeepSpeed engine.

``engine.model`` stays free of distributed code; everything here acts on a built model.
"""

from __future__ import annotations

import contextlib
import functools
import os
import weakref

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from megastride.kernels.attention import kept_attention

from .config import TrainConfig
from .plan import kept_attention_blocks, recomputed_blocks


class _HostChain:
    """BlockCheckpoint inputs whose backward is still to come, in forward order (weak references: a
    graph dropped without backward takes its entries with it). A block's backward takes itself off
    the chain and hands back its predecessor, whose input it then starts copying back early."""

    def __init__(self):
        self.pending: list[weakref.ref] = []
        self.prefetched = 0  # inputs fetched ahead (tests count them)

    def push(self, ctx) -> None:
        self.pending = [r for r in self.pending if r() is not None]
        self.pending.append(weakref.ref(ctx))

    def last(self):
        """The live entry pushed last (the last recomputed block's), or None."""
        while self.pending:
            ctx = self.pending[-1]()
            if ctx is not None:
                return ctx
            self.pending.pop()
        return None

    def pop_previous(self, ctx):
        """Drop ``ctx`` (and any stale entry after it); the live entry before it, or None."""
        for i in range(len(self.pending) - 1, -1, -1):
            if self.pending[i]() is ctx:
                del self.pending[i:]
                break
        else:
            return None
        return self.last()


class _CopiesOut:
    """Device tensors that the side stream's copies to the host still read, with each copy's event, in the
    order the copies were queued (``MEGASTRIDE_OFFLOAD_RELEASE`` unset or "ordered"). ``release`` lets the older ones go
    in stream order: the compute stream waits for the newest released copy's event (the side stream runs its
    copies in order, so the earlier ones are done too) and the references are dropped, so the caching
    allocator hands their memory to the compute stream's next allocations at once, ordered after that wait.

    "recorded" marks each tensor with ``record_stream`` instead (the default until the forty-first run), and the
    allocator keeps a freed one out of use until an event it records on the side stream at the free completes:
    that event follows every copy queued by then, and the host queues the forward several blocks ahead of the
    GPU, so each block's input and kept outputs stay unusable while the host allocates for the blocks after it.
    On the H200 the fixed 1M step under 60 GB reserved 135 GB for its 48 GB peak that way and still called
    cudaMalloc 5.75 times a step; ordered, 55 GB and 0.25, at the same peak and step time (docs/scaling.md,
    "Where the 8 s step goes now").

    What stays held until the backward starts: where every block is recomputed, the last two blocks' kept
    outputs and the last input (``engine.plan`` counts them in the loss's backward); else the first block not
    recomputed lets everything go after its forward (``_after_last_recomputed``)."""

    def __init__(self):
        self.entries: list[tuple[object, list[torch.Tensor], bool]] = []

    def hold(self, event, tensors: list[torch.Tensor], lagging: bool = False) -> None:
        """Tensors read by the copy before ``event``; ``lagging``: a block's kept outputs, whose copy is
        queued after its forward, so the next block's forward leaves them held (a wait there would wait
        for the whole copy)."""
        self.entries.append((event, list(tensors), lagging))

    def release(self, device: torch.device, keep_lagging: bool = False) -> None:
        """Let the entries go, the compute stream waiting for their copies; with ``keep_lagging`` the
        newest stays where it is a lagging one."""
        count = len(self.entries) - (1 if keep_lagging and self.entries and self.entries[-1][2] else 0)
        if count <= 0:
            return
        released, self.entries = self.entries[:count], self.entries[count:]
        torch.cuda.current_stream(device).wait_event(released[-1][0])


def _release_ordered() -> bool:
    """``MEGASTRIDE_OFFLOAD_RELEASE``: "ordered" (unset: ``_CopiesOut``) or "recorded" (``record_stream``)."""
    choice = os.environ.get("MEGASTRIDE_OFFLOAD_RELEASE", "ordered").lower()
    if choice not in ("recorded", "ordered"):
        raise ValueError(f"MEGASTRIDE_OFFLOAD_RELEASE must be unset, 'recorded' or 'ordered'; got {choice!r}")
    return choice == "ordered"


def _unread_prefetch(buffers: list[torch.Tensor], stream) -> None:
    """A prefetch's buffers whose block was dropped before its backward fetched them (a backward that
    raised): held for the side stream, as the copies into them may still run."""
    for b in buffers:
        b.record_stream(stream)
    buffers.clear()


_CHAINS: dict[str, _HostChain] = {}
_COPIES_OUT: dict[str, _CopiesOut] = {}
_COPY_STREAMS: dict[str, "torch.cuda.Stream"] = {}


def _chain(device: torch.device) -> _HostChain:
    return _CHAINS.setdefault(str(device), _HostChain())


def _copies_out(device: torch.device) -> _CopiesOut:
    return _COPIES_OUT.setdefault(str(device), _CopiesOut())


def _copy_stream(device: torch.device):
    if str(device) not in _COPY_STREAMS:
        _COPY_STREAMS[str(device)] = torch.cuda.Stream(device)
    return _COPY_STREAMS[str(device)]


_RANDOM: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()


def _draws_random(block) -> bool:
    """Whether recomputing ``block`` needs the forward's RNG state: a module with a dropout of
    p > 0 in training mode (cached per module; train/eval switches are seen), or any other callable."""
    if not isinstance(block, nn.Module):
        return True
    if block not in _RANDOM:
        _RANDOM[block] = [m for m in block.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    return any(m.training for m in _RANDOM[block])


def _memory_order(t: torch.Tensor) -> list[int]:
    """The dimension order in which ``t``'s elements lie in memory (outermost first), where ``t`` is dense
    (no gaps or overlaps); else its own order (a copy then comes back contiguous)."""
    order = sorted(range(t.dim()), key=lambda i: (-t.stride(i), -t.size(i)))
    return order if t.permute(order).is_contiguous() else list(range(t.dim()))


def _inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


def _keeping(store: list | None, reuse: bool = False):
    """``kernels.attention.kept_attention`` on ``store``; nothing where the block keeps no attention."""
    return contextlib.nullcontext() if store is None else kept_attention(store, reuse)


class BlockCheckpoint(torch.autograd.Function):
    """Run ``block(x)`` (a block, or any callable of one tensor) keeping only ``x`` and recompute the
    block from it in the backward pass; with ``offload``, ``x`` is kept in host memory (pinned when it
    lives on a GPU), so nothing stays on the device.

    Without offload this is the reentrant form of torch's checkpoint: one autograd node per block and
    no saved-tensor hooks. torch's non-reentrant checkpoint packs and unpacks every tensor the block
    saves (about 30 per block here) through Python hooks, a large share of a step's host time at short
    lengths, where the step waits on the host (docs/scaling.md).

    At 1M tokens the checkpointed block inputs are the largest item of a step (1 GiB per layer for
    d_model 512 in bf16, 32 GB over 30 layers); here they cost host memory and two copies per
    layer instead. DeepSpeed's ``checkpoint_in_cpu`` only offloads model-parallel partitions (it
    fails without ``partition_activations``). Parameter gradients accumulate through the nested
    backward, as in reentrant checkpointing; the RNG states and the autocast state are replayed so
    dropout and the compute dtype match.

    With ``overlap`` (``train.offload_overlap``) on a GPU, both copies run on a side stream: the
    copy out overlaps the following blocks' forward, and each block's backward starts copying its
    predecessor's input back (one more block input on the GPU) while it recomputes and
    differentiates itself (the last recomputed block's: the first of two or more blocks not recomputed,
    ``_PrefetchLastRecomputed``). Without it the copies are ordered on the compute stream.

    With ``keep_attention`` (``train.keep_attention``) the block's attention outputs and log-sum-exps
    from the forward pass stay on the device until its backward, and the recompute reuses them instead
    of running the attention forward again (Triton path; ``kernels.attention.kept_attention``). With
    ``kept_on_host`` as well (``train.offload_attention``, under offload) they go to host memory beside the
    input, by the same copies: out after the block's forward, back with the input (prefetched with it
    under ``overlap``), so a kept output costs the GPU nothing between the two passes.
    """

    @staticmethod
    def forward(ctx, block, x: torch.Tensor, overlap: bool = False, offload: bool = True,
                keep_attention: bool = False, kept_on_host: bool = False) -> torch.Tensor:
        ctx.block, ctx.device = block, x.device
        ctx.kept = [] if keep_attention else None
        ctx.on_host = ctx.fetched = ctx.prefetched = None
        ctx.kept_host = ctx.kept_prefetched = None
        ctx.ordered, ctx.unread = False, None  # MEGASTRIDE_OFFLOAD_RELEASE=ordered under overlap (_CopiesOut)
        ctx.cpu_rng = ctx.cuda_rng = None
        if _draws_random(block):  # replayed in backward so dropout masks match
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("a recomputed block with active dropout cannot be captured in a CUDA graph "
                                   "(its RNG state is not graph-safe): set model.dropout=0 or train.cuda_graph=false")
            ctx.cpu_rng = torch.get_rng_state()
            ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        ctx.autocast = [(kind, torch.get_autocast_dtype(kind)) for kind in ("cuda", "cpu")
                        if torch.is_autocast_enabled(kind)]
        ctx.overlap = overlap and offload
        if not offload:
            ctx.host = None
            ctx.save_for_backward(x)
            with torch.no_grad(), _keeping(ctx.kept):
                return block(x)
        host = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=x.is_cuda)
        if overlap and x.is_cuda:
            stream = _copy_stream(x.device)
            ordered = ctx.ordered = _release_ordered()
            if ordered:  # the previous block's input (its copy queued a block ago) and older kept outputs
                _copies_out(x.device).release(x.device, keep_lagging=True)
            stream.wait_stream(torch.cuda.current_stream(x.device))  # x is complete
            with torch.cuda.stream(stream):
                host.copy_(x, non_blocking=True)
                ctx.on_host = torch.cuda.Event()
                ctx.on_host.record(stream)
            if ordered:
                _copies_out(x.device).hold(ctx.on_host, [x])
            else:
                x.record_stream(stream)  # x's memory is not reused before the copy has read it
        else:
            host.copy_(x, non_blocking=x.is_cuda)
        ctx.host = host
        if overlap:
            _chain(x.device).push(ctx)
        with torch.no_grad(), _keeping(ctx.kept):
            out = block(x)
        if kept_on_host and ctx.kept:
            BlockCheckpoint._kept_to_host(ctx)
        return out

    @staticmethod
    def _kept_to_host(ctx) -> None:
        """ctx's kept attention outputs into (pinned) host memory, as its input went: on the side stream
        after the block's kernels under overlap (their device memory reused only once the copy has read it),
        else in order on the compute stream; the device tensors are dropped. Each keeps its strides (the
        attention output is a head view of a (B, T, H, D) buffer) by going in its memory order."""
        tensors = [t for pair in ctx.kept for t in pair]
        cuda = ctx.device.type == "cuda"
        orders = [_memory_order(t) for t in tensors]
        sources = [t.permute(order) for t, order in zip(tensors, orders)]
        host = [torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=cuda) for t in sources]
        if ctx.overlap and cuda:
            stream = _copy_stream(ctx.device)
            stream.wait_stream(torch.cuda.current_stream(ctx.device))  # the block's outputs are complete
            with torch.cuda.stream(stream):
                for h, t in zip(host, sources):
                    h.copy_(t, non_blocking=True)
                ctx.on_host = torch.cuda.Event()  # after the input's copy on the same stream: covers both
                ctx.on_host.record(stream)
            if ctx.ordered:  # let go a block later (the next block's forward, ``_CopiesOut``)
                _copies_out(ctx.device).hold(ctx.on_host, tensors, lagging=True)
            else:
                for t in tensors:
                    t.record_stream(stream)
        else:
            for h, t in zip(host, sources):
                h.copy_(t, non_blocking=cuda)
        ctx.kept_host, ctx.kept = list(zip(host, orders)), None

    @staticmethod
    def _kept_back(ctx) -> list[torch.Tensor]:
        """The host copies of ctx's kept outputs on its device again (on the current stream), each in its
        original strides."""
        return [h.to(ctx.device, non_blocking=True).permute(_inverse(order)) for h, order in ctx.kept_host]

    @staticmethod
    def _fetch_kept(ctx) -> list | None:
        """ctx's kept attention outputs on its device, as (output, lse) pairs: kept there, prefetched
        (``_fetch`` waited for that copy), or copied back now (after ``_fetch``, which waited for the copies
        out)."""
        if ctx.kept_host is None:
            return ctx.kept
        tensors, ctx.kept_prefetched = ctx.kept_prefetched, None
        if tensors is None:
            tensors = BlockCheckpoint._kept_back(ctx)
        return [(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]

    @staticmethod
    def _fetch(ctx) -> torch.Tensor:
        """ctx's input back on its device: the kept tensor, the prefetched copy, or one made now."""
        if ctx.host is None:
            return ctx.saved_tensors[0]
        if ctx.prefetched is not None:
            x, ctx.prefetched = ctx.prefetched, None
            if ctx.fetched is not None:  # x and the kept outputs: copied by the side stream
                torch.cuda.current_stream(ctx.device).wait_event(ctx.fetched)
                if ctx.unread is not None:
                    ctx.unread.clear()  # read in stream order from here: the finalizer has nothing to hold
            return x
        if ctx.on_host is not None:  # the copy out ran on the side stream
            torch.cuda.current_stream(ctx.device).wait_event(ctx.on_host)
        return ctx.host.to(ctx.device, non_blocking=True)

    @staticmethod
    def _prefetch(ctx) -> None:
        """Start copying ctx's input (and kept outputs) back for when its backward comes: on a GPU by the
        side stream, into buffers of the compute stream's pool, once the compute stream has reached this
        point (the start of the successor's backward). Before the fortieth run these copies started when
        the host got here, into buffers of the side stream's pool; the host runs the backward several
        blocks ahead of the GPU, and the 1M step's profile (docs/scaling.md) showed the GPU idle about
        420 ms a step at the first recomputed block's fetch while host-to-device copies of some seven
        blocks ran back to back: later blocks' prefetches ahead of that block's own copies."""
        if ctx.prefetched is not None or ctx.host is None:
            return
        kept = ctx.kept_host is not None
        if ctx.device.type == "cuda":
            current, stream = torch.cuda.current_stream(ctx.device), _copy_stream(ctx.device)
            hosts = [ctx.host] + ([h for h, _ in ctx.kept_host] if kept else [])
            buffers = [torch.empty(h.shape, dtype=h.dtype, device=ctx.device) for h in hosts]
            stream.wait_stream(current)  # the buffers' earlier users on the compute stream are done
            with torch.cuda.stream(stream):
                for b, h in zip(buffers, hosts):
                    b.copy_(h, non_blocking=True)
                ctx.fetched = torch.cuda.Event()
                ctx.fetched.record(stream)
            if ctx.ordered:  # the fetch orders the compute stream after the copies
                ctx.unread = buffers[:]
                weakref.finalize(ctx, _unread_prefetch, ctx.unread, stream)  # unless no fetch comes
            else:
                for b in buffers:  # not reused before the copy is done, even if this backward never comes
                    b.record_stream(stream)
            ctx.prefetched = buffers[0]
            ctx.kept_prefetched = [b.permute(_inverse(order)) for b, (_, order) in zip(buffers[1:], ctx.kept_host)] \
                if kept else None
        else:
            ctx.prefetched = ctx.host.to(ctx.device)
            ctx.kept_prefetched = BlockCheckpoint._kept_back(ctx) if kept else None
        _chain(ctx.device).prefetched += 1

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.ordered:  # the forward's last copies out (no kept block after it): long done by now
            _copies_out(ctx.device).release(ctx.device)
        x = BlockCheckpoint._fetch(ctx).detach().requires_grad_(True)
        kept = BlockCheckpoint._fetch_kept(ctx)  # before the predecessor's prefetch: ours are needed first
        if ctx.overlap:
            prev = _chain(ctx.device).pop_previous(ctx)
            if prev is not None:
                BlockCheckpoint._prefetch(prev)
        with torch.enable_grad(), contextlib.ExitStack() as stack:
            if ctx.cpu_rng is not None:
                stack.enter_context(torch.random.fork_rng(devices=[ctx.device] if ctx.cuda_rng is not None else []))
                torch.set_rng_state(ctx.cpu_rng)
                if ctx.cuda_rng is not None:
                    torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            for kind, dtype in ctx.autocast:
                stack.enter_context(torch.autocast(kind, dtype=dtype))
            stack.enter_context(_keeping(kept, reuse=True))
            # a Block's output is not read here (only its gradient edge): its last product and add are left
            # uncomputed (model.Block.output_unread); other units (a Segment) run whole
            stack.enter_context(_output_unread(ctx.block))
            out = ctx.block(x)
        # through the output's gradient edge, the output itself let go first: a block's backward does not
        # read it (the residual add's gradient is ``grad``), and held here it would stay allocated through
        # the whole backward, a (B, T, D) fp32 tensor (2.1 GB at 1M tokens, d 512; traced on the H200,
        # docs/scaling.md). A block whose last op saves its output keeps it through that saved reference.
        edge = torch.autograd.graph.get_gradient_edge(out)
        del out
        torch.autograd.backward(edge, grad)
        ctx.host = ctx.block = ctx.kept = ctx.kept_host = None
        return None, x.grad, None, None, None, None


@contextlib.contextmanager
def _output_unread(unit):
    """``unit.output_unread`` set while it runs (a Block: ``engine.model.Block``), else nothing."""
    if not hasattr(unit, "output_unread"):
        yield
        return
    unit.output_unread = True
    try:
        yield
    finally:
        unit.output_unread = False


class _PrefetchLastRecomputed(torch.autograd.Function):
    """Identity on the first kept block's output (train.offload_overlap with two or more blocks not recomputed):
    its backward, which runs as that block's backward starts, starts copying back the last recomputed
    block's input, which no block's backward prefetches (each prefetches its predecessor's). Then the copy
    (59 ms at 1M tokens: the input and kept attention outputs) runs under that block's backward, not at the
    GPU's expense when the recomputed blocks begin (the 1M step's profile, docs/scaling.md). Not earlier:
    memory peaks in the last block's backward, which comes before (every kept activation live,
    ``engine.plan``); by the first kept block's, the last block's activations (more bytes than the copy) are
    freed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.device = x.device
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        last = _chain(ctx.device).last()
        if last is not None:
            BlockCheckpoint._prefetch(last)
        return grad


def _after_last_recomputed(block, x: torch.Tensor, prefetch: bool = True) -> torch.Tensor:
    """The first block not recomputed, under offload_overlap: after its forward the copies out still held
    (``_CopiesOut``: the last recomputed block's kept outputs, copied under this block's forward) go; with
    ``prefetch`` (two or more blocks not recomputed) its backward starts the last recomputed block's prefetch
    (``_PrefetchLastRecomputed``)."""
    out = block(x)
    if out.is_cuda:
        _copies_out(out.device).release(out.device)
    return _PrefetchLastRecomputed.apply(out) if prefetch and torch.is_grad_enabled() else out


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
    """Recompute residual blocks (attention and FFN) in the backward pass: the first
    train.checkpoint_blocks of them (null: every block); the others keep their activations.

    cpu_checkpointing keeps the block inputs in host memory (BlockCheckpoint with offload);
    partition_activations uses DeepSpeed's implementation; otherwise BlockCheckpoint keeps them on
    the device, except under train.compile (torch's non-reentrant checkpoint, which torch.compile
    traces). checkpoint_group k > 1 recomputes k blocks at a time as one Segment (the runner above
    keeps segment inputs; inside a segment, and as the outer runner without offload, torch's
    non-reentrant checkpoint, which stops a segment's recompute once backward has what it needs);
    segments cover only the recomputed blocks.

    Why the first blocks: memory peaks as the backward pass starts, with every kept activation still
    live. The backward pass meets the kept (last) blocks first and frees their activations before
    it recomputes any block, so one block's recompute never adds to them, and the first blocks are
    those whose activations would have been kept the longest. Recomputing the last blocks instead
    would add a recompute at the peak; recomputing only the last block lowers no backward peak.

    train.keep_attention (a count, or true for all) makes the first recomputed blocks keep their attention
    outputs for their recompute (BlockCheckpoint). Which of them keep does not change the peak: every kept
    output is live from the forward pass until the backward starts, where memory peaks. The first ones, as
    train.checkpoint_blocks counts the first blocks: one rule for both counts, which the planner mirrors
    layer by layer (``engine.plan.recompute_flops``: where layers' patterns differ, which layers keep decides
    the attention work saved).

    "auto" (train.checkpoint_blocks, train.keep_attention) is resolved against the GPU before the model
    is wrapped (``engine.plan.plan`` with ``gpu_bytes``, then ``plan.with_resolved``); unresolved it means
    every block and no attention outputs kept, as on a CPU.
    """
    recomputed = recomputed_blocks(train, len(model.blocks))
    if not recomputed:
        return
    keeping = kept_attention_blocks(train, recomputed)  # 0 under checkpoint_group > 1: keep_attention_conflict
    runner = _block_runner(train)
    keeper = _block_runner(train, keep=True) if keeping else runner
    blocks, k = list(model.blocks), train.checkpoint_group
    units = blocks[:recomputed]
    if k > 1:
        units = [Segment(blocks[i:min(i + k, recomputed)], _torch_checkpoint) for i in range(0, recomputed, k)]
    if recomputed == len(blocks) and keeping in (0, recomputed):  # one runner for every block
        model.block_runner = keeper
        if k > 1:
            model.segments = units
    else:  # each recomputed unit carries its runner, the first `keeping` the keeping one; the kept blocks
        # (not recomputed) run under the model's plain runner, the first letting the copies out go and, of two
        # or more, starting the last recomputed unit's prefetch under offload_overlap (_after_last_recomputed)
        kept = blocks[recomputed:]
        if train.cpu_checkpointing and train.offload_overlap and not train.compile and kept:
            kept[0] = functools.partial(_after_last_recomputed, kept[0], prefetch=len(kept) >= 2)
        model.segments = [functools.partial(keeper if i < keeping else runner, unit) for i, unit in enumerate(units)] \
            + kept


def _torch_checkpoint(fn, x: torch.Tensor) -> torch.Tensor:
    return checkpoint(fn, x, use_reentrant=False)


def _block_runner(train: TrainConfig, keep: bool = False):
    """The runner ``(unit, x) -> output`` that recomputes one block or Segment (see above); with ``keep``
    the block keeps its attention outputs for its recompute (BlockCheckpoint's runners only: the others are
    ruled out beside train.keep_attention by keep_attention_conflict)."""
    if train.cpu_checkpointing:
        overlap, host = train.offload_overlap, keep and train.offload_attention is True  # "auto": resolved, else off
        return lambda fn, x: BlockCheckpoint.apply(fn, x, overlap, True, keep, host) if torch.is_grad_enabled() \
            else fn(x)
    if train.partition_activations:
        import deepspeed

        deepspeed.checkpointing.configure(None, partition_activations=True)
        return lambda fn, x: deepspeed.checkpointing.checkpoint(fn, x)
    if train.compile or train.checkpoint_group > 1:
        return _torch_checkpoint
    return lambda fn, x: BlockCheckpoint.apply(fn, x, False, False, keep) if torch.is_grad_enabled() else fn(x)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, LayerNorm gains and embeddings are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and "tok." not in name and "pos." not in name
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class HostAdamW(torch.optim.Optimizer):
    """torch's AdamW (its single-tensor arithmetic, state and state_dict) stepped ``chunk`` elements at a
    time, for ZeRO-Offload: DeepSpeed hands the optimizer its fp32 partition as one flat tensor per group
    in host memory, where torch's AdamW makes two temporaries of that size (sqrt of the second moment,
    then the denominator): 8 bytes a parameter, which killed a 2.7B-parameter run at 1M tokens on a
    128 GB host at its first step. Here each temporary is one chunk's.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, chunk: int = 1 << 24):
        if chunk < 1:
            raise ValueError(f"HostAdamW chunk must be positive, got {chunk}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.chunk = chunk

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("HostAdamW does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
                step_size, bias_correction2_sqrt = lr / bias_correction1, bias_correction2 ** 0.5
                tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"])
                flat = all(t.is_contiguous() for t in tensors)  # else (unusual) one whole-tensor step
                views = [t.view(-1) if flat else t for t in tensors]
                chunk = self.chunk if flat else max(1, p.numel())
                for start in range(0, max(1, p.numel()), chunk):
                    param, grad, exp_avg, exp_avg_sq = (t[start:start + chunk] if flat else t for t in views)
                    param.mul_(1 - lr * wd)
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    param.addcdiv_(exp_avg, denom, value=-step_size)
        return loss


def build_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as a torch optimizer (fused on CUDA): no DeepSpeed op to JIT-build.

    Under ZeRO-Offload the step runs on the CPU copies DeepSpeed keeps: ``HostAdamW``, in chunks.
    With ``train.cuda_graph`` the step must be capturable (its step count stays on the device) and the
    learning rate is a device tensor, which a scheduler fills in place and a replayed graph reads.
    """
    if train.offload_optimizer:
        return HostAdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=train.betas, eps=train.eps)
    fused = device.type == "cuda" and train.zero_stage == 0
    graph = train.cuda_graph and fused
    lr = torch.tensor(train.lr, dtype=torch.float32, device=device) if graph else train.lr
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay), lr=lr, betas=train.betas, eps=train.eps, fused=fused or None,
        capturable=graph,
    )
