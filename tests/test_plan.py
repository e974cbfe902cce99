"""The memory and FLOPs planner: exact parameter and layout bytes, ZeRO arithmetic, pair counts."""

import json
from pathlib import Path

import pytest
import torch

from megastride.engine.config import config_from_dict, layer_pattern, load_config
from megastride.engine.model import SparseTransformer
from megastride.engine.plan import (
    CUBLAS_WORKSPACE_BYTES,
    GB,
    HOST_OFFLOAD_SETS,
    closed_form_pairs,
    count_params,
    layer_pairs,
    pinned_bytes,
    plan,
    step_flops,
)
from megastride.kernels import build_layout
from megastride.launch.plan import main as plan_main

ROOT = Path(__file__).resolve().parents[1]


def config(layers=("fixed(64,16)",), model=None, **train):
    tree = {"model": {"seq_len": 512, "d_model": 64, "n_layers": 3, "n_heads": 4,
                      "attention": {"block": 32, "layers": list(layers)}, **(model or {})},
            "train": {"precision": "bf16", **train}}
    return config_from_dict(tree)


def test_param_bytes_match_the_real_model():
    """Parameter bytes are the real model's element count times the runtime's weight size."""
    cfg = config(model={"qk_mult": 0.5, "ffn_mult": 2.0})
    n = sum(p.numel() for p in SparseTransformer(cfg.model).parameters())
    assert count_params(cfg.model).total == n
    step = lambda p: p.phases["optimizer step"]  # noqa: E731
    assert step(plan(cfg, runtime="torch"))["parameters"] == 4 * n  # fp32 weights under autocast
    assert step(plan(cfg, runtime="deepspeed"))["parameters"] == 2 * n  # bf16 weights
    ds = step(plan(cfg, runtime="deepspeed"))
    assert ds["optimizer states"] == 12 * n  # fp32 master + Adam m, v
    fp32 = step(plan(config(model={"qk_mult": 0.5, "ffn_mult": 2.0}, precision="fp32"), runtime="deepspeed"))
    assert fp32["optimizer states"] == 8 * n and fp32["gradients"] == 4 * n


def test_zero_stages_shard_over_the_world():
    """Stage 1 shards optimizer states, stage 2 also gradients, stage 3 also weights."""
    n = count_params(config().model).total
    for stage, sharded in ((1, {"optimizer states"}), (2, {"optimizer states", "gradients"}),
                           (3, {"optimizer states", "gradients", "parameters"})):
        one = plan(config(zero_stage=stage), world_size=1).phases["optimizer step"]
        eight = plan(config(zero_stage=stage), world_size=8).phases["optimizer step"]
        for item in ("parameters", "gradients", "optimizer states"):
            assert eight[item] == pytest.approx(one[item] / (8 if item in sharded else 1)), (stage, item)
    assert plan(config(zero_stage=0), world_size=8).phases["optimizer step"]["optimizer states"] == 12 * n


def test_offload_moves_bytes_to_the_host():
    """Optimizer offload moves the optimizer states to CPU; stage-3 parameter offload the weights."""
    base = plan(config(zero_stage=2), world_size=4)
    off = plan(config(zero_stage=2, offload_optimizer=True), world_size=4)
    assert off.items["optimizer states"] == 0
    share = off.params / 4  # ZeRO partitions the optimizer over the 4 ranks
    assert base.phases["optimizer step"]["optimizer states"] == pytest.approx(12 * share)
    # DeepSpeed's host partition: pinned fp32 weights and fp32 gradients (powers of two), the moments
    assert off.cpu["optimizer states"] == pinned_bytes(4 * share) + 8 * share > 12 * share
    assert off.cpu["fp32 gradients"] == pinned_bytes(4 * share) >= 4 * share
    assert off.peak_bytes < base.peak_bytes
    both = plan(config(zero_stage=3, offload_optimizer=True, offload_params=True), world_size=4)
    assert both.items["parameters"] == 0 and both.cpu["parameters"] > 0


@pytest.mark.parametrize("spec", ["dense", "local(48)", "strided(64)", "strided(48)", "fixed(64,16)",
                                  "fixed(128,32)", "fixed(64,16,per_head=2)", "window(64)", "summary(64,16)",
                                  "stride(32)"])
def test_closed_form_pairs_equal_block_counting(spec):
    """The O(n) closed form of unmasked pairs equals counting inside the compressed blocks."""
    pattern = layer_pattern(spec.replace("stride(", "strided_half("), 2, 768, 32)
    layout = build_layout(pattern, 768, 32)
    for h, head in enumerate(pattern.heads):
        assert closed_form_pairs(head, 768) == layout.count_pairs(h), (spec, h)


def test_layer_pairs_falls_back_to_counting():
    """Unions without a closed form (three components) are counted from the layout."""
    pattern = layer_pattern("fixed(64,16)+strided(32)", 2, 512, 32)
    assert closed_form_pairs(pattern.heads[0], 512) is None
    layout = build_layout(pattern, 512, 32)
    assert layer_pairs(pattern, 512, layout) == [layout.count_pairs(0), layout.count_pairs(1)]


