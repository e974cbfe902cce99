"""Partial recomputation (train.checkpoint_blocks): the first k blocks recomputed, the rest keep their
activations; gradients, what is recomputed, what is saved against the planner, and "auto"."""

import json
import weakref
from pathlib import Path
from unittest import mock

import pytest
import torch

from megastride.engine import model as model_module
from megastride.engine import parallel
from megastride.engine import plan as planner
from megastride.engine.config import ConfigError, config_from_dict, load_config
from megastride.engine.deepspeed_config import check_zero_options
from megastride.engine.model import SparseTransformer
from megastride.engine.parallel import apply_activation_checkpointing
from megastride.kernels.attention import qkv_heads
from megastride.kernels.reference import masked_sdpa_attention

LAYERS = 4
ROOT = Path(__file__).resolve().parents[1]


def _config(model=None, **train):
    return config_from_dict({"model": {"seq_len": 128, "d_model": 32, "n_layers": LAYERS, "n_heads": 2, "dropout": 0.3,
                                       "attention": {"block": 16, "layers": ["fixed(32,8)", "strided(16)"]},
                                       **(model or {})},
                             "train": train})


def _wrapped(cfg, dtype=torch.float32):
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model).to(dtype)
    apply_activation_checkpointing(model, cfg.train)
    return model


def _loss_and_grads(cfg, seed=7):
    model = _wrapped(cfg, torch.float64)
    idx = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)  # the dropout masks
    loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


RUNNERS = {"device": {}, "host": {"cpu_checkpointing": True},
           "host-overlap": {"cpu_checkpointing": True, "offload_overlap": True},
           "torch": {"compile": True}, "group2": {"checkpoint_group": 2},
           "host-group2": {"checkpoint_group": 2, "cpu_checkpointing": True}}


@pytest.fixture(scope="module")
def plain():
    return _loss_and_grads(_config(checkpoint_activations=False))


@pytest.mark.parametrize("k", [0, 1, 2, LAYERS])
@pytest.mark.parametrize("runner", RUNNERS)
def test_partial_recompute_gives_the_plain_models_gradients(plain, runner, k):
    """Recomputing the first k blocks (dropout replayed) changes neither the loss nor any gradient (float64)."""
    plain_loss, plain_grads = plain
    loss, grads = _loss_and_grads(_config(checkpoint_blocks=k, **RUNNERS[runner]))
    assert torch.equal(loss, plain_loss)
    for name, g in plain_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-12, atol=1e-14, msg=name)


def _backward_calls(cfg) -> dict[int, int]:
    """Forward calls of each block during the backward pass alone: its recomputations."""
    model = _wrapped(cfg)
    calls: dict[int, int] = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
    idx = torch.randint(0, 256, (1, 129))
    loss = model(idx[:, :-1], idx[:, 1:])
    assert calls == {i: 1 for i in range(LAYERS)}  # the forward pass ran every block once
    calls.clear()
    loss.backward()
    return calls


@pytest.mark.parametrize("k", [0, 1, 3, LAYERS])
@pytest.mark.parametrize("runner", RUNNERS)
def test_exactly_the_first_k_blocks_are_recomputed(runner, k):
    """The backward pass runs blocks 0..k-1 again and never the other blocks; null recomputes every
    block. Once each, or in segments of two (over the first k blocks only) twice: the segment's
    recompute, then the block's own (torch's checkpoint skips the last block in the first)."""
    train = RUNNERS[runner]
    calls = _backward_calls(_config(checkpoint_blocks=k, **train))
    if train.get("checkpoint_group") == 2 and not train.get("cpu_checkpointing"):
        expected = {i: 2 if i % 2 == 0 and i + 1 < k else 1 for i in range(k)}  # segments (0, 1), (2, 3)
    elif train.get("checkpoint_group") == 2:  # BlockCheckpoint recomputes its segment whole
        expected = {i: 2 for i in range(k)}
    else:
        expected = {i: 1 for i in range(k)}
    assert calls == expected
    assert set(_backward_calls(_config(**train))) == set(range(LAYERS))  # default: every block


def test_overlap_prefetches_only_among_recomputed_blocks():
    """With offload_overlap, k recomputed blocks fetch k - 1 inputs ahead; the kept blocks none."""
    cfg = _config(checkpoint_blocks=3, cpu_checkpointing=True, offload_overlap=True)
    model = _wrapped(cfg)
    chain = parallel._chain(torch.device("cpu"))
    before = chain.prefetched
    idx = torch.randint(0, 256, (1, 129))
    model(idx[:, :-1], idx[:, 1:]).backward()
    assert chain.prefetched - before == 2 and chain.pending == []


def test_overlap_prefetches_the_last_recomputed_block_as_the_first_kept_one_starts_its_backward():
    """With two or more blocks not recomputed, the first kept block's backward starts copying back the last
    recomputed block's input (which no recomputed block prefetches): k prefetches for k recomputed blocks, the
    last one's made after the last block's backward (where memory peaks) and before the first kept block's,
    and the gradients those of the model without offload (with one kept block it stays k - 1: the test
    above)."""
    calls = []
    BlockCheckpoint = parallel.BlockCheckpoint
    real_prefetch, real_backward = BlockCheckpoint._prefetch, BlockCheckpoint.backward

    def prefetch(ctx):
        calls.append(("prefetch", ctx.block))
        return real_prefetch(ctx)

    def backward(ctx, grad):
        calls.append(("backward", ctx.block))
        return real_backward(ctx, grad)

    def run(**train):
        cfg = _config(checkpoint_blocks=2, **train)
        torch.manual_seed(0)
        model = _wrapped(cfg)
        model.train()
        hooks = [b.register_full_backward_pre_hook(lambda m, g, i=i: calls.append(("kept", i)))
                 for i, b in enumerate(model.blocks) if i >= 2]
        idx = torch.randint(0, 256, (1, 129), generator=torch.Generator().manual_seed(1))
        torch.manual_seed(3)
        model(idx[:, :-1], idx[:, 1:]).backward()
        for h in hooks:
            h.remove()
        return model, {n: p.grad.clone() for n, p in model.named_parameters()}

    chain = parallel._chain(torch.device("cpu"))
    BlockCheckpoint._prefetch, BlockCheckpoint.backward = staticmethod(prefetch), staticmethod(backward)
    try:
        before = chain.prefetched
        model, got = run(cpu_checkpointing=True, offload_overlap=True)
        assert chain.prefetched - before == 2 and chain.pending == []
        b = model.blocks
        # block 3's backward done (its input's gradient is what reaches the identity), block 2's not begun
        assert calls == [("kept", 3), ("prefetch", b[1]), ("kept", 2), ("backward", b[1]), ("prefetch", b[0]),
                         ("backward", b[0])]
        calls.clear()
        _, ref = run()
    finally:
        BlockCheckpoint._prefetch, BlockCheckpoint.backward = staticmethod(real_prefetch), staticmethod(real_backward)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], msg=name)


