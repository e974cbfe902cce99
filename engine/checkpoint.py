"""Checkpoints that resume exactly: DeepSpeed states plus step, data position and every RNG."""

from __future__ import annotations

import os
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from .distributed import barrier


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, corrupt) or does not fit the model: a user's problem,
    reported in one line (``launch.errors``)."""


def _unreadable(path, err: BaseException) -> CheckpointError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): {first}")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def step_of(tag: str) -> int | None:
    """The step a ``tag_for`` tag names (None for a tag of another form)."""
    found = re.fullmatch(r"step(\d+)", tag)
    return int(found.group(1)) if found else None


def save_checkpoint(engine, root: Path, step: int, client_state: dict, rank: int, keep: int) -> Path:
    """Save this rank's RNG, then the engine's states through DeepSpeed (which writes ``latest`` last, once
    every rank is past its first barrier: so after every RNG file), then prune."""
    tag = tag_for(step)
    (root / tag).mkdir(parents=True, exist_ok=True)
    rng_file = root / tag / f"rng_rank{rank}.pt"
    torch.save(rng_state(), rng_file.with_suffix(".tmp"))
    os.replace(rng_file.with_suffix(".tmp"), rng_file)  # never a cut-off file under its own name
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state)
    barrier()
    if rank == 0:
        _prune(root, keep)
    barrier()
    return root / tag


def _prune(root: Path, keep: int) -> None:
    latest = (root / "latest").read_text().strip() if (root / "latest").exists() else None
    tags = sorted(p.name for p in root.glob("step*") if p.is_dir())
    for tag in tags[:-keep]:
        if tag != latest:
            shutil.rmtree(root / tag, ignore_errors=True)


def has_checkpoint(root: Path) -> bool:
    return (root / "latest").is_file()


def check_latest(root: Path) -> str:
    """The tag ``root/latest`` names, checked before a resume loads it: a folder of ``root`` holding model
    states, every ``.pt`` file in it a whole torch archive. Else a one-line CheckpointError naming the file and
    what is wrong, and the complete checkpoints beside it to fall back on. Reads only the ends of the files (a
    save cut off leaves an archive without the directory at its end); deletes nothing."""
    latest = root / "latest"
    tag = latest.read_text(errors="replace").strip()
    if not tag:
        problem = f"{latest} is empty (a save cut off?)"
    elif "/" in tag or "\n" in tag or not (root / tag).is_dir():
        problem = f"{latest} names {tag!r}, which is not a folder in {root}"
    else:
        problem = _damage(root / tag)
    if problem is None:
        return tag
    whole = [p.name for p in sorted(root.glob("step*")) if p.is_dir() and p.name != tag and _damage(p) is None]
    fix = (f"{latest} can name a complete one instead ({', '.join(whole)}), or pick a new run.dir" if whole
           else "no other checkpoint there is complete: pick a new run.dir")
    raise CheckpointError(f"{problem}; {fix}")


def _damage(folder: Path) -> str | None:
    """What keeps the checkpoint in ``folder`` from loading, or None."""
    if not any(folder.glob("*model_states.pt")):
        return f"checkpoint {folder} holds no model states (no *model_states.pt file)"
    for path in sorted(folder.glob("*.pt")):
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as err:
            return f"checkpoint file {path} is cut off or corrupt ({err})"
    return None


def load_checkpoint(engine, root: Path, rank: int) -> dict:
    """Load the newest checkpoint into ``engine``; returns its client state (step, data, ...)."""
    try:
        path, client_state = engine.load_checkpoint(str(root))
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # torch.load's errors on a damaged file
        raise _unreadable(root / (root / "latest").read_text().strip(), err) from None
    if path is None:
        raise FileNotFoundError(f"checkpoint directory {root} has a 'latest' file but no loadable checkpoint")
    rng_file = root / (root / "latest").read_text().strip() / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when resuming on more ranks than saved: those ranks keep fresh seeds
        try:
            state = torch.load(rng_file, weights_only=False)
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise _unreadable(rng_file, err) from None
        set_rng_state(state)
    return client_state or {}


def latest_model_state(root: Path) -> dict:
    """The newest checkpoint's model weights as a plain fp32 state dict (for eval and sampling)."""
    if not has_checkpoint(root):
        raise FileNotFoundError(f"no checkpoint in {root} (expected a 'latest' file written by training)")
    tag = (root / "latest").read_text().strip()
    states = root / tag / "mp_rank_00_model_states.pt"
    if not states.exists():
        raise FileNotFoundError(f"checkpoint {root / tag} has no mp_rank_00_model_states.pt")
    try:
        module = torch.load(states, map_location="cpu", weights_only=False).get("module")
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise _unreadable(states, err) from None
    if not module:  # ZeRO-3 keeps parameters partitioned: gather them from the optimizer shards
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        module = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    return {k: v.float() for k, v in module.items()}
