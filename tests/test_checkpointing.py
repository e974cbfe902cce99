"""Activation recomputation: every runner gives the gradients of the plain model, dropout included."""

import pytest
import torch

from megastride.engine.config import ConfigError, config_from_dict
from megastride.engine.deepspeed_config import check_zero_options
from megastride.engine.model import SparseTransformer
from megastride.engine.parallel import BlockCheckpoint, apply_activation_checkpointing


def _config(**train):
    return config_from_dict({"model": {"seq_len": 128, "d_model": 32, "n_layers": 3, "n_heads": 2, "dropout": 0.3,
                                       "attention": {"block": 16, "layers": ["fixed(32,8)", "strided(16)"]}},
                             "train": train})


def _loss_and_grads(cfg, seed=7):
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model)
    apply_activation_checkpointing(model, cfg.train)
    model.train()
    idx = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)  # the dropout masks
    loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


RUNNERS = [{"cpu_checkpointing": True}, {}, {"compile": True}, {"checkpoint_group": 2}, {"checkpoint_group": 3, "cpu_checkpointing": True},
           {"cpu_checkpointing": True, "offload_overlap": True},
           {"checkpoint_group": 2, "cpu_checkpointing": True, "offload_overlap": True}]


@pytest.mark.parametrize("train", RUNNERS, ids=["host", "device", "torch", "torch-group2", "host-group3", "host-overlap",
                                                "host-overlap-group2"])
@pytest.mark.parametrize("kernels", [False, True], ids=["torch", "kernels"])
def test_recomputed_blocks_give_the_plain_models_gradients(train, kernels, monkeypatch):
    """Recompute (replaying the dropout RNG) changes neither the loss nor any gradient; also with the block's
    Triton kernels (interpreted on CPU: the LayerNorms, ln1's kept input, the bias + SiLU), as on a GPU."""
    if kernels:
        monkeypatch.setenv("MEGASTRIDE_LAYERNORM", "triton")
        monkeypatch.setenv("MEGASTRIDE_FFN", "triton")
    plain_loss, plain = _loss_and_grads(_config(checkpoint_activations=False))
    loss, grads = _loss_and_grads(_config(**train))
    assert torch.equal(loss, plain_loss)
    for name, g in plain.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
    other_loss, _ = _loss_and_grads(_config(**train), seed=8)  # the masks do matter
    assert not torch.equal(other_loss, plain_loss)


def test_host_checkpoint_keeps_only_a_host_copy_of_the_input():
    """The autograd graph holds no activation of the block: only the input, copied to the host."""
    block = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    x = torch.randn(4, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = BlockCheckpoint.apply(block, x * 2)
    assert saved == []  # the block ran without saving anything for backward
    assert out.grad_fn.host is not None and not out.grad_fn.host.is_cuda
    out.sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    block(ref * 2).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_overlap_prefetches_each_predecessor_once_and_forgets_dropped_graphs():
    """With offload_overlap every block's backward fetches the input of the block before it ahead
    of time (n - 1 prefetches for n blocks); a forward whose graph is dropped without backward leaves
    nothing behind to prefetch or to hold host memory."""
    from megastride.engine import parallel

    cfg = _config(cpu_checkpointing=True, offload_overlap=True)
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model)
    apply_activation_checkpointing(model, cfg.train)
    chain = parallel._chain(torch.device("cpu"))
    idx = torch.randint(0, 256, (1, 129))
    model(idx[:, :-1], idx[:, 1:])  # graph dropped: no backward
    assert all(r() is None for r in chain.pending)
    before = chain.prefetched
    model(idx[:, :-1], idx[:, 1:]).backward()
    assert chain.prefetched - before == len(model.blocks) - 1
    assert chain.pending == []
    with torch.no_grad():  # evaluation does not copy block inputs at all
        model(idx[:, :-1])
    assert chain.pending == []


