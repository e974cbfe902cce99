"""The DeepSpeed JSON, generated from the config tree (never edited by hand)."""

from __future__ import annotations

from .config import Config, ConfigError
from .plan import recomputed_blocks


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    """DeepSpeed's config dict for ``cfg`` on ``world_size`` data-parallel ranks."""
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "steps_per_print": 2**31 - 1,  # megastride logs itself
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "zero_optimization": _zero(cfg),
        "fp16": {
            "enabled": t.precision == "fp16",
            "loss_scale": 0,  # 0 = dynamic
            "initial_scale_power": t.loss_scale.initial_scale_power,
            "loss_scale_window": t.loss_scale.window,
            "hysteresis": t.loss_scale.hysteresis,
            "min_loss_scale": t.loss_scale.min_scale,
        },
        "bf16": {"enabled": t.precision == "bf16"},
        "activation_checkpointing": {  # the engine's own BlockCheckpoint does cpu_checkpointing
            "partition_activations": t.partition_activations,
            "cpu_checkpointing": False,
            "contiguous_memory_optimization": False,
            "synchronize_checkpoint_boundary": False,
            "profile": False,
        },
    }


def _zero(cfg: Config) -> dict:
    t = cfg.train
    zero: dict = {"stage": t.zero_stage, "overlap_comm": t.zero_stage > 0, "contiguous_gradients": t.zero_stage > 0}
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if t.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero


def check_zero_options(cfg: Config) -> None:
    """Raise ValueError naming the key for option combinations DeepSpeed would reject later."""
    t = cfg.train
    if t.offload_optimizer and t.zero_stage == 0:
        raise ConfigError("train.offload_optimizer needs train.zero_stage >= 1")
    if t.offload_params and t.zero_stage != 3:
        raise ConfigError("train.offload_params needs train.zero_stage = 3")
    needs = [k for k in ("cpu_checkpointing", "partition_activations") if getattr(t, k)]
    needs += ["checkpoint_group"] if t.checkpoint_group > 1 else []
    if needs and not t.checkpoint_activations:
        key = needs[0]
        raise ConfigError(f"train.{key} needs train.checkpoint_activations = true")
    if t.offload_overlap and not t.cpu_checkpointing:
        raise ConfigError("train.offload_overlap needs train.cpu_checkpointing = true")
    recomputed_blocks(t, cfg.model.n_layers)  # train.checkpoint_blocks within model.n_layers
