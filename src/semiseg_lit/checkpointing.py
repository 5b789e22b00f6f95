"""Atomic checkpoint writes: a checkpoint file is either the old complete file or the new one.

Lightning's default ``TorchCheckpointIO`` writes straight to the target path, so a crash or a
preemption during the write leaves a truncated ``last.ckpt``. Here the checkpoint is written to
a temporary file in the same folder, flushed to disk, and moved into place with ``os.replace``
(atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another model."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Lightning checkpoint on CPU, with a clear error naming the file when it is corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # Lightning checkpoints hold plain containers + tensors (+ hyper-parameters as dicts)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(exc).__name__}: {exc})") from exc


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
