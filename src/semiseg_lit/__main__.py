"""Command-line entry: ``python -m semiseg_lit [+experiment=NAME] [key=value ...]``.

Dispatches on ``task`` (train | eval | predict | export | check_data | report). The config directory
is the package's ``conf/`` (a copy of the repository's ``conf/`` inside wheels), found relative to this
file so it works from a source checkout, an editable install and an installed wheel alike.

Exit codes (``semiseg_lit/errors.py``): 0 success; 2 a user error (config, data, checkpoint, output
folder), printed as one block without a stack trace; 1 a run failure (diverged loss, out of memory,
unwritable checkpoint folder: one block) or an unexpected error (with its stack trace); 128 + signal
number when stopped by SIGTERM / SIGUSR1 / SIGINT after saving ``last.ckpt``; ``task=check_data``
exits 1 when it found problems. ``debug=true`` or
``HYDRA_FULL_ERROR=1`` prints the stack trace of every error.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from semiseg_lit.config import register_configs
from semiseg_lit.errors import EXIT_FAILURE, EXIT_USER_ERROR, is_run_failure, is_user_error

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

register_configs()

# HYDRA_FULL_ERROR as the user set it (main() sets it to 1 to receive Hydra's exceptions itself);
# inherited by the processes a run starts (DDP ranks re-run this entry point)
_USER_FULL_ERROR = "SEMISEG_LIT_USER_HYDRA_FULL_ERROR"
_TRUE = ("1", "true", "yes", "on")


def debug_requested(argv: list[str] | None = None, cfg: DictConfig | None = None) -> bool:
    """``debug=true`` (config or command line) or ``HYDRA_FULL_ERROR=1`` as set by the user."""
    if cfg is not None and bool(cfg.get("debug", False)):
        return True
    if os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")) == "1":
        return True
    for arg in sys.argv[1:] if argv is None else argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "debug" and value.strip().lower() in _TRUE:
            return True
    return False


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) is the repr of its argument
    else:
        text = str(exc).strip() or type(exc).__name__
    worker_tb = "Original Traceback (most recent call last):"
    if worker_tb in text:  # re-raised from a DataLoader worker: keep its message, not the worker's stack
        head, _, rest = text.partition(worker_tb)
        marker = f"{type(exc).__name__}: "  # the last line: "[module.]DataError: <message>"
        start = rest.rfind(marker)
        if start >= 0:
            where = head.strip().removeprefix(f"Caught {type(exc).__name__} ").rstrip(".")
            text = f"{rest[start + len(marker):].strip()} ({where})"
    return "\n".join([text, *getattr(exc, "__notes__", [])])


def _hydra_error_text(exc: BaseException) -> str:
    """Hydra's config-composition errors, printed as Hydra prints them (the message and its cause)."""
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += "\n" + str(cause)
    return text


def _task_frames(exc: BaseException):
    """The traceback from the task function down (Hydra's own frames above it are noise)."""
    tb = exc.__traceback__
    walk = tb
    while walk is not None:
        if walk.tb_frame.f_code.co_name == "_hydra_main":
            return walk
        walk = walk.tb_next
    return tb


def report_error(exc: BaseException, debug: bool, stream=None) -> int:
    """Print ``exc`` the way the command line reports it; return the exit code (module docstring)."""
    from hydra.errors import HydraException

    stream = stream or sys.stderr
    if is_user_error(exc) or isinstance(exc, HydraException):
        code, head, tail = EXIT_USER_ERROR, "error", "fix the input named above and run again"
        text = _hydra_error_text(exc) if isinstance(exc, HydraException) else _message(exc)
    elif is_run_failure(exc):
        code, head, tail = EXIT_FAILURE, "run failed", "nothing else was lost"
        text = _message(exc)
    else:
        code = EXIT_FAILURE
        traceback.print_exception(type(exc), exc, _task_frames(exc), file=stream)
        stream.write(f"\nunexpected error ({type(exc).__name__}; exit code 1): the stack trace above shows "
                     "where. If your input looks right, please report it with this output.\n")
        stream.flush()
        return code
    if debug:
        traceback.print_exception(type(exc), exc, _task_frames(exc), file=stream)
        stream.write("\n")
    stream.write(f"{head}: {text}\n({tail}; exit code {code}"
                 f"{'' if debug else '; debug=true or HYDRA_FULL_ERROR=1 shows the stack trace'})\n")
    stream.flush()
    return code


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from semiseg_lit.tasks import run_task

    try:
        result = run_task(cfg)
    except Exception as exc:
        # reported here, inside the job; main() only turns it into the exit code. A multirun goes on with
        # the next job and re-raises the first failure at its end (Hydra then names that job's overrides);
        # a single run returns, so that Hydra does not print its "Error executing job" line after the block
        code = report_error(exc, debug_requested(cfg=cfg))
        exc.semiseg_exit_code = code  # type: ignore[attr-defined]
        if not _in_multirun():
            _failed_run_exit_code.append(code)
            return None
        raise
    if cfg.task == "check_data" and result:  # problems found: a non-zero exit status for scripts
        raise SystemExit(1)
    return result


_failed_run_exit_code: list[int] = []


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - no Hydra config: not a multirun
        return False


def main() -> int:
    """Run Hydra with ``HYDRA_FULL_ERROR=1`` so its exceptions come here: each is printed once (by
    :func:`report_error`) and mapped to the exit code."""
    from semiseg_lit.console import quiet_third_party

    quiet_third_party()
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", _USER_FULL_ERROR)}
    os.environ.setdefault(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _failed_run_exit_code.clear()
    try:
        _hydra_main()
        return _failed_run_exit_code[-1] if _failed_run_exit_code else 0
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted (Ctrl-C)\n")
        return 130
    except Exception as exc:
        code = getattr(exc, "semiseg_exit_code", None)
        if code is None:  # not reported yet: an error of Hydra itself (config composition, overrides)
            code = report_error(exc, debug_requested())
        return int(code)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


if __name__ == "__main__":
    sys.exit(main())