def test_layout_bytes_are_the_models_layouts():
    """Layout metadata equals the sum over the model's per-layer cached layouts; dense layers keep none."""
    cfg = config(layers=("fixed(64,16)", "strided(64)", "dense"))
    model = SparseTransformer(cfg.model)
    real = sum(b.attn.layout(512, torch.device("cpu")).nbytes for b in model.blocks)
    assert plan(cfg).layout_bytes == real
    sparse_only = sum(b.attn.layout(512, torch.device("cpu")).nbytes for b in model.blocks[:2])
    assert real == sparse_only > 0
    assert plan(config(layers=("dense",))).layout_bytes == 0


def test_step_flops_match_the_issue_formula():
    """FLOPs = 6 * non-embedding params * tokens + 12 * unmasked pairs * d * layers (qk width = d)."""
    cfg = config(micro_batch_size=2, grad_accum=3)
    p = plan(cfg)
    layout = build_layout(cfg.model.patterns()[0], 512, 32)
    pairs = sum(layout.count_pairs(h) for h in range(4)) / 4  # per head, all heads alike
    tokens = 512 * 2 * 3
    expected = 6 * SparseTransformer(cfg.model).num_params(non_embedding=True) * tokens + 12 * pairs * 64 * 3 * 6
    assert p.flops == pytest.approx(expected)
    assert p.mfu(1.0, peak_flops=p.flops) == pytest.approx(1.0)
    assert step_flops(cfg.model, count_params(cfg.model), [[0] * 4] * 3, 512, 1) == pytest.approx(
        6 * count_params(cfg.model).non_embedding * 512)


def test_memory_grows_with_length_and_without_recompute():
    """The peak grows with length and batch, recompute lowers it, and the items sum to the peak. (What grows:
    a tiny model's peak is mostly cuBLAS's workspaces, the same at every length.)"""
    cfg = config()
    peaks = [plan(cfg, n, runtime="torch").peak_bytes - CUBLAS_WORKSPACE_BYTES for n in (512, 2048, 8192)]
    assert peaks == sorted(peaks) and peaks[-1] > 3 * peaks[0]
    assert plan(cfg, 512).items["cuBLAS workspaces"] == CUBLAS_WORKSPACE_BYTES
    on, off = plan(cfg, 4096), plan(config(checkpoint_activations=False), 4096)
    assert off.peak_bytes > on.peak_bytes
    assert plan(config(micro_batch_size=4), 4096).peak_bytes > on.peak_bytes
    assert sum(on.items.values()) == on.peak_bytes
    assert on.fits(on.peak_bytes) and not on.fits(on.peak_bytes - 1)
    assert plan(cfg, 1 << 16).density < plan(cfg, 512).density  # fixed(64,16): sparser at length


