"""The config tree: strict keys and types, overrides, shape checks, generated DeepSpeed JSON."""

from pathlib import Path

import pytest

from megastride.engine.config import ConfigError, config_from_dict, dump_config, load_config
from megastride.engine.deepspeed_config import check_zero_options, deepspeed_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tree,message", [
    ({"train": {"stepz": 3}}, "train.stepz: unknown key"),
    ({"bogus": {}}, "bogus: unknown key"),
    ({"train": {"steps": "many"}}, "train.steps: Input should be a valid integer"),
    ({"train": {"steps": 0}}, "train.steps: Input should be greater than 0"),
    ({"train": {"precision": "fp8"}}, "train.precision"),
    ({"model": {"d_model": 100, "n_heads": 3}}, "n_heads=3 does not divide d_model=100"),
    ({"model": {"seq_len": 1000}}, "seq_len=1000 is not divisible by attention.block=64"),
    ({"model": {"attention": {"layers": ["fixd(8)"]}}}, "unknown attention pattern 'fixd(8)'"),
    ({"model": {"attention": {"layers": ["fixed(8)"]}}}, "takes 2 argument"),
    # what only a layout build refused before (plan and train then failed with a traceback)
    ({"model": {"attention": {"layers": ["fixed(0,32)"]}}}, "pattern fixed(0,32): Window.size=0 must be positive"),
    ({"model": {"attention": {"layers": ["local(0)"]}}}, "Local.width=0 must be positive"),
    ({"model": {"attention": {"layers": ["local(99999999999999999999999)"]}}}, "is beyond any sequence length"),
    ({"model": {"attention": {"layers": []}}}, "model.attention.layers: Tuple should have at least 1 item"),
    ({"model": {"embedding": {"kind": "image"}}}, "image_shape"),
    ({"train": {"checkpoint_blocks": -1}}, "train.checkpoint_blocks: expected a number of blocks >= 0, auto, or null"),
    ({"train": {"checkpoint_blocks": "all"}}, "train.checkpoint_blocks: expected a number of blocks >= 0, auto, or null"),
    ({"train": {"checkpoint_blocks": True}}, "train.checkpoint_blocks: expected a number of blocks"),
    ({"train": {"keep_attention": True, "checkpoint_group": 2}},
     "train.keep_attention does not combine with train.checkpoint_group=2"),
    ({"train": {"keep_attention": True, "compile": True}}, "train.keep_attention does not combine with train.compile"),
    ({"train": {"keep_attention": True, "partition_activations": True}},
     "train.keep_attention does not combine with train.partition_activations"),
    ({"train": {"keep_attention": 3, "checkpoint_group": 2}},
     "train.keep_attention does not combine with train.checkpoint_group=2"),
    ({"train": {"keep_attention": 1, "compile": True}}, "train.keep_attention does not combine with train.compile"),
    ({"train": {"keep_attention": "yes"}},
     "train.keep_attention: expected true, false, auto or a number of blocks >= 0, got 'yes'"),
    ({"train": {"keep_attention": -1}},
     "train.keep_attention: expected true, false, auto or a number of blocks >= 0, got -1"),
    ({"train": {"keep_attention": 2.0}},
     "train.keep_attention: expected true, false, auto or a number of blocks >= 0, got 2.0"),
    ({"train": {"keep_attention": None}},
     "train.keep_attention: expected true, false, auto or a number of blocks >= 0, got None"),
    ({"train": {"offload_attention": True}}, "train.offload_attention needs train.cpu_checkpointing = true"),
    ({"train": {"offload_attention": True, "cpu_checkpointing": True, "keep_attention": False}},
     "train.offload_attention needs kept attention outputs: train.keep_attention is False"),
    ({"train": {"offload_attention": True, "cpu_checkpointing": True, "keep_attention": 0}},
     "train.offload_attention needs kept attention outputs: train.keep_attention is 0"),
    ({"train": {"offload_attention": "yes"}}, "train.offload_attention: expected true, false or auto, got 'yes'"),
    ({"train": {"offload_attention": 1}}, "train.offload_attention: expected true, false or auto, got 1"),
])
def test_errors_name_the_key(tree, message):
    """Unknown keys, wrong types and impossible shapes give one line that names the problem."""
    with pytest.raises(ConfigError) as err:
        config_from_dict(tree, "cfg.yaml")
    text = str(err.value)
    assert message in text and text.startswith("cfg.yaml: ") and "\n" not in text


@pytest.mark.parametrize("tree,message", [
    ({"model": {"n_layer": 3}}, "cfg.yaml: model.n_layer: unknown key (did you mean model.n_layers?)"),
    ({"trian": {"steps": 3}}, "cfg.yaml: trian: unknown key (did you mean train?)"),
    ({"model": {"attention": {"blok": 64}}},
     "cfg.yaml: model.attention.blok: unknown key (did you mean model.attention.block?)"),
    ({"train": {"loss_scale": {"windw": 9}}},
     "cfg.yaml: train.loss_scale.windw: unknown key (did you mean train.loss_scale.window?)"),
    ({"bogus": {}}, "cfg.yaml: bogus: unknown key"),  # nothing close: no guess
    ({"model": {"xyzzy": 1}}, "cfg.yaml: model.xyzzy: unknown key"),
])
def test_unknown_keys_suggest_the_closest_known_one(tree, message):
    """A misspelt key names its section's nearest real key, and only when one is close."""
    with pytest.raises(ConfigError) as err:
        config_from_dict(tree, "cfg.yaml")
    assert str(err.value) == message


