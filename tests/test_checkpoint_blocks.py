"""Partial recomputation (train.checkpoint_blocks): the first k blocks recomputed, the rest keep their
activations; gradients, what is recomputed, what is saved against the planner, and "auto"."""

import json
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


def test_auto_leaves_more_room_with_host_offload_or_a_chunked_ffn():
    """Where the planner was measured furthest under the peak (host offload, chunked FFN), "auto"
    fits a smaller share of the GPU: the same GPU size recomputes more blocks."""
    plain = _config(precision="bf16", checkpoint_blocks="auto")
    host = _config(precision="bf16", checkpoint_blocks="auto", cpu_checkpointing=True, keep_attention=False)
    assert planner.auto_memory_fraction(plain) == planner.AUTO_MEMORY_FRACTION
    assert planner.auto_memory_fraction(host) == planner.AUTO_MEMORY_FRACTION_OFFLOAD < planner.AUTO_MEMORY_FRACTION
    peaks = [planner.plan(planner.with_checkpoint_blocks(host, k), 4096).peak_bytes for k in range(LAYERS + 1)]
    k = next(k for k in range(LAYERS) if peaks[k] > peaks[k + 1])  # a step where one more block lowers the peak
    gpu = peaks[k + 1] / planner.AUTO_MEMORY_FRACTION_OFFLOAD
    assert planner.plan(host, 4096, gpu_bytes=gpu).checkpoint_blocks == k + 1
    assert planner.plan(host, 4096, gpu_bytes=gpu * 0.999).checkpoint_blocks > k + 1
    assert "80% of" in planner.plan(host, 4096, gpu_bytes=gpu).notes[-1]


def test_trainer_note_and_plan_cli_show_the_blocks_recomputed(tmp_path, capsys):
    """The trainer's start line and `megastride plan` say how many blocks are recomputed; the CLI
    takes --set train.checkpoint_blocks=N and fits auto to --gpu-memory-gb."""
    from megastride.engine.trainer import plan_note
    from megastride.launch.plan import main as plan_main

    auto = _config(precision="bf16", checkpoint_blocks="auto", keep_attention=False)
    budget = planner.plan(planner.with_checkpoint_blocks(auto, 3)).peak_bytes
    note = plan_note(auto, 1, budget / planner.AUTO_MEMORY_FRACTION)
    assert "recompute 3 of 4 blocks (train.checkpoint_blocks=auto: the fewest that fit 90% of it)" in note
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


def test_more_blocks_than_layers_is_a_config_error():
    """k > model.n_layers is one line naming both keys, from the option check, the planner and the wrapper."""
    cfg = _config(checkpoint_blocks=LAYERS + 1)
    message = f"train.checkpoint_blocks={LAYERS + 1} exceeds model.n_layers={LAYERS}"
    for call in (lambda: check_zero_options(cfg), lambda: planner.plan(cfg),
                 lambda: apply_activation_checkpointing(SparseTransformer(cfg.model), cfg.train)):
        with pytest.raises(ConfigError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    check_zero_options(_config(checkpoint_blocks=LAYERS))
    check_zero_options(_config(checkpoint_blocks=2, checkpoint_activations=False))  # no effect, no error
    assert planner.plan(_config(checkpoint_blocks=2, checkpoint_activations=False)).checkpoint_blocks == 0


def _with_keep(cfg, keep):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"keep_attention": keep})})


