"""Config values that passed validation and then crashed or trained on nonsense (the config audit): each is now
one line naming the key, from the loader, `megastride patterns` and `megastride plan` alike."""

import json
import time
from pathlib import Path

import pytest

from megastride.engine.config import ConfigError, load_config
from megastride.engine.trainer import check_runtime
from megastride.kernels import patterns as P
from megastride.launch.patterns import main as patterns_main
from megastride.launch.plan import main as plan_main

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def refused(override: str) -> str:
    """The one-line ConfigError that ``--set override`` on configs/tiny.yaml gives."""
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{TINY}: "), text
    return text


def cli_error(main, argv: list[str], capsys) -> str:
    """The single stderr line of a command that exits 2."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if not x.startswith("[")]  # DeepSpeed's accelerator notice
    assert exit_.value.code == 2 and len(lines) == 1, err
    return lines[0]


FLOATS = ["model.qk_mult", "model.ffn_mult", "model.dropout", "model.init_std", "train.lr", "train.min_lr_ratio",
          "train.weight_decay", "train.eps", "train.grad_clip", "train.memory_budget_gb", "train.loss_scale.min_scale"]


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_setting_is_finite(key, value):
    """inf and nan are refused for every float setting, naming it (qk_mult=.inf was an OverflowError, lr=.inf
    trained to the end on nan losses)."""
    assert f": {key}: Input should be a finite number" in refused(f"{key}={value}")


@pytest.mark.parametrize("key, what", [("qk_mult", "a query-key"), ("ffn_mult", "an FFN")])
def test_width_multipliers_give_a_width_of_at_least_one(key, what):
    """qk_mult and ffn_mult whose width rounds to 0 (a ZeroDivisionError in the model) or overflows are refused,
    naming the multiplier and the width it gives."""
    assert f"model: {key}=1e-09 gives {what} width of 0 (d_model=128 * {key}, rounded)" in refused(f"model.{key}=1e-9")
    assert f"model: {key}=1e+308 gives {what} width of inf" in refused(f"model.{key}=1e308")
    model = load_config(TINY, [f"model.{key}=0.5"]).model  # d_model 128
    assert (model.qk_width if key == "qk_mult" else model.ffn_width) == 64


@pytest.mark.parametrize("betas", ["[1.5,-2]", "[1.0,0.5]", "[0.9,-0.1]"])
def test_betas_are_each_in_zero_one(betas):
    """AdamW's betas outside [0, 1) are refused in the config, not by torch at the optimizer's construction."""
    assert "train.betas: expected two numbers in [0, 1)" in refused(f"train.betas={betas}")
    assert "train.betas.0: Input should be a finite number" in refused("train.betas=[.nan,2.0]")
    assert load_config(TINY, ["train.betas=[0,0.999]"]).train.betas == (0.0, 0.999)


def test_embedding_window_is_at_least_one_or_auto():
    """model.embedding.window 0 (ZeroDivisionError) and -5 (a negative dimension) are refused; auto and 1 pass."""
    for value in (0, -5):
        assert (f"model.embedding.window: expected a window of at least 1 position, or auto, got {value}"
                in refused(f"model.embedding.window={value}"))
    assert load_config(TINY, ["model.embedding.window=1"]).model.position_window() == 1
    assert load_config(TINY, ["model.embedding.window=auto"]).model.embedding.window == "auto"


def test_image_shape_sizes_are_positive():
    """An image shape with negative sizes whose product is seq_len passed; now each size must be at least 1."""
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["model.embedding.kind=image", "model.embedding.image_shape=[-8,-8,8]"])
    text = str(err.value)
    assert "model.embedding.image_shape: expected (H, W, C), each at least 1, got [-8, -8, 8]" in text
    assert "\n" not in text
    assert load_config(TINY, ["model.embedding.kind=image", "model.embedding.image_shape=[8,8,8]"])


def test_vocab_size_covers_every_byte():
    """The model reads raw bytes: a vocab_size under 256 (an IndexError mid-step) is refused; 256 and more pass."""
    assert "model.vocab_size: expected at least 256 (the model reads raw bytes, 0 to 255), got 16" in \
        refused("model.vocab_size=16")
    assert load_config(TINY, ["model.vocab_size=300"]).model.vocab_size == 300


def test_seed_is_one_the_data_shuffle_takes():
    """A negative run.seed (numpy's ValueError in the data loader's shuffle) is refused, naming run.seed."""
    assert "run.seed: Input should be greater than or equal to 0" in refused("run.seed=-1")
    assert "run.seed: Input should be less than" in refused("run.seed=4294967296")


@pytest.mark.parametrize("spec, message", [
    ("fixed(16,4,per_head=0)", "per_head=0 must be at least 1"),  # was a ZeroDivisionError
    ("fixed(16,4,per_head=-2)", "per_head=-2 must be at least 1"),  # was "Summary.index=-1 must be positive"
    ("fixed(16,4,per_head=x)", "per_head='x' is not an integer"),  # was "invalid literal for int()"
    ("fixed(16,4,per_head=1.5)", "per_head='1.5' is not an integer"),
    ("fixed(16,4,per_head=)", "per_head='' is not an integer"),
    ("fixed(16,4,per_head=99999999999999999999)", "per_head=99999999999999999999 is too large"),
    ("fixed(16,4,per_head=2,per_head=3)", "names per_head 2 times"),  # the last one won
    ("fixed(16,4,per_head=8)", "per_head=8 gives head 4 summary slot 4, but a window of 16 holds 4 slot(s)"),
    ("strided(16,per_head=2)", "unknown keyword 'per_head' (only fixed takes one, per_head)"),
])
def test_per_head_errors_name_per_head_and_the_pattern(spec, message, capsys):
    """Every bad per_head of `megastride patterns show` is one line naming per_head and the pattern as written."""
    line = cli_error(patterns_main, ["show", spec, "--heads", "8"], capsys)
    assert line.startswith(f"megastride patterns: error: attention pattern {spec!r}") and message in line, line


@pytest.mark.parametrize("spec, message", [
    ("local(1_6)", "argument '1_6' is not an integer or 'auto'"),  # int() read 16
    ("local(\uff10)", "argument '\uff10' is not an integer or 'auto'"),  # int() read a full-width 0
    ("fixed(1e3,4)", "attention pattern 'fixed(1e3,4)': argument '1e3' is not an integer or 'auto'"),
    ("fixed(-99999999999999999999,4)", "argument -99999999999999999999 must be positive"),
    ("fixed(auto,99999999999999999999)", "argument 99999999999999999999 is beyond any sequence length"),
    ("fixed(auto,-4)", "Summary.width=-4 must be positive"),  # was "math domain error"
    ("summary(auto,0)", "Summary.width=0 must be positive"),
    ("strided(0)", "Local.width=0 must be positive"),
    ("window(-3)", "Window.size=-3 must be positive"),
])
def test_every_pattern_argument_is_checked(spec, message, capsys):
    """Zero, negative, non-integer and huge positional arguments are one line naming the pattern."""
    line = cli_error(patterns_main, ["show", spec, "--heads", "2"], capsys)
    assert line.startswith("megastride patterns: error: ") and message in line, line


def test_per_head_in_a_config_names_the_key():
    """In a config the same per_head error comes under model, naming the pattern."""
    text = refused('model.attention.layers=["fixed(128,32,per_head=0)"]')
    assert ": model: attention pattern 'fixed(128,32,per_head=0)': per_head=0 must be at least 1" in text


def test_auto_strides_of_long_sequences_take_no_scan():
    """optimal_stride gives the scan's answer, without scanning every block multiple (minutes at 2^36 tokens,
    in config validation)."""
    def scanned(n, kind, width, block):
        target = (n * (width if kind == "fixed" else 1)) ** 0.5
        divisors = [d for d in range(block, n + 1, block) if n % d == 0]
        return min(divisors, key=lambda d: abs(d - target)) if divisors else max(block, round(target / block) * block)

    for n in (64, 96, 1000, 3072, 12288, 65536 * 3):
        for block in (16, 64, 100):
            for kind, width in (("fixed", 32), ("strided", 1)):
                assert P.optimal_stride(n, kind, width, block) == scanned(n, kind, width, block)
    start = time.perf_counter()
    assert P.optimal_stride(1 << 36, "strided", 1, 64) == 1 << 18
    assert time.perf_counter() - start < 2


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(json.dumps({"model": {"seq_len": 512, "d_model": 64, "n_layers": 2, "n_heads": 4,
                                          "attention": {"block": 32, "layers": ["strided(auto)"]}},
                                "train": {"precision": "bf16"}}))
    return path


@pytest.mark.parametrize("argv, runtime, world", [
    (["--runtime", "torch", "--world-size", "4"], "torch", 4),
    (["--set", "train.runtime=torch", "--set", "train.zero_stage=2"], "torch", 1),
    (["--runtime", "torch", "--set", "train.precision=fp16"], "torch", 1),
    (["--runtime", "torch", "--set", "train.offload_optimizer=true"], "torch", 1),
    (["--set", "train.cuda_graph=true"], "deepspeed", 1),
    (["--set", "train.runtime=torch", "--world-size", "2"], "torch", 2),
])
def test_plan_refuses_what_train_refuses(small, argv, runtime, world, capsys):
    """`megastride plan` printed "fits" for runtimes train refuses; now it gives train's own line (check_runtime)."""
    line = cli_error(plan_main, [str(small), *argv], capsys)
    cfg = load_config(small, [a for a in argv if "=" in a])
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"runtime": runtime})})
    with pytest.raises(ConfigError) as err:
        check_runtime(cfg, world, True)
    assert line == f"megastride plan: error: {err.value}"


