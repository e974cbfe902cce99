"""train.runtime=torch (engine.torch_engine): the plain PyTorch loop behind `megastride train` follows
DeepSpeed's engine, resumes exactly, feeds eval and sample, refuses what it cannot run, and, on a GPU,
replays whole optimizer steps from a CUDA graph (train.cuda_graph) as they run eagerly."""

import subprocess
import sys

import pytest
import torch

from megastride.engine import checkpoint as ckpt
from megastride.engine.config import ConfigError, config_from_dict
from megastride.engine.model import SparseTransformer
from megastride.engine.parallel import apply_activation_checkpointing, build_optimizer
from megastride.engine.schedule import build_scheduler
from megastride.engine.torch_engine import TorchEngine
from megastride.engine.trainer import check_runtime
from test_train import ENV, metrics, train

KEYS = ("train/bits_per_byte", "train/grad_norm", "train/lr", "valid/bits_per_byte")


def _weights(run_dir):
    return ckpt.latest_model_state(run_dir / "checkpoints")


def _run(cfg, run_dir, *overrides):
    proc = train(cfg, f"run.dir={run_dir}", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return metrics(run_dir)


# ---------------------------------------------------------------------------------------------
# The trainer on CPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [0.0, 1.0], ids=["no-clip", "clip"])
def test_torch_runtime_trains_like_deepspeed(tiny_config, tmp_path, clip):
    """fp32, ZeRO 0, grad_accum 2, 4 steps: the same losses, grad norms, learning rates and weights as
    DeepSpeed's engine. Without clipping bit for bit; with it to 1e-6 (weights to 1/1000 of an AdamW
    update): DeepSpeed clips with its own
    clip_grad_norm_ (deepspeed/runtime/utils.py, sqrt of the summed squared per-tensor norms), runtime
    torch with torch's (the vector norm of the per-tensor norms): the clip coefficients differ in the
    last bits (grad norms here are about 2, so every step is clipped)."""
    cfg = tiny_config(train={"grad_accum": 2, "grad_clip": clip})
    ours = _run(cfg, tmp_path / "torch", "train.runtime=torch")
    theirs = _run(cfg, tmp_path / "deepspeed", "train.runtime=deepspeed")
    assert not (tmp_path / "torch" / "deepspeed.json").exists() and (tmp_path / "deepspeed" / "deepspeed.json").exists()
    assert sorted(ours) == sorted(theirs) == [1, 2, 3, 4]
    tol = {"rel": 0, "abs": 0} if clip == 0 else {"rel": 1e-6, "abs": 0}
    for step in range(1, 5):
        for key in KEYS:
            assert (key in ours[step]) == (key in theirs[step]), (step, key)
            if key in ours[step]:
                assert ours[step][key] == pytest.approx(theirs[step][key], **tol), (step, key)
    assert ours[1]["train/grad_norm"] > 1.0  # clipping (when on) changed the update
    a, b = _weights(tmp_path / "torch"), _weights(tmp_path / "deepspeed")
    assert a.keys() == b.keys()
    for name in a:
        if clip == 0:
            assert torch.equal(a[name], b[name]), name
        else:
            # AdamW's update is ~lr per weight whatever the gradient's size, so the last-bit differences
            # show in weights whose gradients are near 0: within 1/1000 of one update (lr 3e-3)
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=3e-6)


def test_torch_runtime_resumes_exactly(tiny_config, tmp_path):
    """4 steps straight vs 2, a resume, 2 more (grad_accum 2): identical metrics, weights and AdamW states."""
    cfg = tiny_config(train={"grad_accum": 2, "save_every": 2})
    whole = _run(cfg, tmp_path / "whole", "train.runtime=torch")
    _run(cfg, tmp_path / "split", "train.runtime=torch", "run.stop_after=2")
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text().strip() == "step00000002"
    split = _run(cfg, tmp_path / "split", "train.runtime=torch")
    for step in range(1, 5):
        for key in KEYS:
            assert split[step].get(key) == whole[step].get(key), (step, key)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert all(torch.equal(a[name], b[name]) for name in a)

    def states(run):
        path = run / "checkpoints" / "step00000004" / "mp_rank_00_model_states.pt"
        saved = torch.load(path, weights_only=False)
        assert saved["step"] == 4 and saved["global_steps"] == 4 and saved["micro_steps"] == 8
        return saved["optimizer"]["state"], saved["lr_scheduler"]["last_epoch"]

    (sa, ea), (sb, eb) = states(tmp_path / "whole"), states(tmp_path / "split")
    assert ea == eb == 4 and sa.keys() == sb.keys()
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)