def test_auto_weighs_kept_attention_against_recomputed_blocks():
    """train.checkpoint_blocks and train.keep_attention both "auto" (the default) take, of the (k, keep)
    whose plan fits, the least recompute work: a block's matmuls, plus its attention forward where the
    outputs are not kept. The enwik8 model at 1M tokens as bench scaling runs it: the attention forward
    is ~4x the matmuls, so kept outputs win where they fit."""
    from megastride.engine.bench_scaling import KINDS, config_for

    base = load_config(ROOT / "configs" / "enwik8.yaml", ["model.dropout=0", "train.checkpoint_blocks=auto"])
    cfg = config_for(base, KINDS["fixed"], 1048576)
    assert cfg.train.keep_attention == "auto"
    params, pairs = planner.count_params(cfg.model), planner.layout_stats(cfg.model, 1048576).pairs

    def work(k, keep):
        return planner.recompute_flops(cfg.model, params, pairs, k, keep)

    def peak(k, keep):
        return planner.plan(planner.with_checkpoint_blocks(cfg, k, keep), runtime="torch").peak_bytes

    assert work(1, True) == pytest.approx(6.61e12, rel=0.01)  # 2 x params of one block x tokens
    assert work(1, False) - work(1, True) == pytest.approx(26.25e12, rel=0.01)  # 4 x pairs x head width
    assert work(29, True) < work(30, True) < work(28, False)
    assert peak(30, True) / 1e9 == pytest.approx(129.14, abs=0.01)  # docs/scaling.md: measured 125.26 GB
    assert peak(29, True) / 1e9 == pytest.approx(128.04, abs=0.01)
    # an H200 as torch counts it (about 139.8 GiB; the measured auto step of docs/scaling.md, 27 blocks at
    # 130.4 GB planned, needs at least 144.9e9 bytes): 29 blocks with kept outputs, one fewer than 30
    h200 = planner.plan(cfg, runtime="torch", gpu_bytes=150.1e9)
    assert (h200.checkpoint_blocks, h200.keep_attention) == (29, True) and h200.peak_bytes == peak(29, True)
    assert ("train.checkpoint_blocks=auto, train.keep_attention=auto: 29 of 30 blocks recomputed, attention outputs "
            "kept (the least recompute work that fits 90% of 150 GB)") in h200.notes
    assert "recompute 29 of 30 blocks, attention outputs kept" in h200.table()
    assert json.loads(h200.json())["keep_attention"] is True
    # 141e9 bytes: 90% is 126.9 GB, below any plan with kept outputs: the fewest blocks without them
    small = planner.plan(cfg, runtime="torch", gpu_bytes=141e9)
    assert (small.checkpoint_blocks, small.keep_attention) == (28, False) and small.peak_bytes == peak(28, False)
    assert small.first_step_peak_bytes <= 0.9 * 141e9 < peak(29, True)
    # at the paper's context nothing needs recomputing: no work at all
    short = planner.plan(config_for(base, KINDS["fixed"], 12288), runtime="torch", gpu_bytes=141e9)
    assert (short.checkpoint_blocks, short.keep_attention) == (0, False)
    # nothing fits: every block, nothing kept, and the plan says so
    none = planner.plan(cfg, runtime="torch", gpu_bytes=50e9)
    assert (none.checkpoint_blocks, none.keep_attention) == (30, False) and not none.fits(50e9)
    assert "even so the planned peak exceeds 90% of 50 GB" in none.notes[-1]