def test_plan_cli_table_json_and_exit_codes(tmp_path, capsys):
    """`megastride plan` prints a table or JSON; 0 if it fits, 1 if not, 2 for user errors."""
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": {"seq_len": 512, "d_model": 64, "n_layers": 2, "n_heads": 4,
                                          "attention": {"block": 32, "layers": ["strided(auto)"]}}}))
    assert plan_main([str(path), "--seq-len", "1024"]) == 0
    assert "total" in capsys.readouterr().out
    assert plan_main([str(path), "--json", "--world-size", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["world_size"] == 2 and data["peak_gb"] == pytest.approx(data["peak_bytes"] / GB)
    assert plan_main([str(path), "--gpu-memory-gb", "0.001"]) == 1
    for bad in (["--seq-len", "1000"], ["--set", "train.zero_stage=7"], ["--set", "train.offload_params=true"]):
        with pytest.raises(SystemExit) as exit_:
            plan_main([str(path), *bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("megastride plan: error: ") and "\n" not in err


def test_pinned_host_buffers_round_up_to_powers_of_two():
    """torch's caching host allocator takes the next power of two for every pinned allocation."""
    assert pinned_bytes(0) == 0 and pinned_bytes(1) == 1 and pinned_bytes(2) == 2 and pinned_bytes(3) == 4
    assert pinned_bytes(2 ** 33) == 2 ** 33 and pinned_bytes(2 ** 33 + 1) == 2 ** 34
    big = plan(config(model={"d_model": 96, "n_heads": 2}, cpu_checkpointing=True))  # 512 x 96 x 2 B an input
    assert big.cpu["block inputs"] == 3 * 2 ** 17 > 3 * 512 * 96 * 2


def test_cpu_checkpointing_moves_block_inputs_to_host():
    """With cpu_checkpointing the GPU keeps one block input; the other n_layers - 1 go to the host."""
    on, off = plan(config(cpu_checkpointing=True)), plan(config())
    resid = 512 * 64 * 2  # tokens x d_model x bf16 bytes
    assert on.cpu["block inputs"] == 3 * resid
    peak = "backward, last block"
    assert on.phases[peak]["block inputs"] == resid and off.phases[peak]["block inputs"] == 3 * resid
    assert on.peak_bytes == off.peak_bytes - 2 * resid
    overlap = plan(config(cpu_checkpointing=True, offload_overlap=True))  # + the prefetched input
    assert overlap.phases[peak]["block inputs"] == 2 * resid and overlap.cpu == on.cpu


def test_ffn_chunk_keeps_one_chunk_of_ffn_intermediates(monkeypatch):
    """With model.ffn_chunk the recomputed block's FFN tensors and their gradients cover one chunk. (Whole
    dK/dV columns: this tiny layout would split them on an H200, and their fp32 sums would then make the
    attention half, not the FFN, the chunked block's peak.)"""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")
    whole, chunked = plan(config()), plan(config(model={"ffn_chunk": 128}))
    f = 64 * 4  # ffn width
    peak = "backward, last block"
    saved = lambda p: p.phases[peak]["one block recomputed"]  # noqa: E731
    grads = lambda p: p.phases[peak]["backward transients"]  # noqa: E731
    assert saved(whole) - saved(chunked) == (512 - 128) * 2 * 2 * f  # scaled fc out and GELU out, bf16
    assert grads(whole) - grads(chunked) == (512 - 128) * 2 * f  # one FFN-width gradient in flight, bf16
    assert plan(config(model={"ffn_chunk": 512})).peak_bytes == whole.peak_bytes  # one chunk = no chunking


def test_checkpoint_group_keeps_segment_inputs():
    """Groups of k blocks: n/k segment inputs plus one segment's k block inputs, on GPU or host."""
    resid = 512 * 64 * 2
    peak = "backward, last block"
    six = lambda **t: plan(config(model={"n_layers": 6}, **t))  # noqa: E731
    assert six().phases[peak]["block inputs"] == 6 * resid
    assert six(checkpoint_group=2).phases[peak]["block inputs"] == (2 + 2) * resid  # 3 segments
    assert six(checkpoint_group=4).phases[peak]["block inputs"] == max(1 + 2, 0 + 4) * resid  # (4, 2)
    host = six(checkpoint_group=2, cpu_checkpointing=True)
    assert host.phases[peak]["block inputs"] == 2 * resid and host.cpu["block inputs"] == 3 * resid
    assert six(checkpoint_group=2).phases["forward"]["activations"] < six().phases["forward"]["activations"]


def test_host_memory_check_counts_every_rank_of_a_node(tmp_path, capsys):
    """Pinned block inputs must fit the node's RAM shared by its ranks: a clear one-line problem, the
    CLI's exit status 1, and the trainer refusing to start (the H200 run that passed 128 GB died in a
    CUDA error mid-step)."""
    from megastride.engine.plan import HOST_USABLE_FRACTION, check_host_memory

    p = plan(config(cpu_checkpointing=True))
    need = p.host_bytes
    assert need == 3 * 512 * 64 * 2
    room = need / HOST_USABLE_FRACTION
    assert check_host_memory(p, 1, host_bytes=room * 1.01) is None
    problem = check_host_memory(p, 2, host_bytes=room * 1.01)  # two ranks double the need
    assert problem and problem.startswith("host memory: 2 rank(s)") and "block inputs" in problem
    assert check_host_memory(plan(config()), 8, host_bytes=1.0) is None  # nothing on the host

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": {"seq_len": 512, "d_model": 64, "n_layers": 3, "n_heads": 4,
                                          "attention": {"block": 32, "layers": ["fixed(64,16)"]}},
                                "train": {"cpu_checkpointing": True}}))
    tiny = str(need * 0.5 / 1e9)
    assert plan_main([str(path), "--host-memory-gb", tiny]) == 1
    assert "host memory does NOT fit" in capsys.readouterr().out
    assert plan_main([str(path), "--host-memory-gb", "1"]) == 0
    assert plan_main([str(path), "--host-memory-gb", "1", "--world-size", "8", "--gpus-per-node", "8"]) == 0
    with pytest.raises(SystemExit) as exit_:
        plan_main([str(path), "--host-memory-gb", "-1"])
    assert exit_.value.code == 2


def test_trainer_refuses_host_offload_beyond_the_ram(monkeypatch):
    from megastride.engine import plan as planner
    from megastride.engine import trainer
    from megastride.engine.config import ConfigError

    cfg = config(cpu_checkpointing=True)
    monkeypatch.setattr(planner, "physical_memory_bytes", lambda: 1000.0)
    monkeypatch.setattr(planner, "cgroup_memory_limit_bytes", lambda: None)
    with pytest.raises(ConfigError, match="host memory: 1 rank.* of this node's"):
        trainer.check_host_memory(cfg, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="host memory: 4 rank"):
        trainer.check_host_memory(cfg, 4)
    monkeypatch.setattr(planner, "physical_memory_bytes", lambda: 1e12)
    trainer.check_host_memory(cfg, 4)
    trainer.check_host_memory(config(), 1)  # no offload: nothing to check
    # a container's or a Slurm job's cgroup lets the process use less than the machine's RAM: that is the room
    monkeypatch.setattr(planner, "cgroup_memory_limit_bytes", lambda: 1000.0)
    with pytest.raises(ConfigError, match="host memory: 4 rank.* of this job's cgroup limit of 0 GB"):
        trainer.check_host_memory(cfg, 4)


