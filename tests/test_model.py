"""The Sparse Transformer: causality under every pattern, the paper's init, embeddings, imports."""

import ast
import math
import subprocess
import sys
from unittest import mock
from pathlib import Path

import pytest
import torch

from megastride.engine.config import config_from_dict
from megastride.engine.model import SparseTransformer, chunked_cross_entropy, gelu
from megastride.kernels.reference import reference_attention

ROOT = Path(__file__).resolve().parents[1]


def tiny(layers=("fixed(32,8)",), **model):
    tree = {"model": {"seq_len": 128, "d_model": 32, "n_layers": 2, "n_heads": 2,
                      "attention": {"block": 16, "layers": list(layers)}, **model}}
    return config_from_dict(tree).model


PATTERN_SPECS = ["dense", "local(16)", "strided(16)", "fixed(32,8)", "fixed(32,8,per_head=2)",
                 "fixed(32,8)+strided(16)", "strided(16)|local(16)", "summary(32,8)"]


@pytest.mark.parametrize("spec", PATTERN_SPECS)
def test_model_is_causal(spec):
    """Changing bytes after position t never changes the outputs at or before t."""
    torch.manual_seed(0)
    model = SparseTransformer(tiny((spec, "dense"))).eval()
    x = torch.randint(0, 256, (1, 128))
    base = model(x)
    for t in (0, 17, 63, 100):
        y = x.clone()
        y[0, t + 1 :] = torch.randint(0, 256, (127 - t,))
        out = model(y)
        torch.testing.assert_close(out[0, : t + 1], base[0, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(out[0, t + 1 :], base[0, t + 1 :])


def test_interleaved_layers_cycle_patterns():
    """Residual block r uses pattern r mod p."""
    cfg = tiny(("fixed(32,8)", "strided(16)", "dense"), n_layers=5)
    names = [p.heads[0].name for p in cfg.patterns()]
    assert names == ["fixed(32,8)", "strided(16)", "dense", "fixed(32,8)", "strided(16)"]


def test_init_scales_output_projections():
    """W_p and W2 get std init_std / sqrt(2N); other matrices init_std; biases zero."""
    cfg = tiny(n_layers=8, d_model=128, n_heads=4)
    model = SparseTransformer(cfg)
    target = 0.02 / math.sqrt(2 * 8)
    proj = torch.cat([torch.cat([b.attn.proj.weight.flatten(), b.ffn.proj.weight.flatten()]) for b in model.blocks])
    other = torch.cat([torch.cat([b.attn.q.weight.flatten(), b.ffn.fc.weight.flatten()]) for b in model.blocks])
    assert proj.std().item() == pytest.approx(target, rel=0.05)
    assert other.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(float(b.attn.q.bias.detach().abs().max()) == 0 for b in model.blocks)


def test_gelu_is_sigmoid_approximation():
    """GELU(x) = x * sigmoid(1.702 x)."""
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(gelu(x), x / (1 + torch.exp(-1.702 * x)))


def test_window_position_embedding_is_factorised():
    """1-D position embedding = window-index table + offset table, with the pattern's stride."""
    model = SparseTransformer(tiny())
    assert model.pos.sizes == (4, 32)  # 128 positions = 4 windows of stride 32
    e = model.pos(128, "cpu")
    win, off = model.pos.tables
    torch.testing.assert_close(e[70], win.weight[2] + off.weight[6])


def test_image_position_embedding_uses_row_column_channel():
    """Images sum row, column and channel embeddings of each byte of the (H, W, C) raster."""
    cfg = tiny(seq_len=96, embedding={"kind": "image", "image_shape": [4, 8, 3]}, attention={"block": 16, "layers": ["strided(24)"]})
    model = SparseTransformer(cfg)
    e = model.pos(96, "cpu")
    row, col, ch = model.pos.tables
    t = 2 * 24 + 5 * 3 + 1  # row 2, column 5, channel 1
    torch.testing.assert_close(e[t], row.weight[2] + col.weight[5] + ch.weight[1])


def test_dropout_only_at_residual_adds():
    """The only Dropout modules are the residual ones, one per block (train mode changes outputs)."""
    model = SparseTransformer(tiny(dropout=0.5))
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == len(model.blocks)
    x = torch.randint(0, 256, (1, 128))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_half_width_query_key_is_exact():
    """qk_mult=0.5 (the paper's CIFAR model) runs through zero padding without changing scores."""
    cfg = tiny(qk_mult=0.5, ffn_mult=2.0)
    model = SparseTransformer(cfg)
    assert model.blocks[0].attn.q.out_features == 16 and model.blocks[0].ffn.fc.out_features == 64
    model(torch.randint(0, 256, (2, 128))).sum().backward()


def test_chunked_loss_equals_full_cross_entropy():
    """The chunked output layer + loss equals cross-entropy over full logits, in value and gradient."""
    h = torch.randn(2, 50, 16, requires_grad=True)
    w = torch.randn(256, 16, requires_grad=True)
    y = torch.randint(0, 256, (2, 50))
    got = chunked_cross_entropy(h, w, y, chunk=17)
    want = torch.nn.functional.cross_entropy((h @ w.t()).reshape(-1, 256), y.reshape(-1))
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got, (h, w))
    g2 = torch.autograd.grad(want, (h, w))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_model_module_imports_nothing_distributed():
    """engine/model.py imports neither torch.distributed nor deepspeed, directly or through its imports."""
    tree = ast.parse((ROOT / "engine" / "model.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if "distributed" in n or "deepspeed" in n]
    code = "import sys, megastride.engine.model; print(any(m.startswith('deepspeed') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_paper_configs_have_paper_sizes():
    """enwik8 / cifar10 / imagenet64 configs build models of the paper's 95M / 59M / 152M parameters."""
    from megastride.engine.config import load_config

    for name, millions in [("enwik8", 95), ("cifar10", 59), ("imagenet64", 152)]:
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        with torch.device("meta"):
            model = SparseTransformer(cfg.model)
        assert model.num_params() / 1e6 == pytest.approx(millions, rel=0.02), name


def test_dense_layers_build_no_block_lists():
    """Dense heads never read block lists, so the model does not build the quadratic dense layout."""
    model = SparseTransformer(tiny(("dense",)))
    layout = model.blocks[0].attn.layout(128, torch.device("cpu"))
    assert layout.parts == [] and layout.seq_len == 128


def test_ffn_is_the_papers_gelu_and_saves_what_the_planner_counts():
    """The FFN computes proj(gelu(fc(x))) with the paper's GELU (constants folded into the weights:
    same output and gradients), and keeps exactly ``plan.ffn_saved_bytes`` per token of wide
    (ffn-width) tensors for backward."""
    from megastride.engine import plan as planner
    from megastride.engine.model import FeedForward

    cfg = tiny()
    ffn = FeedForward(cfg).double()
    torch.nn.init.normal_(ffn.fc.bias)
    x = torch.randn(2, 64, cfg.d_model, dtype=torch.float64, requires_grad=True)
    got = ffn(x)
    want = ffn.proj(gelu(ffn.fc(x)))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, [x, *ffn.parameters()], g)
    ref = torch.autograd.grad(want, [x, *ffn.parameters()], g)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    wide = {}
    ffn32 = FeedForward(cfg)
    x32 = torch.randn(1, 64, cfg.d_model, requires_grad=True)

    def pack(t):
        if t.shape[-1] == cfg.ffn_width and t.numel() >= 64 * cfg.ffn_width:
            wide[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ffn32(x32)
    assert sum(wide.values()) / 64 == planner.ffn_saved_bytes(cfg, planner.precision_of("torch", "fp32"))


@pytest.mark.parametrize("qk_mult", [1.0, 0.5])
def test_attention_projects_q_k_v_in_one_matmul_with_the_separate_weights(qk_mult):
    """q, k and v come from one matmul over the stacked weights of the three Linear modules: the
    attention's output and every gradient equal those of three separate projections (also with
    half-width queries and keys, which the attention zero-pads)."""
    from megastride.engine.model import SparseAttention

    cfg = tiny(qk_mult=qk_mult)
    torch.manual_seed(0)
    model = SparseTransformer(cfg).double()
    attn: SparseAttention = model.blocks[1].attn
    for lin in (attn.q, attn.k, attn.v):
        torch.nn.init.normal_(lin.bias)
    x = torch.randn(2, cfg.seq_len, cfg.d_model, dtype=torch.float64, requires_grad=True)
    calls = []
    real_linear = torch.nn.functional.linear
    with mock.patch.object(torch.nn.functional, "linear", lambda *a: calls.append(a[1].shape) or real_linear(*a)):
        got = attn(x)
    assert calls[0][0] == 2 * cfg.qk_width + cfg.d_model  # one projection for q, k and v

    def separate(x):
        b, t, _ = x.shape
        q = attn.q(x).view(b, t, attn.n_heads, attn.qk_head).transpose(1, 2)
        k = attn.k(x).view(b, t, attn.n_heads, attn.qk_head).transpose(1, 2)
        v = attn.v(x).view(b, t, attn.n_heads, attn.v_head).transpose(1, 2)
        width = max(attn.qk_head, attn.v_head)
        pad = lambda z: torch.nn.functional.pad(z, (0, width - z.shape[-1]))  # noqa: E731
        out = reference_attention(pad(q), pad(k), pad(v), attn.layout(t, x.device),
                                  scale=1.0 / math.sqrt(attn.qk_head))[..., : attn.v_head]
        return attn.proj(out.transpose(1, 2).reshape(b, t, -1))

    want = separate(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(got)
    params = [x, *attn.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def _backward_nodes(t: torch.Tensor) -> list[str]:
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(fn for fn, _ in node.next_functions)
    return names


def test_chunked_ffn_and_loss_take_their_chunks_by_split_not_slices():
    """The FFN's and the loss's chunks come from one split, whose backward concatenates the chunk
    gradients once; per-chunk slices would each zero-fill a gradient of the input's full size (at 1M
    tokens and 16 chunks, 16 full-size fills and sums per layer). Same values either way."""
    from megastride.engine.model import FeedForward

    cfg = config_from_dict({"model": {"seq_len": 64, "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_chunk": 16,
                                      "attention": {"block": 16, "layers": ["local(16)"]}}}).model
    ffn = FeedForward(cfg)
    x = torch.randn(2, 64, 16, requires_grad=True)
    out = ffn(x)
    nodes = _backward_nodes(out)
    assert "SliceBackward0" not in nodes and any(n.startswith("Split") for n in nodes), nodes
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    whole = FeedForward(cfg)
    whole.load_state_dict(ffn.state_dict())
    whole.chunk = 0
    (want,) = torch.autograd.grad(whole(x).square().sum(), x)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)
    h, w = torch.randn(2, 64, 16, requires_grad=True), torch.randn(256, 16)
    loss = chunked_cross_entropy(h, w, torch.randint(0, 256, (2, 64)), chunk=16)
    nodes = _backward_nodes(loss)
    assert "SliceBackward0" not in nodes and any(n.startswith("Split") for n in nodes), nodes


@pytest.mark.parametrize("train", [None, {"keep_attention": True, "cpu_checkpointing": True, "offload_overlap": True,
                                          "offload_attention": True}])
def test_a_model_no_longer_referenced_is_freed_without_the_cycle_collector(train):
    """No reference cycle runs through a model, built alone or recomputing its blocks (block inputs and kept
    attention outputs in host memory) after a forward and backward pass: when its last reference goes, its
    memory is freed then, not when Python's cycle collector next runs (a block's pattern function once held
    the model: models of earlier runs stayed allocated on the GPU)."""
    import gc
    import weakref

    from megastride.engine import parallel

    cfg = config_from_dict({"model": {"seq_len": 512, "d_model": 32, "n_layers": 2, "n_heads": 2,
                                      "attention": {"block": 64, "layers": ["fixed(128,64)", "strided(64)"]}},
                            **({"train": train} if train else {})})
    def build():
        model = SparseTransformer(cfg.model)
        if train:
            parallel.apply_activation_checkpointing(model, cfg.train)
            idx = torch.randint(0, 256, (1, 513))
            model(idx[:, :-1], idx[:, 1:]).backward()
        return model

    build()  # torch's first checkpoint call imports lazily, leaving its frames in a cycle: once a process
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        alive = weakref.ref(build())
        assert alive() is None
    finally:
        if enabled:
            gc.enable()
