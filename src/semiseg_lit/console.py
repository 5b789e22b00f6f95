"""Console hygiene: silence third-party messages a user cannot act on (issue #15 item 5).

Every filter is targeted at one message (by logger name and text, or by warning text); nothing is
silenced by level or by category as a whole, so new warnings of these libraries still show.

Silenced:

* Lightning's "Tip: ... litlogger" advertisement;
* Lightning's "`weights_only` was not set" (the project passes it where it matters) and "Trainer already
  configured with model summary callbacks" (the project's compact summary, ``callbacks/progress.py``);
* Hydra's "Error executing job with overrides" (the entry point has printed the error block; a multirun
  names each job before it starts);
* Lightning's "callbacks returned in `LightningModule.configure_callbacks` will override existing callbacks"
  (the methods' own EMA / bank callbacks, re-attached for the final validation);
* Lightning's "Experiment logs directory ... Previous log files ... will be deleted" (the earlier CSV log
  is kept as ``csv/metrics.part<k>.csv`` before the logger starts, ``tasks/train.py``) and
  "Checkpoint directory ... exists and is not empty" (the run-folder check refuses a foreign run first);
* the ``isinstance(treespec, LeafSpec)`` deprecation of torch's pytree inside Lightning;
* W&B's "The anonymous setting has no effect" (Lightning's logger passes that setting);
* the INFO lines of the ONNX exporter / optimizer (``onnxscript``, ``onnx_ir``) during ``task=export``.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_third_party", "MessageFilter", "SILENCED_LOG_MESSAGES", "SILENCED_WARNINGS"]

# logger name -> message prefixes dropped from it
SILENCED_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "pytorch_lightning.utilities.rank_zero": (
        "💡 Tip: For seamless cloud logging",
        "Trainer already configured with model summary callbacks",
        "The following callbacks returned in `LightningModule.configure_callbacks` will override",
    ),
    "lightning_fabric.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),
    "pytorch_lightning.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
    # JobReturn's "Error executing job with overrides: [...]" after the error block the entry point printed
    "hydra.core.utils": ("Error executing job with overrides",),
}
# warning message regexes (matched at the start of the message)
SILENCED_WARNINGS: tuple[str, ...] = (
    r"Experiment logs directory .* exists and is not empty",
    r"Checkpoint directory .* exists and is not empty",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
# loggers whose INFO chatter (export progress of the ONNX exporter and optimizer) is not for users
QUIET_LOGGERS: tuple[str, ...] = ("onnxscript", "onnx_ir", "onnxscript.optimizer", "onnxscript.rewriter",
                                  "torch.onnx._internal.exporter")


class MessageFilter(logging.Filter):
    """Drops records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: let logging report it
            return True
        return not message.lstrip().startswith(self.prefixes)


_installed = False


def quiet_third_party() -> None:
    """Install the filters above (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    for name, prefixes in SILENCED_LOG_MESSAGES.items():
        logging.getLogger(name).addFilter(MessageFilter(prefixes))
    for pattern in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def drop_wandb_anonymous_setting(logger: object) -> None:
    """Lightning's ``WandbLogger`` always passes W&B's deprecated ``anonymous`` setting (None), which makes
    W&B print "The anonymous setting has no effect"; the run is created lazily, so removing the key from
    the pending init arguments avoids the message."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