class _Recorder:
    """Stand-ins for the CUDA streams and events of engine.parallel's side-stream copies (no GPU here),
    logging each wait, record and record_stream."""

    def __init__(self, monkeypatch, records: bool = False, copies: bool = False):
        import contextlib

        from megastride.engine import parallel

        self.log = log = []

        class Stream:
            def __init__(self, name):
                self.name = name

            def wait_stream(self, other):
                log.append(f"{self.name} waits for {other.name}")

            def wait_event(self, event):
                log.append(f"{self.name} waits for {event.name}")

        class Event:
            def __init__(self, name=None):
                self.name = name

            def record(self, stream):
                self.name = self.name or f"event on {stream.name}"
                if records:
                    log.append(f"{self.name} recorded")

        self.Event, self.compute, self.side = Event, Stream("compute"), Stream("side")
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.compute)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(parallel, "_copy_stream", lambda device: self.side)
        monkeypatch.setattr(torch.Tensor, "record_stream",
                            lambda t, s: log.append(f"{tuple(t.shape)} held for {s.name}"), raising=False)
        real_empty = torch.empty
        monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: real_empty(*a, **k))
        if copies:
            real_copy = torch.Tensor.copy_

            def copy(dst, src, non_blocking=False):
                log.append(f"copy {tuple(src.shape)}")
                return real_copy(dst, src, non_blocking)

            monkeypatch.setattr(torch.Tensor, "copy_", copy)


def test_a_gpu_prefetch_copies_after_the_compute_stream_into_its_own_buffers(monkeypatch):
    """BlockCheckpoint._prefetch's CUDA branch, its streams and events recorded by stand-ins (no GPU here; the
    gradients on a real one: tests/test_train_gpu.py): the side stream first waits for the compute stream (the
    buffers come from the compute stream's pool, where earlier work may still use their memory, and the copies
    start when the GPU reaches this point, not when the host does), every copy (input and kept outputs) precedes
    the one event, each buffer is held for the side stream, and the fetch makes the compute stream wait for that
    event; the input comes back equal and each kept output equal, in its own strides."""
    import types

    from megastride.engine import parallel

    log = _Recorder(monkeypatch, records=True, copies=True).log
    out = torch.randn(2, 6, 3, 4).permute(0, 2, 1, 3)  # (B, H, T, D) view of a (B, T, H, D) buffer
    lse = torch.randn(2, 3, 6)
    orders = [parallel._memory_order(out), parallel._memory_order(lse)]
    ctx = types.SimpleNamespace(prefetched=None, kept_prefetched=None, fetched=None, on_host=None, ordered=False,
                                unread=None, host=torch.randn(2, 6, 4), device=types.SimpleNamespace(type="cuda"),
                                kept_host=[(out.permute(orders[0]).clone(), orders[0]),
                                           (lse.permute(orders[1]).clone(), orders[1])])
    monkeypatch.setattr(parallel, "_chain", lambda device: types.SimpleNamespace(prefetched=0))
    BlockCheckpoint._prefetch(ctx)
    x = BlockCheckpoint._fetch(ctx)
    kept = BlockCheckpoint._fetch_kept(ctx)
    assert log == ["side waits for compute", "copy (2, 6, 4)", "copy (2, 6, 3, 4)", "copy (2, 3, 6)",
                   "event on side recorded", "(2, 6, 4) held for side", "(2, 6, 3, 4) held for side",
                   "(2, 3, 6) held for side", "compute waits for event on side"]
    assert torch.equal(x, ctx.host)
    (o, l), = kept
    assert torch.equal(o, out) and o.stride() == out.stride() and torch.equal(l, lse)


def test_ordered_release_lets_copied_tensors_go_after_a_compute_stream_wait(monkeypatch):
    """The ordered release (``parallel._CopiesOut``, MEGASTRIDE_OFFLOAD_RELEASE unset or "ordered"): a block's input goes at the next block's
    forward, the compute stream first waiting for its copy's event; a block's kept outputs (lagging: copied
    after its forward) one block later; ``release()`` lets everything go. Dropped means no reference left here
    (the allocator may reuse the memory on the compute stream, after the wait), never held by record_stream."""
    import gc
    import weakref

    from megastride.engine import parallel

    rec = _Recorder(monkeypatch)
    out = parallel._CopiesOut()
    device = torch.device("cpu")
    tensors = {name: torch.zeros(1) for name in ("x0", "k0", "x1", "k1")}
    alive = {name: weakref.ref(t) for name, t in tensors.items()}

    def hold(name):
        out.hold(rec.Event(f"{name} copied"), [tensors.pop(name)], lagging=name.startswith("k"))

    def living():
        gc.collect()
        return sorted(name for name, r in alive.items() if r() is not None)

    hold("x0")
    hold("k0")
    out.release(device, keep_lagging=True)  # block 1's forward: x0 goes, k0's copy may still run
    assert rec.log == ["compute waits for x0 copied"] and living() == ["k0", "k1", "x1"]
    hold("x1")
    hold("k1")
    out.release(device, keep_lagging=True)  # block 2's: k0 and x1 go after one wait (the copies run in order)
    assert rec.log[1:] == ["compute waits for x1 copied"] and living() == ["k1"]
    out.release(device, keep_lagging=True)
    assert rec.log[2:] == [] and living() == ["k1"]  # only a lagging entry left: it stays
    out.release(device)  # the backward's start
    assert rec.log[2:] == ["compute waits for k1 copied"] and living() == []
    out.release(device)
    assert len(rec.log) == 3 and "held" not in " ".join(rec.log)


