"""`megastride bench scaling` bookkeeping at tiny sizes on CPU: rows, files, slopes, skips, TensorBoard."""

import csv
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from megastride.engine import bench_scaling as B
from megastride.engine.config import ConfigError, config_from_dict
from megastride.engine.loglog import fit_slope, plot_loglog, tail_slope
from megastride.launch.bench_scaling import main as bench_main

TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.attention.block=32",
        "model.dropout=0.0", "train.precision=fp32"]


def tiny_base(precision="fp32"):
    tree = {"model": {"seq_len": 128, "d_model": 32, "n_layers": 1, "n_heads": 2,
                      "attention": {"block": 32, "layers": ["fixed(64,16)"]}}, "train": {"precision": precision}}
    return config_from_dict(tree)


def quiet(**kw):
    return B.Options(device="cpu", steps=1, warmup=1, log=lambda line: None, **kw)


def test_fit_slope_recovers_known_exponents():
    """Least squares on log-log data recovers a power law's exponent and prefactor."""
    xs = [1024 * 4**k for k in range(6)]
    for exponent in (1.0, 1.5, 2.0):
        slope, intercept = fit_slope(xs, [3e-9 * x**exponent for x in xs])
        assert slope == pytest.approx(exponent) and math.exp(intercept) == pytest.approx(3e-9)
    noisy = [2e-6 * x**1.5 * (1.0 + 0.02 * (-1) ** k) for k, x in enumerate(xs)]
    assert fit_slope(xs, noisy)[0] == pytest.approx(1.5, abs=0.02)
    overhead = [0.05 + 1e-9 * x**2 for x in xs]  # constant overhead bends the short end only
    assert tail_slope(xs, overhead, 65536) == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError):
        fit_slope([1.0], [2.0])


def test_sweep_writes_csv_json_png_and_tensorboard(tmp_path, capsys):
    """A tiny CPU sweep writes one CSV row per (kind, length), slopes, a log-log PNG and TB scalars."""
    out = tmp_path / "scaling"
    args = ["--device", "cpu", "--lengths", "64,128,256", "--steps", "1", "--out", str(out)]
    assert bench_main(args + [x for s in TINY for x in ("--set", s)]) == 0
    assert "fitted slopes" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [(r["kind"], int(r["seq_len"])) for r in rows] == [(k, n) for k in B.KINDS for n in (64, 128, 256)]
    assert all(r["status"] == "ok" and float(r["step_s"]) > 0 and float(r["plan_gb"]) > 0 for r in rows)
    assert {r["pattern"] for r in rows} == {"dense", "fixed(auto,32)", "strided(auto)"}
    row = rows[-1]
    assert float(row["tokens_per_s"]) == pytest.approx(256 / float(row["step_s"]), rel=1e-6)
    data = json.loads((out / "scaling.json").read_text())
    assert set(data["slopes"]) == set(B.KINDS) and len(data["rows"]) == 9 and data["meta"]["device"] == "cpu"
    with Image.open(out / "scaling.png") as img:
        assert img.size[0] >= 600 and img.format == "PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"scaling/{k}/{m}" for k in B.KINDS for m in ("step_s", "tokens_per_s", "mfu", "plan_gb")} <= tags
    assert [e.step for e in acc.Scalars("scaling/fixed/step_s")] == [64, 128, 256]


def test_series_stops_at_oom_and_the_next_series_runs(monkeypatch):
    """An out-of-memory error ends its series only; the row records it."""
    def fake(cfg, device, batch, steps, warmup, profile=None, trace=None, allocator=None, alternate=None,
             medians=None):
        if cfg.model.seq_len >= 128 and cfg.model.attention.layers[0] == "dense":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return 0.001 * cfg.model.seq_len, None

    monkeypatch.setattr(B, "time_steps", fake)
    rows = B.sweep(tiny_base(), ["dense", "fixed"], [64, 128, 256], quiet())
    assert [(r.kind, r.seq_len, r.status) for r in rows] == [
        ("dense", 64, "ok"), ("dense", 128, "oom"), ("fixed", 64, "ok"), ("fixed", 128, "ok"), ("fixed", 256, "ok")]
    assert rows[0].mfu > 0 and rows[1].step_s is None