class _KernelSaves(torch.autograd.Function):
    """The CPU reference attention saving what the Triton kernels save for backward (q, k, v, the
    output and the fp32 log-sum-exp: kernels/blocksparse.py), which the planner counts; the CPU
    path itself saves a token mask instead. Like the kernels, it returns the output in (B, T, H, D)
    memory order, so the model's re-layout for proj is a view, not a saved copy."""

    @staticmethod
    def forward(ctx, q, k, v, layout, scale):
        b, h, t, _ = q.shape
        result = masked_sdpa_attention(q, k, v, layout, scale=scale)
        out = result.new_empty(b, t, h, result.shape[-1]).transpose(1, 2).copy_(result)
        ctx.save_for_backward(q, k, v, out, q.new_zeros(q.shape[:-1], dtype=torch.float32))
        ctx.layout, ctx.scale = layout, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v = (t.detach().requires_grad_(True) for t in ctx.saved_tensors[:3])
        with torch.enable_grad():
            out = masked_sdpa_attention(q, k, v, ctx.layout, scale=ctx.scale)
        return (*torch.autograd.grad(out, (q, k, v), grad), None, None)


BATCH, LENGTH = 3, 128


def _saved_bytes(cfg) -> int:
    """Bytes of the tensors autograd keeps from one forward pass whose size follows the tokens
    (weights and their stacked or scaled copies are left out: their first dim is not B or B*T)."""
    model = _wrapped(cfg)
    kept = {}

    def pack(t):
        if t.dim() and t.shape[0] in (BATCH, BATCH * LENGTH):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    idx = torch.randint(0, 256, (BATCH, LENGTH + 1))
    attention = lambda q, k, v, layout, scale=None: _KernelSaves.apply(q, k, v, layout, scale)  # noqa: E731

    def fused(qkv, heads, layout, scale=None):  # the kernels save the product itself: its head views
        return attention(*qkv_heads(qkv, heads), layout, scale)

    with mock.patch.object(model_module, "sparse_attention", attention), \
            mock.patch.object(model_module, "sparse_attention_qkv", fused):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(idx[:, :-1], idx[:, 1:])
    return sum(kept.values())


@pytest.mark.parametrize("train", [{}, {"checkpoint_group": 2}, {"cpu_checkpointing": True}],
                         ids=["device", "group2", "host"])
def test_planned_activations_match_what_autograd_saves(train):
    """The planner's forward activations for k recomputed blocks (k inputs, the other blocks' saved
    sets in full) lie strictly between none and all recomputed, and differ from the bytes autograd
    saves by one constant for every k: the items outside the blocks it leaves out (byte ids, targets,
    the final LayerNorm's statistics)."""
    def config(k):
        return _config(model={"d_model": 48, "dropout": 0.0}, precision="fp32", checkpoint_blocks=k, **train)

    def planned(k):
        return planner.plan(config(k), runtime="torch", micro_batch=BATCH).phases["forward"]["activations"]

    ks = range(LAYERS + (0 if train.get("cpu_checkpointing") else 1))  # host, all: the block in flight too
    gaps = {k: _saved_bytes(config(k)) - planned(k) for k in ks}
    assert len(set(gaps.values())) == 1 and 0 <= gaps[0] < BATCH * LENGTH * 48 * 4, gaps  # < one residual
    steps = [planned(k) for k in range(LAYERS + 1)]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == LAYERS + 1
    off = planner.plan(_config(model={"d_model": 48, "dropout": 0.0}, precision="fp32", checkpoint_activations=False),
                       runtime="torch", micro_batch=BATCH)
    assert planner.plan(config(0), runtime="torch", micro_batch=BATCH).phases == off.phases
    assert planner.plan(config(None), runtime="torch", micro_batch=BATCH).phases == \
        planner.plan(config(LAYERS), runtime="torch", micro_batch=BATCH).phases


def test_partial_plan_peaks_before_any_block_is_recomputed():
    """For 0 < k < n the backward pass peaks at its start (the last block, a kept one), with the k
    inputs and every kept block's activations; the recomputed blocks come after those are freed, so
    one block's recompute never adds to them; under cpu_checkpointing the host holds the k inputs."""
    def cfg(**train):
        return config_from_dict({"model": {"seq_len": 512, "d_model": 64, "n_layers": 6, "n_heads": 4,
                                           "attention": {"block": 32, "layers": ["fixed(64,16)"]}},
                                 "train": {"precision": "bf16", **train}})

    resid = 512 * 64 * 2  # tokens x d_model x bf16
    two, none = planner.plan(cfg(checkpoint_blocks=2)), planner.plan(cfg(checkpoint_activations=False))
    block = none.phases["backward, last block"]["saved activations"] / 6 - resid  # one block's saved set
    last = two.phases["backward, last block"]
    total = {phase: sum(items.values()) for phase, items in two.phases.items()}
    assert total["backward, last block"] > total["backward, last recomputed block"] > total["backward, first block"]
    assert last["block inputs"] == 2 * resid and last["saved activations"] == 4 * (resid + block)
    assert last["one block recomputed"] == 0
    assert two.phases["backward, last recomputed block"]["block inputs"] == 2 * resid
    assert two.phases["backward, last recomputed block"]["one block recomputed"] == block
    host = planner.plan(cfg(checkpoint_blocks=2, cpu_checkpointing=True))
    assert host.cpu["block inputs"] == 2 * resid and host.phases["backward, last block"]["block inputs"] == 0
    assert "recompute 2 of 6 blocks" in two.table()