def test_eval_and_sample_read_a_torch_runtime_run(tiny_config, tmp_path):
    """`megastride eval` gives the trainer's last validation bits per byte from the checkpoint it wrote;
    `megastride sample` continues a prompt from it."""
    cfg = tiny_config(train={"steps": 2, "eval_every": 2})
    m = _run(cfg, tmp_path / "run", "train.runtime=torch")

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "megastride.launch.cli", *args], capture_output=True,
                              text=True, timeout=300, env=ENV)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = cli("eval", str(tmp_path / "run"), "--windows", "4")
    assert f"{m[2]['valid/bits_per_byte']:.4f} bits per byte" in out, out
    out = cli("sample", str(tmp_path / "run"), "--prompt", "import json", "--bytes", "24", "--temperature", "0")
    assert out.startswith("import json") and len(out.encode()) > len("import json"), out


# ---------------------------------------------------------------------------------------------
# What runtime torch refuses, in one line
# ---------------------------------------------------------------------------------------------


def _cfg(**train):
    return config_from_dict({"train": {"runtime": "torch", **train}})


@pytest.mark.parametrize("train, world, cuda, message", [
    ({}, 2, True, "train.runtime=torch runs one process, not 2: use train.runtime=deepspeed"),
    ({"precision": "fp16"}, 1, True, "train.runtime=torch trains in fp32 or bf16 (fp16 needs loss scaling)"),
    ({"zero_stage": 1}, 1, True, "train.zero_stage=1 needs train.runtime=deepspeed"),
    ({"zero_stage": 1, "offload_optimizer": True}, 1, True, "train.offload_optimizer needs train.runtime=deepspeed"),
    ({"zero_stage": 3, "offload_params": True}, 1, True, "train.offload_params needs train.runtime=deepspeed"),
    ({"partition_activations": True}, 1, True, "train.partition_activations needs train.runtime=deepspeed"),
    ({"cuda_graph": True}, 1, False, "train.cuda_graph needs a CUDA device"),
    ({"cuda_graph": True, "runtime": "deepspeed"}, 1, True, "train.cuda_graph needs train.runtime=torch"),
], ids=["world", "fp16", "zero", "offload_optimizer", "offload_params", "partition", "graph-cpu", "graph-deepspeed"])
def test_runtime_refusals_are_one_line(train, world, cuda, message):
    """Each refusal names its key and says what to do, in one line."""
    with pytest.raises(ConfigError) as err:
        check_runtime(_cfg(**train), world, cuda)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_allocator_flushes_are_logged_per_window(monkeypatch):
    """On CUDA each log line carries the allocator's reserved peak and the cache flushes since the previous
    line (not since the start); off CUDA neither."""
    from types import SimpleNamespace

    from megastride.engine.trainer import Trainer

    flushes = iter([7, 7, 10])
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device: {"num_alloc_retries": next(flushes)})
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 3e9)
    fake = SimpleNamespace(device=torch.device("cuda"), _flushes=5)
    assert Trainer._allocator_since_log(fake) == {"perf/reserved_memory_gb": 3.0, "perf/allocator_cache_flushes": 2.0}
    assert Trainer._allocator_since_log(fake)["perf/allocator_cache_flushes"] == 0.0
    assert Trainer._allocator_since_log(fake)["perf/allocator_cache_flushes"] == 3.0 and fake._flushes == 10
    assert Trainer._allocator_since_log(SimpleNamespace(device=torch.device("cpu"), _flushes=0)) == {}


def test_runtime_accepts_what_it_runs():
    """fp32 and bf16 on one process, a graph on CUDA; DeepSpeed takes the rest."""
    check_runtime(_cfg(), 1, False)
    check_runtime(_cfg(precision="bf16", cuda_graph=True), 1, True)
    check_runtime(_cfg(runtime="deepspeed", precision="fp16", zero_stage=2), 4, True)
    assert config_from_dict({}).train.runtime == "deepspeed"


