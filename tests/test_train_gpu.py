"""GPU-only training checks: fp16 dynamic loss scaling and bf16 through DeepSpeed (skipped on CPU)."""

import pytest

from test_train import metrics, train

pytestmark = pytest.mark.gpu


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
