"""``task=train``: fit a method, evaluate the final model, write ``metrics.json``, print the table."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from semiseg_lit.callbacks.preemption import Preemption
from semiseg_lit.checkpointing import CheckpointError, check_compatible, load_checkpoint
from semiseg_lit.errors import UserError, checking_input
from semiseg_lit.ops.metrics import format_iou_table
from semiseg_lit.tasks.common import (
    build_callbacks,
    build_loggers,
    build_trainer,
    check_run_folder,
    method_class,
    prepare_run,
)

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, out: Path, cfg: DictConfig | None = None) -> str | None:
    """``last`` → ``<run dir>/checkpoints/last.ckpt`` (resume an interrupted run in the same dir);
    ``auto`` → the same file when it exists, else a fresh start (for requeued / restarted jobs).
    The checkpoint is read once here: a corrupt file, or one of another method / network / class
    count than ``cfg``, fails before any work with an error naming it."""
    if ckpt_path is None:
        return None
    last = out / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":
        if not last.is_file():
            return None
        ckpt_path = "last"
    if ckpt_path == "last":
        if not last.is_file():
            raise CheckpointError(f"ckpt_path=last but {last} does not exist; point hydra.run.dir at the "
                                  "interrupted run's folder or give the checkpoint path")
        ckpt_path = str(last)
    checkpoint = load_checkpoint(ckpt_path)  # a folder, a missing or a corrupt file: an error naming it
    if cfg is not None:
        check_resumable(checkpoint, ckpt_path, cfg)
    return ckpt_path


# model settings that may differ between a checkpoint and the run resuming it
_FREE_MODEL_KEYS = ("encoder_weights",)


def check_resumable(checkpoint: dict, path: str | Path, cfg: DictConfig) -> None:
    """A checkpoint resumes only the same method, network and class count (names what differs)."""
    check_compatible(checkpoint, path, int(cfg.data.num_classes))
    saved = checkpoint["hyper_parameters"]["config"]
    if saved["method"]["name"] != cfg.method.name:
        raise CheckpointError(f"checkpoint {path} was trained with method={saved['method']['name']} but this "
                              f"run has method={cfg.method.name}")
    now = OmegaConf.to_container(cfg.model, resolve=True)
    diff = [f"model.{k}={saved['model'][k]!r} in the checkpoint, {v!r} now" for k, v in now.items()
            if k not in _FREE_MODEL_KEYS and k in saved["model"] and saved["model"][k] != v]
    if diff:
        raise CheckpointError(f"checkpoint {path} has another network than this run: {'; '.join(diff)}")
    check_same_schedule(saved, path, cfg)


# keys a resumed run must share with its checkpoint: the data stream, the schedule and the random draws
# would silently differ otherwise (README "Reliability")
RESUME_KEYS = ("seed", "trainer.max_steps", "data.labeled_batch_size", "data.unlabeled_batch_size",
               "trainer.accumulate_grad_batches", "data.dataset", "data.n_labeled", "data.split_seed",
               "data.labeled_split", "data.train_split", "data.labeled_list", "data.unlabeled_list",
               # the optimizer state restored from the checkpoint keeps its learning rates: a changed rule
               # would be ignored silently (methods/lr_scaling.py)
               "method.optim.scale_lr_with_batch", "method.optim.base_batch_size", "method.optim.lr_scale_rule")


def check_same_schedule(saved: dict, path: str | Path, cfg: DictConfig) -> None:
    """Refuse (``resume_check=strict``) or warn (``warn``) when :data:`RESUME_KEYS` differ from the checkpoint's.
    ``trainer.max_steps`` under a constant LR (``method.optim.scheduler=constant`` in both) is only warned
    about: it decides where training ends, not the poly schedule's learning rates."""
    def value(tree, key):
        node = tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None, False
            node = node[part]
        return node, True

    now = OmegaConf.to_container(cfg, resolve=True)
    # with a constant LR, max_steps only says when training ends: a longer / shorter run is safe (warned)
    constant_lr = all(value(tree, "method.optim.scheduler")[0] == "constant" for tree in (saved, now))
    diff, safe = [], []
    for key in RESUME_KEYS:
        old, had = value(saved, key)
        new, has = value(now, key)
        if had and has and old != new:
            (safe if key == "trainer.max_steps" and constant_lr else diff).append(
                f"{key}={old!r} in the checkpoint, {new!r} now")
    mode = str(cfg.get("resume_check", "strict"))
    if mode not in ("strict", "warn"):
        raise UserError(f"resume_check={mode!r}: expected strict | warn")
    if safe:
        log.warning("resuming %s with %s (method.optim.scheduler=constant: only where training ends changes)",
                    path, "; ".join(safe))
    if not diff:
        return
    text = (f"resuming {path} with other settings than it was trained with: {'; '.join(diff)}")
    if mode == "warn":
        log.warning("%s (resume_check=warn: continuing; the run is not the one the checkpoint started)", text)
        return
    raise CheckpointError(f"{text}. Resume with the checkpoint's values, start a new run in another folder, or "
                          "add resume_check=warn to continue anyway")