def test_train_command_refuses_in_one_line(tiny_config):
    """Through `megastride train`: exit 2, one line, no traceback, before any run directory is made."""
    cfg = tiny_config()
    proc = train(cfg, "train.runtime=torch", "train.precision=fp16", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("megastride train: error: train.runtime=torch trains")
    assert not (cfg.parent / "run").exists()


def test_train_command_refuses_more_ranks_before_joining_them(tiny_config, monkeypatch):
    """A rank of a 2-rank launch (WORLD_SIZE from the launcher) refuses runtime torch in one line before
    it waits for the other rank; the world size is read as init_distributed will read it."""
    from megastride.engine.distributed import world_size_from_env

    for key in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert world_size_from_env() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert world_size_from_env() == 4
    cmd = [sys.executable, "-m", "megastride.launch.cli", "train", str(tiny_config()), "--set", "train.runtime=torch"]
    env = {**ENV, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == ("megastride train: error: train.runtime=torch runs one process, "
                                                    "not 2: use train.runtime=deepspeed for data parallel training")


# ---------------------------------------------------------------------------------------------
# The engine on its own (CPU): the graphed step's arithmetic, the tensor learning rate
# ---------------------------------------------------------------------------------------------


def _engine(device="cpu", **train):
    cfg = config_from_dict({"model": {"seq_len": 128, "d_model": 32, "n_layers": 2, "n_heads": 2,
                                      "attention": {"block": 32, "layers": ["fixed(32,8)", "strided(32)"]}},
                            "train": {"runtime": "torch", "grad_accum": 2, "lr": 3e-3, "warmup_steps": 2,
                                      "steps": 8, **train}})
    device = torch.device(device)
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model).to(device)
    apply_activation_checkpointing(model, cfg.train)
    optimizer = build_optimizer(model, cfg.train, device)
    scheduler = build_scheduler(optimizer, cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio)
    return TorchEngine(model, optimizer, scheduler, cfg.train, device)


def _batches(n, device="cpu"):
    gen = torch.Generator().manual_seed(5)  # a 16-symbol alphabet: something to learn
    return [torch.randint(0, 16, (2, 2, 129), generator=gen).to(device) for _ in range(n)]  # (accum, B, T+1)


def _eager_step(engine, batches):
    """The trainer's eager loop over one step's micro-batches; the mean loss."""
    losses = []
    for batch in batches:
        loss = engine(batch[:, :-1], batch[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach().float())
    return torch.stack(losses).mean()


def test_whole_step_is_the_eager_loop():
    """graphed_step's bookkeeping around the step it captures (run eagerly here, as GraphedStep's warm-up
    does): the same losses, grad norms, learning rates, step counts and weights as the micro-step loop."""
    eager, whole = _engine(), _engine()

    def warmup_only(batches):  # GraphedStep's eager path: the step, then gradients set to None
        out = whole._whole_step(batches)
        whole.optimizer.zero_grad(set_to_none=True)
        return out

    whole._graph = warmup_only
    for batches in _batches(4):
        a, b = _eager_step(eager, batches), whole.graphed_step(batches)
        assert torch.equal(a, b)
        assert eager.get_global_grad_norm() == whole.get_global_grad_norm() > 0
        assert eager.get_lr() == whole.get_lr()
    assert (eager.global_steps, eager.micro_steps) == (whole.global_steps, whole.micro_steps) == (4, 8)
    assert eager.get_lr()[0] < 3e-3  # the schedule moved
    for p, q in zip(eager.module.parameters(), whole.module.parameters()):
        assert torch.equal(p, q)


def test_backward_divides_by_grad_accum_and_steps_at_the_boundary():
    """DeepSpeed's semantics: gradients of loss / grad_accum; the optimizer steps every grad_accum micro-steps."""
    engine = _engine(grad_clip=0.0)
    batch = _batches(1)[0][0]
    loss = engine(batch[:, :-1], batch[:, 1:])
    assert torch.equal(engine.backward(loss), loss / 2)
    before = [p.detach().clone() for p in engine.module.parameters()]
    grads = [p.grad.clone() for p in engine.module.parameters()]
    assert not engine.is_gradient_accumulation_boundary()
    engine.step()  # not a boundary: nothing changes
    assert all(torch.equal(p, b) for p, b in zip(engine.module.parameters(), before))
    assert engine.is_gradient_accumulation_boundary() and engine.get_global_grad_norm() is None
    engine.step()
    assert float(torch.nn.utils.get_total_norm(grads)) == engine.get_global_grad_norm()
    assert all(p.grad is None for p in engine.module.parameters())
    assert not all(torch.equal(p, b) for p, b in zip(engine.module.parameters(), before))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_scheduler_fills_a_tensor_learning_rate_in_place():
    """What a replayed optimizer kernel relies on: this torch's LambdaLR writes into the lr tensor the
    optimizer holds (not a new tensor), and a checkpoint load keeps that tensor too."""
    model = torch.nn.Linear(2, 2)
    lr = torch.tensor(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = build_scheduler(optimizer, 0, 4, 0.0)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.5 * (1 + 0.7071067811865476))
    engine = TorchEngine(model, optimizer, scheduler, config_from_dict({}).train, torch.device("cpu"))
    saved = optimizer.state_dict()
    saved["param_groups"][0]["lr"] = torch.tensor(0.25)
    engine._load_optimizer(saved)
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == 0.25


def test_checkpoint_round_trip_continues_the_same_steps(tmp_path):
    """save_checkpoint / load_checkpoint: DeepSpeed's layout, the client state back, and a fresh engine
    that continues exactly where the saved one goes on."""
    a = _engine()
    batches = _batches(4)
    for b in batches[:2]:
        _eager_step(a, b)
    a.save_checkpoint(str(tmp_path), "step00000002", {"step": 2, "data": {"pos": 7}})
    assert (tmp_path / "latest").read_text() == "step00000002"
    assert ckpt.latest_model_state(tmp_path).keys() == a.module.state_dict().keys()
    b = _engine()
    path, client = b.load_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "step00000002") and client == {"step": 2, "data": {"pos": 7}}
    assert (b.global_steps, b.micro_steps, b.get_lr()) == (a.global_steps, a.micro_steps, a.get_lr())
    for batch in batches[2:]:
        assert torch.equal(_eager_step(a, batch), _eager_step(b, batch))
        assert a.get_global_grad_norm() == b.get_global_grad_norm()
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))
    assert _engine().load_checkpoint(str(tmp_path / "empty")) == (None, {})