def test_allocator_counts_cover_the_timed_calls_only(monkeypatch):
    """timed_calls reports the CUDA allocator over the timed calls alone: per call, the cache flushes after a
    failed cudaMalloc and the cudaMalloc / cudaFree calls (counters read before and after them, the warm-up's
    and the settling calls' left out), and the reserved peak; the row and its log line carry them."""
    state = {"calls": 0, "retries": 0, "mallocs": 0, "frees": 0}

    def call():  # a warm-up call allocates much; the later ones one flush, 3 mallocs, 2 frees each
        first = state["calls"] == 0
        state["calls"] += 1
        state["retries"] += 0 if first else 1
        state["mallocs"] += 50 if first else 3
        state["frees"] += 0 if first else 2

    stats = lambda device: {"num_alloc_retries": state["retries"], "num_device_alloc": state["mallocs"],  # noqa: E731
                            "num_device_free": state["frees"], "allocated_bytes.all.current": 7}
    monkeypatch.setattr(torch.cuda, "memory_stats", stats)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 6 * 2**30)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    alloc = {}
    median, peak = B.timed_calls(call, torch.device("cuda"), steps=4, warmup=1, settle=1, allocator=alloc)
    assert peak == 5 * 2**30 and state["calls"] == 6
    assert alloc == {"alloc_retries": 1.0, "device_mallocs": 3.0, "device_frees": 2.0,
                     "reserved_gb": pytest.approx(6 * 2**30 / B.planner.GB)}
    row = B.Row(kind="fixed", pattern="fixed(64,8)", seq_len=64, batch=1, status="ok", step_s=1.0, tokens_per_s=64.0,
                mfu=0.1, label="fixed", **alloc)
    assert B.describe(row).endswith(f"reserved {alloc['reserved_gb']:.2f} GB, allocator per step: 1 cache flushes, "
                                    "3 cudaMalloc, 2 cudaFree")
    quiet_row = replace(row, alloc_retries=0.0, device_mallocs=0.0, device_frees=0.0)
    assert B.describe(quiet_row).endswith(f"reserved {alloc['reserved_gb']:.2f} GB")
    assert "reserved" not in B.describe(replace(row, reserved_gb=None))
    assert B.allocator_counts(torch.device("cpu")) == {}


def test_time_budget_skips_lengths_it_cannot_afford(monkeypatch):
    """After the first point, lengths whose extrapolated steps exceed the budget are skipped."""
    monkeypatch.setattr(B, "time_steps", lambda cfg, *a: (1.0 * (cfg.model.seq_len / 64) ** 2, None))
    # the budget counts wall time too: 20 s leaves room for a busy machine's real seconds before the second point
    rows = B.run_series(tiny_base(), "dense", "dense", [64, 128, 256], quiet(budget_s=20.0))
    assert [r.status for r in rows] == ["ok", "ok", "skipped (time)"]  # 2 steps x 4 s fit; 2 x 16 s do not
    assert B.slopes(rows)["dense"] == pytest.approx(2.0)

    def alternated(cfg, *a):
        medians = a[-1]
        medians.update({"x": 1.0 * (cfg.model.seq_len / 64) ** 2, "y": 0.5})
        return medians["x"], None

    monkeypatch.setattr(B, "time_steps", alternated)  # alternated, each round makes a step a value: 2 x 2 x 4 s
    rows = B.run_series(tiny_base(), "dense", "dense", [64, 128], quiet(budget_s=10.0, alternate=("V", ("x", "y"))))
    assert [(r.status, r.variant) for r in rows] == [("ok", "V=x"), ("ok", "V=y"), ("skipped (time)", "")]


def test_table2_builds_each_datasets_config_and_pattern(monkeypatch):
    """Table 2 times enwik8 at 12,288 and CIFAR-10 at 3,072 under dense, fixed and strided."""
    seen = []

    def fake(kind, cfg, opts, label=""):
        seen.append((label, cfg.model.seq_len, cfg.model.attention.layers[0], cfg.model.n_layers, cfg.train.zero_stage))
        return B.Row(kind=kind, pattern="", seq_len=cfg.model.seq_len, batch=1, status="ok", label=label)

    monkeypatch.setattr(B, "measure", fake)
    rows = B.table2(quiet())
    assert [s[:3] for s in seen] == [
        ("enwik8 dense", 12288, "dense"), ("enwik8 fixed", 12288, "fixed(128,32)"), ("enwik8 strided", 12288, "strided(128)"),
        ("cifar10 dense", 3072, "dense"), ("cifar10 fixed", 3072, "fixed(96,16)"), ("cifar10 strided", 3072, "strided(96)")]
    assert {s[3] for s in seen[:3]} == {30} and {s[3] for s in seen[3:]} == {128}
    assert {s[4] for s in seen} == {0} and len(rows) == 6  # a plain loop: no ZeRO