def _cgroup_tree(tmp_path, proc: str, limits: dict[str, str]) -> tuple[str, str]:
    """A /proc/self/cgroup text and a /sys/fs/cgroup stand-in holding ``limits`` (file path under it: text)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup").write_text(proc)
    for rel, text in limits.items():
        f = tmp_path / "sys" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    return str(tmp_path / "cgroup"), str(tmp_path / "sys")


def test_the_host_memory_a_process_may_use_is_its_cgroups_tightest_limit(tmp_path, monkeypatch):
    from megastride.engine import plan as planner

    limit = planner.cgroup_memory_limit_bytes
    # cgroup v2: the job's limit is tighter than the root's "max" and its step's; the tightest one above counts
    proc, root = _cgroup_tree(tmp_path / "v2", "0::/job/step\n", {"memory.max": "max", "job/memory.max": "8589934592",
                                                                 "job/step/memory.max": "max"})
    assert limit(proc, root) == 8589934592
    # cgroup v1 seen from a container: its own folder is not mounted, the root's limit is its own
    proc, root = _cgroup_tree(tmp_path / "v1", "4:memory:/slurm/uid_0/job_7\n3:cpu,cpuacct:/x\n",
                              {"memory/memory.limit_in_bytes": "4294967296"})
    assert limit(proc, root) == 4294967296
    # no limit: v1's 2^63 rounded to a page, v2's "max"; unreadable or garbled files and no file at all
    proc, root = _cgroup_tree(tmp_path / "none", "4:memory:/\n0::/\n", {"memory/memory.limit_in_bytes": "9223372036854771712",
                                                                        "memory.max": "max"})
    assert limit(proc, root) is None
    proc, root = _cgroup_tree(tmp_path / "bad", "0::/a\n", {"a/memory.max": "lots"})
    assert limit(proc, root) is None
    assert limit(str(tmp_path / "missing"), root) is None
    # the RAM or the limit, whichever is less; the limit alone where the RAM is unknown
    monkeypatch.setattr(planner, "physical_memory_bytes", lambda: 100e9)
    monkeypatch.setattr(planner, "cgroup_memory_limit_bytes", lambda: 60e9)
    assert planner.host_memory_bytes() == 60e9
    assert planner.host_share_bytes(2) == pytest.approx(planner.HOST_USABLE_FRACTION * 30e9)
    monkeypatch.setattr(planner, "cgroup_memory_limit_bytes", lambda: 200e9)
    assert planner.host_memory_bytes() == 100e9
    monkeypatch.setattr(planner, "physical_memory_bytes", lambda: 0.0)
    assert planner.host_memory_bytes() == 200e9


def test_training_start_notes_the_plan_and_warns_past_the_gpu():
    from megastride.engine.trainer import plan_note

    cfg = config(cpu_checkpointing=True)
    p = plan(cfg)
    fits = plan_note(cfg, 1, p.peak_bytes * 2)
    assert fits.startswith("plan: peak ") and "host" in fits and "warning" not in fits
    tight = plan_note(cfg, 1, p.peak_bytes * 0.5)
    assert tight.startswith("warning: plan: peak") and "may run out of GPU memory" in tight
    assert "host" not in plan_note(config(), 1, 1e12)


def test_plan_cli_follows_the_configs_runtime_unless_told(tmp_path, capsys):
    """Without --runtime the plan is for the runtime the config trains with (train.runtime)."""
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": {"seq_len": 512, "d_model": 64, "n_layers": 2, "n_heads": 4,
                                          "attention": {"block": 32, "layers": ["strided(auto)"]}},
                                "train": {"precision": "bf16"}}))

    def peak(*args):
        assert plan_main([str(path), "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)["peak_bytes"]

    cfg, gpu = load_config(path), 141e9  # the CLI's --gpu-memory-gb, which train.keep_attention "auto" fits
    assert peak() == plan(cfg, runtime="deepspeed", gpu_bytes=gpu).peak_bytes
    assert peak("--set", "train.runtime=torch") == plan(cfg, runtime="torch", gpu_bytes=gpu).peak_bytes != peak()
    assert peak("--set", "train.runtime=torch", "--runtime", "deepspeed") == peak()


def test_one_blocks_backward_peaks_in_the_worse_of_its_halves():
    """A recomputed block's backward holds its whole saved set and the FFN's gradients first, then,
    with the FFN half freed, its attention half and the kernels' workspace: the plan takes the larger
    of the two moments, not their sum. Wide FFN intermediates: the FFN half; an FFN run in small
    chunks beside split (strided) heads: the attention half."""
    from megastride.engine import plan as planner

    def phase(**model):
        p = plan(config(("strided(32)",), model=model), runtime="deepspeed")
        return p.phases["backward, first block"]

    tokens, prec = 512, planner.precision_of("deepspeed", "bf16")
    wide = phase()
    attn_half, ffn_half = planner.block_saved_parts(config(("strided(32)",)).model, prec)
    assert wide["attention workspace"] == 0.0
    assert wide["one block recomputed"] == tokens * (attn_half + ffn_half + planner.ffn_saved_bytes(config().model, prec))
    chunked = phase(ffn_chunk=32)
    assert chunked["one block recomputed"] == tokens * attn_half
    assert chunked["attention workspace"] == tokens * planner.attention_workspace_bytes(
        config(("strided(32)",)).model, prec, 512)


def test_attention_workspace_and_relayout_follow_the_kernels():
    """Heads split into two parts (strided) write the first part's partial results into the outputs
    (PARTIALS "output", the default) or, under "fp32", add into fp32 dq, dk, dv before the cast; one-part
    heads write them in the input dtype. The output's re-layout for proj is a copy only behind dense SDPA."""
    from megastride.engine import plan as planner

    prec = planner.precision_of("deepspeed", "bf16")
    d, h = 64, 4
    # fixed(64,32) in 32-blocks: whole-block summaries, one part; fixed(64,16): a summary-first part and the
    # windows, two launches like the strided head's
    strided, fixed, dense, gathered = (config((spec,)).model
                                       for spec in ("strided(32)", "fixed(64,32)", "dense", "fixed(64,16)"))
    assert planner.partials_in_outputs(gathered, 512)
    assert planner.attention_workspace_bytes(gathered, prec, 512) == (3 * 2 + 2) * d + 4 * h
    assert planner.block_saved_parts(dense, prec)[0] - planner.block_saved_parts(fixed, prec)[0] == 2 * d
    # one-part heads: dq, dk, dv in the input dtype; split columns finished in the kernel (the default "last"
    # finish): no fp32 dk, dv; under the "cast" finish fp32 dk, dv beside them where the columns split
    assert planner.splits_columns(fixed, 512, batch=1)  # a tiny layout: its longest column is the critical path
    assert planner.attention_workspace_bytes(fixed, prec, 512) == (3 * 2 + 2) * d + 4 * h
    assert not planner.splits_columns(fixed, 512, batch=1, sms=1)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH", "cast")
        assert planner.attention_workspace_bytes(fixed, prec, 512) == (2 * 4 + 3 * 2 + 2) * d + 4 * h
    # PARTIALS "output" (the default): the strided head's first part writes into the final gradients, no
    # fp32 sums; its autotuning then saves the outputs the last part completes in place (bf16 out, dK, dV)
    assert planner.partials_in_outputs(strided, 512) and not planner.partials_in_outputs(fixed, 512)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT", "0")
        assert planner.attention_workspace_bytes(fixed, prec, 512) == (3 * 2 + 2) * d + 4 * h
        assert planner.attention_workspace_bytes(strided, prec, 512) == (3 * 2 + 2) * d + 4 * h
        assert planner.autotune_saved_bytes(strided, 512, prec.compute) == (2 * d + 4 * h, 2 * 2 * d)
        mixed = config(("fixed(64,16)|strided(16)|strided(32)|local(100)",)).model  # three launches: fp32 sums
        assert not planner.partials_in_outputs(mixed, 512)
        assert planner.attention_workspace_bytes(mixed, prec, 512) == (3 * 4 + 3 * 2 + 2) * d + 4 * h
        # PARTIALS "fp32": the strided head's first part adds into three fp32 sums
        m.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", "fp32")
        assert not planner.partials_in_outputs(strided, 512)
        assert planner.attention_workspace_bytes(strided, prec, 512) == (3 * 4 + 3 * 2 + 2) * d + 4 * h
    with pytest.MonkeyPatch.context() as m:  # split columns too: the three fp32 sums hold dK and dV anyway
        m.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", "fp32")
        assert planner.attention_workspace_bytes(strided, prec, 512) == (3 * 4 + 3 * 2 + 2) * d + 4 * h


