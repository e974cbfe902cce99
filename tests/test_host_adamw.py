"""HostAdamW: torch's AdamW stepped in chunks for ZeRO-Offload's flat host partitions (engine.parallel)."""

import copy as copy_module

import pytest
import torch

from megastride.engine.config import config_from_dict
from megastride.engine.parallel import HostAdamW, build_optimizer, param_groups
from megastride.engine.model import SparseTransformer
from test_train import metrics, train


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(1000, generator=g)  # one flat tensor, as DeepSpeed hands over its partition
    matrix = torch.randn(12, 10, generator=g)
    strided = torch.randn(10, 12, generator=g).t()  # not contiguous: stepped whole
    return [t.clone().requires_grad_() for t in (flat, matrix, strided)]


def _run(make, steps: int = 6, seed: int = 0, lrs=(1e-2, 3e-3, 1e-3)):
    params = _params(seed)
    opt = make([{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}])
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[i % len(lrs)]  # as a scheduler sets it
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * (1 + i)
        opt.step()
    return params, opt


@pytest.mark.parametrize("chunk", [1, 7, 128, 1 << 24])
def test_host_adamw_is_torchs_adamw_bit_for_bit(chunk):
    kw = dict(betas=(0.9, 0.95), eps=1e-8)
    ref, ref_opt = _run(lambda groups: torch.optim.AdamW(groups, lr=1e-2, foreach=False, **kw))
    ours, ours_opt = _run(lambda groups: HostAdamW(groups, lr=1e-2, chunk=chunk, **kw))
    for a, b in zip(ref, ours):
        assert torch.equal(a, b)
    for pa, pb in zip(ref, ours):
        sa, sb = ref_opt.state[pa], ours_opt.state[pb]
        assert float(sa["step"]) == float(sb["step"]) == 6.0
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_host_adamw_resumes_from_torchs_adamw_state():
    """The state_dicts are interchangeable: a checkpoint of either continues in the other."""
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    ref, ref_opt = _run(lambda groups: torch.optim.AdamW(groups, foreach=False, **kw), steps=3)
    copy = [p.detach().clone().requires_grad_() for p in ref]
    ours = HostAdamW([{"params": copy[:2], "weight_decay": 0.1}, {"params": copy[2:], "weight_decay": 0.0}],
                     chunk=5, **kw)
    ours.load_state_dict(copy_module.deepcopy(ref_opt.state_dict()))  # as from disk: no shared step tensors
    g = torch.Generator().manual_seed(9)
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for opt, params in ((ref_opt, ref), (ours, copy)):
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            opt.step()
    for a, b in zip(ref, copy):
        assert torch.equal(a, b)


def test_host_adamw_refuses_a_bad_chunk():
    with pytest.raises(ValueError, match="chunk must be positive"):
        HostAdamW([torch.zeros(2, requires_grad=True)], chunk=0)


def test_offload_builds_the_chunked_optimizer_and_others_torchs():
    cfg = config_from_dict({"model": {"seq_len": 64, "d_model": 32, "n_layers": 1, "n_heads": 2,
                                      "attention": {"block": 16, "layers": ["strided(8)"]}}})
    model = SparseTransformer(cfg.model)
    off = cfg.train.model_copy(update={"zero_stage": 1, "offload_optimizer": True})
    opt = build_optimizer(model, off, torch.device("cpu"))
    assert isinstance(opt, HostAdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [g["weight_decay"] for g in param_groups(model, off.weight_decay)]
    assert type(build_optimizer(model, cfg.train, torch.device("cpu"))) is torch.optim.AdamW


def test_zero_offload_trains_like_zero1_on_the_gpu_side(tiny_config, tmp_path):
    """ZeRO-1 with the optimizer in host memory (DeepSpeed's offload, HostAdamW on its flat fp32 partition)
    gives the losses of plain ZeRO-1 (torch's AdamW on the same partition)."""
    cfg = tiny_config(train={"steps": 3, "eval_every": 3, "zero_stage": 1})
    runs = {}
    for off in ("false", "true"):
        proc = train(cfg, f"run.dir={tmp_path / off}", f"train.offload_optimizer={off}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[off] = metrics(tmp_path / off)
    for step in range(1, 4):
        assert runs["true"][step]["train/bits_per_byte"] == pytest.approx(
            runs["false"][step]["train/bits_per_byte"], rel=1e-5, abs=1e-6), step