def test_auto_picks_the_fewest_blocks_that_fit():
    """choose_checkpoint_blocks gives the smallest k whose plan fits the budget (every block when
    none fits, 0 without recomputation); plan(gpu_bytes=...) resolves "auto" with it, within
    AUTO_MEMORY_FRACTION of the GPU, and without a GPU size "auto" recomputes every block. (Attention
    outputs not kept: with train.keep_attention "auto" the choice is joint, test_auto_weighs_...)"""
    cfg = _config(precision="bf16")
    peaks = [planner.plan(planner.with_checkpoint_blocks(cfg, k), 4096).peak_bytes for k in range(LAYERS + 1)]
    choose = lambda budget, c=cfg: planner.choose_checkpoint_blocks(c, 4096, budget_bytes=budget)  # noqa: E731
    assert peaks[1] > peaks[2]
    assert choose(peaks[2]) == 2 and choose(peaks[2] - 1) == 3
    assert choose(peaks[0]) == 0 and choose(1.0) == LAYERS
    assert choose(1.0, _config(checkpoint_activations=False)) == 0
    auto = _config(precision="bf16", checkpoint_blocks="auto", keep_attention=False)
    p = planner.plan(auto, 4096, gpu_bytes=peaks[2] / planner.AUTO_MEMORY_FRACTION)
    assert p.checkpoint_blocks == 2 and p.peak_bytes == peaks[2]
    assert any("checkpoint_blocks=auto: 2 of 4 blocks recomputed, the fewest" in n for n in p.notes)
    assert planner.plan(auto, 4096).checkpoint_blocks == LAYERS  # no GPU size: every block, as on a CPU
    torch_runtime = planner.plan(auto, 4096, runtime="torch", gpu_bytes=1e12)
    assert torch_runtime.checkpoint_blocks == 0


def test_auto_fits_host_offload_and_a_chunked_ffn_into_the_same_share():
    """Host offload and a chunked FFN, once measured up to 15.6% over the plan, came within -2.1..+1.7% after
    the planner counted their FFN-width gradient (and +0.6% at a 90% fit, docs/scaling.md), so "auto" fits
    them into the plain configurations' 90% share: where k + 1 recomputed blocks' planned peak is exactly that
    share of the GPU it takes k + 1, and on a GPU a hair smaller more."""
    assert planner.AUTO_MEMORY_FRACTION == 0.90
    host = _config(precision="bf16", checkpoint_blocks="auto", cpu_checkpointing=True, keep_attention=False)
    chunked = _config({"ffn_chunk": 2}, precision="bf16", checkpoint_blocks="auto", keep_attention=False)
    for cfg in (host, chunked):
        peaks = [planner.plan(planner.with_checkpoint_blocks(cfg, k), 4096).peak_bytes for k in range(LAYERS + 1)]
        k = next(k for k in range(LAYERS) if peaks[k] > peaks[k + 1])  # a step where one more block lowers the peak
        gpu = peaks[k + 1] / 0.90
        assert planner.plan(cfg, 4096, gpu_bytes=gpu).checkpoint_blocks == k + 1
        assert planner.plan(cfg, 4096, gpu_bytes=gpu * 0.999).checkpoint_blocks > k + 1
        assert "90% of" in planner.plan(cfg, 4096, gpu_bytes=gpu).notes[-1]


def test_a_memory_budget_caps_what_auto_fits_into():
    """train.memory_budget_gb bounds the planned peak "auto" fits below the GPU's own share: the same
    GPU recomputes more blocks under a tighter budget, a budget above the share changes nothing, and the
    notes (plan and trainer) name the budget that applied."""
    from megastride.engine.trainer import plan_note

    auto = _config(precision="bf16", checkpoint_blocks="auto", keep_attention=False)
    peaks = [planner.plan(planner.with_checkpoint_blocks(auto, k), 4096).first_step_peak_bytes for k in range(LAYERS + 1)]
    assert peaks[0] > peaks[LAYERS]
    big_gpu = 10 * peaks[0] / planner.AUTO_MEMORY_FRACTION  # every plan fits its share: no block recomputed
    assert planner.plan(auto, 4096, gpu_bytes=big_gpu).checkpoint_blocks == 0
    k = next(k for k in range(1, LAYERS + 1) if peaks[k] < peaks[0])  # the fewest that lower the peak
    capped = _config(precision="bf16", checkpoint_blocks="auto", keep_attention=False, memory_budget_gb=peaks[k] / 1e9)
    p = planner.plan(capped, 4096, gpu_bytes=big_gpu)
    assert p.checkpoint_blocks == k and p.first_step_peak_bytes <= peaks[k]
    assert f"train.memory_budget_gb={peaks[k] / 1e9:g}" in p.notes[-1]
    assert f"train.memory_budget_gb={peaks[k] / 1e9:g}" in plan_note(capped, 1, big_gpu, p)
    loose = _config(precision="bf16", checkpoint_blocks="auto", keep_attention=False, memory_budget_gb=2 * big_gpu / 1e9)
    assert planner.plan(loose, 4096, gpu_bytes=big_gpu).checkpoint_blocks == 0
    assert "90% of" in planner.plan(loose, 4096, gpu_bytes=big_gpu).notes[-1]
    tight = _config(precision="bf16", checkpoint_blocks="auto", keep_attention=False, memory_budget_gb=1e-9)  # nothing fits
    p = planner.plan(tight, 4096, gpu_bytes=big_gpu)
    assert p.checkpoint_blocks == LAYERS and "even so the planned peak exceeds train.memory_budget_gb=1e-09" in p.notes[-1]
    assert planner.plan(capped, 4096).checkpoint_blocks == LAYERS  # no GPU: as on a CPU, budget or not


def test_plan_cli_judges_a_memory_budget_below_the_gpu(tmp_path, capsys):
    """`megastride plan` exits 1 where the plan fits the GPU but not train.memory_budget_gb, and says so."""
    from megastride.launch.plan import main as plan_main

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": _config().model.model_dump(mode="json")}))
    peak = planner.plan(_config()).first_step_peak_bytes
    assert plan_main([str(path), "--gpu-memory-gb", "141"]) == 0
    assert "fits in 141 GB" in capsys.readouterr().out
    below = f"{peak / 1e9 / 2!r}"
    assert plan_main([str(path), "--gpu-memory-gb", "141", "--set", f"train.memory_budget_gb={below}"]) == 1
    assert f"does NOT fit in {planner.gb_words(peak / 2)}" in capsys.readouterr().out


@pytest.mark.parametrize("value", [0, -5, "sixty"])
def test_memory_budget_rejects_what_is_not_a_positive_number(value):
    with pytest.raises(ConfigError, match="train.memory_budget_gb"):
        _config(memory_budget_gb=value)


