"""One-line errors for user mistakes: no traceback, exit status 2, nothing written is touched."""

from __future__ import annotations

import argparse
import contextlib
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors (a missing argument, an int that is not one, an unknown option) are one
    line, as the commands' own are: `prog: error: message (prog --help lists the options)`, exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} ({self.prog} --help lists the options)", file=sys.stderr)
        raise SystemExit(2)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from megastride.data_shards import PrepareError, StoreError
    from megastride.engine.checkpoint import CheckpointError
    from megastride.engine.config import ConfigError
    from megastride.kernels.patterns import LayoutTooLarge

    return (ConfigError, StoreError, PrepareError, CheckpointError, LayoutTooLarge, FileNotFoundError)


@contextlib.contextmanager
def user_errors(prog: str):
    """Turn the errors a user can cause into `prog: error: message` and exit 2."""
    try:
        yield
    except _user_error_types() as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def check_output(path, flag: str, kind: str = "folder", suffixes: tuple[str, ...] = ()) -> None:
    """Before any work: ``flag``'s ``path`` can be written as a ``kind`` ("folder" or "file") -- no folder on
    the way to it is a file, a folder is not a file, a file is not a folder, and a file ends in one of
    ``suffixes`` (where the writer picks its format by the extension) -- else a one-line ConfigError."""
    import os

    from megastride.data_shards.writing import file_in_the_way
    from megastride.engine.config import ConfigError

    path = os.fspath(path)
    if not path:
        raise ConfigError(f"{flag} is empty")
    here = os.path.abspath(path)
    if os.path.lexists(here):
        if kind == "folder" and not os.path.isdir(here):
            raise ConfigError(f"{flag} {path} is a file, not a folder")
        if kind == "file" and os.path.isdir(here):
            raise ConfigError(f"{flag} {path} is a folder, not a file")
    blocker = file_in_the_way(here)
    if blocker:
        raise ConfigError(f"{flag} {path}: {blocker} is a file, not a folder")
    if suffixes and not path.lower().endswith(suffixes):
        raise ConfigError(f"{flag} {path}: the file name must end in {' or '.join(suffixes)}")


def check_new_file(path, flag: str, force: bool) -> None:
    """``check_output`` for a file, and one that exists already is kept unless ``force`` (the command's
    --force): a one-line ConfigError naming it, before any work."""
    import os

    from megastride.engine.config import ConfigError

    check_output(path, flag, "file")
    if os.path.lexists(path) and not force:
        raise ConfigError(f"{flag} {os.fspath(path)} exists: pass --force to replace it")


def check_number(value, flag: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    """``flag``'s ``value`` is a finite number within [low, high] (``low_open``: above low), else a one-line
    ConfigError."""
    import math

    from megastride.engine.config import ConfigError

    if value is None:
        return
    finite = isinstance(value, int) or math.isfinite(value)  # an int of any size (math.isfinite cannot take 10**400)
    bad = not finite or (low is not None and (value <= low if low_open else value < low)) \
        or (high is not None and value > high)
    if bad:
        bounds = (f"above {low:g}" if low_open else f"at least {low:g}") if low is not None else ""
        if high is not None:
            bounds += (" and " if bounds else "") + f"at most {high:g}"
        got = value if isinstance(value, int) else f"{value:g}"
        raise ConfigError(f"{flag} must be a finite number {bounds}, got {got}")


def check_device(name: str, flag: str) -> None:
    """``flag``'s device ``name`` is one torch knows and this machine has, else a one-line ConfigError."""
    import torch

    from megastride.engine.config import ConfigError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{flag}: unknown device {name!r} (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} {name}: torch sees no CUDA GPU here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{flag} {name}: there are {torch.cuda.device_count()} CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag}: device {name!r} is not one megastride runs on (cpu, cuda, cuda:N)")
