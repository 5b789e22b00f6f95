"""Dataset-level segmentation metrics from a confusion matrix (ael.md §8, eln.md §6, libraries.md §D.4).

The confusion matrix ``cm[t, p]`` (rows = target class, columns = predicted class) is accumulated over
the whole val set (and summed across DDP ranks) before any ratio is taken, so IoU is
``sum_images I / sum_images U`` — not a per-image average (``torchmetrics.segmentation.MeanIoU`` averages
per image and is not benchmark-comparable).

**Absent-class convention:** a class with ``U = 0`` (never in the target nor in the predictions) gets
IoU 0 and still counts in the mean over all ``C`` classes, as UniMatch/U2PL/AEL
(``I / (U + 1e-10)``). ``MulticlassJaccardIndex(average="macro")`` instead skips such classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = 255) -> torch.Tensor:
    """``cm[t, p] = #{pixels with target t and prediction p}``, ``[C,C]`` int64, on the input's device.

    Pixels whose target is ``ignore_index`` or outside ``[0, C)`` are dropped (the reference histograms use
    bins ``0..C``, ael.md §8); so are pixels whose prediction is outside ``[0, C)`` (never for an argmax).
    """
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive int")
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)}: expected equal shapes")
    target = target.reshape(-1).long()
    preds = preds.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes) & (preds >= 0) & (preds < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    # invalid pixels are routed to an extra bin C*C that is cut off afterwards (no boolean indexing,
    # hence no host sync for the data-dependent size)
    flat = torch.where(keep, target * num_classes + preds, num_classes * num_classes)
    counts = torch.bincount(flat, minlength=num_classes * num_classes + 1)
    return counts[: num_classes * num_classes].reshape(num_classes, num_classes)


class ConfusionMatrix(MulticlassConfusionMatrix):
    """``MulticlassConfusionMatrix`` with ``ignore_index=255`` and a :meth:`scores` shortcut.

    Accumulates a dataset-level ``[C,C]`` matrix (rows = target, cols = pred) whose state is summed over
    DDP ranks by torchmetrics. ``validate_args`` defaults to ``False`` (its checks sync with the host).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, validate_args: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=validate_args, **kwargs)

    def scores(self, head: Sequence[int] = (), tail: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """:func:`segmentation_scores` of the accumulated matrix."""
        return segmentation_scores(self.compute(), head=head, tail=tail)


def _check_cm(cm: torch.Tensor) -> torch.Tensor:
    if not isinstance(cm, torch.Tensor) or cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        shape = tuple(cm.shape) if isinstance(cm, torch.Tensor) else type(cm).__name__
        raise ValueError(f"confusion matrix: expected a square [C,C] tensor, got {shape}")
    return cm.double()  # float64: pixel counts of a whole val set exceed float32's exact range


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den == 0``."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(num))


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``[C]`` float64: ``I_c / U_c`` with ``I = diag(cm)``, ``U = row_c + col_c - I_c``.

    Absent classes (``U_c == 0``) give 0, matching UniMatch/U2PL/AEL's ``I / (U + 1e-10)``.
    """
    cm = _check_cm(cm)
    inter = cm.diagonal()
    union = cm.sum(dim=1) + cm.sum(dim=0) - inter
    return _safe_ratio(inter, union)


def _subset_mean(values: torch.Tensor, indices: Sequence[int], name: str) -> torch.Tensor:
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < values.numel()]
    if bad:
        raise ValueError(f"{name}={list(indices)}: class indices {bad} outside [0, {values.numel()})")
    return values[torch.tensor(idx, device=values.device)].mean()


def segmentation_scores(cm: torch.Tensor, head: Sequence[int] = (),
                        tail: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """Scores of a dataset-level confusion matrix (rows = target, cols = pred), all float64 tensors.

    * ``per_class_iou``: :func:`iou_from_confusion`; ``miou``: its mean over **all** ``C`` classes.
    * ``pixel_acc = trace(cm) / sum(cm)`` (0 for an empty matrix).
    * ``mean_acc = mean_c diag_c / row_c`` (recall per class, 0 for a class absent from the target).
    * ``head_miou`` / ``tail_miou``: mean IoU over the given class indices, only when given.
    """
    cm = _check_cm(cm)
    per_class = iou_from_confusion(cm)
    diag = cm.diagonal()
    scores = {
        "miou": per_class.mean(),
        "per_class_iou": per_class,
        "pixel_acc": _safe_ratio(diag.sum(), cm.sum()),
        "mean_acc": _safe_ratio(diag, cm.sum(dim=1)).mean(),
    }
    if len(head):
        scores["head_miou"] = _subset_mean(per_class, head, "head")
    if len(tail):
        scores["tail_miou"] = _subset_mean(per_class, tail, "tail")
    return scores


def format_iou_table(per_class_iou: torch.Tensor | Sequence[float], class_names: Sequence[str],
                     head: Sequence[int] = (), tail: Sequence[int] = ()) -> str:
    """Fixed-width console table: one ``class  IoU %  group`` row per class, then an ``mIoU`` line.

    ``group`` is ``head`` / ``tail`` for classes listed in ``head`` / ``tail`` (blank otherwise).
    """
    ious = [float(v) for v in torch.as_tensor(per_class_iou).reshape(-1).tolist()]
    names = [str(n) for n in class_names]
    if len(ious) != len(names):
        raise ValueError(f"format_iou_table: {len(ious)} IoU values but {len(names)} class_names")
    head_set, tail_set = {int(i) for i in head}, {int(i) for i in tail}
    width = max([len("class"), len("mIoU")] + [len(n) for n in names])
    lines = [f"{'class':<{width}}  {'IoU %':>6}  group", "-" * (width + 15)]
    for c, (name, iou) in enumerate(zip(names, ious)):
        group = "head" if c in head_set else "tail" if c in tail_set else ""
        lines.append(f"{name:<{width}}  {100 * iou:6.2f}  {group}".rstrip())
    lines.append("-" * (width + 15))
    miou = sum(ious) / len(ious) if ious else 0.0
    lines.append(f"{'mIoU':<{width}}  {100 * miou:6.2f}")
    return "\n".join(lines)
