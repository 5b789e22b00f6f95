"""User errors versus runtime failures, and how the command line reports them.

The rule (README "Reliability"):

* A **user error** is bad input the user can fix: a config key or value, a data file or folder, a
  checkpoint, an output folder that already holds a run. It is

  - any :class:`UserError` (``CheckpointError``, ``RunFolderError``, ... subclass it), or
  - a ``ValueError`` / ``KeyError`` / ``FileNotFoundError`` / ``FileExistsError`` / ``NotADirectoryError`` /
    ``IsADirectoryError`` / ``PermissionError`` raised while a task checks its input, i.e. inside :func:`checking_input`
    (config, data and checkpoint validation, before any training or inference work). The data
    helpers keep raising ``ValueError`` subclasses (``DataError``, ``SplitError``) with full messages;
    this rule is what makes them user errors.

  ``python -m semiseg_lit`` prints it as one block (the message names the file / key / value, what was
  expected and how to fix it), without a stack trace, and exits with code **2**.
* A **run failure** (:class:`RunFailure`: the loss diverged, no memory, a checkpoint could not be written)
  is printed the same way, without a stack trace, and exits with code **1**.
* Anything else is a bug or an unexpected runtime failure: the stack trace is printed, exit code **1**.

``HYDRA_FULL_ERROR=1`` or ``debug=true`` adds the stack trace to every error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["UserError", "RunFailure", "RunFolderError", "USER_INPUT_TYPES", "checking_input", "is_user_error",
           "is_run_failure", "EXIT_USER_ERROR", "EXIT_FAILURE"]

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1

# exception types that are user errors when raised while the input is checked (checking_input)
USER_INPUT_TYPES: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, FileExistsError,
                                                     NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(ValueError):
    """Bad input the user can fix (a config key/value, a file, a checkpoint, an output folder).
    A ``ValueError``, so ``except ValueError`` keeps catching it."""


class RunFolderError(UserError):
    """The output folder already holds a run (or files) that a new run would overwrite."""


class RunFailure(RuntimeError):
    """A run stopped for a known reason, fully described by its message (no stack trace is shown)."""


def is_user_error(exc: BaseException) -> bool:
    """``UserError``, or an input-type error raised inside :func:`checking_input` (it is marked there)."""
    return isinstance(exc, UserError) or bool(getattr(exc, "semiseg_user_error", False))


def is_run_failure(exc: BaseException) -> bool:
    """A known run failure whose message says everything: ``RunFailure``, a non-finite loss
    (``FloatingPointError`` of the finite guard) or out of memory with the advice of ``tasks/train.py``."""
    if isinstance(exc, (RunFailure, FloatingPointError)):
        return True
    return type(exc).__name__ == "OutOfMemoryError" and "\n  try: " in str(exc)


@contextmanager
def checking_input() -> Iterator[None]:
    """Mark input-type errors (:data:`USER_INPUT_TYPES`) raised inside the block as user errors. The
    exception itself is re-raised unchanged (same type and message), so callers can still catch it."""
    try:
        yield
    except USER_INPUT_TYPES as exc:
        try:
            exc.semiseg_user_error = True  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__: leave it a runtime failure
            pass
        raise