def test_trainer_note_and_plan_cli_show_the_blocks_recomputed(tmp_path, capsys):
    """The trainer's start line and `megastride plan` say how many blocks are recomputed; the CLI
    takes --set train.checkpoint_blocks=N and fits auto to --gpu-memory-gb."""
    from megastride.engine.trainer import plan_note
    from megastride.launch.plan import main as plan_main

    auto = _config(precision="bf16", checkpoint_blocks="auto", keep_attention=False)
    budget = planner.plan(planner.with_checkpoint_blocks(auto, 3)).peak_bytes
    gpu = budget / planner.AUTO_MEMORY_FRACTION
    note = plan_note(auto, 1, gpu)
    assert f"recompute 3 of 4 blocks (train.checkpoint_blocks=auto: the fewest that fit 90% of {planner.gb_words(gpu)})" in note
    assert "recompute every block" in plan_note(_config(), 1, 1e12)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": _config().model.model_dump(mode="json")}))
    assert plan_main([str(path), "--json", "--set", "train.checkpoint_blocks=1"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_blocks"] == 1
    gb = str(budget / planner.AUTO_MEMORY_FRACTION / 1e9 * 1.0001)
    assert plan_main([str(path), "--gpu-memory-gb", gb, "--set", "train.precision=bf16",
                      "--set", "train.checkpoint_blocks=auto", "--set", "train.keep_attention=false"]) == 0
    out = capsys.readouterr().out
    assert "recompute 3 of 4 blocks" in out and "note: train.checkpoint_blocks=auto: 3 of 4" in out
    with pytest.raises(SystemExit) as exit_:
        plan_main([str(path), "--set", "train.checkpoint_blocks=5"])
    assert exit_.value.code == 2
    assert "train.checkpoint_blocks=5 exceeds model.n_layers=4" in capsys.readouterr().err


KEEP_RANGE = "(the recomputed blocks that keep their attention outputs: 0 to {}, true for every one, false, or auto)"


@pytest.mark.parametrize("train,message", [
    ({"checkpoint_blocks": LAYERS + 1}, f"train.checkpoint_blocks={LAYERS + 1} exceeds model.n_layers={LAYERS}"),
    ({"keep_attention": LAYERS + 1},
     f"train.keep_attention={LAYERS + 1} exceeds model.n_layers={LAYERS} {KEEP_RANGE.format(LAYERS)}"),
    ({"keep_attention": LAYERS + 1, "checkpoint_blocks": "auto"},
     f"train.keep_attention={LAYERS + 1} exceeds model.n_layers={LAYERS} {KEEP_RANGE.format(LAYERS)}"),
    ({"keep_attention": 3, "checkpoint_blocks": 2},
     f"train.keep_attention=3 exceeds train.checkpoint_blocks=2 {KEEP_RANGE.format(2)}"),
], ids=["blocks", "keep", "keep-beside-auto-blocks", "keep-beside-given-blocks"])
def test_more_blocks_than_layers_is_a_config_error(train, message):
    """k > model.n_layers, or a train.keep_attention count above the blocks that may be recomputed, is one
    line naming the keys and the range, from the option check, the planner and the wrapper."""
    cfg = _config(**train)
    for call in (lambda: check_zero_options(cfg), lambda: planner.plan(cfg), lambda: planner.plan(cfg, gpu_bytes=1e12),
                 lambda: apply_activation_checkpointing(SparseTransformer(cfg.model), cfg.train)):
        with pytest.raises(ConfigError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)
    check_zero_options(_config(checkpoint_blocks=LAYERS, keep_attention=LAYERS))
    check_zero_options(_config(checkpoint_blocks=2, checkpoint_activations=False))  # no effect, no error
    assert planner.plan(_config(checkpoint_blocks=2, checkpoint_activations=False)).checkpoint_blocks == 0
    assert planner.plan(_config(keep_attention=2, checkpoint_activations=False)).keep_attention == 0


def _with_keep(cfg, keep):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"keep_attention": keep})})


def test_auto_weighs_kept_attention_against_recomputed_blocks(monkeypatch):
    """train.checkpoint_blocks and train.keep_attention both "auto" (the default) take, of the (k recomputed,
    c kept) whose plan fits, the least recompute work: a block's matmuls, plus its attention forward where the
    outputs are not kept. The enwik8 model at 1M tokens as bench scaling runs it: the attention forward
    is ~4x the matmuls, so kept outputs win where they fit, and as many as fit where not all do."""
    # measured with the dQ kernel, before the fused backward's dQ sums (kernels.blocksparse GLUON_DQ)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "0")
    from megastride.engine.bench_scaling import KINDS, config_for

    base = load_config(ROOT / "configs" / "enwik8.yaml", ["model.dropout=0", "train.checkpoint_blocks=auto"])
    cfg = config_for(base, KINDS["fixed"], 1048576)
    assert cfg.train.keep_attention == "auto"
    params, pairs = planner.count_params(cfg.model), planner.layout_stats(cfg.model, 1048576).pairs

    def work(k, kept):
        return planner.recompute_flops(cfg.model, params, pairs, k, kept)

    def peak(k, kept):
        return planner.plan(planner.with_checkpoint_blocks(cfg, k, kept), runtime="torch").peak_bytes

    assert work(1, 1) == pytest.approx(6.61e12, rel=0.01)  # 2 x params of one block x tokens
    assert work(1, 0) - work(1, 1) == pytest.approx(26.25e12, rel=0.01)  # 4 x pairs x head width
    assert work(29, 29) < work(30, 30) < work(29, 27) < work(28, 0)
    assert peak(30, 30) / 1e9 == pytest.approx(124.91, abs=0.01)  # docs/scaling.md: measured 125.26 GB
    assert peak(29, 29) / 1e9 == pytest.approx(123.85, abs=0.01)
    # an H200 as torch counts it (about 139.8 GiB; the measured auto step of docs/scaling.md, 27 blocks at
    # 130.4 GB planned, needs at least 144.9e9 bytes): 29 blocks with kept outputs, one fewer than 30
    h200 = planner.plan(cfg, runtime="torch", gpu_bytes=150.1e9)
    assert (h200.checkpoint_blocks, h200.keep_attention) == (29, 29) and h200.peak_bytes == peak(29, 29)
    assert ("train.checkpoint_blocks=auto, train.keep_attention=auto: 29 of 30 blocks recomputed, attention outputs "
            "kept (the least recompute work that fits 90% of 150 GB)") in h200.notes
    assert "recompute 29 of 30 blocks, attention outputs kept" in h200.table()
    assert json.loads(h200.json())["keep_attention"] == 29
    # 136e9 bytes: 90% is 122.4 GB, below 29 or 30 blocks with all (or all but one) of their outputs kept but
    # above 29 with 27 of them kept: that, rather than 28 blocks with none kept (which fits too, for 3.8x the work)
    small = planner.plan(cfg, runtime="torch", gpu_bytes=136e9)
    assert (small.checkpoint_blocks, small.keep_attention) == (29, 27) and small.peak_bytes == peak(29, 27)
    assert peak(28, 0) <= small.first_step_peak_bytes <= 0.9 * 136e9 < min(peak(29, 28), peak(30, 28))
    assert ("29 of 30 blocks recomputed, attention outputs kept in 27 of 29 recomputed blocks (the least recompute "
            "work that fits 90% of 136 GB)") in small.notes[-1]
    # at the paper's context nothing needs recomputing: no work at all
    short = planner.plan(config_for(base, KINDS["fixed"], 12288), runtime="torch", gpu_bytes=141e9)
    assert (short.checkpoint_blocks, short.keep_attention) == (0, 0)
    # nothing fits: every block, nothing kept, and the plan says so
    none = planner.plan(cfg, runtime="torch", gpu_bytes=50e9)
    assert (none.checkpoint_blocks, none.keep_attention) == (30, 0) and not none.fits(50e9)
    assert "even so the planned peak exceeds 90% of 50 GB" in none.notes[-1]