def test_validate_plan_covers_distinct_configurations(tmp_path):
    """--validate-plan measures at least five distinct configurations and records the planner's view."""
    rows = B.validate_plan(tiny_base("bf16"), quiet(), lengths=[64, 128, 256])
    keys = {(r.pattern, r.seq_len, r.batch, r.precision, r.recompute, r.recomputed_blocks, r.keep_attention)
            for r in rows}
    assert len(rows) >= 5 and len(keys) == len(rows)
    assert all(r.status == "ok" and r.plan_gb > 0 and r.peak_gb is None for r in rows)  # no CUDA peak here
    assert "| fixed, fp32 |" in B.markdown_table(rows)
    kept = next(r for r in rows if r.keep_attention)  # the planner's kept attention outputs, checked on a GPU
    twin = next(r for r in rows if r.label == "fixed" and r.seq_len == kept.seq_len)
    assert kept.plan_gb > twin.plan_gb
    assert all(type(r.keep_attention) is int for r in rows)  # blocks keeping, "auto" resolved (off a GPU: 0)
    assert kept.keep_attention == kept.recomputed_blocks
    assert B.describe(kept).endswith("blocks recomputed, attention kept")


def _on_a_fake_gpu(monkeypatch, total=1e12):
    """measure as on a CUDA device of ``total`` bytes, its steps not run: the configs it would time."""
    from types import SimpleNamespace

    timed = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total))
    monkeypatch.setattr(B, "time_steps", lambda cfg, *a: timed.append(cfg) or (1.0, None))
    monkeypatch.setattr(B, "_free", lambda device: None)
    return timed


def test_measure_resolves_auto_to_what_the_gpu_fits(monkeypatch):
    """On a GPU measure times the config with train.checkpoint_blocks and train.keep_attention as the
    planner resolved them (plain int and bool or count, what the runner gets), and the row records them
    (the keep as the number of recomputed blocks that keep their attention outputs)."""
    timed = _on_a_fake_gpu(monkeypatch)
    opts = B.Options(device="cuda", steps=1, warmup=1, log=lambda line: None)
    cfg = B.config_for(tiny_base("bf16"), "fixed({block},8)", 256, ["train.checkpoint_blocks=1"])
    row = B.measure("fixed", cfg, opts)
    assert timed[-1].train.keep_attention is True and row.keep_attention == 1 and row.recomputed_blocks == 1
    cfg = B.config_for(tiny_base("bf16"), "fixed({block},8)", 256, ["model.n_layers=2", "train.keep_attention=1"])
    row = B.measure("fixed", cfg, opts)
    assert timed[-1].train.keep_attention == 1 and (row.recomputed_blocks, row.keep_attention) == (2, 1)
    assert B.describe(row).endswith("2/2 blocks recomputed, attention kept in 1")
    cfg = B.config_for(tiny_base("bf16"), "fixed({block},8)", 256, ["train.checkpoint_blocks=auto"])
    row = B.measure("fixed", cfg, opts)
    assert (timed[-1].train.checkpoint_blocks, timed[-1].train.keep_attention) == (0, False)  # all fits: no recompute
    assert (row.recomputed_blocks, row.keep_attention) == (0, False)


