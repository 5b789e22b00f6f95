"""Tests of the dataset-level segmentation metrics (specs/ael.md §8, eln.md §6, libraries.md §D.4)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from semiseg_lit.ops.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    format_iou_table,
    iou_from_confusion,
    segmentation_scores,
)


# ---------------------------------------------------------------- confusion matrix
def test_confusion_matrix_hand_example_and_torchmetrics_orientation():
    preds = torch.tensor([[[0, 1], [1, 1]]])
    target = torch.tensor([[[0, 1], [0, 255]]])
    # pixels (target, pred): (0,0), (1,1), (0,1), (255 ignored) -> rows = target, cols = pred
    expected = torch.tensor([[1, 1], [0, 1]])
    assert torch.equal(confusion_matrix(preds, target, 2), expected)
    tm = MulticlassConfusionMatrix(2, ignore_index=255)
    tm.update(preds, target)
    assert torch.equal(tm.compute(), expected)


def test_confusion_matrix_drops_out_of_range_pixels():
    preds = torch.tensor([0, 1, 2, 1, 5, -1])
    target = torch.tensor([0, 254, 2, 255, 1, 1])
    # kept: (0,0), (2,2); dropped: target 254 >= C, target 255 ignore, pred 5 >= C, pred -1 < 0
    cm = confusion_matrix(preds, target, 3)
    assert cm.sum() == 2 and cm[0, 0] == 1 and cm[2, 2] == 1 and cm.dtype == torch.int64
    # with ignore_index=None, 255 is still outside [0, C) and dropped
    assert confusion_matrix(preds, target, 3, ignore_index=None).sum() == 2


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="equal shapes"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 2)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(torch.zeros(2), torch.zeros(2), 0)


def test_confusion_matrix_class_accumulates_and_matches_function():
    gen = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 4, (3, 5, 6), generator=gen)
    target = torch.randint(0, 4, (3, 5, 6), generator=gen)
    target[0, 0, :3] = 255
    metric = ConfusionMatrix(4)
    for p, t in zip(preds, target):  # one update per image, as in validation_step
        metric.update(p[None], t[None])
    cm = metric.compute()
    assert torch.equal(cm, confusion_matrix(preds, target, 4))
    assert cm.sum() == 3 * 5 * 6 - 3
    scores = metric.scores(head=(0, 1))
    torch.testing.assert_close(scores["miou"], segmentation_scores(cm)["miou"])
    assert "head_miou" in scores and "tail_miou" not in scores


# ---------------------------------------------------------------- IoU and scores
def test_scores_hand_example():
    cm = torch.tensor([[3, 1], [2, 4]])  # rows = target, cols = pred (int64, as torchmetrics returns)
    # class 0: I = 3, U = row 4 + col 5 - 3 = 6 -> 1/2
    # class 1: I = 4, U = row 6 + col 5 - 4 = 7 -> 4/7
    # mIoU = (1/2 + 4/7) / 2 = 15/28; pixel acc = (3+4)/10; mean acc = (3/4 + 4/6) / 2 = 17/24
    scores = segmentation_scores(cm, head=[0], tail=[1])
    torch.testing.assert_close(scores["per_class_iou"], torch.tensor([0.5, 4 / 7], dtype=torch.float64))
    torch.testing.assert_close(scores["miou"], torch.tensor(15 / 28, dtype=torch.float64))
    torch.testing.assert_close(scores["pixel_acc"], torch.tensor(0.7, dtype=torch.float64))
    torch.testing.assert_close(scores["mean_acc"], torch.tensor(17 / 24, dtype=torch.float64))
    torch.testing.assert_close(scores["head_miou"], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(scores["tail_miou"], torch.tensor(4 / 7, dtype=torch.float64))


def test_absent_class_counts_as_zero_unlike_torchmetrics_macro():
    # 3 classes, class 2 never in target nor preds: per-class IoU [1, 1, 0]
    preds = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 0, 1, 1])
    cm = confusion_matrix(preds, target, 3)
    assert torch.equal(iou_from_confusion(cm), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    # ours: mean over ALL classes = (1 + 1 + 0) / 3 (UniMatch/U2PL I/(U+1e-10) convention)
    torch.testing.assert_close(segmentation_scores(cm)["miou"], torch.tensor(2 / 3, dtype=torch.float64))
    # the torchmetrics trap (libraries.md §D.4): 'macro' skips the absent class and reports 1.0
    macro = MulticlassJaccardIndex(3, average="macro")
    macro.update(preds, target)
    assert macro.compute().item() == pytest.approx(1.0)
    per_class = MulticlassJaccardIndex(3, average=None)
    per_class.update(preds, target)
    torch.testing.assert_close(per_class.compute().double(), iou_from_confusion(cm))


def test_dataset_level_differs_from_per_image_average():
    # image 1: target [0,0,0,1], pred [0,0,0,0] -> I0=3, U0=4; I1=0, U1=1  (per-image mIoU (3/4+0)/2 = 0.375)
    # image 2: target [1,1,1,1], pred [1,1,1,1] -> I1=4, U1=4; class 0 absent (per-image mIoU (0+1)/2 = 0.5)
    # per-image average: (0.375 + 0.5)/2 = 0.4375
    # dataset level: IoU0 = 3/4, IoU1 = (0+4)/(1+4) = 4/5 -> mIoU = (0.75 + 0.8)/2 = 0.775  <- what we report
    target = torch.tensor([[[0, 0], [0, 1]], [[1, 1], [1, 1]]])
    preds = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
    metric = ConfusionMatrix(2)
    per_image = []
    for p, t in zip(preds, target):
        metric.update(p[None], t[None])
        per_image.append(segmentation_scores(confusion_matrix(p, t, 2))["miou"])
    ours = metric.scores()["miou"]
    torch.testing.assert_close(ours, torch.tensor(0.775, dtype=torch.float64))
    torch.testing.assert_close(torch.stack(per_image).mean(), torch.tensor(0.4375, dtype=torch.float64))
    # torchmetrics.segmentation.MeanIoU averages per image too, so it also disagrees with dataset level
    from torchmetrics.segmentation import MeanIoU

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = MeanIoU(num_classes=2, input_format="index")
        tm.update(preds, target)
        assert abs(tm.compute().item() - 0.775) > 0.1


def test_empty_matrix_gives_zeros_not_nan():
    scores = segmentation_scores(torch.zeros(3, 3, dtype=torch.long))
    for key in ("miou", "pixel_acc", "mean_acc"):
        assert scores[key] == 0 and not torch.isnan(scores[key])
    assert torch.equal(scores["per_class_iou"], torch.zeros(3, dtype=torch.float64))


def test_scores_stay_on_device_and_reject_bad_input():
    cm = torch.tensor([[2, 0], [1, 1]])
    assert segmentation_scores(cm)["miou"].device == cm.device
    with pytest.raises(ValueError, match="square"):
        segmentation_scores(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="square"):
        iou_from_confusion(torch.zeros(4))
    with pytest.raises(ValueError, match=r"head=\[0, 2\].*\[2\]"):
        segmentation_scores(cm, head=[0, 2])
    with pytest.raises(ValueError, match="tail"):
        segmentation_scores(cm, tail=[-1])


# ---------------------------------------------------------------- table
def test_format_iou_table():
    table = format_iou_table(torch.tensor([0.5, 0.25, 1.0]), ["road", "traffic light", "sky"],
                             head=[0], tail=[1])
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "%", "group"]
    assert lines[2].split() == ["road", "50.00", "head"]
    assert lines[3].split() == ["traffic", "light", "25.00", "tail"]
    assert lines[4].split() == ["sky", "100.00"]
    # mIoU over all classes: (50 + 25 + 100)/3 = 58.33
    assert lines[-1].split() == ["mIoU", "58.33"]
    # fixed width: the IoU column ends at the same position on every row
    ends = {line.index(tok) + len(tok) for line, tok in zip(lines[2:5], ["50.00", "25.00", "100.00"])}
    assert len(ends) == 1


def test_format_iou_table_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 IoU values but 3 class_names"):
        format_iou_table([0.1, 0.2], ["a", "b", "c"])
