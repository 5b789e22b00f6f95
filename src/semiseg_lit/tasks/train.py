"""``task=train``: fit a method, evaluate the final model, write ``metrics.json``, print the table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from semiseg_lit.ops.metrics import format_iou_table
from semiseg_lit.tasks.common import build_callbacks, build_loggers, build_trainer, prepare_run

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, out: Path) -> str | None:
    """``last`` → ``<run dir>/checkpoints/last.ckpt`` (resume an interrupted run in the same dir)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = out / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist; point hydra.run.dir at the "
                                    "interrupted run's folder or give the checkpoint path")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: file not found")
    from semiseg_lit.checkpointing import load_checkpoint

    load_checkpoint(ckpt_path)  # clear error on a corrupt file before any work
    return ckpt_path


def scores_to_json(scores: dict[str, Any], class_names) -> dict[str, Any]:
    per_class = [float(v) for v in scores["per_class_iou"]]
    out = {"miou": float(scores["miou"]), "pixel_acc": float(scores["pixel_acc"]),
           "per_class_iou": dict(zip(class_names, per_class))}
    for key in ("head_miou", "tail_miou", "mean_acc"):
        if key in scores:
            out[key] = float(scores[key])
    return out


def train(cfg: DictConfig) -> float | None:
    out, datamodule, model = prepare_run(cfg, "fit")
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, out)
    OmegaConf.save(cfg, out / "config_resolved.yaml", resolve=True)

    loggers = build_loggers(cfg, out)
    trainer = build_trainer(cfg, out, build_callbacks(cfg, out, bool(loggers)), loggers)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        # last.ckpt is the state at the end of training (the checkpoint callback writes it at
        # validation time only, which need not coincide with the last step)
        trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
        # final evaluation of the model as it ends (the best-on-val checkpoint is kept separately)
        trainer.validate(model, datamodule=datamodule, verbose=False)
        scores = model.last_scores
        result = scores_to_json(scores, datamodule.class_info.names)
        result.update(step=int(trainer.global_step), evaluated_model=cfg.method.eval_model,
                      checkpoint_dir=str(out / "checkpoints"))
        if trainer.is_global_zero:
            (out / "metrics.json").write_text(json.dumps(result, indent=2))
            report(cfg, out, scores, datamodule.class_info, loggers)
        return result["miou"]
    finally:
        _finish_wandb(loggers)


def report(cfg: DictConfig, out: Path, scores: dict[str, Any], class_info, loggers: list) -> None:
    table = format_iou_table(torch.as_tensor(scores["per_class_iou"]), class_info.names,
                             head=class_info.head, tail=class_info.tail)
    lines = ["", f"Final evaluation ({cfg.method.eval_model} network, {cfg.data.name} val):", table]
    if "head_miou" in scores:
        lines.append(f"head mIoU {100 * float(scores['head_miou']):.2f}   tail mIoU "
                     f"{100 * float(scores['tail_miou']):.2f}")
    ckpt = out / "checkpoints"
    lines.append(f"checkpoints: {ckpt / 'last.ckpt'} (last), {ckpt / 'best.ckpt'} (best val mIoU)")
    lines.append(f"metrics:     {out / 'metrics.json'}")
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run_dir = getattr(getattr(lg, "experiment", None), "dir", None)
            lines.append(f"W&B run:     {Path(run_dir).parent if run_dir else out / 'wandb'}")
    text = "\n".join(lines)
    print(text, flush=True)


def _finish_wandb(loggers: list) -> None:
    """Close the W&B run so each Hydra multirun job starts its own."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