def keep_previous_csv_log(out: Path) -> Path | None:
    """Lightning's CSVLogger deletes an existing ``csv/metrics.csv``; on resume it is renamed to
    ``csv/metrics.part<k>.csv`` first (k = 1, 2, ... in the order of the interrupted segments)."""
    current = out / "csv" / "metrics.csv"
    if not current.is_file():
        return None
    k = 1
    while (out / "csv" / f"metrics.part{k}.csv").exists():
        k += 1
    try:
        kept = current.rename(out / "csv" / f"metrics.part{k}.csv")
    except FileNotFoundError:  # another process moved it first
        return None
    log.info("resuming: the earlier CSV log is kept as %s", kept)
    return kept


def scores_to_json(scores: dict[str, Any], class_names) -> dict[str, Any]:
    per_class = [float(v) for v in scores["per_class_iou"]]
    out = {"miou": float(scores["miou"]), "pixel_acc": float(scores["pixel_acc"]),
           "per_class_iou": dict(zip(class_names, per_class))}
    for key in ("head_miou", "tail_miou", "mean_acc"):
        if key in scores:
            out[key] = float(scores[key])
    return out


def best_to_json(best: dict[str, Any] | None, class_names, cfg: DictConfig, out: Path) -> dict[str, Any] | None:
    """The ``best`` entry of ``metrics.json``: the best in-training validation of the evaluated network
    (highest ``val/miou``, as ``checkpoints/best.ckpt``) with its step; null when no validation ran."""
    if best is None:
        return None
    entry = scores_to_json(best, class_names)
    entry.update(step=int(best["step"]), evaluated_model=cfg.method.eval_model,
                 checkpoint=str(out / "checkpoints" / "best.ckpt"))
    return entry


def train(cfg: DictConfig) -> float | None:
    with checking_input():  # bad input fails here, as a user error, before anything is written
        out, datamodule, model = prepare_run(cfg, "fit")
        ckpt_path = resolve_ckpt_path(cfg.ckpt_path, out, cfg)
        if rank_zero_only.rank == 0:  # (DDP ranks > 0 start after rank 0 wrote config_resolved.yaml)
            check_run_folder(out, ckpt_path, bool(cfg.get("overwrite", False)))
    if ckpt_path is not None and rank_zero_only.rank == 0:
        keep_previous_csv_log(out)
    OmegaConf.save(cfg, out / "config_resolved.yaml", resolve=True)

    loggers = build_loggers(cfg, out)
    trainer = build_trainer(cfg, out, build_callbacks(cfg, out, bool(loggers)), loggers)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # last.ckpt is the state at the end of training (the checkpoint callback writes it at
        # validation time only, which need not coincide with the last step)
        trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
        # final evaluation of the model as it ends (the best-on-val checkpoint is kept separately)
        trainer.validate(model, datamodule=datamodule, verbose=False, weights_only=True)
        scores = model.last_scores
        result = scores_to_json(scores, datamodule.class_info.names)
        result.update(step=int(trainer.global_step), evaluated_model=cfg.method.eval_model,
                      checkpoint_dir=str(out / "checkpoints"))
        result["best"] = best_to_json(model.best_scores, datamodule.class_info.names, cfg, out)
        if trainer.is_global_zero:
            (out / "metrics.json").write_text(json.dumps(result, indent=2))
            text = report_text(cfg, out, scores, datamodule.class_info, loggers, best=result["best"],
                               last_step=result["step"])
            _finish_wandb(loggers)  # W&B's run summary first: the table and the paths are the last lines
            print(text, flush=True)
        return result["miou"]
    except SIGTERMException:  # the Preemption callback has written last.ckpt
        pre = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
        raise SystemExit(pre.exit_code if pre else 143) from None
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        raise torch.OutOfMemoryError(oom_advice(cfg, int(trainer.global_step), oom_phase(exc),
                                                int(trainer.world_size), str(exc))) from exc
    finally:
        _finish_wandb(loggers)