def test_a_gpu_row_records_the_clock_power_and_cap_after_its_steps_and_the_table_shows_them(monkeypatch):
    """On a GPU each timed row gets nvidia-smi's SM clock, power and cap after its steps (the MFU of a 1M
    step is at the H200's power cap); CPU rows and tables stay without them."""
    _on_a_fake_gpu(monkeypatch)
    monkeypatch.setattr(B, "gpu_state", lambda: {"sm_mhz": 1755.0, "power_w": 693.4, "capped": True})
    opts = B.Options(device="cuda", steps=1, warmup=1, log=lambda line: None)
    row = B.measure("fixed", B.config_for(tiny_base("bf16"), B.KINDS["fixed"], 128), opts)
    assert (row.sm_mhz, row.power_w, row.capped) == (1755.0, 693.4, True)
    lines = B.markdown_table([row]).splitlines()
    assert lines[0].endswith("| plan error | SM MHz | W | capped |") and lines[-1].endswith("| 1,755 | 693 | yes |")
    assert lines[1].count("|") == lines[0].count("|") == lines[2].count("|")
    cpu = B.measure("fixed", B.config_for(tiny_base(), B.KINDS["fixed"], 64), quiet())
    assert cpu.sm_mhz is None and cpu.capped is None and "SM MHz" not in B.markdown_table([cpu])


def test_validation_rows_keep_attention_only_where_the_label_says(monkeypatch):
    """With keep_attention "auto" a GPU would keep the outputs wherever they fit: every validation case
    but the kept-attention one sets it false, so each still measures what its label names."""
    timed = _on_a_fake_gpu(monkeypatch)
    opts = B.Options(device="cuda", steps=1, warmup=1, log=lambda line: None)
    rows = B.validate_plan(tiny_base("bf16"), opts, lengths=[64, 128, 256])
    assert [r.label for r in rows if r.keep_attention] == ["fixed, kept attention"]
    assert [c.train.keep_attention for c in timed] == [r.label == "fixed, kept attention" for r in rows]
    # without the explicit false the plain "fixed" case would keep them here
    assert B.measure("fixed", B.config_for(tiny_base("bf16"), B.KINDS["fixed"], 128), opts).keep_attention


def test_case_picks_validation_rows_by_label(tmp_path, monkeypatch, capsys):
    """--case LABEL (repeatable) runs only the --validate-plan cases of that label, every length it has;
    an unknown label is one line listing the known ones, before any work."""
    assert B.validation_cases([]) == B.VALIDATION
    assert [c[:3] for c in B.validation_cases(["fixed, kept attention"])] == [("fixed, kept attention", "fixed", 1)]
    assert [c[2] for c in B.validation_cases(["fixed"])] == [0, 1, 2]
    picked = B.validation_cases(["dense", "fixed, fp32"])
    assert [c[0] for c in picked] == ["dense", "fixed, fp32"]  # VALIDATION's order
    with pytest.raises(ConfigError) as err:
        B.validation_cases(["fixed", "fixed kept attention"])
    text = str(err.value)
    assert text.startswith("--case: unknown label 'fixed kept attention' (known: 'fixed', 'strided', ")
    assert "'fixed, kept attention'" in text and "\n" not in text
    seen = []
    monkeypatch.setattr(B, "validate_plan", lambda base, opts, lengths, cases: seen.append(cases) or [])
    monkeypatch.setattr(B, "sweep", lambda *a: pytest.fail("--case runs no sweep"))
    out = str(tmp_path / "out")
    assert bench_main(["--device", "cpu", "--case", "fixed, kept attention", "--case", "dense", "--out", out]) == 0
    assert [c[0] for c in seen[-1]] == ["dense", "fixed, kept attention"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--device", "cpu", "--validate-plan", "--case", "nope", "--out", out])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastride bench scaling: error: --case: unknown label 'nope' (known: ") and "\n" not in err


def test_pil_plot_without_matplotlib(tmp_path, monkeypatch):
    """The PIL fallback draws a log-log PNG when matplotlib is missing."""
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("matplotlib") else real_import(name, *a, **k))
    path = tmp_path / "p.png"
    backend = plot_loglog({"a (slope 2.00)": ([1024, 4096], [0.1, 1.6]), "empty": ([], [])}, str(path), "t", "x", "y")
    assert backend == "pil"
    with Image.open(path) as img:
        colors = img.convert("RGB").getcolors(1 << 16)
    assert len(colors) > 3  # something besides white, black and grid grey was drawn


