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

* SIGINT (Ctrl-C) is treated like SIGTERM as well: the first Ctrl-C ends the run at the end of the
  current step with a resumable ``last.ckpt``; a second Ctrl-C stops at once (Python's default).
* An exception raised inside a validation during ``fit`` (a corrupt val image, a bug in a metric) does
  not lose the training done so far: ``last.ckpt`` is written before the exception goes on (single
  process only: under DDP the other ranks would wait in the checkpoint's barrier), and a note saying so
  is added to the exception. Not for a non-finite state or a failed checkpoint write.

``exit_code`` is ``128 + signal number`` (143 for SIGTERM, 138 for SIGUSR1, 130 for SIGINT), the shell
convention for "terminated by a signal"; ``tasks/train.py`` exits with it.
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
from pytorch_lightning.trainer.states import RunningStage, TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from semiseg_lit.errors import RunFailure

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
        self._sigint_installed = False
        self._previous_sigint: Any = None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    # ------------------------------------------------------------------ SIGUSR1
    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        forward_to_sigterm(signum, frame)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """First Ctrl-C: stop at the end of the step with a checkpoint; the next one: Python's default."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._sigint_installed = False
        self.signum = self.signum or signum
        rank_zero_info("\nCtrl-C: saving a resumable checkpoint at the end of this step (press Ctrl-C again to "
                       "stop at once, without it)")
        forward_to_sigterm(signum, frame)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the SIGUSR1 and SIGINT handlers (Lightning registers its own just before this hook)."""
        if not _main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
            self._sigint_installed = True
        if not self.forward_sigusr1:
            return
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, self._on_sigusr1)
            self._installed = True

    def _restore_sigusr1(self) -> None:
        if self._sigint_installed and _main_thread():
            if signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
            self._sigint_installed = False
        if self._installed and _main_thread():
            if signal.getsignal(signal.SIGUSR1) == self._on_sigusr1:
                signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            self._installed = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigusr1()

    # ------------------------------------------------------------------ the save
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On Lightning's ``SIGTERMException``, and on an error inside a validation of ``fit`` (module
        docstring); a NaN loss or a crash in a training step keeps the last good checkpoint."""
        self._restore_sigusr1()
        if trainer.state.fn != TrainerFn.FITTING:
            return  # (in trainer.validate after fit, last.ckpt is already written and has the optimizer)
        if not isinstance(exception, SIGTERMException):
            self._save_after_failed_validation(trainer, exception)
            return
        self.signum = self.signum or int(signal.SIGTERM)
        name = signal.Signals(self.signum).name
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        self.saved = self.ckpt_path
        rank_zero_info(f"{name} received: training state at step {trainer.global_step} saved to {self.ckpt_path}; "
                       "resume with ckpt_path=last (same hydra.run.dir) or ckpt_path=auto")

    def _save_after_failed_validation(self, trainer: pl.Trainer, exception: BaseException) -> None:
        if (not isinstance(exception, Exception) or isinstance(exception, (FloatingPointError, RunFailure))
                or trainer.state.stage != RunningStage.VALIDATING or trainer.world_size > 1):
            return
        try:
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - the validation error is the one to report
            log.error("validation failed and the training state could not be saved either: %s", exc)
            return
        self.saved = self.ckpt_path
        note = (f"(the validation at step {trainer.global_step} failed; the training state was saved to "
                f"{self.ckpt_path}: fix the cause, then resume with ckpt_path=last)")
        if hasattr(exception, "add_note"):
            exception.add_note(note)
        rank_zero_info(note)