def test_auto_keep_beside_a_given_count_keeps_as_many_as_fit():
    """An explicit train.checkpoint_blocks with keep_attention "auto" keeps the outputs of as many of its
    blocks as the plan fits with (all, some or none), and with_resolved writes true, the count or false;
    "auto" blocks with an explicit keep: the fewest blocks that fit with (true), without (false) or with
    at most that many (a count) of them; no GPU size (a CPU): every block, nothing kept."""
    two = _config(precision="bf16", checkpoint_blocks=2)
    plain, one, kept = (planner.plan(_with_keep(two, keep), 4096) for keep in (False, 1, True))
    assert plain.peak_bytes < one.peak_bytes < kept.peak_bytes and not plain.keep_attention
    fraction = planner.AUTO_MEMORY_FRACTION
    roomy = planner.plan(two, 4096, gpu_bytes=kept.first_step_peak_bytes / fraction)
    assert (roomy.checkpoint_blocks, roomy.keep_attention, roomy.peak_bytes) == (2, 2, kept.peak_bytes)
    assert "(the plan with them fits 90% of" in roomy.notes[-1]
    assert planner.with_resolved(two, roomy).train.keep_attention is True
    partial = planner.plan(two, 4096, gpu_bytes=one.first_step_peak_bytes / fraction)
    assert (partial.checkpoint_blocks, partial.keep_attention, partial.peak_bytes) == (2, 1, one.peak_bytes)
    assert ("2 of 4 blocks recomputed, attention outputs kept in 1 of 2 recomputed blocks (the most whose planned "
            "peak fits 90% of") in partial.notes[-1]
    resolved = planner.with_resolved(two, partial).train.keep_attention
    assert resolved == 1 and type(resolved) is int
    between = (plain.first_step_peak_bytes + one.first_step_peak_bytes) / 2 / fraction
    tight = planner.plan(two, 4096, gpu_bytes=between)
    assert (tight.checkpoint_blocks, tight.keep_attention, tight.peak_bytes) == (2, 0, plain.peak_bytes)
    assert "attention outputs not kept (with them the planned peak would exceed 90% of" in tight.notes[-1]
    assert planner.with_resolved(two, tight).train.keep_attention is False
    assert not planner.plan(two, 4096, gpu_bytes=1e3).keep_attention  # nothing fits: nothing kept either
    assert not planner.plan(_config(precision="bf16", checkpoint_blocks=0), 4096, gpu_bytes=1e12).keep_attention
    cpu = planner.plan(_config(precision="bf16", checkpoint_blocks="auto"), 4096)
    assert (cpu.checkpoint_blocks, cpu.keep_attention) == (LAYERS, 0)
    # auto blocks, explicit keep: the fewest blocks that fit as the keep is (a count: at most that many)
    auto = _config(precision="bf16", checkpoint_blocks="auto")
    for keep in (False, True, 2):
        counts = [planner.kept_attention_blocks(_with_keep(auto, keep).train, k) for k in range(LAYERS + 1)]
        assert counts == {False: [0] * 5, True: [0, 1, 2, 3, 4], 2: [0, 1, 2, 2, 2]}[keep]
        peaks = [planner.plan(planner.with_checkpoint_blocks(auto, k, c), 4096).first_step_peak_bytes
                 for k, c in enumerate(counts)]
        k = next(k for k in range(LAYERS) if peaks[k] > peaks[k + 1]) + 1  # one more block lowers the peak
        p = planner.plan(_with_keep(auto, keep), 4096, gpu_bytes=peaks[k] / fraction)
        assert (p.checkpoint_blocks, p.keep_attention) == (k, counts[k])
        assert planner.choose_recompute(_with_keep(auto, keep), 4096, budget_bytes=peaks[k]) == (k, counts[k])
        assert planner.with_resolved(_with_keep(auto, keep), p).train.checkpoint_blocks == k


def test_auto_takes_the_least_work_over_every_keep_count():
    """With both "auto", choose_recompute's answer is, for every budget that some (k recomputed, c kept)
    plan just fits, the least recompute work of all the (k, c) that fit, ties to the smaller peak: the
    search over the counts misses none; some budgets fit only part of the outputs and take that."""
    cfg = _config(precision="bf16", checkpoint_blocks="auto")
    model = planner._at_length(cfg, 4096).model
    params, pairs = planner.count_params(model), planner.layout_stats(model, 4096).pairs
    peaks = {(k, c): planner.plan(planner.with_checkpoint_blocks(cfg, k, c), 4096).first_step_peak_bytes
             for k in range(LAYERS + 1) for c in range(k + 1)}
    tail = planner.unread_tail_recompute(cfg.train, model)
    assert tail  # BlockCheckpoint, one block at a time: the FFN's last product is not recomputed
    chosen = set()
    for budget in sorted(set(peaks.values())):
        best = min((planner.recompute_flops(model, params, pairs, k, c, unread_tail=tail), peak, k, c)
                   for (k, c), peak in peaks.items() if peak <= budget)
        chosen.add(planner.choose_recompute(cfg, 4096, budget_bytes=budget))
        assert planner.choose_recompute(cfg, 4096, budget_bytes=budget) == best[2:], budget
    assert {(4, 1), (4, 2), (4, 3)} <= chosen and (0, 0) in chosen  # partial counts, and no recompute at all


