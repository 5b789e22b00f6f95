"""Dashboard panels: what the model does and why, at each validation and during training.

At each validation (every ``every_n_val``-th one, and always at the final evaluation), on rank 0,
to the W&B run of the trainer's ``WandbLogger``:

* ``val/iou_table`` — a ``wandb.Table`` (class, IoU, group head/tail) and ``val/iou_bar`` — a bar
  chart of it (the same numbers are the ``val_iou/<class>`` scalars the method logs to every logger);
* ``panel/val`` — a fixed panel of ``n_images`` validation images (evenly spaced over the val set,
  the same images every time) with ``ground_truth``, ``prediction`` (the evaluated network, by the
  evaluation protocol) and, for teacher-student methods, ``pseudo_label`` masks (AEL: teacher argmax,
  ignore below ``method.ael.threshold``; ELN: teacher argmax kept by the ELN, from stage 3);
* ELN only: ``panel/eln_error_maps`` — image | ELN's P(error) | true errors (white = wrong,
  grey = ignore) side by side, and ``panel/eln_errors`` — the image with ``predicted_error``
  (P(error) > 0.5) and ``true_error`` masks.

During training, every ``train_every_n_steps`` steps, for methods that expose ``last_views`` (AEL):
``train_batch/labeled`` (after Copy-Paste, ``ground_truth`` mask) and ``train_batch/mixed`` (after
CutMix, ``pseudo_label`` and ``pasted`` masks). At each logging step (``trainer.log_every_n_steps``)
the pseudo-label diagnostics ``train/kept_frac`` (pixels above the confidence threshold) and, where
the unlabeled images have ground truth (synthscapes), ``train/pl_acc_kept`` (on the pixels of the
unlabeled image itself, not the pasted ones) go to every logger.

Images and tables need a ``WandbLogger``; without one only the scalars are logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from semiseg_lit.data.transforms import Normalize
from semiseg_lit.ops.sliding_window import center_crop

__all__ = ["WandbPanels", "error_map_strip", "iou_table_rows", "mask_entry", "panel_indices",
           "pseudo_label_stats", "resize_for_panel"]


# ----------------------------------------------------------------------------------------- pure helpers
def panel_indices(n_val: int, n: int) -> list[int]:
    """``min(n, n_val)`` distinct indices evenly spaced over ``[0, n_val)``, first and last included."""
    if n_val < 0 or n < 0:
        raise ValueError(f"panel_indices: n_val={n_val} and n={n} must be >= 0")
    k = min(n, n_val)
    if k == 0:
        return []
    if k == 1:
        return [0]
    return [round(i * (n_val - 1) / (k - 1)) for i in range(k)]


def iou_table_rows(names: Sequence[str], per_class_iou: Sequence[float], head: Sequence[int] = (),
                   tail: Sequence[int] = ()) -> list[list[Any]]:
    """Rows ``[class, IoU, group]`` (group: head | tail | "") of the per-class IoU table."""
    if len(names) != len(per_class_iou):
        raise ValueError(f"iou_table_rows: {len(names)} class names but {len(per_class_iou)} IoU values")
    head_set, tail_set = set(head), set(tail)
    return [[name, float(iou), "head" if c in head_set else "tail" if c in tail_set else ""]
            for c, (name, iou) in enumerate(zip(names, per_class_iou))]


def mask_entry(mask: Tensor, class_labels: Mapping[int, str]) -> dict[str, Any]:
    """A ``wandb.Image`` mask: ``{"mask_data": uint8 [H,W], "class_labels": {id: name}}``."""
    if mask.dim() != 2:
        raise ValueError(f"mask_entry: expected a [H, W] label map, got shape {tuple(mask.shape)}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError("mask_entry: label values must lie in [0, 255] for W&B masks")
    return {"mask_data": mask.to("cpu", torch.uint8).numpy(), "class_labels": dict(class_labels)}


def resize_for_panel(image: Tensor, masks: Mapping[str, Tensor], max_side: int
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """Downscale a uint8 ``[3,H,W]`` image (area) and its ``[H,W]`` label maps (nearest) so that the
    longer side is at most ``max_side``; unchanged when already small enough."""
    h, w = image.shape[-2:]
    if max_side <= 0 or max(h, w) <= max_side:
        return image, dict(masks)
    size = (max(1, round(h * max_side / max(h, w))), max(1, round(w * max_side / max(h, w))))
    small = F.interpolate(image[None].float(), size=size, mode="area")[0].round().to(torch.uint8)
    return small, {k: F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0].to(m.dtype)
                   for k, m in masks.items()}


def error_map_strip(image: Tensor, p_error: Tensor, pred: Tensor, gt: Tensor, ignore_index: int = 255,
                    gap: int = 2) -> np.ndarray:
    """``[H, 3W+2·gap, 3]`` uint8: the image | P(error) as grey levels | true errors (white = wrong
    prediction, black = right, grey = ignore), separated by white gaps."""
    h, w = image.shape[-2:]
    err_grey = (p_error.float().clamp(0, 1) * 255).round().to(torch.uint8)
    truth = torch.where(pred != gt, 255, 0).to(torch.uint8)
    truth = torch.where(gt == ignore_index, torch.full_like(truth, 128), truth)
    sep = torch.full((3, h, gap), 255, dtype=torch.uint8)
    parts = [image.cpu(), sep, err_grey.cpu().expand(3, h, w), sep, truth.cpu().expand(3, h, w)]
    return torch.cat(parts, dim=-1).permute(1, 2, 0).contiguous().numpy()


def pseudo_label_stats(pl: Tensor, gt: Tensor | None, pasted: Tensor | None, ignore_index: int = 255
                       ) -> dict[str, Tensor]:
    """Pseudo-label diagnostics of one batch (device tensors, no host sync).

    ``kept_frac``: fraction of pixels with a pseudo label (not ``ignore_index``). With ground truth
    ``gt`` (``[B,H,W]``): ``pl_acc_kept`` = accuracy of the kept labels on the pixels whose truth is
    known (``gt`` not ignore and, with a CutMix mask, ``pasted <= 0.5``); 0 when there is none.
    """
    out = {"kept_frac": (pl != ignore_index).float().mean()}
    if gt is None:
        return out
    if gt.shape != pl.shape:
        raise ValueError(f"pseudo_label_stats: gt {tuple(gt.shape)} and pseudo labels {tuple(pl.shape)} differ")
    known = gt != ignore_index
    if pasted is not None:
        known &= pasted <= 0.5
    kept = known & (pl != ignore_index)
    out["pl_acc_kept"] = ((pl == gt) & kept).sum() / kept.sum().clamp_min(1)
    return out


@contextmanager
def eval_mode(module: nn.Module):
    """Temporarily ``module.eval()``; every submodule's previous mode is restored on exit."""
    previous = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in previous:
            m.training = mode


