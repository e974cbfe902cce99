"""GPU-only training checks: fp16 dynamic loss scaling and bf16 through DeepSpeed (skipped on CPU)."""

import pytest

from test_train import metrics, train

pytestmark = pytest.mark.gpu


def _bf16_step(model_tree: dict, train_tree: dict | None = None, prepare=None, autocast: bool = True):
    """(loss, model) of one forward and backward under bf16 autocast (fp32 with ``autocast`` False) on CUDA of a
    model built from these config trees (seed 0, ``engine.parallel``'s checkpointing as the train tree asks), on
    seq_len + 1 bytes of seed 1; ``prepare(model)`` first, if given. In fp32 the model attends by the exact
    reference (``MEGASTRIDE_ATTENTION=reference``): the kernels' fp32 path autotunes for minutes, and the fp32 run
    is the reference the bf16 paths are held to."""
    import os

    import torch

    from megastride.engine import parallel
    from megastride.engine.config import config_from_dict
    from megastride.engine.model import SparseTransformer

    cfg = config_from_dict({"model": model_tree, "train": train_tree or {}})
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model).cuda()
    parallel.apply_activation_checkpointing(model, cfg.train)
    if prepare is not None:
        prepare(model)
    n = cfg.model.seq_len
    idx = torch.randint(0, 256, (1, n + 1), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    saved = os.environ.get("MEGASTRIDE_ATTENTION")
    if not autocast:
        os.environ["MEGASTRIDE_ATTENTION"] = "reference"
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
    finally:
        if saved is None:
            os.environ.pop("MEGASTRIDE_ATTENTION", None)
        else:
            os.environ["MEGASTRIDE_ATTENTION"] = saved
    return loss.item(), model


SIX_LAYERS = {"seq_len": 32768, "d_model": 512, "n_layers": 6, "n_heads": 8,
              "attention": {"block": 128, "layers": ["fixed(1024,128)", "strided(128)"]}}


def test_fp16_dynamic_loss_scaling_skips_overflows(tiny_config, tmp_path):
    """Starting at 2^40 the scale overflows: steps are skipped and the scale halves until finite."""
    cfg = tiny_config(train={"steps": 12, "precision": "fp16", "lr": 1e-3,
                             "loss_scale": {"initial_scale_power": 40, "hysteresis": 1, "window": 1000}})
    proc = train(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(tmp_path / "run")
    scales = [m[s]["train/loss_scale"] for s in range(1, 13)]
    assert min(scales) < 2.0**40 and all(b <= a for a, b in zip(scales, scales[1:])), scales
    assert m[12]["train/skipped_steps"] >= 1
    assert m[12]["train/bits_per_byte"] < 8.5


def test_bf16_trains_with_triton_attention(tiny_config, tmp_path):
    """bf16 DeepSpeed training with the Triton kernels runs and learns."""
    proc = train(tiny_config(train={"steps": 20, "precision": "bf16", "lr": 1e-2, "eval_every": 20}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(tmp_path / "run")
    assert m[20]["train/bits_per_byte"] < m[1]["train/bits_per_byte"] - 1.0


@pytest.mark.parametrize("release", ["recorded", "ordered"])
@pytest.mark.parametrize("recomputed,prefetches", [(None, 5), (4, 4), (5, 4)])
def test_overlapped_host_checkpoint_gives_torch_checkpoints_gradients(recomputed, prefetches, release, monkeypatch):
    """offload_overlap (copies on a side stream, the previous block's input fetched during this
    block's backward) on CUDA under bf16 autocast: the gradients of the same blocks recomputed from inputs
    kept on the GPU (to reduction order). Inputs of 64 MiB per block so the copies take long enough for a missing stream wait to
    show as garbage. With 4 of 6 blocks recomputed the first kept block's backward also prefetches the
    last recomputed block's input (4 prefetches, not 3); with one block not recomputed that block lets the
    copies out go after its forward and prefetches nothing. Both ways of letting the copied tensors' memory go
    (MEGASTRIDE_OFFLOAD_RELEASE: record_stream, or a compute-stream wait and the references dropped)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.engine import parallel

    monkeypatch.setenv("MEGASTRIDE_OFFLOAD_RELEASE", release)

    def grads(train):
        loss, model = _bf16_step(SIX_LAYERS, train)
        return loss, [p.grad.clone() for p in model.parameters()]

    before = parallel._chain(torch.device("cuda:0")).prefetched
    loss, got = grads({"cpu_checkpointing": True, "offload_overlap": True, "checkpoint_blocks": recomputed})
    assert parallel._chain(torch.device("cuda:0")).prefetched - before == prefetches
    ref_loss, ref = grads({"checkpoint_blocks": recomputed})
    assert loss == ref_loss
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_kept_attention_gives_the_plain_recomputes_gradients_on_the_gpu():
    """train.keep_attention on CUDA under bf16 autocast (the Triton kernels, the dQ mode "auto" timing
    its modes inside the recompute), in every recomputed block or the first 2 of 4: loss equal and gradients
    equal to the plain recompute's to reduction order, with the attention forward launched once per keeping
    layer instead of twice."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.kernels import blocksparse

    calls = []
    real = blocksparse._forward

    def counted(*args):
        calls.append(1)
        return real(*args)

    def grads(keep):
        loss, model = _bf16_step({**SIX_LAYERS, "n_layers": 4}, {"keep_attention": keep}, lambda model: calls.clear())
        return loss, [p.grad.clone() for p in model.parameters()], len(calls)

    blocksparse._forward = counted
    try:
        grads(True)  # autotuning and the dQ mode's timing happen here, not in the compared runs
        loss, got, kept_calls = grads(True)
        part_loss, part, part_calls = grads(2)
        ref_loss, ref, plain_calls = grads(False)
    finally:
        blocksparse._forward = real
    assert (kept_calls, part_calls, plain_calls) == (4, 6, 8)
    assert loss == part_loss == ref_loss
    for a, b, c in zip(got, part, ref):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overlap,release", [(True, "recorded"), (False, "recorded"), (True, "ordered")])
def test_kept_attention_in_host_memory_gives_the_same_gradients_on_the_gpu(overlap, release, monkeypatch):
    """train.offload_attention on CUDA (block inputs in pinned host memory, their copies on a side stream
    with offload_overlap, in order without): the kept pairs leave the GPU after each block's forward (after
    the forward pass, allocated memory is at least three blocks' pairs below the same run keeping them on
    the GPU; under MEGASTRIDE_OFFLOAD_RELEASE=ordered, which holds the last two blocks' pairs and the last
    input until the backward starts, one pair below, and three once those are let go) and come back for the
    recompute: loss equal and gradients equal to the on-GPU keep's."""
    import gc

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv("MEGASTRIDE_OFFLOAD_RELEASE", release)
    from megastride.engine import parallel
    from megastride.engine.config import config_from_dict
    from megastride.engine.model import SparseTransformer

    n, d, heads = 32768, 512, 8
    pair = n * d * 2 + heads * n * 4  # a block's bf16 output and fp32 log-sum-exps

    def run(on_host):
        gc.collect()  # an earlier run's model, if a reference cycle still holds it, is not counted
        before = torch.cuda.memory_allocated()
        cfg = config_from_dict({"model": {"seq_len": n, "d_model": d, "n_layers": 4, "n_heads": heads,
                                          "attention": {"block": 128, "layers": ["fixed(1024,128)", "strided(128)"]}},
                                "train": {"keep_attention": True, "cpu_checkpointing": True,
                                          "offload_overlap": overlap, "offload_attention": on_host}})
        torch.manual_seed(0)
        model = SparseTransformer(cfg.model).cuda()
        parallel.apply_activation_checkpointing(model, cfg.train)
        idx = torch.randint(0, 256, (1, n + 1), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before  # this run's own tensors after its forward pass
        parallel._copies_out(idx.device).release(idx.device)  # what the backward's start does (ordered)
        torch.cuda.synchronize()
        released = torch.cuda.memory_allocated() - before
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], held, released

    run(False)  # autotuning happens here
    ref_loss, ref, on_gpu, _ = run(False)
    loss, got, on_host, released = run(True)
    assert loss == ref_loss
    assert on_host <= on_gpu - (1 if release == "ordered" else 3) * pair, (on_host, on_gpu, pair)
    assert released <= on_gpu - 3 * pair, (released, on_gpu, pair)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _bf16_apart(got, ref, what: str) -> None:
    """Each gradient of ``got`` within bf16's resolution (2^-8) of ``ref``'s, in norm, plus a ten-thousandth of the
    largest gradient norm: two paths whose fp32 sums run in another order under bf16 autocast (a lost or doubled
    term is O(1) of the norm). The floor is for gradients made of rounding alone: the key projection's bias has a
    zero gradient in exact arithmetic (adding q.b to all of a row's scores leaves its softmax unchanged), and on the
    H200 its rounding, of norm 1.3e-6, came out 1.5e-7 apart in the two paths (call AV2)."""
    floor = 1e-4 * max(g.norm().item() for g in ref)
    for i, (a, b) in enumerate(zip(got, ref)):
        diff, norm = (a - b).norm().item(), b.norm().item()
        assert diff <= 2.0 ** -8 * norm + floor, f"{what}parameter {i}: {diff:.3g} apart at norm {norm:.3g}"


def test_residual_kernels_give_the_plain_streams_loss_and_gradients_on_the_gpu(monkeypatch):
    """On CUDA under bf16 autocast, the residual stream's kernels (ln1's kept input summing the stream's
    gradient in its backward, the FFN's fp32 + bf16 add by the Triton kernel) give the loss of torch's adds
    and autograd's sums bitwise (the forward's sums are the same) and their gradients to reduction order,
    with every block recomputed and with none; and the recompute, which leaves each block's proj product and
    add uncomputed (``Block.output_unread``), the loss and gradients of no recompute, also with dropout 0.1
    (the masks replayed).

    "To reduction order" under bf16 autocast: an fp32 sum in another order can round a later bf16 cast the
    other way, and each such flip moves the products it feeds by bf16's resolution (2^-8) of that operand, so
    single elements of the two paths' gradients differ by about 2^-8 of the tensor's scale, and where two flips
    meet by more (on the H200, 2026-12-05: 47 of 524,288 position-table gradients up to 1.04e-6 at a largest
    value of 6.9e-4, 1.5e-3 of it; in a later call 4.77e-7 at 1.2e-4, 4.0e-3 of it, one bf16 step). So the two
    paths are held to 2^-8 of each gradient's norm, and each path's gradients must be as close to the same model's
    in fp32 (torch's adds, no autocast) as the other's, to twice its error plus a ten-thousandth of the largest
    gradient norm."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.kernels import layernorm

    calls = []
    real = layernorm.triton_residual_add
    monkeypatch.setattr(layernorm, "triton_residual_add", lambda *a: calls.append(1) or real(*a))

    def grads(choice, recompute, dropout=0.0, autocast=True):
        monkeypatch.setenv("MEGASTRIDE_RESIDUAL", choice)
        loss, model = _bf16_step({**SIX_LAYERS, "seq_len": 16384, "n_layers": 3, "dropout": dropout},
                                 {"checkpoint_activations": recompute}, autocast=autocast)
        return loss, [p.grad.clone() for p in model.parameters()]

    fused = {}
    for recompute in (True, False):
        before = len(calls)
        loss, got = fused[recompute] = grads("fused", recompute)
        assert len(calls) - before == 3  # each block's FFN add, in the forward (a recompute leaves it unread)
        ref_loss, ref = grads("plain", recompute)
        assert len(calls) - before == 3
        assert loss == ref_loss
        _bf16_apart(got, ref, "fused against plain: ")
        _, exact = grads("plain", recompute, autocast=False)
        floor = 1e-4 * max(g.norm().item() for g in exact)
        for i, (a, b, c) in enumerate(zip(got, ref, exact)):
            err, err_plain = (a - c).norm().item(), (b - c).norm().item()
            assert err <= 2 * err_plain + floor, f"parameter {i}: {err:.3g} from fp32, the plain stream's {err_plain:.3g}"
    for dropout in (0.0, 0.1):
        (loss, got), (ref_loss, ref) = (fused[True], fused[False]) if dropout == 0.0 else \
            (grads("fused", True, dropout), grads("fused", False, dropout))
        assert loss == ref_loss, dropout
        _bf16_apart(got, ref, f"dropout {dropout}, recomputed against not: ")


def _ffn_as_exact_as_torchs(monkeypatch, ours_env: dict, recompute: bool, proj_bias: bool = False) -> None:
    """The two-layer model's loss and every parameter's gradient under bf16 autocast with ``ours_env`` set at most
    twice as far from the same model in fp32 (torch's FFN path) as torch's path under bf16 autocast, plus a
    ten-thousandth of the largest gradient's norm; fc's biases (and with ``proj_bias`` proj's) moved away from their
    zero init first, so a lost bias gradient shows, and fc's compared, not floored."""
    import torch

    def biased(model):
        with torch.no_grad():
            for block in model.blocks:
                block.ffn.fc.bias.normal_(0.0, 0.5)
                if proj_bias:
                    block.ffn.proj.bias.normal_(0.0, 0.1)

    def grads(env, autocast=True):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        loss, model = _bf16_step({**SIX_LAYERS, "seq_len": 16384, "n_layers": 2},
                                 {"checkpoint_activations": recompute}, biased, autocast)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters()}

    torch_env = {name: "torch" if name == "MEGASTRIDE_FFN" else "0" for name in ("MEGASTRIDE_FFN", *ours_env)}
    loss, got = grads(ours_env)
    low_loss, low = grads(torch_env)
    exact_loss, exact = grads(torch_env, autocast=False)
    assert abs(loss - exact_loss) <= 2 * abs(low_loss - exact_loss) + 1e-4 * abs(exact_loss)
    floor = 1e-4 * max(g.norm().item() for g in exact.values())
    for name in exact:
        err, err_torch = (got[name] - exact[name]).norm().item(), (low[name] - exact[name]).norm().item()
        assert err <= 2 * err_torch + floor, f"{name}: {err:.3g} from fp32, torch's path {err_torch:.3g}"
    assert all(exact[f"blocks.{i}.ffn.fc.bias"].norm().item() > 20 * floor for i in range(2))  # compared, not floored


def test_ffn_bias_in_the_silu_kernel_is_as_exact_as_torchs_on_the_gpu(monkeypatch):
    """On CUDA under bf16 autocast, the FFNs with fc's bias added (and its gradient summed) in the SiLU's kernels
    (kernels.linear_silu) train as exactly as torch's path: the kernel adds the bias to the unrounded product
    where cuBLAS rounds the sum, so the two differ by bf16 rounding, and each is measured against the same model
    in fp32 (torch's path): the kernel path's loss and every parameter's gradient at most twice as far from it
    as torch's path's, plus a ten-thousandth of the largest gradient's norm."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.kernels import bias_silu

    calls = []
    real = bias_silu.triton_bias_silu
    monkeypatch.setattr(bias_silu, "triton_bias_silu", lambda *a: calls.append(1) or real(*a))
    _ffn_as_exact_as_torchs(monkeypatch, {"MEGASTRIDE_FFN": ""}, recompute=False)
    assert len(calls) == 2  # each block's FFN, in the kernels' pass only


@pytest.mark.parametrize("recompute", [False, True])
def test_ffn_in_one_product_each_way_is_as_exact_as_torchs_on_the_gpu(recompute, monkeypatch):
    """On CUDA under bf16 autocast, the FFNs through ``kernels.ffn_gemm`` (MEGASTRIDE_FFN_GEMM=1: fc's product with
    its bias and SiLU in the epilogue, the backward's product with proj's weight in dz's kernel; with every block
    recomputed also the first forward without gradients and the recompute's unread proj) train as exactly as
    torch's path: the loss and every parameter's gradient at most twice as far from the same model in fp32 as
    torch's path's, plus a ten-thousandth of the largest gradient's norm."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.kernels import ffn_gemm

    calls = []
    real = ffn_gemm.feed_forward
    monkeypatch.setattr(ffn_gemm, "feed_forward", lambda *a: calls.append(1) or real(*a))
    _ffn_as_exact_as_torchs(monkeypatch, {"MEGASTRIDE_FFN": "", "MEGASTRIDE_FFN_GEMM": "1"}, recompute, proj_bias=True)
    assert len(calls) == (4 if recompute else 2)  # each block's FFN, and again in its recompute


def test_ffn_in_one_product_without_gradients_trains_as_exactly_as_torchs_on_the_gpu(monkeypatch):
    """MEGASTRIDE_FFN_GEMM=nograd on CUDA under bf16 autocast, every block recomputed: each block's first forward
    (no gradients recorded) goes through ``ffn_gemm.feed_forward`` and feeds the next block, the recompute and the
    backward through the default path; the loss and every parameter's gradient at most twice as far from the same
    model in fp32 as torch's path's, plus a ten-thousandth of the largest gradient's norm."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.kernels import ffn_gemm

    calls = []
    real = ffn_gemm.feed_forward
    monkeypatch.setattr(ffn_gemm, "feed_forward", lambda *a: calls.append(torch.is_grad_enabled()) or real(*a))
    _ffn_as_exact_as_torchs(monkeypatch, {"MEGASTRIDE_FFN": "", "MEGASTRIDE_FFN_GEMM": "nograd"}, True, proj_bias=True)
    assert calls == [False, False]  # each block's first forward only, never where a gradient is recorded


def test_every_config_of_the_one_product_ffn_is_as_exact_as_torchs_on_the_gpu(monkeypatch):
    """Each config the one-product FFN's two autotuners can choose (by pointers, TMA, persistent and
    warp-specialised programs; ``ffn_gemm.configs``), forced in turn (``ffn_check.check_every_config``): y and the
    five gradients within twice torch's bf16 error from float64 (plus bf16's atol), the same y without gradients
    to the rounding, the backward bitwise the same twice, at 8,195 rows, which no tile divides, every output buffer
    filled with NaN first (``ffn_gemm.POISON``), so an element no program writes shows."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from megastride.kernels import ffn_check, ffn_gemm

    monkeypatch.setattr(ffn_gemm, "POISON", True)
    reports = ffn_check.check_every_config()
    assert len(reports) == max(len(ffn_gemm.configs(ffn_gemm._linear_silu_kernel)),
                               len(ffn_gemm.configs(ffn_gemm._silu_grad_kernel)))
    failed = [r["name"] for r in reports if not r["ok"]]
    assert not failed, failed
