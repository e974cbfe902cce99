"""Run directories: resolved config, DeepSpeed JSON, git revision, TensorBoard events, checkpoints."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .config import Config, dump_config


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