def test_cli_user_errors_are_one_line(capsys):
    """Bad kinds, lengths or devices exit 2 with one `megastride bench scaling: error:` line."""
    for args in (["--kinds", "dense,banded"], ["--lengths", "12k"], ["--device", "cuda"] if not torch.cuda.is_available() else ["--steps", "0"],
                 ["--device", "cuda", "--kinds", "fixed", "--lengths", "65536,100000"]):
        with pytest.raises(SystemExit) as exit_:
            bench_main(["--device", "cpu", *args] if args[0] != "--device" else args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("megastride bench scaling: error: ") and "\n" not in err
    # the last one: the length is named before the device (and before 65,536 would have run)
    assert "at 100000" in err and "not divisible by attention.block=128" in err, err


def test_memory_options_reach_the_benchmark_and_its_plan():
    """cpu_checkpointing, checkpoint_group and ffn_chunk set with --set are what the loop runs and
    the planner plans; DeepSpeed-only options are switched off for the plain loop."""
    sets = ["train.cpu_checkpointing=true", "train.checkpoint_group=2", "model.ffn_chunk=64",
            "train.zero_stage=2", "train.partition_activations=true"]
    cfg = B.config_for(tiny_base(), "fixed({block},8)", 256, sets)
    assert cfg.train.cpu_checkpointing and cfg.train.checkpoint_group == 2 and cfg.model.ffn_chunk == 64
    assert cfg.train.zero_stage == 0 and not cfg.train.partition_activations
    from megastride.engine.plan import plan

    p = plan(cfg, runtime="torch")
    assert p.cpu["block inputs"] > 0


def test_profile_calls_attributes_host_time_to_ops():
    """profile_calls times the calls and names where the host spends it: a loop of matmuls shows
    aten::mm among the costliest host ops, once per call; its summary line carries the three times."""
    from megastride.kernels.profiling import profile_calls, summary

    a = torch.randn(256, 256)

    def call():
        for _ in range(8):
            a @ a

    prof = profile_calls(call, iters=3)
    assert prof["wall_ms"] > 0 and prof["host_ms"] > 0
    assert "aten::mm" in prof["host_ops_ms"] and prof["host_ops_ms"]["aten::mm"] > 0
    assert list(prof["host_ops_ms"].values()) == sorted(prof["host_ops_ms"].values(), reverse=True)
    if not torch.cuda.is_available():
        assert prof["kernels_ms"] == {} and prof["gpu_ms"] == 0
    assert summary(prof).startswith(f"wall {prof['wall_ms']:.3f} ms, host issue")


def test_idle_gaps_finds_the_gpus_idle_stretches_and_what_overlapped_them():
    """idle_gaps on hand-made spans: overlapping kernels on two streams are one busy stretch, gaps
    under min_ms do not count, each gap goes to the kernel pair around it, and the copy and runtime
    overlaps are the parts of the gaps they cover (a copy spanning two gaps counts in both, a runtime
    call outside every gap not at all); all per call."""
    from megastride.kernels.profiling import idle_gaps, summary

    kernels = [(0.0, 1.0, "a"), (0.5, 2.0, "b"),  # overlapping: busy 0-2, ends with b
               (2.001, 3.0, "c"),                  # 0.001 ms: under min_ms
               (4.0, 5.0, "d"),                    # gap c -> d 1.0
               (5.5, 6.0, "c"), (7.0, 8.0, "d")]   # gaps d -> c 0.5, c -> d 1.0
    copies = [(3.5, 5.8, "Memcpy HtoD"), (3.6, 3.9, "Memcpy DtoH")]  # covers 3.5-4.0 and 5.0-5.5
    runtime = [(2.5, 3.2, "cudaFree"), (3.8, 4.5, "cudaEventSynchronize"), (6.2, 6.4, "cudaEventSynchronize"),
               (1.0, 1.5, "cudaLaunchKernel")]
    got = idle_gaps(kernels, copies, runtime, calls=2)
    assert got["idle_ms"] == pytest.approx(2.5 / 2)
    assert got["gaps"][0] == {"between": "c -> d", "ms": pytest.approx(2.0 / 2), "count": 1.0}
    assert got["gaps"][1] == {"between": "d -> c", "ms": pytest.approx(0.5 / 2), "count": 0.5}
    assert got["under_copy_ms"] == pytest.approx((0.5 + 0.5) / 2)
    assert got["under_runtime_ms"] == {"cudaEventSynchronize": pytest.approx((0.2 + 0.2) / 2),
                                       "cudaFree": pytest.approx(0.2 / 2)}
    assert list(got["under_runtime_ms"]) == ["cudaEventSynchronize", "cudaFree"]
    assert idle_gaps([]) == {"idle_ms": 0.0, "gaps": [], "under_copy_ms": 0.0, "under_runtime_ms": {}, "largest": []}
    ops = [(2.9, 4.2, "BlockCheckpointBackward"), (3.1, 3.3, "aten::empty"), (0.0, 0.5, "aten::mm")]
    longest = idle_gaps(kernels, copies, runtime, calls=2, ops=ops, largest=2)["largest"]
    assert [(g["ms"], g["at_ms"], g["between"]) for g in longest] == [(1.0, 3.0, "c -> d"), (1.0, 6.0, "c -> d")]
    first = longest[0]
    approx = lambda items: [(d["name"], pytest.approx(d["ms"]), pytest.approx(d["from_ms"])) for d in items]  # noqa: E731
    assert approx(first["copies"]) == [("Memcpy HtoD", 0.5, 0.5), ("Memcpy DtoH", 0.3, 0.6)]
    assert approx(first["runtime"]) == [("cudaFree", 0.2, -0.5), ("cudaEventSynchronize", 0.2, 0.8)]
    assert approx(first["ops"]) == [("BlockCheckpointBackward", 1.0, -0.1), ("aten::empty", 0.2, 0.1)]
    assert longest[1]["copies"] == [] and [r["name"] for r in longest[1]["runtime"]] == ["cudaEventSynchronize"]
    line = summary({"wall_ms": 9.0, "host_ms": 1.0, "gpu_ms": 6.0, "kernels_ms": {"a": 1.0}, "idle": got})
    assert line.endswith("; GPU idle 1.250 ms (most between c -> d: 1.000; under copies 0.500; "
                         "under cudaEventSynchronize 0.200, cudaFree 0.100)")


def test_kernel_groups_sort_a_steps_kernels_by_kind():
    """kernel_groups sums a profile's kernels by kind, as named on the H200 (the fortieth run's 1M step): our
    attention kernels, cuBLAS's products, the LayerNorms, the loss, reductions, elementwise kernels (torch's and
    ours), copies; anything else "other"; largest first; the summary line lists them."""
    from megastride.kernels.profiling import kernel_groups, summary

    kernels = {
        "_dkdv_halves_kernel": 4590.5, "_fwd_kernel": 1798.9, "_delta_kernel": 42.0, "_dq_finish_kernel": 19.3,
        "Memcpy DtoH (Device -> Pinned)": 1647.7, "Memcpy HtoD (Pinned -> Device)": 1644.8, "Memset (Device)": 1.1,
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT": 393.6,
        "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16": 0.9,
        "void at::native::vectorized_elementwise_kernel<8, at::native::(anonymous namespace)::silu_": 224.7,
        "_residual_add_kernel": 70.0, "_bias_silu_bwd_kernel": 60.0,
        "_layer_norm_fwd_kernel": 134.2, "_layer_norm_bwd_kernel": 133.4,
        "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<c10::BFloat16, at::native::fun": 83.1,
        "void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, floa": 3.7,
        "void (anonymous namespace)::softmax_warp_forward<float, float, float, 8, true, false>(floa": 1.1,
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous n": 1.3,
        "void at::native::vectorized_gather_kernel<16, long>(char*, char*, long*, int, long, long, ": 2.1,
        "triton_tem_fused_flex_attention_0": 10.0, "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits": 5.0,
    }
    groups = kernel_groups(kernels)
    assert groups == pytest.approx({
        "attention": 4590.5 + 1798.9 + 42.0 + 19.3 + 10.0 + 5.0, "copies": 1647.7 + 1644.8 + 1.1,
        "products": 393.6 + 0.9, "elementwise": 224.7 + 70.0 + 60.0, "layernorm": 134.2 + 133.4, "reductions": 83.1,
        "loss": 3.7 + 1.1, "other": 2.1, "optimizer": 1.3})
    assert list(groups) == sorted(groups, key=lambda g: -groups[g])
    assert sum(groups.values()) == pytest.approx(sum(kernels.values()))
    line = summary({"wall_ms": 1.0, "host_ms": 1.0, "gpu_ms": 1.0, "kernels_ms": kernels, "groups_ms": groups})
    assert "; by kind attention 6465.700, copies 3293.600, products 394.500" in line


@pytest.mark.parametrize("before", [None, "set"])
def test_timed_calls_alternate_a_variables_values_in_rotated_rounds(before, monkeypatch):
    """--alternate's protocol: each warm-up and settle round calls once per value, each timed round too with its
    order rotated by one; the variable is set around each call and left as it was after (unset, or its value);
    each value's median comes back in ``medians``, and the first value's is the one returned."""
    import time

    if before is None:
        monkeypatch.delenv("MEGASTRIDE_TEST_AB", raising=False)
    else:
        monkeypatch.setenv("MEGASTRIDE_TEST_AB", before)
    seen = []

    def call():
        value = os.environ.get("MEGASTRIDE_TEST_AB")
        seen.append(value)
        time.sleep({"a": 0.001, "b": 0.02, "c": 0.005}[value])

    medians = {}
    median, peak = B.timed_calls(call, torch.device("cpu"), steps=3, warmup=1, settle=1,
                                 alternate=("MEGASTRIDE_TEST_AB", ("a", "b", "c")), medians=medians)
    assert seen == ["a", "b", "c"] * 2 + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert os.environ.get("MEGASTRIDE_TEST_AB") == before
    assert set(medians) == {"a", "b", "c"} and median == medians["a"] and peak is None
    assert medians["a"] < medians["c"] < medians["b"]


def test_alternate_gives_a_row_per_value_with_its_own_median(monkeypatch, tmp_path):
    """With --alternate each point's timer gets the variable and its values, and the sweep writes one row per
    value: its median, the shared peak and plan, the label and variant naming the value, a series (slope) each."""
    calls = []

    def fake(cfg, device, batch, steps, warmup, profile=None, trace=None, allocator=None, alternate=None,
             medians=None):
        calls.append(alternate)
        medians.update({"x": 0.002 * cfg.model.seq_len, "y": 0.001 * cfg.model.seq_len})
        return medians["x"], None

    monkeypatch.setattr(B, "time_steps", fake)
    rows = B.sweep(tiny_base(), ["fixed"], [64, 128], quiet(alternate=("MEGASTRIDE_TEST_AB", ("x", "y"))))
    assert calls == [("MEGASTRIDE_TEST_AB", ("x", "y"))] * 2
    assert [(r.seq_len, r.variant, r.label, r.step_s) for r in rows] == [
        (64, "MEGASTRIDE_TEST_AB=x", "fixed MEGASTRIDE_TEST_AB=x", 0.128),
        (64, "MEGASTRIDE_TEST_AB=y", "fixed MEGASTRIDE_TEST_AB=y", 0.064),
        (128, "MEGASTRIDE_TEST_AB=x", "fixed MEGASTRIDE_TEST_AB=x", 0.256),
        (128, "MEGASTRIDE_TEST_AB=y", "fixed MEGASTRIDE_TEST_AB=y", 0.128)]
    assert rows[0].plan_gb == rows[1].plan_gb and rows[1].tokens_per_s == pytest.approx(64 / 0.064)
    assert rows[1].mfu == pytest.approx(2 * rows[0].mfu)
    assert B.slopes(rows, min_len=64) == pytest.approx({"fixed MEGASTRIDE_TEST_AB=x": 1.0,
                                                        "fixed MEGASTRIDE_TEST_AB=y": 1.0})
    B.write_csv(rows, tmp_path / "s.csv")
    assert [r["variant"] for r in csv.DictReader(open(tmp_path / "s.csv"))] == [rows[i].variant for i in range(4)]


def test_alternate_on_the_cpu_end_to_end(tmp_path):
    """A tiny CPU sweep with --alternate: two rows a length, both timed, the variable left as it was."""
    out = tmp_path / "ab"
    args = ["--device", "cpu", "--kinds", "fixed", "--lengths", "64", "--steps", "2", "--out", str(out),
            "--alternate", "MEGASTRIDE_TEST_AB=p,q"]
    assert bench_main(args + [x for s in TINY for x in ("--set", s)]) == 0
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [(r["variant"], r["status"]) for r in rows] == [("MEGASTRIDE_TEST_AB=p", "ok"),
                                                           ("MEGASTRIDE_TEST_AB=q", "ok")]
    assert all(float(r["step_s"]) > 0 for r in rows) and "MEGASTRIDE_TEST_AB" not in os.environ
    assert json.loads((out / "scaling.json").read_text())["meta"]["alternate"] == "MEGASTRIDE_TEST_AB=p,q"


@pytest.mark.parametrize("extra,named", [
    (["--alternate", "MEGASTRIDE_FFN_GEMM"], "--alternate must be NAME=VALUE,VALUE"),
    (["--alternate", "MEGASTRIDE_FFN_GEMM=0"], "two or more"),
    (["--alternate", "MEGASTRIDE_FFN_GEMM=0,0"], "distinct values); got 'MEGASTRIDE_FFN_GEMM=0,0'"),
    (["--alternate", "A-B=1,2"], "--alternate must be NAME=VALUE,VALUE"),
    (["--alternate", "X=1,2", "--table2"], "drop --table2"),
    (["--alternate", "X=1,2", "--profile"], "drop --profile"),
    (["--alternate", "X=1,2", "--set", "train.cuda_graph=true"], "set train.cuda_graph=false"),
])
def test_alternate_user_errors_are_one_line(extra, named, capsys, tmp_path):
    """A malformed --alternate, or one beside what it cannot time, is one line naming the problem; nothing runs."""
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--device", "cpu", "--kinds", "fixed", "--lengths", "64", "--out", str(tmp_path / "o"), *extra]
                   + [x for s in TINY for x in ("--set", s)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastride bench scaling: error: ") and "\n" not in err and named in err, err
    assert not (tmp_path / "o").exists()


def test_a_point_skipped_for_gpu_memory_names_the_host_offload_that_fits(monkeypatch):
    """The 95M model at 1M tokens on an 80 GB card: every block recomputed still plans past 95% of it, so the
    point is skipped, and the log says that the block inputs on the host fit, with the plan; timed with those
    overrides the point runs. No hint where the node's RAM cannot hold the inputs, or where they are there already."""
    total = 85.03e9  # torch's total_memory of an H100 80GB HBM3
    timed = _on_a_fake_gpu(monkeypatch, total)
    monkeypatch.setattr(B.planner, "host_memory_bytes", lambda: 128 * 2**30)
    monkeypatch.setattr(B, "room_bytes", lambda floor=None: 120e9)
    lines = []
    opts = B.Options(device="cuda", steps=1, warmup=1, log=lines.append)
    base = B.load_config(Path(__file__).resolve().parents[1] / "configs" / "enwik8.yaml",
                         ["model.dropout=0", "train.checkpoint_blocks=auto"])
    cfg = B.config_for(base, B.KINDS["fixed"], 1_048_576)
    row = B.measure("fixed", cfg, opts)
    assert row.status == "skipped (memory)" and row.plan_gb > 0.95 * total / 1e9 and not timed
    hint = [line for line in lines if "would fit with" in line]
    assert len(hint) == 1, lines
    assert "--set train.cpu_checkpointing=true --set train.offload_overlap=true: plan" in hint[0]
    gpu_gb, host_gb = (float(x) for x in re.findall(r"([\d.]+) GB", hint[0]))
    assert gpu_gb <= 0.95 * total / 1e9 and host_gb > 10, hint

    offloaded = B.config_for(base, B.KINDS["fixed"], 1_048_576, list(B.planner.HOST_OFFLOAD_SETS))
    row = B.measure("fixed", offloaded, opts)
    assert row.status == "ok" and len(timed) == 1 and timed[0].train.cpu_checkpointing
    assert row.plan_gb == pytest.approx(gpu_gb, abs=0.05), (hint, row)

    def hint_for(c, host_bytes=None):
        return B.planner.offload_hint(c, None, 1, "torch", 1, gpu_bytes=total, limit_bytes=0.95 * total,
                                      host_bytes=host_bytes)

    assert hint_for(cfg) == hint[0].split(": ", 1)[1]
    assert hint_for(offloaded) is None  # already on the host
    assert hint_for(cfg, host_bytes=32e9) is None  # the inputs outgrow a rank's 32 GB
    assert hint_for(B.config_for(base, B.KINDS["fixed"], 4_194_304), host_bytes=1e12) is None  # the GPU still full