# ----------------------------------------------------------------------------------------- callback
class WandbPanels(Callback):
    """Args (``callbacks.wandb_panels.*``):
        n_images: fixed validation images in the panel.
        every_n_val: log the validation panels at every n-th validation of ``fit``.
        max_side: longer side of the logged images (downscaled above).
        train_every_n_steps: training-batch sample every n steps (0 = never).
        n_train_images: images of the training-batch sample.
    """

    def __init__(self, n_images: int = 4, every_n_val: int = 1, max_side: int = 512,
                 train_every_n_steps: int = 200, n_train_images: int = 4):
        for key, value, low in (("n_images", n_images, 0), ("every_n_val", every_n_val, 1),
                                ("train_every_n_steps", train_every_n_steps, 0),
                                ("n_train_images", n_train_images, 0)):
            if int(value) < low:
                raise ValueError(f"callbacks.wandb_panels.{key}={value}: expected an integer >= {low}")
        self.n_images, self.every_n_val, self.max_side = int(n_images), int(every_n_val), int(max_side)
        self.train_every, self.n_train_images = int(train_every_n_steps), int(n_train_images)

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def wandb_run(trainer: pl.Trainer):
        """The W&B run of the trainer's ``WandbLogger`` (``None`` without one or off rank 0)."""
        if not trainer.is_global_zero:
            return None
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                return lg.experiment
        return None

    @staticmethod
    def class_labels(pl_module: pl.LightningModule) -> dict[int, str]:
        labels = {i: n for i, n in enumerate(pl_module.class_info.names)}
        labels[int(pl_module.ignore_index)] = "ignore"
        return labels

    @staticmethod
    def normalizer(pl_module: pl.LightningModule) -> Normalize:
        d = pl_module.cfg.data
        return Normalize(list(d.mean), list(d.std))

    def is_panel_validation(self, trainer: pl.Trainer) -> bool:
        """Validations ``1, 1 + n, 1 + 2n, ...`` of ``fit`` (counted from the step, so resumes keep the
        rhythm) and every stand-alone ``validate`` (the final evaluation)."""
        if trainer.state.fn != "fit" or self.every_n_val == 1:
            return True
        interval = trainer.val_check_batch
        if not isinstance(interval, int) or interval <= 0:
            return True
        return (int(trainer.global_step) // interval - 1) % self.every_n_val == 0

    # ------------------------------------------------------------------ validation
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.is_panel_validation(trainer):
            return
        run = self.wandb_run(trainer)
        scores = getattr(pl_module, "last_scores", None)
        if run is None or scores is None:
            return
        import wandb

        step = int(trainer.global_step)
        info = pl_module.class_info
        rows = iou_table_rows(info.names, [float(v) for v in scores["per_class_iou"]], info.head, info.tail)
        table = wandb.Table(columns=["class", "iou", "group"], data=rows)
        payload: dict[str, Any] = {
            "val/iou_table": table,
            "val/iou_bar": wandb.plot.bar(table, "class", "iou", title=f"per-class IoU (step {step})"),
        }
        payload.update(self.validation_images(trainer, pl_module))
        run.log({**payload, "trainer/global_step": step})

    def val_dataset(self, trainer: pl.Trainer):
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        return getattr(loaders, "dataset", None)

    @torch.no_grad()
    def validation_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The fixed image panel (and ELN error maps) as ``{key: [wandb.Image, ...]}``."""
        dataset = self.val_dataset(trainer)
        if dataset is None or self.n_images == 0:
            return {}
        cfg = pl_module.cfg
        val_crop = getattr(pl_module, "val_crop", None)  # (H, W) of SegMethod
        crop = val_crop() if callable(val_crop) else int(cfg.data.val_crop_size or cfg.data.crop_size)
        out: dict[str, list] = {"panel/val": []}
        with eval_mode(pl_module):
            for idx in panel_indices(len(dataset), self.n_images):
                item = dataset[idx]
                x, gt = item["image"][None].to(pl_module.device), item["mask"][None].to(pl_module.device)
                if (cfg.eval.mode or cfg.data.val_mode) == "center_crop":
                    x, gt = center_crop(x, gt, crop)
                out["panel/val"].append(self.panel_image(pl_module, x, gt[0], idx))
                if callable(getattr(pl_module, "error_maps", None)):
                    strip, errors = self.error_images(pl_module, x, gt[0], idx)
                    out.setdefault("panel/eln_error_maps", []).append(strip)
                    out.setdefault("panel/eln_errors", []).append(errors)
        return out

    def panel_image(self, pl_module: pl.LightningModule, x: Tensor, gt: Tensor, idx: int):
        """One validation image ``x [1,3,H,W]`` with ground truth, prediction and pseudo-label masks."""
        import wandb

        masks = {"ground_truth": gt, "prediction": pl_module.predict_probs(x).argmax(1)[0]}
        pseudo = self.pseudo_labels(pl_module, x)
        if pseudo is not None:
            masks["pseudo_label"] = pseudo[0]
        rgb = self.normalizer(pl_module).denormalize(x[0]).cpu()
        small, small_masks = resize_for_panel(rgb, {k: v.cpu() for k, v in masks.items()}, self.max_side)
        labels = self.class_labels(pl_module)
        return wandb.Image(small.permute(1, 2, 0).numpy(), caption=f"val #{idx}",
                           masks={k: mask_entry(m, labels) for k, m in small_masks.items()})

    def error_images(self, pl_module: pl.LightningModule, x: Tensor, gt: Tensor, idx: int) -> tuple:
        """ELN: (image | P(error) | true errors strip, image with predicted / true error masks)."""
        import wandb

        ignore = int(pl_module.ignore_index)
        logits, p_err = pl_module.error_maps(x)
        pred = logits.argmax(1)[0]
        true_err = ((pred != gt) & (gt != ignore)).long()
        maps = {"predicted_error": (p_err[0] > 0.5).long(), "true_error": true_err, "gt": gt, "pred": pred,
                "p_err": p_err[0]}
        rgb = self.normalizer(pl_module).denormalize(x[0]).cpu()
        small, m = resize_for_panel(rgb, {k: v.cpu() for k, v in maps.items()}, self.max_side)
        strip = wandb.Image(error_map_strip(small, m["p_err"], m["pred"], m["gt"], ignore),
                            caption=f"val #{idx}: image | ELN P(error) | true errors")
        err_labels = {0: "correct", 1: "error"}
        errors = wandb.Image(small.permute(1, 2, 0).numpy(), caption=f"val #{idx}", masks={
            k: mask_entry(m[k], err_labels) for k in ("predicted_error", "true_error")})
        return strip, errors

    @staticmethod
    def pseudo_labels(pl_module: pl.LightningModule, images: Tensor) -> Tensor | None:
        """Image-resolution pseudo labels for the panel: the method's ``panel_pseudo_labels`` if it has
        one (ELN), else teacher argmax with ``method.ael.threshold`` (ignore below), else ``None``."""
        hook = getattr(pl_module, "panel_pseudo_labels", None)
        if callable(hook):
            return hook(images)
        teacher = getattr(pl_module, "teacher", None)
        if teacher is None:
            return None
        ael = pl_module.cfg.method.get("ael")
        threshold = float(ael.threshold) if ael is not None else 0.0
        conf, label = teacher(images).float().softmax(1).max(1)
        return torch.where(conf < threshold, int(pl_module.ignore_index), label)

    # ------------------------------------------------------------------ training
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        views = getattr(pl_module, "last_views", None)
        if not views:
            return
        step = int(trainer.global_step)
        every = int(trainer.log_every_n_steps)
        if every and step % every == 0:
            self.log_pseudo_label_stats(pl_module, views, batch)
        if self.train_every and step % self.train_every == 0 and self.n_train_images:
            run = self.wandb_run(trainer)
            if run is not None:
                run.log({**self.training_images(pl_module, views), "trainer/global_step": step})

    @staticmethod
    def log_pseudo_label_stats(pl_module: pl.LightningModule, views: Mapping[str, Any], batch: Any) -> None:
        _, pl_u = views["mixed"]
        unlabeled = batch.get("unlabeled", {}) if isinstance(batch, Mapping) else {}
        gt = unlabeled.get("mask")
        if gt is not None and gt.shape != pl_u.shape:
            gt = None
        stats = pseudo_label_stats(pl_u, gt, views.get("mix_mask"), int(pl_module.ignore_index))
        pl_module.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                           batch_size=pl_u.shape[0])

    @torch.no_grad()
    def training_images(self, pl_module: pl.LightningModule, views: Mapping[str, Any]) -> dict[str, Any]:
        """``train_batch/labeled`` and ``train_batch/mixed`` images with their masks."""
        import wandb

        labels, norm = self.class_labels(pl_module), self.normalizer(pl_module)
        out: dict[str, Any] = {}
        pasted = views.get("mix_mask")
        for key, mask_name in (("labeled", "ground_truth"), ("mixed", "pseudo_label")):
            if key not in views:
                continue
            x, y = views[key]
            images = []
            for i in range(min(self.n_train_images, x.shape[0])):
                masks = {mask_name: y[i].cpu()}
                if key == "mixed" and pasted is not None:
                    masks["pasted"] = (pasted[i] > 0.5).long().cpu()
                rgb = norm.denormalize(x[i].detach()).cpu()
                small, small_masks = resize_for_panel(rgb, masks, self.max_side)
                images.append(wandb.Image(small.permute(1, 2, 0).numpy(), caption=f"{key} {i}", masks={
                    k: mask_entry(m, {0: "original", 1: "pasted"} if k == "pasted" else labels)
                    for k, m in small_masks.items()}))
            out[f"train_batch/{key}"] = images
        return out
