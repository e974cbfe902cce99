"""Issue 5's baseline (engine.baseline): its shapes, its loss, its Flex block mask, its rows in `bench scaling`."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from megastride.engine import baseline as BL
from megastride.engine import bench_scaling as B
from megastride.engine.config import config_from_dict, load_config
from megastride.engine.plan import count_params, plan
from megastride.kernels import patterns as P
from megastride.launch.bench_scaling import main as bench_main

TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.attention.block=32",
        "model.dropout=0.0", "train.precision=fp32"]


def model_config(**model):
    tree = {"seq_len": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "loss_chunk": 24,
            "attention": {"block": 16, "layers": ["dense"]}, "embedding": {"kind": "window", "window": 16}}
    return config_from_dict({"model": tree | model}).model


def test_parameter_count_is_the_issue_shape():
    """At configs/enwik8.yaml's shapes the baseline has our model's parameters (94.7M non-embedding)."""
    base = load_config(B.CONFIGS / "enwik8.yaml")
    for spec, n in (("dense", 12288), ("fixed(auto,128)", 65536)):
        cfg = B.config_for(base, spec, n).model
        total, non_embedding = BL.count_params(cfg)
        ours = count_params(cfg)
        assert total == pytest.approx(ours.total, rel=0.005)
        assert non_embedding == pytest.approx(ours.non_embedding, rel=0.005)
        assert 94.6e6 < non_embedding < 94.9e6
    with torch.device("meta"):
        model = BL.build(cfg, device="meta")
    assert len(model.blocks) == 30 and model.blocks[0].attn.qkv.weight.shape == (3 * 512, 512)
    assert isinstance(model.blocks[0].mlp[1], torch.nn.GELU) and model.blocks[0].mlp[0].out_features == 2048


def reference_loss(model: BL.BaselineTransformer, idx, targets, n_heads: int):
    """The baseline's function written out by hand: explicit causal softmax attention, one full loss."""
    t = idx.shape[1]
    pos = torch.arange(t)
    x = model.tok.weight[idx] + model.pos_window_index.weight[pos // model.pos_window] \
        + model.pos_offset.weight[pos % model.pos_window]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for block in model.blocks:
        h = F.layer_norm(x, x.shape[-1:], block.ln1.weight, block.ln1.bias)
        q, k, v = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, dim=-1)
        q, k, v = (z.unflatten(-1, (n_heads, -1)).transpose(1, 2) for z in (q, k, v))  # (B, H, T, Dh)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~causal, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + y @ block.attn.proj.weight.T + block.attn.proj.bias
        h = F.layer_norm(x, x.shape[-1:], block.ln2.weight, block.ln2.bias)
        fc, out = block.mlp[0], block.mlp[2]
        x = x + F.gelu(h @ fc.weight.T + fc.bias) @ out.weight.T + out.bias
    logits = F.layer_norm(x, x.shape[-1:], model.ln_f.weight, model.ln_f.bias) @ model.head.weight.T
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def test_dense_loss_and_gradients_equal_a_masked_reference():
    """The SDPA baseline (checkpointed blocks, 24-position loss chunks over 2 x 64 targets) gives the
    loss and gradients of plain causal softmax attention written out by hand."""
    torch.manual_seed(0)
    cfg = model_config()
    model = BL.build(cfg)
    idx, targets = torch.randint(0, 256, (2, 64)), torch.randint(0, 256, (2, 64))
    loss = model(idx, targets)
    ref = reference_loss(model, idx, targets, cfg.n_heads)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    params = [model.blocks[0].attn.qkv.weight, model.pos_window_index.weight, model.head.weight]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(ref, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)


def block_pairs(ptr: torch.Tensor, idx: torch.Tensor) -> set[tuple[int, int]]:
    rows = torch.repeat_interleave(torch.arange(ptr.numel() - 1), (ptr[1:] - ptr[:-1]).long())
    return set(zip(rows.tolist(), idx.long().tolist()))


def flex_pairs(num: torch.Tensor, indices: torch.Tensor) -> set[tuple[int, int]]:
    return {(r, int(c)) for r in range(num.numel()) for c in indices[r, : int(num[r])]}