def test_keep_attention_is_true_false_auto_or_a_count(tmp_path):
    """train.keep_attention defaults to auto (the planner decides on a GPU); true and false stay bools and a
    count stays an int (in YAML, --set and the dumped config); auto and a count of 0 pass beside the settings
    an explicit true or count > 0 does not combine with (auto keeps nothing there)."""
    assert config_from_dict({}).train.keep_attention == "auto"
    for value in (True, False, "auto", 0, 1, 21):
        kept = config_from_dict({"train": {"keep_attention": value}}).train.keep_attention
        assert kept == value and type(kept) is type(value)
    for key, value in (("compile", True), ("partition_activations", True), ("checkpoint_group", 2)):
        assert config_from_dict({"train": {key: value}}).train.keep_attention == "auto"
        assert config_from_dict({"train": {key: value, "keep_attention": False}}).train.keep_attention is False
        assert config_from_dict({"train": {key: value, "keep_attention": 0}}).train.keep_attention == 0
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layers: 30\ntrain:\n  keep_attention: 21\n")
    assert type(load_config(path).train.keep_attention) is int
    for raw, value in (("21", 21), ("0", 0), ("true", True), ("false", False), ("auto", "auto")):
        kept = load_config(path, [f"train.keep_attention={raw}"]).train.keep_attention
        assert kept == value and type(kept) is type(value), raw
        again = tmp_path / "again.yaml"
        again.write_text(dump_config(load_config(path, [f"train.keep_attention={raw}"])))
        assert type(load_config(again).train.keep_attention) is type(value)


def test_overrides_apply_typed_values(tmp_path):
    """--set values are parsed as YAML scalars and validated like the file."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\n")
    cfg = load_config(path, ["train.steps=50", "train.lr=3e-4", "run.dir=/tmp/x", "train.betas=[0.9, 0.99]",
                             "model.attention.layers=['strided(64)']"])
    assert (cfg.train.steps, cfg.train.lr, cfg.run.dir, cfg.train.betas) == (50, 3e-4, "/tmp/x", (0.9, 0.99))
    assert cfg.model.attention.layers == ("strided(64)",)
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        load_config(path, ["train.nope=1"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(path, ["train.steps"])


def test_missing_and_malformed_files(tmp_path):
    """A missing file or broken YAML is a one-line ConfigError naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_shipped_config_validates_and_round_trips():
    """Every YAML in configs/ validates, and the dumped resolved tree loads back to the same config."""
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert config_from_dict(__import__("yaml").safe_load(dump_config(cfg))) == cfg, path.name


def test_deepspeed_json_follows_tree():
    """The DeepSpeed config is derived from the tree: batch sizes, ZeRO, precision, loss scaling, clipping."""
    cfg = config_from_dict({"train": {"micro_batch_size": 3, "grad_accum": 4, "zero_stage": 2, "precision": "fp16",
                                      "grad_clip": 0.5, "loss_scale": {"initial_scale_power": 12}}})
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_batch_size"] == 3 * 4 * 8
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 0.5
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0 and ds["fp16"]["initial_scale_power"] == 12
    assert not ds["bf16"]["enabled"]
    off = deepspeed_config(config_from_dict({"train": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}}), 1)
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_impossible_zero_combinations_are_rejected():
    """Offload without the ZeRO stage it needs is a clear error before DeepSpeed starts."""
    with pytest.raises(ConfigError, match="offload_optimizer needs train.zero_stage"):
        check_zero_options(config_from_dict({"train": {"offload_optimizer": True}}))
    with pytest.raises(ConfigError, match="offload_params needs train.zero_stage = 3"):
        check_zero_options(config_from_dict({"train": {"zero_stage": 2, "offload_params": True}}))


def test_a_stride_whose_unpermuted_lists_would_be_huge_is_a_one_line_config_error():
    """strided(2896) at 8,388,608 tokens (not a multiple of it) would list ~190M blocks unpermuted: refused at
    config time, naming the strides that divide the length; at 1,048,576 tokens strided(1000) is a warning."""
    import warnings

    tree = {"model": {"seq_len": 8388608, "attention": {"block": 128, "layers": ["strided(2896)"]}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(tree)
    message = str(err.value)
    assert "not a multiple of the stride 2896" in message and "(2048 or 4096)" in message and "\n" not in message
    tree["model"].update(seq_len=1048576, **{"attention": {"block": 128, "layers": ["strided(1000)"]}})
    from megastride.kernels import patterns as P
    P._WARNED.discard((1048576, 1000, 128))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config_from_dict(tree)
    assert any("(512 or 1024) runs permuted" in str(w.message) for w in caught)