def test_ordered_release_holds_a_prefetch_for_the_side_stream_only_if_no_fetch_comes(monkeypatch):
    """Under the ordered release, a prefetch's buffers are not marked with record_stream: the fetch makes the
    compute stream wait for the copies, which orders every later use and the buffers' reuse after them. A
    block dropped before its fetch (a backward that raised) has its buffers held for the side stream then,
    as the copies into them may still run; and MEGASTRIDE_OFFLOAD_RELEASE takes only its two values, "ordered"
    unless set."""
    import gc

    from megastride.engine import parallel

    rec = _Recorder(monkeypatch)
    monkeypatch.setattr(parallel, "_chain", lambda device: type("Chain", (), {"prefetched": 0})())

    class Ctx:  # weak-referenceable, as autograd's ctx is
        def __init__(self):
            self.prefetched = self.kept_prefetched = self.fetched = self.on_host = self.kept_host = None
            self.host, self.device, self.ordered, self.unread = torch.randn(2, 6, 4), torch.device("cpu"), True, None

    ctx = Ctx()
    ctx.device = type("Device", (), {"type": "cuda"})()
    BlockCheckpoint._prefetch(ctx)
    x = BlockCheckpoint._fetch(ctx)
    assert torch.equal(x, ctx.host)
    del ctx
    gc.collect()
    assert rec.log == ["side waits for compute", "compute waits for event on side"]

    dropped = Ctx()
    dropped.device = type("Device", (), {"type": "cuda"})()
    BlockCheckpoint._prefetch(dropped)
    del dropped
    gc.collect()
    assert rec.log[2:] == ["side waits for compute", "(2, 6, 4) held for side"]

    monkeypatch.delenv("MEGASTRIDE_OFFLOAD_RELEASE", raising=False)
    assert parallel._release_ordered()  # the default
    monkeypatch.setenv("MEGASTRIDE_OFFLOAD_RELEASE", "recorded")
    assert not parallel._release_ordered()
    monkeypatch.setenv("MEGASTRIDE_OFFLOAD_RELEASE", "later")
    with pytest.raises(ValueError, match="MEGASTRIDE_OFFLOAD_RELEASE must be unset, 'recorded' or 'ordered'"):
        parallel._release_ordered()
    monkeypatch.setenv("MEGASTRIDE_OFFLOAD_RELEASE", "Ordered")
    assert parallel._release_ordered()


def test_overlap_needs_cpu_checkpointing():
    with pytest.raises(ConfigError, match="train.offload_overlap needs train.cpu_checkpointing = true"):
        check_zero_options(_config(offload_overlap=True))


@pytest.mark.parametrize("key,value", [("cpu_checkpointing", True), ("partition_activations", True),
                                       ("checkpoint_group", 2)])
def test_offload_options_need_recomputation(key, value):
    with pytest.raises(ConfigError, match=f"train.{key} needs train.checkpoint_activations = true"):
        check_zero_options(_config(**{key: value, "checkpoint_activations": False}))


def test_segments_recompute_their_blocks_again():
    """Backward runs a block's forward twice (segment recompute, then its own) where per-block
    recompute runs it once; the last block of a segment once, as torch's checkpoint stops a
    recompute as soon as it has what backward needs (that block's input)."""
    calls = {}

    def counted(train):
        cfg = _config(**train)
        torch.manual_seed(0)
        model = SparseTransformer(cfg.model)
        apply_activation_checkpointing(model, cfg.train)
        for i, block in enumerate(model.blocks):
            block.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
        calls.clear()
        idx = torch.randint(0, 256, (1, 129))
        model(idx[:, :-1], idx[:, 1:]).backward()
        return dict(calls)

    assert counted({}) == {0: 2, 1: 2, 2: 2}
    assert counted({"checkpoint_group": 3}) == {0: 3, 1: 3, 2: 2}
    assert counted({"checkpoint_group": 2}) == {0: 3, 1: 2, 2: 2}  # segments (0, 1) and (2,)