@pytest.mark.parametrize("n", [1536, 2048])
def test_flex_block_mask_is_our_fixed_layout(n):
    """The BlockMask of the flex baseline at fixed(auto,128) lists exactly our layout's 128-blocks, full and
    partial, and its mask_mod allows exactly the token pairs our layout does."""
    cfg = model_config(seq_len=n, attention={"block": 128, "layers": ["fixed(auto,128)"]})
    stride, width = BL.fixed_stride_width(cfg)
    assert (stride, width) == (P.optimal_stride(n, "fixed", 128, 128), 128)
    mask = BL.fixed_block_mask(n, stride, width, "cpu")
    layout = P.build_layout(cfg.patterns()[0], n, 128)
    (part,) = layout.parts
    assert part.permute_stride is None
    csr = part.csr[part.head_csr[0]]
    ours_full = block_pairs(csr.row_full_ptr, csr.row_full_idx)
    ours_part = block_pairs(csr.row_part_ptr, csr.row_part_idx)
    flex_full = flex_pairs(mask.full_kv_num_blocks[0, 0], mask.full_kv_indices[0, 0])
    flex_part = flex_pairs(mask.kv_num_blocks[0, 0], mask.kv_indices[0, 0])
    assert flex_full | flex_part == ours_full | ours_part
    assert (flex_full, flex_part) == (ours_full, ours_part)
    assert len(ours_full | ours_part) < (n // 128) * (n // 128 + 1) // 2  # sparser than causal
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert torch.equal(mask.mask_mod(0, 0, i, j), layout.to_dense_mask()[0])


def test_flex_baseline_refuses_other_patterns():
    """The flex baseline builds only the plain fixed pattern; anything else is a one-line error."""
    for layers in (["strided(auto)"], ["fixed(auto,128,per_head=2)"], ["fixed(256,128)", "dense"]):
        cfg = model_config(seq_len=2048, attention={"block": 128, "layers": layers})
        with pytest.raises(ValueError, match="fixed"):
            BL.fixed_stride_width(cfg)


def test_bench_scaling_baseline_rows_on_cpu(tmp_path, capsys):
    """`bench scaling --baseline` on CPU: baseline-dense rows measured beside ours in the same files, MFU
    from the dense pattern's planned FLOPs, no memory plan; baseline-flex marked skipped, not timed."""
    out = tmp_path / "scaling"
    args = ["--device", "cpu", "--kinds", "fixed", "--baseline", "--lengths", "64,128", "--steps", "1",
            "--out", str(out)] + [x for s in TINY for x in ("--set", s)]
    assert bench_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("baseline-flex n=") and "skipped (flex: no backward on CPU)" in line for line in lines)
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [(r["kind"], int(r["seq_len"])) for r in rows] == [
        (k, n) for k in ("fixed", "baseline-dense", "baseline-flex") for n in (64, 128)]
    base = load_config(B.CONFIGS / "enwik8.yaml", TINY)
    for r in rows[2:4]:
        assert r["status"] == "ok" and r["pattern"] == "dense" and r["plan_gb"] == "" and r["plan_error_pct"] == ""
        flops = plan(B.config_for(base, "dense", int(r["seq_len"])), runtime="torch").flops
        assert float(r["mfu"]) == pytest.approx(flops / float(r["step_s"]) / 790e12, rel=1e-6)
        assert int(r["params"]) == BL.count_params(B.config_for(base, "dense", int(r["seq_len"])).model)[0]
    assert all(r["status"] == "ok" and r["plan_gb"] != "" for r in rows[:2])
    for r in rows[4:]:
        assert r["status"].startswith("skipped") and "CPU" in r["status"] and r["step_s"] == ""
        assert r["pattern"] == "fixed(auto,32)"
    data = json.loads((out / "scaling.json").read_text())
    assert data["slopes"]["baseline-dense"] is not None and data["slopes"]["baseline-flex"] is None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("scaling/baseline-dense/mfu")] == [64, 128]
    assert not any("baseline-flex" in tag for tag in acc.Tags()["scalars"])


def test_baseline_series_keeps_the_time_budget(monkeypatch):
    """A baseline series stops timing lengths its budget cannot cover, as ours do (quadratic guess for dense)."""
    monkeypatch.setattr(BL, "time_steps", lambda cfg, *a: (1.0 * (cfg.model.seq_len / 64) ** 2, None))
    base = config_from_dict({"model": {"seq_len": 128, "d_model": 32, "n_layers": 1, "n_heads": 2,
                                       "attention": {"block": 32, "layers": ["dense"]}}})
    opts = B.Options(device="cpu", steps=1, warmup=1, budget_s=10.0, log=lambda line: None)
    rows = B.run_series(base, "baseline-dense", B.BASELINE_KINDS["baseline-dense"], [64, 128, 256], opts)
    assert [r.status for r in rows] == ["ok", "ok", "skipped (time)"]
    assert all(r.plan_gb is None for r in rows) and rows[1].mfu > 0