def test_host_inputs_at_1m_keep_as_many_outputs_as_fit_in_60_gb():
    """The fixed enwik8 model at 1M tokens, block inputs in host memory, 30 blocks recomputed: ~1.1 GB of
    outputs per block, all 30 kept plan ~66 GB and none ~33 GB; 60 GB (90% of 66.7 GB) fits 24 of them, which
    auto keeps instead of none, and which cost 6 attention forwards instead of 30."""
    base = load_config(ROOT / "configs" / "enwik8.yaml",
                       ["model.seq_len=1048576", "model.attention.layers=['fixed(auto,128)']", "train.precision=bf16",
                        "train.checkpoint_blocks=30", "train.cpu_checkpointing=true", "train.offload_overlap=true"])

    def plan(keep, gpu=None):
        return planner.plan(_with_keep(base, keep), runtime="torch", gpu_bytes=gpu)

    none, every, fitting = plan(False), plan(True), plan(24)
    assert none.peak_bytes < 34e9 < 60e9 < every.peak_bytes
    per_block = (every.peak_bytes - none.peak_bytes) / 30
    assert per_block == pytest.approx(1.107e9, rel=0.01)
    assert fitting.peak_bytes == pytest.approx(none.peak_bytes + 24 * per_block) and plan(25).peak_bytes > 60e9
    auto = plan("auto", 60e9 / 0.9)
    assert (auto.checkpoint_blocks, auto.keep_attention, auto.peak_bytes) == (30, 24, fitting.peak_bytes)
    assert "recompute every block, attention outputs kept in 24 of 30 recomputed blocks" in auto.table()


def test_kept_outputs_in_host_memory_at_1m_leave_the_gpu_two_blocks_of_them():
    """train.offload_attention at the same point: the kept outputs wait in host memory, the GPU holds two
    blocks' at a time (one copied out or prefetched beside the one in use, under offload_overlap; one
    without it; the last two through the loss's backward), so auto keeps them in every recomputed block within
    60 GB (no attention forward recomputed), plans their bytes in host memory and says where they are."""
    base = load_config(ROOT / "configs" / "enwik8.yaml",
                       ["model.seq_len=1048576", "model.attention.layers=['fixed(auto,128)']", "train.precision=bf16",
                        "train.checkpoint_blocks=30", "train.cpu_checkpointing=true", "train.offload_overlap=true"])
    host = _with_host(base, True)

    def plan(cfg, keep, gpu=None):
        return planner.plan(_with_keep(cfg, keep), runtime="torch", gpu_bytes=gpu)

    none, every = plan(base, False), plan(base, True)
    per_block = (every.peak_bytes - none.peak_bytes) / 30
    hosted = plan(host, True)
    assert hosted.kept_on_host and not every.kept_on_host
    assert hosted.peak_bytes == pytest.approx(none.peak_bytes + 2 * per_block)
    assert hosted.cpu["kept attention outputs"] == pytest.approx(30 * per_block, rel=0.01)
    # every block recomputed: the last two blocks' outputs, copied out, are let go when the backward starts
    # (engine.parallel._CopiesOut), so the loss's backward still has them
    assert hosted.phases["loss backward"]["kept attention outputs"] == pytest.approx(2 * per_block, rel=0.01)
    assert "kept attention outputs" not in every.cpu
    in_order = plan(_with_host(base, True, offload_overlap=False), True)  # copies in order: one block's
    assert in_order.peak_bytes < hosted.peak_bytes
    auto = plan(host, "auto", 60e9 / 0.9)
    assert auto.keep_attention == auto.checkpoint_blocks and auto.peak_bytes < 60e9
    assert planner.recompute_flops(base.model, planner.count_params(base.model),
                                   planner.layout_stats(base.model, base.model.seq_len).pairs,
                                   auto.checkpoint_blocks, auto.keep_attention) == pytest.approx(
        2.0 * planner.count_params(base.model).per_block * base.model.seq_len * auto.checkpoint_blocks)
    assert "attention outputs kept in host memory" in auto.table()


def test_kept_outputs_in_host_memory_are_off_the_gpu_between_the_passes(monkeypatch):
    """With blocks that are not recomputed (28 of 30 recomputed, every one keeping its outputs in host memory,
    the H200's fixed 1M step under 60 GB): the GPU holds two blocks' pairs while the recomputed blocks run
    backward, none from the forward's end through the loss's backward and the last two blocks' backward (the
    copies out are done; the first copy back comes with the last recomputed block's backward); kept on the
    GPU, all 28 are there in those phases. The plan then peaks in the last block's backward at 48.84 GB (cuBLAS's
    workspaces included, one FFN-width gradient in the FFN's backward: both since 2026-12-03), 1.7% above the
    48.03 GB measured and traced for this configuration (docs/scaling.md)."""
    # measured with the dQ kernel, before the fused backward's dQ sums (kernels.blocksparse GLUON_DQ)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "0")
    base = load_config(ROOT / "configs" / "enwik8.yaml",
                       ["model.seq_len=1048576", "model.dropout=0", "model.attention.layers=['fixed(auto,128)']",
                        "train.precision=bf16", "train.checkpoint_blocks=28", "train.cpu_checkpointing=true",
                        "train.offload_overlap=true"])
    hosted = planner.plan(_with_keep(_with_host(base, True), True), runtime="torch")
    on_gpu = planner.plan(_with_keep(base, True), runtime="torch")
    pair = hosted.cpu["kept attention outputs"] / 28
    for phase in ("loss backward", "backward, last block"):
        assert "kept attention outputs" not in hosted.phases[phase], phase
        assert on_gpu.phases[phase]["kept attention outputs"] == pytest.approx(28 * pair)
    assert hosted.phases["backward, last recomputed block"]["kept attention outputs"] == pytest.approx(2 * pair)
    assert hosted.peak_phase == "backward, last block"
    assert hosted.peak_bytes / 1e9 == pytest.approx(48.84, abs=0.05)