def test_plan_of_the_plain_loop_leaves_a_deepspeed_configs_zero_out(small, capsys):
    """--runtime torch on a DeepSpeed config plans the loop `bench scaling` runs, which sets ZeRO to 0: the
    plan says so in a note instead of refusing the config's zero_stage (a torch config's own is refused above)."""
    assert plan_main([str(small), "--runtime", "torch", "--set", "train.zero_stage=2"]) == 0
    assert "note: runtime torch ignores ZeRO and plans one GPU" in capsys.readouterr().out


def test_plan_assumes_cuda_and_resolves_auto_as_train_does(small, capsys):
    """train.cuda_graph under runtime torch plans on a machine without CUDA; a graph that would replay the
    dropout of the blocks checkpoint_blocks=auto recomputes is refused as the trainer refuses it."""
    assert plan_main([str(small), "--runtime", "torch", "--set", "train.cuda_graph=true"]) == 0
    capsys.readouterr()
    graph = ["--runtime", "torch", "--set", "train.cuda_graph=true", "--set", "model.dropout=0.1",
             "--set", "train.checkpoint_blocks=auto"]
    assert plan_main([str(small), *graph]) == 0  # room for every activation: nothing recomputed
    capsys.readouterr()
    line = cli_error(plan_main, [str(small), *graph, "--gpu-memory-gb", "0.05"], capsys)
    assert "train.cuda_graph cannot replay the dropout of recomputed blocks" in line