def test_column_split_follows_the_kernels_rule_at_the_measured_shapes():
    """splits_columns takes blocksparse.dkdv_split's "auto" rule on an H200's 132 SMs: the fixed pattern at
    12,288 tokens splits with 2 heads (longest column 6.1x a fair share), not with 8 (1.5x), and not at
    65,536 tokens with 8 heads or 2 per sequence in a batch of 4."""
    from megastride.engine import plan as planner
    from megastride.kernels import blocksparse

    def model(n, heads):  # the bench's fixed case: l ~ sqrt(128 n), one summary block of 128
        stride = {12288: 1024, 65536: 2048}[n]
        return config((f"fixed({stride},128)",), model={"seq_len": n, "n_heads": heads, "d_model": 64 * heads,
                                                        "attention": {"block": 128, "layers": [f"fixed({stride},128)"]}}).model

    assert planner.splits_columns(model(12288, 2), 12288, batch=1)
    assert not planner.splits_columns(model(12288, 8), 12288, batch=1)
    assert not planner.splits_columns(model(65536, 8), 65536, batch=1)
    assert not planner.splits_columns(model(65536, 2), 65536, batch=4)
    longest, total = planner.layout_stats(model(12288, 2), 12288).columns[0]
    assert longest * 132 >= blocksparse.SPLIT_RATIO * total > longest * 132 / 4