def test_auto_offload_puts_the_kept_outputs_in_host_memory_where_that_is_less_recompute_and_the_host_holds_them():
    """train.offload_attention "auto" (the default) at the H200's fixed 1M step under 60 GB: with a rank's share
    of 106 GB of RAM (85% of a 125 GB node) the plan puts the kept outputs in host memory, as the explicit
    setting does (28 recomputed, all keeping; 91.1 GB of host memory), since that is less recompute work than
    keeping 25 of 29 on the GPU; with 21 GB (this CI machine) they stay on the GPU (29, 25), as they do without
    GPU memory to plan for, without cpu_checkpointing, and where neither count is "auto" (the same recompute
    work either way: no copies for nothing). ``with_resolved`` writes the choice into the config."""
    base = load_config(ROOT / "configs" / "enwik8.yaml",
                       ["model.seq_len=1048576", "model.dropout=0", "model.attention.layers=['fixed(auto,128)']",
                        "train.precision=bf16", "train.checkpoint_blocks=auto", "train.cpu_checkpointing=true",
                        "train.offload_overlap=true", "train.memory_budget_gb=60"])
    assert base.train.offload_attention == "auto"

    def plan(cfg, host_gb, gpu=141e9):
        return planner.plan(cfg, runtime="torch", gpu_bytes=gpu, host_bytes=host_gb and host_gb * 1e9)

    roomy, tight = plan(base, 106), plan(base, 21)
    explicit = plan(_with_host(base, True), None)
    assert (roomy.kept_on_host, roomy.checkpoint_blocks, roomy.keep_attention) == (True, 28, 28)
    assert roomy.peak_bytes == explicit.peak_bytes and roomy.host_bytes == pytest.approx(91.13e9, rel=0.01)
    assert "train.offload_attention=auto" in roomy.notes[-1] and "in host memory" in roomy.notes[-1]
    assert (tight.kept_on_host, tight.checkpoint_blocks, tight.keep_attention) == (False, 29, 25)
    assert "offload_attention" not in tight.notes[-1]
    assert not plan(base, 106, gpu=None).kept_on_host
    no_host_inputs = base.model_copy(update={"train": base.train.model_copy(update={"cpu_checkpointing": False})})
    assert not plan(no_host_inputs, 106).kept_on_host
    counts = planner.with_checkpoint_blocks(base, 29, 21)
    assert not plan(counts, 106).kept_on_host
    assert planner.with_resolved(base, roomy).train.offload_attention is True
    assert planner.with_resolved(base, tight).train.offload_attention is False


def _with_host(cfg, on: bool, **train):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"offload_attention": on, **train})})


def test_auto_keep_is_false_where_it_cannot_work():
    """keep_attention "auto" resolves false under train.compile, partition_activations and checkpoint_group > 1
    (torch's or DeepSpeed's checkpoint, not BlockCheckpoint), where an explicit true is a config error."""
    for key, value in (("compile", True), ("partition_activations", True), ("checkpoint_group", 2)):
        cfg = _config(precision="bf16", **{key: value})
        assert cfg.train.keep_attention == "auto"
        p = planner.plan(cfg, 4096, gpu_bytes=1e12)
        assert not p.keep_attention and p.checkpoint_blocks == LAYERS
        assert f"attention outputs not kept (not with train.{key}={value})" in p.notes[-1]
        assert planner.choose_recompute(_with_keep(cfg, "auto"), 4096, budget_bytes=1e12) == (LAYERS, 0)
        with pytest.raises(ConfigError, match=f"train.keep_attention does not combine with train.{key}={value}"):
            _config(keep_attention=True, **{key: value})


def test_the_resolved_keep_reaches_the_model(tmp_path, capsys):
    """with_resolved writes what the plan chose into the config (true where every recomputed block keeps);
    an unresolved "auto" (a CPU) gives BlockCheckpoint False, a count True for exactly the first blocks;
    the trainer's start line and `megastride plan` say how many keep and why."""
    from megastride.engine.trainer import plan_note

    auto = _config(precision="bf16", checkpoint_blocks="auto")
    p = planner.plan(auto, gpu_bytes=1e12)
    resolved = planner.with_resolved(auto, p)
    assert (resolved.train.checkpoint_blocks, resolved.train.keep_attention) == (p.checkpoint_blocks, p.keep_attention)
    assert type(resolved.train.keep_attention) is bool
    explicit = planner.with_resolved(_config(checkpoint_blocks=3, keep_attention=False), p)
    assert (explicit.train.checkpoint_blocks, explicit.train.keep_attention) == (3, False)  # nothing was auto
    roomy = _config(precision="bf16", checkpoint_blocks=2)
    note = plan_note(roomy, 1, 1e12)
    assert "recompute 2 of 4 blocks, attention outputs kept (train.keep_attention=auto)" in note
    assert "the least recompute work that fits 90% of 1000 GB" in plan_note(auto, 1, 1e12)
    from megastride.launch.plan import main as plan_main

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": roomy.model.model_dump(mode="json"), "train": {"precision": "bf16"}}))
    assert plan_main([str(path), "--json", "--set", "train.checkpoint_blocks=2"]) == 0
    assert json.loads(capsys.readouterr().out)["keep_attention"] == 2  # fits the default 141 GB
    assert plan_main([str(path), "--set", "train.checkpoint_blocks=2"]) == 0
    out = capsys.readouterr().out
    assert "recompute 2 of 4 blocks, attention outputs kept" in out
    assert "note: train.keep_attention=auto: 2 of 4 blocks recomputed, attention outputs kept (the plan with" in out
    assert plan_main([str(path), "--json", "--set", "train.checkpoint_blocks=2",
                      "--set", "train.keep_attention=1"]) == 0
    assert json.loads(capsys.readouterr().out)["keep_attention"] == 1
    assert plan_main([str(path), "--set", "train.keep_attention=3"]) == 0
    assert "recompute every block, attention outputs kept in 3 of 4 recomputed blocks" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        plan_main([str(path), "--set", "train.keep_attention=5"])
    assert exit_.value.code == 2 and "train.keep_attention=5 exceeds model.n_layers=4" in capsys.readouterr().err
    note = plan_note(_config(precision="bf16", keep_attention=3), 1, 1e12)
    assert "recompute every block, attention outputs kept in 3 of 4 recomputed blocks (`megastride plan`" in note