@pytest.mark.parametrize("train", [{"cpu_checkpointing": True}, {}, {"checkpoint_activations": False}],
                         ids=["host", "torch", "none"])
def test_chunked_ffn_gives_the_same_loss_and_gradients(train):
    """ffn_chunk (a divisor or not of the length) changes neither outputs nor gradients."""
    base_loss, base = _loss_and_grads(_config(**train))
    for chunk in (32, 50):
        cfg = _config(**train)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"ffn_chunk": chunk})})
        loss, grads = _loss_and_grads(cfg)
        torch.testing.assert_close(loss, base_loss, rtol=1e-6, atol=1e-6)
        for name, g in base.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
    torch.manual_seed(0)
    model = SparseTransformer(_config().model).eval()
    chunked = SparseTransformer(_config().model.model_copy(update={"ffn_chunk": 50})).eval()
    chunked.load_state_dict(model.state_dict())
    idx = torch.randint(0, 256, (2, 128))
    with torch.no_grad():
        torch.testing.assert_close(chunked(idx), model(idx), rtol=1e-5, atol=1e-5)


def test_host_checkpoint_recomputes_under_the_forwards_autocast():
    """Under bf16 autocast (the benchmark loop) the recompute runs in bf16 too: same gradients as
    torch's checkpoint, which replays autocast, and not those of an fp32 recompute."""
    def grads(train):
        cfg = _config(**train)
        torch.manual_seed(0)
        model = SparseTransformer(cfg.model)
        apply_activation_checkpointing(model, cfg.train)
        idx = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(1))
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    host, ref = grads({"cpu_checkpointing": True}), grads({})
    for a, b in zip(host, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_device_checkpoint_is_one_node_per_block_without_saved_tensor_hooks():
    """The default runner keeps each block's input on its device and recomputes the block from it:
    one autograd node per block (holding that input), and no saved-tensor hooks during the forward
    (torch's non-reentrant checkpoint registers them for every tensor a block saves)."""
    from megastride.engine import parallel

    cfg = _config()
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model)
    apply_activation_checkpointing(model, cfg.train)
    idx = torch.randint(0, 256, (1, 129))
    hooks = []
    real = torch.autograd.graph.saved_tensors_hooks.__init__
    try:
        torch.autograd.graph.saved_tensors_hooks.__init__ = lambda self, *a: hooks.append(1) or real(self, *a)
        x = model.tok(idx[:, :-1]) + model.pos(128, idx.device)
        outs = []
        for block in model.blocks:
            x = model.block_runner(block, x)
            outs.append(x)
    finally:
        torch.autograd.graph.saved_tensors_hooks.__init__ = real
    assert hooks == []
    for out in outs:
        assert type(out.grad_fn).__name__ == "BlockCheckpointBackward" and out.grad_fn.host is None
    assert outs[1].grad_fn.saved_tensors[0] is outs[0]  # the input, the previous block's output, kept
    del parallel


@pytest.mark.parametrize("train", [{}, {"cpu_checkpointing": True}, {"checkpoint_group": 2, "cpu_checkpointing": True}],
                         ids=["device", "host", "host-group2"])
def test_a_recompute_leaves_the_blocks_last_product_uncomputed(train, monkeypatch):
    """BlockCheckpoint's recompute reads only its output's gradient edge: the FFN's proj product (and the residual
    add after it) are not computed again, where every other product is; the gradients are the plain model's
    (dropout 0.3: the masks replayed). Blocks recomputed as a Segment run whole (their outputs feed the next
    block)."""
    import torch.nn.functional as F

    cfg = _config(**train)
    calls = {}
    real = F.linear

    def counted(x, weight, bias=None):
        calls[tuple(weight.shape)] = calls.get(tuple(weight.shape), 0) + 1
        return real(x, weight, bias)

    monkeypatch.setattr(F, "linear", counted)
    loss, grads = _loss_and_grads(cfg)
    plain_loss, plain = _loss_and_grads(_config(checkpoint_activations=False))
    d, width, layers = cfg.model.d_model, cfg.model.ffn_width, cfg.model.n_layers
    assert loss == plain_loss
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
    calls.clear()
    _loss_and_grads(cfg)
    fc, proj = calls[(width, d)], calls.get((d, width), 0)
    if "checkpoint_group" in train:  # segments: every recompute of a block computes its proj product too
        assert fc == proj > 2 * layers
    else:
        assert (fc, proj) == (2 * layers, layers)  # fc in the forward and the recompute; proj in the forward only