def test_auto_keep_beside_a_given_count_keeps_only_where_it_fits():
    """An explicit train.checkpoint_blocks with keep_attention "auto" keeps the outputs iff that plan fits;
    "auto" blocks with an explicit keep: the fewest blocks that fit with (true) or without (false) them;
    no GPU size (a CPU): every block, nothing kept."""
    two = _config(precision="bf16", checkpoint_blocks=2)
    plain, kept = (planner.plan(_with_keep(two, keep), 4096) for keep in (False, True))
    assert kept.peak_bytes > plain.peak_bytes and not plain.keep_attention
    fraction = planner.AUTO_MEMORY_FRACTION
    roomy = planner.plan(two, 4096, gpu_bytes=kept.first_step_peak_bytes / fraction)
    assert (roomy.checkpoint_blocks, roomy.keep_attention, roomy.peak_bytes) == (2, True, kept.peak_bytes)
    assert "(the plan with them fits 90% of" in roomy.notes[-1]
    between = (plain.first_step_peak_bytes + kept.first_step_peak_bytes) / 2 / fraction
    tight = planner.plan(two, 4096, gpu_bytes=between)
    assert (tight.checkpoint_blocks, tight.keep_attention, tight.peak_bytes) == (2, False, plain.peak_bytes)
    assert "attention outputs not kept (with them the planned peak would exceed 90% of" in tight.notes[-1]
    assert not planner.plan(two, 4096, gpu_bytes=1e3).keep_attention  # nothing fits: nothing kept either
    assert not planner.plan(_config(precision="bf16", checkpoint_blocks=0), 4096, gpu_bytes=1e12).keep_attention
    cpu = planner.plan(_config(precision="bf16", checkpoint_blocks="auto"), 4096)
    assert (cpu.checkpoint_blocks, cpu.keep_attention) == (LAYERS, False)
    # auto blocks, explicit keep: the fewest blocks that fit as the keep is
    auto = _config(precision="bf16", checkpoint_blocks="auto")
    for keep in (False, True):
        peaks = [planner.plan(planner.with_checkpoint_blocks(auto, k, keep), 4096).first_step_peak_bytes
                 for k in range(LAYERS + 1)]
        k = next(k for k in range(LAYERS) if peaks[k] > peaks[k + 1]) + 1  # one more block lowers the peak
        p = planner.plan(_with_keep(auto, keep), 4096, gpu_bytes=peaks[k] / fraction)
        assert (p.checkpoint_blocks, p.keep_attention) == (k, keep)
        assert planner.choose_recompute(_with_keep(auto, keep), 4096, budget_bytes=peaks[k]) == (k, keep)


def test_auto_keep_is_false_where_it_cannot_work():
    """keep_attention "auto" resolves false under train.compile, partition_activations and checkpoint_group > 1
    (torch's or DeepSpeed's checkpoint, not BlockCheckpoint), where an explicit true is a config error."""
    for key, value in (("compile", True), ("partition_activations", True), ("checkpoint_group", 2)):
        cfg = _config(precision="bf16", **{key: value})
        assert cfg.train.keep_attention == "auto"
        p = planner.plan(cfg, 4096, gpu_bytes=1e12)
        assert not p.keep_attention and p.checkpoint_blocks == LAYERS
        assert f"attention outputs not kept (not with train.{key}={value})" in p.notes[-1]
        assert planner.choose_recompute(_with_keep(cfg, "auto"), 4096, budget_bytes=1e12) == (LAYERS, False)
        with pytest.raises(ConfigError, match=f"train.keep_attention does not combine with train.{key}={value}"):
            _config(keep_attention=True, **{key: value})


def test_the_resolved_keep_reaches_the_model_as_a_bool(tmp_path, capsys):
    """with_resolved writes what the plan chose into the config; an unresolved "auto" (a CPU) gives
    BlockCheckpoint False; the trainer's start line says the outputs are kept and why."""
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
    assert "the least recompute work that fits 90% of it" in plan_note(auto, 1, 1e12)
    from megastride.launch.plan import main as plan_main

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": roomy.model.model_dump(mode="json"), "train": {"precision": "bf16"}}))
    assert plan_main([str(path), "--json", "--set", "train.checkpoint_blocks=2"]) == 0
    assert json.loads(capsys.readouterr().out)["keep_attention"] is True  # fits the default 141 GB
    assert plan_main([str(path), "--set", "train.checkpoint_blocks=2"]) == 0
    out = capsys.readouterr().out
    assert "recompute 2 of 4 blocks, attention outputs kept" in out
    assert "note: train.keep_attention=auto: 2 of 4 blocks recomputed, attention outputs kept (the plan with" in out
    seen = []

    def apply(fn, x, overlap, offload, keep):
        seen.append(keep)
        return fn(x)

    for train, expected in ((_config(), False), (_config(keep_attention=True), True)):
        model = _wrapped(train)
        with mock.patch.object(parallel.BlockCheckpoint, "apply", side_effect=apply):
            model(torch.randint(0, 256, (1, 128)), torch.randint(0, 256, (1, 128)))
        assert seen == [expected] * LAYERS, train.train.keep_attention
        seen.clear()