def _keeps_handed_to_block_checkpoint(cfg) -> list[bool]:
    """The keep_attention each BlockCheckpoint call of one forward pass gets, in block order."""
    seen = []

    def apply(fn, x, overlap, offload, keep, on_host=False):
        seen.append((keep, on_host) if on_host else keep)
        return fn(x)

    model = _wrapped(cfg)
    with mock.patch.object(parallel.BlockCheckpoint, "apply", side_effect=apply):
        model(torch.randint(0, 256, (1, 128)), torch.randint(0, 256, (1, 128)))
    return seen


@pytest.mark.parametrize("runner", ["device", "host", "host-overlap"])
def test_exactly_the_first_c_recomputed_blocks_keep_their_attention(runner):
    """BlockCheckpoint gets keep_attention=True for the first c recomputed blocks and False for the rest
    (true: every recomputed block; false, 0 and an unresolved "auto": none); blocks not recomputed are not
    checkpointed at all."""
    cases = [({}, [False] * LAYERS), ({"keep_attention": True}, [True] * LAYERS),
             ({"keep_attention": 0}, [False] * LAYERS), ({"keep_attention": 1}, [True, False, False, False]),
             ({"keep_attention": 3}, [True, True, True, False]), ({"keep_attention": LAYERS}, [True] * LAYERS),
             ({"keep_attention": 2, "checkpoint_blocks": 3}, [True, True, False]),
             ({"keep_attention": True, "checkpoint_blocks": 3}, [True, True, True]),
             ({"keep_attention": 2, "checkpoint_blocks": 2}, [True, True])]
    for train, expected in cases:
        assert _keeps_handed_to_block_checkpoint(_config(**train, **RUNNERS[runner])) == expected, train
    if runner != "device":  # under cpu_checkpointing: the keeping blocks' outputs to host memory as well
        hosted = _keeps_handed_to_block_checkpoint(_config(keep_attention=2, offload_attention=True, **RUNNERS[runner]))
        assert hosted == [(True, True), (True, True), False, False]
        # "auto" unresolved (no GPU to plan for): the kept outputs stay on the device
        auto = _keeps_handed_to_block_checkpoint(_config(keep_attention=2, offload_attention="auto", **RUNNERS[runner]))
        assert auto == [True, True, False, False]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter on numpy 2
def test_a_keep_count_gives_the_plain_recomputes_gradients(monkeypatch):
    """Recomputed blocks keeping their attention outputs, none, the first one or all three, through the
    Triton kernels (interpreted on the CPU, the path that keeps them): the attention forward runs once per
    layer plus once per recomputed block that keeps nothing, the first block's kept store holds its one
    (output, lse) and the others' none, and loss and every gradient equal the plain recompute's exactly."""
    from megastride.kernels import blocksparse

    monkeypatch.setenv("MEGASTRIDE_ATTENTION", "triton")
    model_cfg = {"seq_len": 64, "d_model": 64, "n_layers": 3, "n_heads": 2,  # small: the interpreter is slow
                 "attention": {"block": 32, "layers": ["fixed(32,8)", "strided(16)"]}}
    idx = torch.randint(0, 256, (1, 65), generator=torch.Generator().manual_seed(1))
    forwards, stores = [], []
    real_forward, real_apply = blocksparse._forward, parallel.BlockCheckpoint.forward
    monkeypatch.setattr(blocksparse, "_forward", lambda *a: forwards.append(1) or real_forward(*a))

    def forward(ctx, *args):  # the store each block's forward filled, before its backward drops it
        out = real_apply(ctx, *args)
        stores.append(None if ctx.kept is None else len(ctx.kept))
        return out

    monkeypatch.setattr(parallel.BlockCheckpoint, "forward", staticmethod(forward))

    def run(keep):
        cfg = config_from_dict({"model": model_cfg, "train": {"keep_attention": keep}})
        torch.manual_seed(0)
        model = SparseTransformer(cfg.model)
        apply_activation_checkpointing(model, cfg.train)
        forwards.clear()
        stores.clear()
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(forwards), list(stores)

    ref_loss, ref_grads, launched, kept = run(False)
    assert (launched, kept) == (6, [None] * 3)  # three layers' forwards, then each again in its recompute
    for keep, expected_launches, expected_kept in ((1, 5, [1, None, None]), (2, 4, [1, 1, None]),
                                                   (True, 3, [1, 1, 1])):
        loss, grads, launched, kept = run(keep)
        assert (launched, kept) == (expected_launches, expected_kept), keep
        assert torch.equal(loss, ref_loss), keep
        for name, g in ref_grads.items():
            assert torch.equal(grads[name], g), (keep, name)


class _Probe(torch.autograd.Function):
    """Identity at a block's start; its backward, the block's last, records which of the block's outputs
    (weak references, in the order the block made them) are gone by then."""

    gone: list = []

    @staticmethod
    def forward(ctx, x, outputs):
        ctx.outputs = outputs
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _Probe.gone.append([ref() is None for ref in ctx.outputs])
        return grad, None


class _ProbedBlock(torch.nn.Module):
    def __init__(self, last):
        super().__init__()
        self.lin, self.last = torch.nn.Linear(8, 8), last

    def forward(self, x):
        refs = []
        out = self.last(x + self.lin(_Probe.apply(x, refs)))
        refs.append(weakref.ref(out))
        return out


@pytest.mark.parametrize("offload", [False, True])
def test_a_recomputed_blocks_output_is_freed_before_its_backward_unless_the_block_saves_it(offload):
    """BlockCheckpoint's backward runs the recomputed block's backward without holding the recomputed output (a
    residual block does not read it; at 1M tokens it is a 2.1 GB fp32 tensor), and a block whose last op saves
    its output (exp) still gets it through autograd's saved copy: the gradients equal plain autograd's either
    way. (A saved output is not the tensor object the block returned, so only the first case can be seen
    going.)"""
    for last, freed in ((lambda t: t, [True]), (torch.exp, None)):
        torch.manual_seed(0)
        block = _ProbedBlock(last).double()
        x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
        block(x).pow(2).sum().backward()
        plain = [t.grad.clone() for t in (x, block.lin.weight, block.lin.bias)]
        for t in (x, block.lin.weight, block.lin.bias):
            t.grad = None
        _Probe.gone.clear()
        parallel.BlockCheckpoint.apply(block, x, False, offload).pow(2).sum().backward()
        if freed is not None:
            assert _Probe.gone[-1] == freed
        for got, want in zip((x.grad, block.lin.weight.grad, block.lin.bias.grad), plain):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
