"""The CUDA-graph step (engine.graphs): what the config allows, the RNG-free recompute it relies on,
and, on a GPU, replayed steps that train exactly like eager ones."""

import pytest
import torch

from megastride.engine.config import ConfigError, config_from_dict
from megastride.engine.model import SparseTransformer
from megastride.engine.parallel import BlockCheckpoint, _draws_random, apply_activation_checkpointing, build_optimizer


def _tree(dropout=0.0, **train):
    return {"model": {"seq_len": 128, "d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": dropout,
                      "attention": {"block": 16, "layers": ["fixed(32,8)", "strided(16)"]}},
            "train": {"cuda_graph": True, **train}}


@pytest.mark.parametrize("dropout, train, message", [
    (0.1, {}, "model.dropout=0"),
    (0.0, {"compile": True}, "train.compile"),
    (0.0, {"cpu_checkpointing": True}, "train.cpu_checkpointing"),
])
def test_config_refuses_what_a_graph_cannot_replay(dropout, train, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_tree(dropout, **train))


def test_config_allows_dropout_without_recompute_and_graphs_by_default():
    assert config_from_dict(_tree(0.1, checkpoint_activations=False)).train.cuda_graph
    assert not config_from_dict({}).train.cuda_graph


def test_trainer_says_the_deepspeed_loop_does_not_capture(tmp_path):
    from megastride.engine.trainer import Trainer

    with pytest.raises(ConfigError, match="train.cuda_graph"):
        Trainer(config_from_dict({**_tree(), "run": {"dir": str(tmp_path)}}))


def test_bench_scaling_refuses_graphs_off_cuda():
    from megastride.engine import bench_scaling

    cfg = config_from_dict(_tree())
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        bench_scaling.time_steps(cfg, torch.device("cpu"), 1, 1, 1)


def test_only_blocks_with_active_dropout_stash_rng_state():
    drop = SparseTransformer(config_from_dict(_tree(0.2, checkpoint_activations=False)).model).blocks[0]
    plain = SparseTransformer(config_from_dict(_tree(0.0)).model).blocks[0]
    assert _draws_random(drop) and not _draws_random(plain)
    drop.eval()
    assert not _draws_random(drop)  # a train/eval switch after the first look is seen
    drop.train()
    assert _draws_random(drop) and _draws_random(lambda x: x)  # unknown callables: assume they draw


def test_recompute_without_dropout_reads_no_rng_state_and_keeps_gradients(monkeypatch):
    """A dropout-free recomputed block must not touch the RNG state (a CUDA graph cannot capture
    that read) and still gives the plain model's gradients."""
    cfg = config_from_dict(_tree(0.0, cuda_graph=False, checkpoint_activations=False))

    def run(recompute):
        torch.manual_seed(0)
        model = SparseTransformer(cfg.model).double()
        if recompute:
            model.block_runner = lambda fn, x: BlockCheckpoint.apply(fn, x, False, False)
        idx = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(1))
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    ref_loss, ref = run(False)

    def refuse(*args, **kwargs):
        raise AssertionError("RNG state read")

    fork_rng = torch.random.fork_rng

    def fork_only_disabled(*args, **kwargs):  # torch's checkpoint forks with enabled=False when not preserving
        if kwargs.get("enabled", True):
            refuse()
        return fork_rng(*args, **kwargs)

    monkeypatch.setattr(torch, "get_rng_state", refuse)
    monkeypatch.setattr(torch.random, "fork_rng", fork_only_disabled)
    loss, got = run(True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_graph_optimizer_is_capturable_with_a_tensor_learning_rate_only_on_cuda():
    cfg = config_from_dict(_tree())
    model = SparseTransformer(cfg.model)
    opt = build_optimizer(model, cfg.train, torch.device("cpu"))  # no fused AdamW on CPU: no graph either
    assert not opt.defaults["capturable"] and isinstance(opt.defaults["lr"], float)


# ---------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------


def _gpu_model(cuda_graph: bool, recompute: bool = True):
    cfg = config_from_dict({"model": {"seq_len": 1024, "d_model": 128, "n_layers": 3, "n_heads": 2,
                                      "attention": {"block": 64, "layers": ["fixed(256,64)", "strided(64)"]}},
                            "train": {"cuda_graph": cuda_graph, "checkpoint_activations": recompute,
                                      "precision": "bf16", "lr": 3e-3}})
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model).cuda()
    apply_activation_checkpointing(model, cfg.train)
    return cfg, model, build_optimizer(model, cfg.train, torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "no-recompute"])