def test_first_step_adds_the_outputs_autotuning_saves_where_heads_are_split(monkeypatch):
    """A first step that autotunes holds, beside its usual peak, the outputs the tuning trials save:
    under PARTIALS "output" (the default) the strided pattern's last (local) part completes the outputs
    in place, so its trials save them (bf16 output and lse in the forward, bf16 dK and dV in the
    backward); under "fp32" only the lse its last part merges into, in the forward (the last
    part reads the permuted part's fp32 sums and writes the final outputs apart); where a merging part
    is not the last launch (a head split over a stride of its own and the local part, before a wider
    part of other heads), also the fp32 running output and, in the first backward (the last block's
    attention half), fp32 dK and dV; nothing for one-part heads. Fitting (fits, checkpoint_blocks=auto)
    uses it."""
    from megastride.engine import plan as planner

    fixed = plan(config(("fixed(64,32)",)))  # whole-block summaries: one part (fixed(64,16) has two)
    assert fixed.first_step == {} and fixed.first_step_peak_bytes == fixed.peak_bytes
    tokens, d, h = 4096, 256, 4
    prec = planner.precision_of("deepspeed", "bf16")

    def first_of(cfg, p):
        weights, _ = planner._weight_bytes(cfg, p.params, prec, "deepspeed", 1)
        return planner._phases(cfg.model, 3, prec, planner.count_params(cfg.model), weights, p.layout_bytes,
                               tokens, "deepspeed")[1]

    model = {"seq_len": 4096, "d_model": 256, "ffn_chunk": 64}
    strided = config(("strided(64)",), model=model)
    p = plan(strided)
    first = first_of(strided, p)
    assert first["forward"] == p.phases["forward"] | {"autotuning saved outputs": tokens * (2 * d + 4 * h)}
    assert first["backward, last block"]["autotuning saved outputs"] == tokens * 2 * 2 * d
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_PARTIALS", "fp32")
    p = plan(strided)
    assert first_of(strided, p) == {"forward": p.phases["forward"] | {"autotuning saved outputs": tokens * 4 * h}}
    assert p.first_step_peak_bytes == p.peak_bytes  # the lse alone stays under the backward's peak
    # head 0 in its own stride's part and the local part, launched before the 3-head part of stride 32
    cfg = config(("strided(64)|strided_half(32)|strided_half(32)|strided_half(32)",), model=model)
    p = plan(cfg)
    first = first_of(cfg, p)
    backward, forward = first["backward, last block"], first["forward"]
    assert backward["autotuning saved outputs"] == tokens * 2 * 4 * d  # fp32 dK, dV
    assert backward["attention workspace"] == tokens * planner.attention_workspace_bytes(cfg.model, prec, tokens)
    assert forward == p.phases["forward"] | {"autotuning saved outputs": tokens * (4 * d + 4 * h)}  # output, lse
    assert p.first_step == max(first.values(), key=lambda items: sum(items.values())) == backward
    assert p.first_step_peak_bytes > p.peak_bytes
    between = (p.peak_bytes + p.first_step_peak_bytes) / 2
    assert not p.fits(between) and p.fits(p.first_step_peak_bytes)
    assert "first step on a cold autotuning cache" in p.table()
    for k in range(cfg.model.n_layers + 1):  # auto takes the fewest recomputed blocks whose first step fits
        q = plan(planner.with_checkpoint_blocks(cfg, k))
        if q.first_step_peak_bytes <= between:
            break
    assert planner.choose_checkpoint_blocks(cfg, budget_bytes=between) == k


def test_keep_attention_counts_one_output_and_lse_per_recomputed_block():
    """train.keep_attention: every recomputed block's attention output (bf16, the padded head width) and
    fp32 log-sum-exps stay live from the forward to its backward; dense layers (SDPA) keep nothing."""
    kept = 512 * (64 * 2 + 4 * 4)  # tokens x (d_model x bf16 + heads x fp32)
    on, off = plan(config(keep_attention=True)), plan(config())
    for phase in ("forward", "loss backward", "backward, last block"):
        assert on.phases[phase]["kept attention outputs"] == 3 * kept, phase
    assert on.phases["backward, first block"]["kept attention outputs"] == kept
    assert on.peak_bytes == off.peak_bytes + 3 * kept
    two = plan(config(keep_attention=True, checkpoint_blocks=2))  # the third block keeps everything anyway
    assert two.phases["backward, last block"]["kept attention outputs"] == 2 * kept
    assert "kept attention outputs" not in plan(config(keep_attention=True, checkpoint_blocks=0)).phases["forward"]
    dense = plan(config(layers=("dense",), keep_attention=True))
    assert "kept attention outputs" not in dense.phases["forward"]


