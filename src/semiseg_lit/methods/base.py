"""Shared LightningModule machinery: network, optimizer + poly LR, validation metrics, logging.

Methods subclass :class:`SegMethod` and implement ``training_step`` (reading like the paper's
algorithm box); everything else (parameter groups, per-iteration LR schedule, the evaluation
protocol, dataset-level confusion matrix, per-class IoU, head/tail mIoU) lives here.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from semiseg_lit.data.labels import ClassInfo
from semiseg_lit.data.transforms import crop_hw
from semiseg_lit.methods.finite_guard import FiniteGuard
from semiseg_lit.methods.lr_scaling import BatchLR, check_lr_scaling, resolve_batch_lr
from semiseg_lit.models.deeplab import SegmentationNet, build_segmentation_net
from semiseg_lit.ops.losses import class_argmax, ohem_cross_entropy
from semiseg_lit.ops.metrics import segmentation_scores
from semiseg_lit.ops.rampup import resolve_start_steps, unsup_weight
from semiseg_lit.ops.sliding_window import center_crop, protocol_probs


def poly_lr_factor(step: int, max_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """``(1 - step/max_steps)^power`` (ael.md §1 "Poly LR", per iteration), with optional linear warm-up."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max(1, max_steps)) ** power


class SegMethod(pl.LightningModule):
    """Base class of all methods.

    Args:
        cfg: the full run config (``method``, ``model``, ``data`` nodes are used).
        class_info: class names / palette / head / tail of the dataset.
    """

    # False for methods whose per-step state (EMA teacher, banks) must advance once per optimizer step
    supports_grad_accumulation = True

    @classmethod
    def required_streams(cls, cfg: DictConfig) -> tuple[str, ...]:
        """Training streams this method consumes (see ``SemiSegDataModule``)."""
        return ("labeled",)

    @classmethod
    def unlabeled_options(cls, cfg: DictConfig) -> dict[str, Any]:
        """Extra views of the unlabeled stream (``UnlabeledTransform`` keywords; UniMatch V2 overrides)."""
        return {}

    @classmethod
    def virtual_ranks(cls, cfg: DictConfig) -> int:
        """GPUs of a reference run this method emulates in all (1: one group per device; AEL overrides)."""
        return 1

    def __init__(self, cfg: DictConfig, class_info: ClassInfo):
        super().__init__()
        self.cfg = cfg
        self.class_info = class_info
        self.num_classes = int(cfg.data.num_classes)
        self.ignore_index = int(cfg.data.ignore_index)
        # the resolved config and class table go into every checkpoint (used to rebuild the model
        # for eval/predict/export and to reject checkpoints of another model). Not sent to the loggers:
        # the W&B run gets the resolved config once, with the git commit (tasks/common.build_loggers),
        # and the run folder has config_resolved.yaml
        self.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True),
                                   "class_names": list(class_info.names),
                                   "palette": [list(c) for c in class_info.palette],
                                   "head": list(class_info.head), "tail": list(class_info.tail)}, logger=False)
        self.finite_guard = FiniteGuard()
        self.student: SegmentationNet = self.build_network()
        self.teacher: nn.Module | None = None
        self.val_confusion = MulticlassConfusionMatrix(self.num_classes, ignore_index=self.ignore_index,
                                                       validate_args=False)
        self.last_scores: dict[str, Any] | None = None
        # best validation of the evaluated network during fit (by val/miou, as best.ckpt): miou,
        # pixel_acc, per_class_iou, step; kept in checkpoints (a resumed run continues the record)
        self.best_scores: dict[str, Any] | None = None
        # schedule-aware start of the unsupervised loss (teacher-student methods; ops/rampup.py),
        # resolved and checked here, before any work
        m, max_steps = cfg.method, int(OmegaConf.select(cfg, "trainer.max_steps", default=-1))
        self.unsup_warmup_steps, self.unsup_rampup_steps = resolve_start_steps(
            m.get("unsup_warmup_steps", 0), m.get("unsup_rampup_steps", 0), max_steps)
        self.unsup_rampup_shape = str(m.get("unsup_rampup_shape", "sigmoid"))
        unsup_weight(0, 0, 0, self.unsup_rampup_shape)  # validates the shape
        check_lr_scaling(cfg.method.optim)  # method.optim.scale_lr_with_batch / base_batch_size / lr_scale_rule
        self.batch_lr: BatchLR | None = None

    # ------------------------------------------------------------------ building
    def build_network(self) -> SegmentationNet:
        return build_segmentation_net(self.cfg.model, self.num_classes)

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone and head groups with their LR multipliers (``method.optim``)."""
        o = self.cfg.method.optim
        groups = self.student.param_groups()
        return [
            {"params": groups["backbone"], "lr": o.lr * o.backbone_lr_mult, "name": "backbone"},
            {"params": groups["head"], "lr": o.lr * o.head_lr_mult, "name": "head"},
        ]

    def resolve_batch_lr(self) -> BatchLR:
        """Configured and effective learning rate (``method.optim.scale_lr_with_batch``; methods/lr_scaling.py):
        the total labeled batch from ``data.labeled_batch_size`` and the trainer's devices x nodes and
        ``accumulate_grad_batches`` (the config's values before a trainer is attached)."""
        trainer, t = self._trainer, self.cfg.trainer
        world = int(trainer.world_size) if trainer is not None else 1
        accumulate = int(trainer.accumulate_grad_batches) if trainer is not None else int(t.accumulate_grad_batches)
        return resolve_batch_lr(self.cfg.method.optim, int(self.cfg.data.labeled_batch_size), world, accumulate,
                                type(self).virtual_ranks(self.cfg), bool(t.sync_batchnorm))

    def report_batch_lr(self, batch_lr: BatchLR) -> None:
        """The console line (when scaling is on) and the loggers' hyperparameters (always): both rates."""
        if batch_lr.enabled:
            rank_zero_info(batch_lr.describe())
        if self._trainer is not None:
            for logger in self.loggers:
                logger.log_hyperparams(batch_lr.hparams())

    def configure_optimizers(self):
        o = self.cfg.method.optim
        # one factor for every group (backbone / head multipliers kept); 1 unless scale_lr_with_batch=true
        self.batch_lr = self.resolve_batch_lr()
        scale = self.batch_lr.factor
        groups = [{**g, "lr": g["lr"] * scale} for g in self.param_groups() if g["params"]]
        self.report_batch_lr(self.batch_lr)
        lr = self.batch_lr.effective
        if o.name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                  nesterov=o.nesterov)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        else:
            raise ValueError(f"method.optim.name={o.name!r}: expected 'sgd' or 'adamw'")
        if o.scheduler == "constant":
            return opt
        if o.scheduler != "poly":
            raise ValueError(f"method.optim.scheduler={o.scheduler!r}: expected 'poly' or 'constant'")
        max_steps = int(self.trainer.max_steps) if self.trainer and self.trainer.max_steps > 0 else 1
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: poly_lr_factor(step, max_steps, o.poly_power, o.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def setup(self, stage: str) -> None:
        """Speed options before training (``trainer.channels_last``, ``trainer.compile``; models/compile.py)."""
        if stage == "fit":
            self.apply_speed_options()

    def apply_speed_options(self) -> None:
        """NHWC weights (``trainer.channels_last``) and compiled encoders/decoders (``trainer.compile``) of
        every network of the method; where ``torch.compile`` cannot run, one warning and eager training."""
        from semiseg_lit.models.compile import compile_networks, compile_problem, to_channels_last

        t = self.cfg.trainer
        if bool(t.get("channels_last", False)):
            to_channels_last(self)
        if not bool(t.get("compile", False)) or getattr(self, "_compiled", False):
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        backend = str(t.get("compile_backend") or "inductor")
        problem = compile_problem(device, backend)
        if problem is not None:
            rank_zero_warn(f"trainer.compile=true: torch.compile cannot run on {device} here ({problem}); "
                           "training continues without compilation (set trainer.compile=false to silence this)")
            return
        compile_networks(self, mode=t.get("compile_mode") or None, backend=backend)
        self._compiled = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed the global RNG from (seed, step, rank): dropout and every other global-RNG draw of a
        step is then the same in a resumed run as in the uninterrupted one."""
        torch.manual_seed((int(self.cfg.seed) * 1_000_003 + self.global_step * 7919 + self.global_rank) % (2**63))

    # ------------------------------------------------------------------ losses
    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CE or OHEM-CE (``method.loss.name``) with ignore index."""
        loss_cfg = self.cfg.method.loss
        if loss_cfg.name == "ohem":
            return ohem_cross_entropy(logits.float(), target, thresh=loss_cfg.ohem_thresh,
                                      min_kept=loss_cfg.ohem_min_kept, ignore_index=self.ignore_index)
        if loss_cfg.name == "ce":
            return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        raise ValueError(f"method.loss.name={loss_cfg.name!r}: expected 'ce' or 'ohem'")

    def describe_unsup_start(self) -> str:
        """One line for the console: the resolved warm-up / ramp (``auto`` made visible)."""
        if not (self.unsup_warmup_steps or self.unsup_rampup_steps):
            return "unsupervised loss at full weight from its first step (no warm-up, no ramp: the reference)"
        return (f"unsupervised loss: supervised warm-up {self.unsup_warmup_steps} steps, then a "
                f"{self.unsup_rampup_shape} ramp over {self.unsup_rampup_steps} steps (method.unsup_*)")

    def unsup_weight(self, step: int) -> float:
        """Weight of the unsupervised terms ``step`` steps after the method's first unsupervised step:
        0 during ``method.unsup_warmup_steps``, then the ramp to 1 (ops/rampup.py). A Python float from
        the step counter: no tensor, no host sync."""
        return unsup_weight(step, self.unsup_warmup_steps, self.unsup_rampup_steps, self.unsup_rampup_shape)

    # ------------------------------------------------------------------ evaluation
    def eval_network(self) -> nn.Module:
        """The network that is validated, checkpointed as best and exported (``method.eval_model``)."""
        which = self.cfg.eval.model or self.cfg.method.eval_model
        if which == "teacher" and self.teacher is not None:
            return self.teacher
        if which not in ("student", "teacher"):
            raise ValueError(f"method.eval_model={which!r}: expected 'student' or 'teacher'")
        return self.student

    def val_crop(self) -> tuple[int, int]:
        """(H, W) of the center crop / sliding window: ``data.val_crop_size`` or ``data.crop_size``."""
        data = self.cfg.data
        if data.val_crop_size is not None:
            return crop_hw(data.val_crop_size, "data.val_crop_size")
        return crop_hw(data.crop_size)

    @torch.no_grad()
    def predict_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B,C,H,W] by the evaluation protocol: ``eval.mode`` (default
        ``data.val_mode``: whole | center_crop | sliding), ``eval.scales``, ``eval.flip``."""
        ev = self.cfg.eval
        mode = ev.mode or self.cfg.data.val_mode
        if mode not in ("whole", "center_crop", "sliding"):
            raise ValueError(f"eval.mode / data.val_mode={mode!r}: expected whole | center_crop | sliding")
        return protocol_probs(self.eval_network(), images, self.num_classes, self.val_crop(), mode,
                              scales=ev.scales, flip=bool(ev.flip))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"]
        if (self.cfg.eval.mode or self.cfg.data.val_mode) == "center_crop":
            images, masks = center_crop(images, masks, self.val_crop(), int(self.cfg.data.val_pad_label))
        probs = self.predict_probs(images)
        self.val_confusion.update(class_argmax(probs), masks)

    def on_validation_epoch_end(self) -> None:
        cm = self.val_confusion.compute()
        self.val_confusion.reset()
        scores = segmentation_scores(cm, head=self.class_info.head, tail=self.class_info.tail)
        self.last_scores = scores
        self.track_best(scores)
        metrics = {"val/miou": scores["miou"], "val/pixel_acc": scores["pixel_acc"]}
        if "head_miou" in scores:
            metrics["val/head_miou"] = scores["head_miou"]
        if "tail_miou" in scores:
            metrics["val/tail_miou"] = scores["tail_miou"]
        for name, iou in zip(self.class_info.names, scores["per_class_iou"]):
            metrics[f"val_iou/{name}"] = iou
        # the confusion matrix is already summed over ranks; every rank logs the same values
        miou = metrics.pop("val/miou")
        self.log("val/miou", torch.as_tensor(miou, dtype=torch.float32), prog_bar=True)
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()})

    def track_best(self, scores: dict[str, Any]) -> None:
        """Keep the scores of the best validation during ``fit`` (highest mIoU; the first of equals),
        the same selection as ``checkpoints/best.ckpt`` (monitor ``val/miou``, mode max). One host
        sync per validation. Validations outside fit (the final evaluation, ``task=eval``) never count."""
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        miou = float(scores["miou"])
        if self.best_scores is None or miou > self.best_scores["miou"]:
            extra = {k: float(scores[k]) for k in ("head_miou", "tail_miou", "mean_acc") if k in scores}
            self.best_scores = {"miou": miou, "pixel_acc": float(scores["pixel_acc"]),
                                "per_class_iou": [float(v) for v in scores["per_class_iou"]],
                                "step": int(self.global_step), **extra}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_scores = checkpoint.get("best_val_scores")

    # ------------------------------------------------------------------ checks
    def track_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
        """Latch a NaN/inf loss on the device (no host sync); see :mod:`finite_guard` for when it raises."""
        self.finite_guard.track(loss, terms, step)

    def raise_if_nonfinite(self, gather: bool = True) -> None:
        """``FloatingPointError`` naming the step and loss terms if a non-finite loss was latched
        (on any rank when ``gather``: every rank must call it then)."""
        distributed = gather and self._trainer is not None and self.trainer.world_size > 1
        self.finite_guard.check(self.all_gather if distributed else None)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (self.global_step % max(1, int(self.trainer.log_every_n_steps))) == 0:
            self.raise_if_nonfinite()

    def on_validation_start(self) -> None:
        self.raise_if_nonfinite()

    def on_train_end(self) -> None:
        self.raise_if_nonfinite()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_scores"] = self.best_scores
        # local check only: a checkpoint may be written by one rank alone (no collective here)
        self.raise_if_nonfinite(gather=False)

    def log_losses(self, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False,
                      batch_size=batch_size, prog_bar=False)

    @property
    def max_steps(self) -> int:
        return int(self.trainer.max_steps) if self.trainer is not None else 1

