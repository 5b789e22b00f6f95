"""ELN stage 3 validates the student AND the teacher, as the official code does (train.py:105-130):
``val_confusion`` holds the evaluated network's predictions, ``val_confusion_other`` the other's."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from tests.methods.test_eln import make_batch, make_method


def confusion_of(net, images, masks, c: int = 10) -> torch.Tensor:
    cm = MulticlassConfusionMatrix(c, ignore_index=255)
    with torch.no_grad():
        cm.update(net(images).argmax(1), masks)
    return cm.compute()


def validate_once(m, batch) -> None:
    m.eval()
    m.on_validation_epoch_start()
    m.validation_step({"image": batch["image"], "mask": batch["mask"], "index": batch["index"]}, 0)


def test_stage3_validation_covers_both_networks(tmp_path):
    m = make_method(tmp_path, ["method.eln.val_metrics=false", "data.val_mode=whole"])
    m.apply_stage_transitions(5)  # stage 3 from step 5: teacher <- student, teacher_ready
    with torch.no_grad():  # the teacher predicts class 2 where it is not already sure of another one
        for name, p in m.teacher.named_parameters():
            if name.endswith("bias") and p.shape == (10,):
                p[2] += 50.0
    batch = make_batch(seed=3)["labeled"]
    validate_once(m, batch)
    assert m._val_both and m.network_names() == ("student", "teacher")
    student_cm = confusion_of(m.student, batch["image"], batch["mask"])
    teacher_cm = confusion_of(m.teacher, batch["image"], batch["mask"])
    assert not torch.equal(student_cm, teacher_cm)
    assert torch.equal(m.val_confusion.compute(), student_cm)
    assert torch.equal(m.val_confusion_other.compute(), teacher_cm)


def test_before_stage3_or_switched_off_only_the_evaluated_network(tmp_path):
    m = make_method(tmp_path, ["method.eln.val_metrics=false"])
    validate_once(m, make_batch()["labeled"])  # stage 1: no teacher yet
    assert not m._val_both and int(m.val_confusion_other.compute().sum()) == 0
    off = make_method(tmp_path / "off", ["method.eln.val_metrics=false", "method.eln.val_both_networks=false"])
    off.apply_stage_transitions(5)
    validate_once(off, make_batch()["labeled"])
    assert not off._val_both and int(off.val_confusion_other.compute().sum()) == 0
    assert int(off.val_confusion.compute().sum()) > 0
