"""Run directories: resolved config, DeepSpeed JSON, git revision, TensorBoard events, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .config import Config, ConfigError, dump_config, load_config

# what a run directory holds once training has started in it (``prepare_run_dir``, the metrics, checkpoints)
RUN_MARKS = ("checkpoints", "metrics.jsonl", "git_revision.txt")


def git_revision() -> str:
    """HEAD of the source tree (with '+dirty' if it has uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_run_dir(cfg: Config) -> None:
    """Refuse, before anything is written there, a ``run.dir`` where training would lose or mix up work: a
    path through a file; a folder of other files (not a run: its files would be overwritten); a run with
    checkpoints under ``run.resume: never`` (its metrics and ``latest`` would be overwritten by a new start);
    or one to resume that would not load or not go on as trained (``check_resume``).
    A new or empty folder, or a run that saved no checkpoint yet, is fine."""
    from . import checkpoint as ckpt

    from megastride.data_shards.writing import file_in_the_way

    root = Path(cfg.run.dir)
    blocker = str(root) if os.path.lexists(root) and not root.is_dir() else file_in_the_way(root)
    if blocker:
        raise ConfigError(f"run.dir {root}: {blocker} is a file, not a folder")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not any((root / mark).exists() for mark in RUN_MARKS):
        raise ConfigError(f"run.dir {root} is a folder of other files, not a megastride run "
                          f"(none of {', '.join(RUN_MARKS)}): pick a new or empty folder")
    checkpoints = root / "checkpoints"
    if not ckpt.has_checkpoint(checkpoints):
        return
    if cfg.run.resume == "never":
        latest = (checkpoints / "latest").read_text(errors="replace").strip() or "latest"
        raise ConfigError(f"run.dir {root} already holds a run (checkpoint {latest}) and run.resume is never: "
                          "resume it (run.resume=auto) or pick a new run.dir")
    check_resume(cfg, root, ckpt.check_latest(checkpoints))


def check_resume(cfg: Config, root: Path, tag: str) -> None:
    """Refuse to resume ``root``'s checkpoint ``tag`` with ``cfg`` where its weights do not fit the model
    (named by the first model key that differs), where a setting the checkpoint fixes has changed
    (``resume_mismatch``), or where it is already at ``train.steps``."""
    from .checkpoint import step_of

    try:
        saved = load_config(root / "config.yaml")
    except ConfigError:  # no readable config beside the checkpoint: the checkpoint load itself will tell
        saved = None
    if saved is not None:
        problem = weights_mismatch(saved, cfg)
        if problem:
            raise ConfigError(f"run.dir {root} holds a checkpoint ({tag}) of another model: {problem}; "
                              "resume it with its own model settings or pick a new run.dir")
        problem = resume_mismatch(saved, cfg)
        if problem:
            raise ConfigError(f"run.dir {root} holds a checkpoint ({tag}) trained with {problem}: use a new "
                              "run.dir, or the same value to resume")
    step = step_of(tag)
    if step is not None and step >= cfg.train.steps:
        raise ConfigError(f"run.dir {root} is already at step {step} >= train.steps={cfg.train.steps}: nothing to "
                          "train (raise train.steps to continue)")


_OVERRIDDEN = "the checkpoint's optimizer state would silently override it"
# settings a checkpoint fixes, and why: resumed with another value, its load fails or the run goes on other than
# asked. Everything else may change on resume: train.steps and the schedule's shape, the log, evaluation and
# save cadence, batch and accumulation sizes (the data position is kept for any), memory settings, data.path
# (a store moved or copied; one of another size is refused when the data position loads)
KEPT_ON_RESUME = {
    "run.seed": "the data order and random streams go on from it",
    "data.train_split": "the data position is in it",
    "data.valid_split": "the validation curve so far was measured on it",
    "train.lr": _OVERRIDDEN,
    "train.betas": _OVERRIDDEN,
    "train.eps": _OVERRIDDEN,
    "train.weight_decay": _OVERRIDDEN,
    "train.precision": "the checkpoint's optimizer state is laid out for it",
    "train.zero_stage": "ZeRO stages 0, 1-2 and 3 save different files",
}
# model settings that may change on resume: the weights compute the same function (dropout acts in training only)
MODEL_FREE_ON_RESUME = ("dropout", "init_std", "loss_chunk", "ffn_chunk")


def resume_mismatch(saved: Config, cfg: Config) -> str | None:
    """The first setting that ``saved``'s checkpoint fixes and ``cfg`` changes, as
    "run.seed=0; this config has run.seed=1 (why)", or None. Every model setting but those in
    ``MODEL_FREE_ON_RESUME`` counts: the weights were trained for them."""
    old, new = _flat(saved.model_dump()), _flat(cfg.model_dump())
    keys = list(KEPT_ON_RESUME) + [k for k in old if k.startswith("model.")
                                   and k.split(".")[1] not in MODEL_FREE_ON_RESUME]
    for key in keys:
        same = (_zero_layout(old[key]) == _zero_layout(new[key]) if key == "train.zero_stage"
                else old[key] == new[key])
        if not same:
            why = KEPT_ON_RESUME.get(key, "the weights were trained for it")
            return f"{key}={_show(old[key])}; this config has {key}={_show(new[key])} ({why})"
    return None


def _zero_layout(stage: int) -> str:
    return {0: "0", 1: "1-2", 2: "1-2"}.get(stage, str(stage))


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def weights_mismatch(saved: Config, cfg: Config) -> str | None:
    """Why ``saved``'s weights cannot be loaded into ``cfg``'s model ("model.d_model was 128, now 64"), or
    None where every parameter has the same name and shape (settings such as dropout may differ). Compares
    the two models built on the meta device: no memory, no weights."""
    import torch

    from .model import SparseTransformer

    def shapes(c: Config) -> dict[str, tuple]:
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in SparseTransformer(c.model).state_dict().items()}

    old, new = shapes(saved), shapes(cfg)
    if old == new:
        return None
    diff = _first_difference(saved.model.model_dump(), cfg.model.model_dump(), "model")
    if diff:
        return diff
    name = next(k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
    return f"parameter {name} was {old.get(name)}, now {new.get(name)}"


def _first_difference(old: dict, new: dict, path: str) -> str | None:
    a, b = _flat(old, f"{path}."), _flat(new, f"{path}.")
    key = next((k for k in list(a) + [k for k in b if k not in a] if a.get(k) != b.get(k)), None)
    return None if key is None else f"{key} was {a.get(key)!r}, now {b.get(key)!r}"


def prepare_run_dir(cfg: Config, ds_config: dict | None) -> Path:
    """Create the run directory and write what reproduces the run (rank 0 only); the DeepSpeed JSON
    only where DeepSpeed runs (``ds_config`` None: train.runtime=torch)."""
    root = Path(cfg.run.dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(dump_config(cfg))
    if ds_config is not None:
        (root / "deepspeed.json").write_text(json.dumps(ds_config, indent=2) + "\n")
    (root / "git_revision.txt").write_text(git_revision() + "\n")
    return root


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.run.dir) / "checkpoints"


def tensorboard_dir(cfg: Config) -> Path:
    return Path(cfg.run.dir) / "tensorboard"