def test_replayed_steps_train_like_eager_steps(recompute):
    """Six steps on six different batches: eager vs 2 eager + capture + 3 replays. Same losses and
    same weights after (fused AdamW capturable vs not; bf16 autocast, Triton kernels)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.engine.bench_scaling import _autocast, step_runner

    gen = torch.Generator("cuda").manual_seed(3)
    # bytes from a 16-symbol alphabet: something to learn in a few steps (uniform bytes have nothing)
    batches = [torch.randint(0, 16, (2, 1025), device="cuda", generator=gen) for _ in range(6)]
    results = {}
    for graph in (False, True):
        cfg, model, opt = _gpu_model(graph, recompute)
        run = step_runner(cfg, model, opt, _autocast(cfg, torch.device("cuda")), warmup=2)
        losses = [float(run(b)) for b in batches]
        results[graph] = losses, [p.detach().float().clone() for p in model.parameters()]
        if graph:
            assert run.captured and run.eager_steps == 2
    (eager_losses, eager_params), (graph_losses, graph_params) = results[False], results[True]
    assert eager_losses[0] > eager_losses[-1]  # it trains
    torch.testing.assert_close(torch.tensor(graph_losses), torch.tensor(eager_losses), rtol=2e-3, atol=2e-3)
    for g, e in zip(graph_params, eager_params):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3)


@pytest.mark.gpu
def test_a_graph_refuses_another_batch_shape():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.engine.bench_scaling import _autocast, step_runner

    cfg, model, opt = _gpu_model(True)
    run = step_runner(cfg, model, opt, _autocast(cfg, torch.device("cuda")), warmup=1)
    batch = torch.randint(0, 256, (1, 1025), device="cuda")
    run(batch)
    run(batch)  # captured and replayed
    with pytest.raises(ValueError, match="replays one shape"):
        run(torch.randint(0, 256, (2, 1025), device="cuda"))


@pytest.mark.gpu
def test_graphed_steps_one_after_another_leave_no_memory_behind():
    """A sweep builds a graphed step per point in one process. Each had its own side stream, and cuBLAS
    keeps a workspace for every stream it ran on (in the caching allocator, never freed): memory grew
    point by point. With the one shared side stream, a third point ends with what the second ended with."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import gc

    from megastride.engine.bench_scaling import _autocast, step_runner

    def point() -> int:
        cfg, model, opt = _gpu_model(True)
        run = step_runner(cfg, model, opt, _autocast(cfg, torch.device("cuda")), warmup=1)
        batch = torch.randint(0, 256, (1, 1025), device="cuda")
        for _ in range(3):
            run(batch)
        assert run.captured
        torch.cuda.synchronize()
        del run, model, opt, batch
        gc.collect()
        return torch.cuda.memory_allocated()

    left = [point() for _ in range(3)]
    assert abs(left[2] - left[1]) < (1 << 20), left  # a cuBLAS workspace is 4 MiB or more


def test_dropout_with_auto_recompute_is_judged_once_the_count_is_known():
    """checkpoint_blocks=auto may resolve to 0 blocks (nothing recomputed: dropout is fine under a graph)
    or to some (refused then, by the trainer and the bench, in one line)."""
    from megastride.engine.config import graph_problem
    from megastride.engine.plan import with_checkpoint_blocks

    cfg = config_from_dict(_tree(0.2, checkpoint_blocks="auto"))  # accepted for now
    assert graph_problem(with_checkpoint_blocks(cfg, 0)) is None
    problem = graph_problem(with_checkpoint_blocks(cfg, 1))
    assert problem and "model.dropout=0" in problem and "checkpoint_blocks=1" in problem
    with pytest.raises(ConfigError, match="checkpoint_blocks=0"):
        config_from_dict(_tree(0.2, checkpoint_blocks=2))
    assert config_from_dict(_tree(0.2, checkpoint_blocks=0)).train.cuda_graph