def test_a_keep_count_plans_that_many_blocks_outputs_and_attention_forwards():
    """train.keep_attention=c: the first c recomputed blocks' outputs are live where all of them were, and
    their recompute skips the attention forward: 0 plans as false, the recomputed count as true, counts
    between lie strictly between in memory and in recompute FLOPs (a dense layer among them saves none)."""
    from megastride.engine import plan as planner

    kept = 512 * (64 * 2 + 4 * 4)  # tokens x (d_model x bf16 + heads x fp32)
    plans = [plan(config(keep_attention=c)) for c in range(4)]
    false, true = plan(config(keep_attention=False)), plan(config(keep_attention=True))
    assert plans[0].phases == false.phases and plans[3].phases == true.phases
    assert [p.keep_attention for p in plans] == [0, 1, 2, 3] and (false.keep_attention, true.keep_attention) == (0, 3)
    for c, p in enumerate(plans):
        for phase in ("forward", "loss backward", "backward, last block"):
            assert p.phases[phase].get("kept attention outputs", 0) == c * kept, (c, phase)
        assert p.phases["backward, first block"].get("kept attention outputs", 0) == (kept if c else 0)
        assert p.peak_bytes == false.peak_bytes + c * kept
    assert "recompute every block, attention outputs kept in 2 of 3 recomputed blocks" in plans[2].table()
    assert "recompute every block, attention outputs kept\n" in true.table()
    assert json.loads(plans[2].json())["keep_attention"] == 2
    assert plan(config(keep_attention=2, checkpoint_blocks=2)).keep_attention == 2
    assert plan(config(keep_attention=1, checkpoint_activations=False)).keep_attention == 0

    def work(cfg, c):
        params, pairs = count_params(cfg.model), planner.layout_stats(cfg.model, 512).pairs
        return planner.recompute_flops(cfg.model, params, pairs, 3, c)

    fixed = config()
    works = [work(fixed, c) for c in range(4)]
    assert works == sorted(works, reverse=True) and len(set(works)) == 4
    forward = works[0] - works[1]  # one fixed layer's QK^T and PV
    assert works[0] - works[2] == pytest.approx(2 * forward) and works[0] - works[3] == pytest.approx(3 * forward)
    mixed = config(layers=("fixed(64,16)", "dense"))  # layers fixed, dense, fixed
    assert work(mixed, 0) > work(mixed, 1) == work(mixed, 2) > work(mixed, 3)
    with pytest.raises(AssertionError, match="number of blocks"):
        work(fixed, True)  # a bool is no count


