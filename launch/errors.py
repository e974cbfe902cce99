"""One-line errors for user mistakes: no traceback, exit status 2, nothing written is touched."""

from __future__ import annotations

import contextlib
import sys


def _user_error_types() -> tuple[type[BaseException], ...]:
    from megastride.data_shards import PrepareError, StoreError
    from megastride.engine.checkpoint import CheckpointError
    from megastride.engine.config import ConfigError

    return (ConfigError, StoreError, PrepareError, CheckpointError, FileNotFoundError)


@contextlib.contextmanager
def user_errors(prog: str):
    """Turn the errors a user can cause into `prog: error: message` and exit 2."""
    try:
        yield
    except _user_error_types() as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
