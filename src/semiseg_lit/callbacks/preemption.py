"""Preemption: on SIGTERM or SIGUSR1, write ``<run>/checkpoints/last.ckpt`` and exit cleanly.

Lightning 2.6 already catches SIGTERM during ``trainer.fit``: its handler sets
``trainer.received_sigterm`` and the training loop raises ``SIGTERMException`` (a ``SystemExit``)
at the end of the current step (or inside validation), after which every callback's
``on_exception`` runs. This callback adds the two missing pieces:

* on that exception it saves the full training state to ``last.ckpt`` (through the trainer's
  checkpoint IO, i.e. atomically), so ``ckpt_path=last`` resumes exactly where the run stopped;
* SIGUSR1 (the usual "time is nearly up" signal of SLURM's ``--signal=USR1@90``) is treated like
  SIGTERM, unless Lightning's SLURM auto-requeue handler already owns SIGUSR1 (then Lightning saves
  its ``hpc_ckpt_*.ckpt`` and requeues the job; the later SIGTERM still comes here).

``exit_code`` is ``128 + signal number`` (143 for SIGTERM, 138 for SIGUSR1), the shell convention
for "terminated by a signal"; ``tasks/train.py`` exits with it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)


def _main_thread() -> bool:
    """Signal handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


def forward_to_sigterm(signum: int, frame: Any) -> None:
    """Signal handler: run the current SIGTERM handler (Lightning's during ``fit``) for ``signum``."""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        handler(signal.SIGTERM, frame)
    else:  # no Python handler: deliver a real SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)


class Preemption(Callback):
    """Args:
        ckpt_path: where the preemption checkpoint goes (``<run dir>/checkpoints/last.ckpt``).
        forward_sigusr1: treat SIGUSR1 as SIGTERM when no other handler owns it.
    """

    def __init__(self, ckpt_path: str | os.PathLike, forward_sigusr1: bool = True):
        self.ckpt_path = Path(ckpt_path)
        self.forward_sigusr1 = bool(forward_sigusr1) and hasattr(signal, "SIGUSR1")
        self.signum: int | None = None
        self.saved: Path | None = None
        self._installed = False

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    # ------------------------------------------------------------------ SIGUSR1
    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        forward_to_sigterm(signum, frame)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the SIGUSR1 handler (Lightning registers its own handlers just before this hook)."""
        if not self.forward_sigusr1 or not _main_thread():
            return
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, self._on_sigusr1)
            self._installed = True

    def _restore_sigusr1(self) -> None:
        if self._installed and _main_thread():
            if signal.getsignal(signal.SIGUSR1) == self._on_sigusr1:
                signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            self._installed = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigusr1()

    # ------------------------------------------------------------------ the save
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On Lightning's ``SIGTERMException`` only (a NaN loss or a crash keeps the last good checkpoint)."""
        self._restore_sigusr1()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return  # (in trainer.validate after fit, last.ckpt is already written and has the optimizer)
        self.signum = self.signum or int(signal.SIGTERM)
        name = signal.Signals(self.signum).name
        trainer.save_checkpoint(self.ckpt_path)
        self.saved = self.ckpt_path
        rank_zero_info(f"{name} received: training state at step {trainer.global_step} saved to {self.ckpt_path}; "
                       "resume with ckpt_path=last (same hydra.run.dir) or ckpt_path=auto")
