"""Expected user errors end a script with one clear message, not a traceback.

A misspelt mixer or model name, an option a mixer does not take, a checkpoint written for another model, a data
folder that is not there: the library raises ``ValueError``, ``TypeError`` or ``FileNotFoundError`` with a message
that names the problem and the fix (and the close matches of a misspelt name). In a script, that message is all the
user needs; a traceback above it (Hydra prints about 18 lines, then "Set HYDRA_FULL_ERROR=1") only hides it.

    from mixerzoo.training.errors import user_errors

    with user_errors("train.py"):
        return run(cfg)

prints ``train.py: error: <message> (MIXERZOO_DEBUG=1 shows the traceback)`` on stderr and exits with
status 1. With ``MIXERZOO_DEBUG=1`` (or Hydra's own
``HYDRA_FULL_ERROR=1``) in the environment, or ``debug=True``, the exception propagates with its traceback.
Other exceptions (bugs) always propagate with their traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

__all__ = ["DEBUG_VARIABLES", "USER_ERRORS", "WRAPPERS", "debug_requested", "user_error", "user_errors"]

# what the library raises for input a user can fix (CheckpointError is a ValueError)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)
DEBUG_VARIABLES = ("MIXERZOO_DEBUG", "HYDRA_FULL_ERROR")
# exceptions that only wrap the error that caused them: Hydra's ``instantiate`` raises "Error in call to target
# 'mixerzoo.MetaFormer': ValueError(...)" from the constructor's own error
WRAPPERS: tuple[type[BaseException], ...] = (InstantiationException,)


def user_error(error: BaseException) -> BaseException | None:
    """``error`` if it is an expected user error, else the user error a wrapper was raised from, else None."""
    while isinstance(error, WRAPPERS) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, USER_ERRORS) else None


def debug_requested() -> bool:
    """Whether the environment asks for tracebacks (``MIXERZOO_DEBUG`` or ``HYDRA_FULL_ERROR`` set, not 0)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in DEBUG_VARIABLES)


@contextmanager
def user_errors(program: str, debug: bool = False) -> Iterator[None]:
    """Turn an expected user error raised inside the block into ``<program>: error: <message>`` on stderr and
    ``SystemExit(1)``, unless ``debug`` or :func:`debug_requested`."""
    try:
        yield
    except (*USER_ERRORS, *WRAPPERS) as raised:
        error = user_error(raised)
        if error is None or debug or debug_requested():
            raise
        message = str(error) or type(error).__name__
        if isinstance(error, FileNotFoundError | NotADirectoryError) and error.filename and error.strerror:
            message = f"{error.strerror}: {error.filename}"
        print(f"{program}: error: {message} (MIXERZOO_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