def is_out_of_memory(exc: BaseException) -> bool:
    """GPU out-of-memory, or the CPU allocator's equivalent."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc))


def oom_phase(exc: BaseException) -> str:
    """``validation`` when the error was raised inside a validation step, else ``training``."""
    names = {frame.f_code.co_name for frame, _ in traceback.walk_tb(exc.__traceback__)}
    return "validation" if "validation_step" in names and "training_step" not in names else "training"


def oom_advice(cfg: DictConfig, step: int, phase: str, world_size: int = 1, error: str = "") -> str:
    """What ran out of memory (batch, crop, precision) and the knobs that lower memory use."""
    d, t = cfg.data, cfg.trainer
    first = error.strip().splitlines()[0] if error.strip() else "out of memory"
    head = (f"out of memory during {phase} at step {step} ({first})\n"
            f"  setting: data.labeled_batch_size={d.labeled_batch_size}, data.unlabeled_batch_size="
            f"{d.unlabeled_batch_size} (global, over {world_size} device(s)), data.crop_size={d.crop_size}, "
            f"trainer.precision={t.precision}, model.encoder={cfg.model.encoder}")
    if phase == "validation":
        knobs = [f"data.val_batch_size=<smaller> (now {d.val_batch_size})",
                 f"data.val_crop_size=<smaller> (now {d.val_crop_size})" if d.val_mode == "sliding" else
                 f"data.val_mode=sliding data.val_crop_size=<crop> (now val_mode={d.val_mode}: whole images "
                 "are held in memory at once)"]
    else:
        knobs = [f"data.labeled_batch_size / data.unlabeled_batch_size=<smaller> (now {d.labeled_batch_size} / "
                 f"{d.unlabeled_batch_size})",
                 f"data.crop_size=<smaller> (now {d.crop_size}; activation memory grows with its area)"]
        if str(t.precision) in ("32-true", "32", "64-true"):
            knobs.append("trainer.precision=bf16-mixed (about half the activation memory)")
        if getattr(method_class(cfg), "supports_grad_accumulation", True):
            knobs.append(f"trainer.accumulate_grad_batches=2 with half the batch size (now "
                         f"{t.accumulate_grad_batches}; keeps the effective batch)")
        knobs.append("more devices: trainer=ddp (batch sizes are global, so each device gets a share)")
    return head + "\n  try: " + "\n       ".join(knobs)


def report_text(cfg: DictConfig, out: Path, scores: dict[str, Any], class_info, loggers: list,
                paths: bool = True, best: dict[str, Any] | None = None, last_step: int | None = None) -> str:
    """The final IoU table, the best in-training validation (``best``, the ``metrics.json`` entry), then
    (``paths``) where the checkpoints, metrics and W&B run are."""
    table = format_iou_table(torch.as_tensor(scores["per_class_iou"]), class_info.names,
                             head=class_info.head, tail=class_info.tail)
    which = OmegaConf.select(cfg, "eval.model") or cfg.method.eval_model  # task=eval may pick the other one
    lines = ["", f"Final evaluation ({which} network, {cfg.data.name} val):", table]
    if "head_miou" in scores:
        lines.append(f"head mIoU {100 * float(scores['head_miou']):.2f}   tail mIoU "
                     f"{100 * float(scores['tail_miou']):.2f}")
    if best is not None:
        lines.append(f"best:        val mIoU {100 * best['miou']:.2f} at step {best['step']} "
                     f"(last: {100 * float(scores['miou']):.2f} at step {last_step})")
    if paths:
        ckpt = out / "checkpoints"
        kept = [f"{ckpt / name} ({what})" for name, what in (("last.ckpt", "last"), ("best.ckpt", "best val mIoU"))
                if (ckpt / name).is_file()]
        if kept:
            lines.append(f"checkpoints: {', '.join(kept)}")
        if (out / "metrics.json").is_file():
            lines.append(f"metrics:     {out / 'metrics.json'}")
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run_dir = getattr(getattr(lg, "experiment", None), "dir", None)
            lines.append(f"W&B run:     {Path(run_dir).parent if run_dir else out / 'wandb'}")
    return "\n".join(lines)


def _finish_wandb(loggers: list) -> None:
    """Close the W&B run so each Hydra multirun job starts its own."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