@pytest.mark.gpu
def test_the_ffns_backward_holds_its_saved_intermediates_and_one_gradient_of_their_width():
    """On a GPU, measured: the FFN (the enwik8 model's, d 512, width 2048, bf16 autocast as the model runs it)
    saves its two (T, width) intermediates (``ffn_saved_bytes``) and its backward adds one gradient of that
    width at a time (``ffn_transient_bytes``), not two: proj's input gradient is allocated while both saved
    tensors are held, and SiLU's input gradient as proj's saved input is freed. The rest is d-wide (the
    input's gradient) or weight-sized: 0.52 of a width on the H200 (2026-12-03), within what the plan counts
    for a block's residual gradients beside it (``backward_transient_bytes``, two fp32 d-wide tensors)."""
    from megastride.engine.model import FeedForward
    from megastride.engine.plan import backward_transient_bytes, ffn_saved_bytes, ffn_transient_bytes, precision_of

    m = load_config(ROOT / "configs" / "enwik8.yaml").model
    prec, tokens = precision_of("torch", "bf16"), 65536
    width = tokens * prec.compute * m.ffn_width
    ffn = FeedForward(m).cuda()

    def forward():
        x = torch.randn(1, tokens, m.d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return x, ffn(x)

    x, out = forward()  # once first: cuBLAS's workspaces, the weights' gradients
    out.backward(torch.ones_like(out))
    del x, out
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    x, out = forward()
    grad = torch.ones_like(out)
    saved = torch.cuda.memory_allocated() - before - x.nbytes - out.nbytes - grad.nbytes
    assert saved == pytest.approx(tokens * ffn_saved_bytes(m, prec), rel=0.05)
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    out.backward(grad)
    transient = torch.cuda.max_memory_allocated() - start
    planned = tokens * ffn_transient_bytes(m, prec)
    rest = tokens * backward_transient_bytes(m, prec)
    assert planned == width and planned <= transient <= planned + rest, (transient / width)


def test_the_fused_backwards_dq_sums_are_planned_where_they_run(monkeypatch):
    """``fused_dq_bytes``: the fp32 dQ sums of the Gluon dK/dV kernel that adds dQ (no dQ kernel) join the
    attention workspace where its setting takes them (at head dim 64 on 128-blocks, with no head merged from a
    permuted part; never at head dim 16, on 32-blocks or for strided heads); fp16 sums ("auto" from 262,144
    tokens, or "fp16") take dQ's own storage, no bytes of their own."""
    from megastride.engine import plan as planner

    prec = planner.precision_of("deepspeed", "bf16")
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", raising=False)
    wide = {"d_model": 512, "n_heads": 8, "attention": {"block": 128, "layers": ["fixed(256,128)"]}}
    fixed = config(model=wide).model
    strided = config(model={**wide, "attention": {"block": 128, "layers": ["strided(128)"]}}).model
    assert planner.fused_dq_bytes(fixed, prec, 512) == 0.0  # "auto" under 262,144 tokens
    assert planner.fused_dq_bytes(fixed, prec, 262144) == 0.0  # fp16 sums in dQ
    base = planner.attention_workspace_bytes(fixed, prec, 512)
    for setting, size in (("fp16", 0), ("fp32", 4)):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", setting)
        assert planner.fused_dq_bytes(fixed, prec, 512) == size * 512
        assert planner.attention_workspace_bytes(fixed, prec, 512) == base + size * 512
        assert planner.fused_dq_bytes(strided, prec, 512) == 0.0
        assert planner.fused_dq_bytes(config(("fixed(64,32)",)).model, prec, 512) == 0.0  # head dim 16
        assert planner.fused_dq_bytes(fixed, planner.precision_of("deepspeed", "fp32"), 512) == 0.0
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "0")
    assert planner.fused_dq_bytes(fixed, prec, 1 << 20) == 0.0


def test_the_plan_says_where_a_ranks_host_share_comes_from(monkeypatch):
    """`megastride plan` names the basis of the host verdict: the RAM, the cgroup's lower limit, or --host-memory-gb."""
    from megastride.engine import plan as planner

    monkeypatch.setattr(planner, "physical_memory_bytes", lambda: 128e9)
    monkeypatch.setattr(planner, "cgroup_memory_limit_bytes", lambda: None)
    assert planner.host_basis_words(1) == "85% of this machine's 128 GB of RAM"
    monkeypatch.setattr(planner, "cgroup_memory_limit_bytes", lambda: 64e9)
    assert planner.host_basis_words(2) == "85% of this process's cgroup limit of 64 GB over 2 ranks"
    assert planner.host_share_bytes(2) == pytest.approx(0.85 * 32e9)
    assert planner.host_basis_words(8, 512e9) == "85% of the node's 512 GB over 8 ranks"
    p = plan(config(cpu_checkpointing=True))
    assert "host memory fits in this rank's 1000 GB (0% used; 85% of the node's 512 GB)" in \
        p.table(None, 1e12, "85% of the node's 512 GB")


def test_plan_cli_names_the_host_offload_that_would_fit(capsys):
    """A config that does not fit gets one `hint:` line naming the host-offload overrides and their plan, and those
    overrides do fit (exit 0, the same first-step peak); no hint where the config fits, where the node's RAM cannot
    hold the inputs, or in JSON."""
    at_1m = [str(ROOT / "configs" / "enwik8.yaml"), "--seq-len", "1048576", "--gpu-memory-gb", "80", "--runtime", "torch",
             "--set", "train.checkpoint_blocks=auto"]
    assert plan_main([*at_1m, "--host-memory-gb", "128"]) == 1
    hints = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hint: ")]
    assert len(hints) == 1 and "--set train.cpu_checkpointing=true --set train.offload_overlap=true: plan" in hints[0]
    gpu_gb = float(hints[0].split("plan ")[1].split(" GB")[0])
    assert gpu_gb <= 0.9 * 80
    sets = [arg for s in HOST_OFFLOAD_SETS for arg in ("--set", s)]
    assert plan_main([*at_1m, "--host-memory-gb", "128", *sets, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["first_step_peak_bytes"] / GB == pytest.approx(gpu_gb, abs=0.05)
    assert plan_main([*at_1m, "--host-memory-gb", "64"]) == 1  # 91 GB of inputs and outputs outgrow 85% of 64
    assert "hint:" not in capsys.readouterr().out
    assert plan_main([*at_1m, "--host-memory-gb", "128", "--json"]) == 1
    assert "hint:" not in capsys.readouterr().out
    assert plan_main([*at_1m[:3], "--gpu-memory-gb", "141", "--runtime", "torch", "--host-memory-gb", "128",
                      "--set", "train.checkpoint_blocks=auto"]) == 0  # an H200 holds it: nothing to hint
    assert "hint:" not in capsys.readouterr().out
