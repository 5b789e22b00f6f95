"""Atomic checkpoint writes: a checkpoint file is either the old complete file or the new one.

Lightning's default ``TorchCheckpointIO`` writes straight to the target path, so a crash or a
preemption during the write leaves a truncated ``last.ckpt``. Here the checkpoint is written to
a temporary file in the same folder, flushed to disk, and moved into place with ``os.replace``
(atomic on POSIX and Windows).

Before anything is written, every floating-point tensor of the trained state (the state dict: weights,
BatchNorm buffers, EMA teacher; and the optimizer state) is checked: a checkpoint holding NaN/inf is refused
(:class:`NonFiniteCheckpointError`), so the file already on disk, the last finite state, stays. The
file gets the permissions of a normally created file (``0666 & ~umask``), not the temporary file's
0600. A folder that cannot be written (read-only, full) fails with :class:`CheckpointWriteError` naming
it; the checkpoints already there are untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from semiseg_lit.errors import RunFailure, UserError

MAX_NAMED = 5  # non-finite tensors named in the message


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another model."""


class CheckpointWriteError(RunFailure):
    """A checkpoint could not be written (read-only folder, disk full, ...); the files there are unchanged."""


class NonFiniteCheckpointError(RunFailure):
    """A checkpoint holding NaN/inf tensors was not written; the previous file at its path is kept."""


def _float_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted key path, tensor)`` of every floating-point / complex tensor inside nested dicts / lists."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _float_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _float_tensors(value, f"{prefix}.{i}" if prefix else str(i))


# the parts of a Lightning checkpoint that hold the trained state: the module's state dict (weights, BN
# buffers, EMA teacher) and the optimizer state. (Callback state may hold legitimate infinities, e.g.
# ModelCheckpoint's initial best score.)
CHECKED_PARTS = ("state_dict", "optimizer_states")


def nonfinite_tensors(checkpoint: Any) -> list[str]:
    """Key paths of the tensors of ``checkpoint[part]`` (:data:`CHECKED_PARTS`) holding a NaN or inf
    (one host sync per device)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    parts = {k: checkpoint[k] for k in CHECKED_PARTS if k in checkpoint} if isinstance(checkpoint, dict) else {}
    for name, tensor in _float_tensors(parts):
        if tensor.numel():
            by_device.setdefault(tensor.device, []).append((name, tensor))
    bad: list[str] = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in items]).cpu()
        bad += [name for (name, _), ok in zip(items, finite.tolist()) if not ok]
    return bad


def check_finite(checkpoint: Any, path: str | os.PathLike) -> None:
    """Refuse to write a checkpoint holding NaN/inf: :class:`NonFiniteCheckpointError` names the tensors."""
    bad = nonfinite_tensors(checkpoint)
    if not bad:
        return
    path = Path(path)
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    kept = (f"{path} is kept as it was (the last finite state)" if path.is_file()
            else "no earlier checkpoint exists at that path")
    named = ", ".join(bad[:MAX_NAMED]) + (f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else "")
    raise NonFiniteCheckpointError(
        f"the training state{'' if step is None else f' at step {step}'} holds NaN/inf values in {len(bad)} "
        f"tensor(s) ({named}), so the checkpoint {path} was NOT written; {kept}. The training diverged: "
        "lower method.optim.lr, set trainer.gradient_clip_val, or check the data; then resume from the kept "
        "checkpoint (ckpt_path=last) or start again")


def _default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it onto ``path``.
    An unwritable folder or a full disk raises :class:`CheckpointWriteError`; ``path`` is unchanged."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, RuntimeError) and "writ" not in str(exc).lower():
            raise  # not an I/O failure (torch's zip writer reports those as "... failed writing ...")
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc).splitlines()[0]
        raise CheckpointWriteError(
            f"cannot write the checkpoint {path}: {reason} (folder {path.parent}). The checkpoints already in "
            "that folder are unchanged. Free disk space or make the folder writable, then resume with "
            "ckpt_path=last") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: refuses non-finite states, then writes atomically (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        check_finite(checkpoint, path)
        atomic_torch_save(checkpoint, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Lightning checkpoint on CPU, with a clear error naming the file when it is corrupt."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        hint = (f"; give the file inside, e.g. ckpt_path={inside[0]}" if inside
                else "; it holds no .ckpt file: give the checkpoint file's path")
        raise CheckpointError(f"ckpt_path={path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (ckpt_path={path}); give the path of a "
                              ".ckpt file, e.g. <run folder>/checkpoints/last.ckpt")
    try:
        # Lightning checkpoints hold plain containers + tensors (+ hyper-parameters as dicts)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "Weights only load failed" in first:  # torch's advice to load unsafely does not belong here
            first = ("not a tensor checkpoint, or it holds pickled Python objects, which are refused for safety "
                     "(checkpoints are read with torch.load(weights_only=True))")
        else:
            first = f"{type(exc).__name__}: {first}"
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({first}); use another checkpoint "
                              "(e.g. best.ckpt or an earlier copy)") from None


def check_compatible(checkpoint: dict[str, Any], path: str | os.PathLike, num_classes: int) -> None:
    """Refuse a checkpoint not written by semiseg_lit or with another class count. (The network
    itself is rebuilt from the checkpoint's own model config and loaded strictly, which rejects
    any other architecture.)"""
    hp = checkpoint.get("hyper_parameters", {}).get("config")
    if hp is None:
        raise CheckpointError(f"checkpoint {path} was not written by semiseg_lit (no hyper_parameters.config)")
    ck_classes = int(hp["data"]["num_classes"])
    if ck_classes != num_classes:
        raise CheckpointError(f"checkpoint {path} has {ck_classes} classes but data.num_classes={num_classes}")