# ---------------------------------------------------------------------------------------------
# On a GPU: train.cuda_graph
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_graphed_engine_steps_follow_eager_steps_and_resume(tmp_path):
    """bf16, grad_accum 2: 2 eager warm-up steps, a capture and replays give the eager engine's losses,
    grad norms, learning rates and weights (to bf16 reduction order); a checkpoint taken between
    replays loads into a fresh engine, which captures anew and goes on like the original."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    eager, graphed = _engine("cuda", precision="bf16"), _engine("cuda", precision="bf16", cuda_graph=True)
    assert torch.is_tensor(graphed.optimizer.param_groups[0]["lr"])
    batches = _batches(8, "cuda")
    for b in batches[:5]:
        a, g = float(_eager_step(eager, b)), float(graphed.graphed_step(b))
        assert g == pytest.approx(a, rel=2e-3, abs=2e-3)
        assert graphed.get_global_grad_norm() == pytest.approx(eager.get_global_grad_norm(), rel=2e-2)
        assert graphed.get_lr() == pytest.approx(eager.get_lr(), rel=1e-6)
    assert graphed._graph.captured and graphed._graph.eager_steps == 2
    graphed.save_checkpoint(str(tmp_path), "step00000005", {"step": 5})
    resumed = _engine("cuda", precision="bf16", cuda_graph=True)
    assert resumed.load_checkpoint(str(tmp_path))[1] == {"step": 5}
    for b in batches[5:]:
        a, g, r = float(_eager_step(eager, b)), float(graphed.graphed_step(b)), float(resumed.graphed_step(b))
        assert g == pytest.approx(a, rel=2e-3, abs=2e-3) and r == pytest.approx(g, rel=2e-3, abs=2e-3)
        assert resumed.get_lr() == pytest.approx(graphed.get_lr(), rel=1e-6)
    assert resumed._graph.captured and resumed._graph.eager_steps == 2
    for e, g, r in zip(eager.module.parameters(), graphed.module.parameters(), resumed.module.parameters()):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(r, g, rtol=2e-2, atol=2e-3)


@pytest.mark.gpu
def test_graphed_trainer_follows_eager_trainer(tiny_config, tmp_path):
    """`megastride train` with runtime torch, bf16, grad_accum 2: train.cuda_graph (2 eager steps, capture,
    replays; a resume after step 3 captures anew) gives the eager run's metrics and it learns."""
    cfg = tiny_config(train={"steps": 8, "grad_accum": 2, "precision": "bf16", "lr": 1e-2, "eval_every": 4,
                             "save_every": 3})
    common = ("train.runtime=torch",)
    eager = _run(cfg, tmp_path / "eager", *common)
    graphed = _run(cfg, tmp_path / "graphed", *common, "train.cuda_graph=true")
    _run(cfg, tmp_path / "resumed", *common, "train.cuda_graph=true", "run.stop_after=3")
    resumed = _run(cfg, tmp_path / "resumed", *common, "train.cuda_graph=true")
    assert eager[8]["train/bits_per_byte"] < eager[1]["train/bits_per_byte"] - 0.5
    for step in range(1, 9):
        for key in ("train/bits_per_byte", "valid/bits_per_byte"):
            if key in eager[step]:
                assert graphed[step][key] == pytest.approx(eager[step][key], rel=2e-3, abs=2e-3), (step, key)
                assert resumed[step][key] == pytest.approx(eager[step][key], rel=2e-3, abs=2e-3), (step, key)
        assert graphed[step]["train/grad_norm"] == pytest.approx(eager[step]["train/grad_norm"], rel=2e-2)
        assert graphed[step]["train/lr"] == pytest.approx(eager[step]["train/lr"], rel=1e-6)
