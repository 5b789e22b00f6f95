"""``task=eval``: evaluate a checkpoint with the dataset's published protocol.

``python -m semiseg_lit task=eval ckpt_path=PATH [data=...] [eval.mode=sliding] [eval.scales=[0.75,1,1.25]]
[eval.flip=true] [eval.model=student|teacher]``. The network settings come from the checkpoint
itself; the data settings (root, split, protocol) from the command line. The per-class IoU table
is printed and written as JSON and CSV beside the checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from semiseg_lit.checkpointing import CheckpointError, check_compatible, load_checkpoint
from semiseg_lit.errors import UserError, checking_input
from semiseg_lit.tasks.common import build_loggers, build_trainer, prepare_run
from semiseg_lit.tasks.train import _finish_wandb, report_text, scores_to_json

log = logging.getLogger(__name__)


def config_for_checkpoint(cfg: DictConfig, checkpoint: dict, path: Path) -> DictConfig:
    """The run config with ``model`` and ``method`` taken from the checkpoint."""
    check_compatible(checkpoint, path, int(cfg.data.num_classes))
    saved = checkpoint["hyper_parameters"]["config"]
    merged = cfg.copy()
    with open_dict(merged):
        merged.model = OmegaConf.merge(merged.model, saved["model"])
        merged.method = OmegaConf.merge(merged.method, saved["method"])
        merged.model.encoder_weights = None  # the checkpoint holds all weights
        if merged.method.get("eln") is not None:  # the ELN's too: never download its trunk
            merged.method.eln.encoder_weights = None
    return merged


def evaluate(cfg: DictConfig) -> float:
    with checking_input():
        if not cfg.ckpt_path:
            raise UserError("task=eval needs ckpt_path=<checkpoint file>")
        path = Path(cfg.ckpt_path)
        checkpoint = load_checkpoint(path)
        cfg = config_for_checkpoint(cfg, checkpoint, path)
        out, datamodule, model = prepare_run(cfg, "validate")
        try:
            model.load_state_dict(checkpoint["state_dict"], strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint {path} does not fit the network it describes: {first}") from None
    if not cfg.eval.get("wandb", False):  # an evaluation opens a W&B run only when asked (eval.wandb=true)
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.logger.wandb.enabled = False
    loggers = build_loggers(cfg, out)
    trainer = build_trainer(cfg, out, callbacks=[], loggers=loggers)
    try:
        trainer.validate(model, datamodule=datamodule, verbose=False, weights_only=True)
        scores = model.last_scores
        result = scores_to_json(scores, datamodule.class_info.names)
        result.update(checkpoint=str(path), mode=cfg.eval.mode or cfg.data.val_mode,
                      scales=list(cfg.eval.scales), flip=bool(cfg.eval.flip),
                      model=cfg.eval.model or cfg.method.eval_model, data=cfg.data.name)
        if trainer.is_global_zero:
            stem = path.with_suffix("")
            Path(f"{stem}_eval.json").write_text(json.dumps(result, indent=2))
            with open(f"{stem}_eval.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["class", "iou"])
                for name, iou in result["per_class_iou"].items():
                    w.writerow([name, f"{iou:.6f}"])
                w.writerow(["mIoU", f"{result['miou']:.6f}"])
            text = report_text(cfg, out, scores, datamodule.class_info, loggers, paths=False)
            _finish_wandb(loggers)  # W&B's run summary first: the table and the paths are the last lines
            print(f"{text}\nevaluation written to {stem}_eval.json and {stem}_eval.csv", flush=True)
        return result["miou"]
    finally:
        _finish_wandb(loggers)
