"""``val_mode=center_crop``: each validation sample is centre-cropped on its own, its padding labelled
``data.val_pad_label`` (the AEL reference's VOC validation: 0 = background, counted in the mIoU)."""

from __future__ import annotations

import torch

from semiseg_lit.data.datamodule import center_crop_collate
from semiseg_lit.tasks.common import build_datamodule
from tests.conftest import tiny_overrides


def sample(h: int, w: int, value: int, index: int) -> dict:
    return {"image": torch.full((3, h, w), 1.0), "mask": torch.full((h, w), value, dtype=torch.long), "index": index}


def test_each_sample_is_padded_symmetrically_with_the_pad_label():
    # a 2x3 and a 3x4 image, crop 4x4: pad (top, bottom, left, right) = (1, 1, 0, 1) and (0, 1, 0, 0)
    batch = center_crop_collate([sample(2, 3, 7, 0), sample(3, 4, 5, 1)], crop=(4, 4), label_pad_value=0)
    assert batch["image"].shape == (2, 3, 4, 4) and batch["mask"].shape == (2, 4, 4)
    expected0 = torch.tensor([[0, 0, 0, 0], [7, 7, 7, 0], [7, 7, 7, 0], [0, 0, 0, 0]])
    expected1 = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 0, 0]])
    assert torch.equal(batch["mask"][0], expected0) and torch.equal(batch["mask"][1], expected1)
    # image padding is 0 (the mean colour after normalisation), in the same places
    assert torch.equal(batch["image"][0, 0] == 1.0, expected0 == 7)
    assert batch["index"].tolist() == [0, 1]
    # 255 (ignore) is the clean default
    ignore = center_crop_collate([sample(2, 3, 7, 0)], crop=(4, 4))
    assert int((ignore["mask"] == 255).sum()) == 16 - 6


def test_larger_images_are_cropped_in_the_centre():
    mask = torch.arange(36).reshape(6, 6)
    item = {"image": torch.zeros(3, 6, 6), "mask": mask, "index": 0}
    out = center_crop_collate([item], crop=(2, 4), label_pad_value=0)
    assert torch.equal(out["mask"][0], mask[2:4, 1:5])


def test_datamodule_uses_it_for_center_crop_validation(compose_cfg, synth_root, tmp_path):
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "data.val_mode=center_crop", "data.val_crop_size=70", "data.val_pad_label=0"])
    dm = build_datamodule(cfg)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["mask"].shape[-2:] == (70, 70)  # 64x64 images padded by 3 on every side
    assert (batch["mask"][:, :3] == 0).all() and (batch["mask"][:, -3:] == 0).all()
    assert (batch["mask"][:, :, :3] == 0).all() and (batch["image"][:, :, :3] == 0).all()
    # eval.mode overrides data.val_mode: whole images, no padding
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path / "w"),
                       "data.val_mode=center_crop", "data.val_crop_size=70", "eval.mode=whole"])
    dm = build_datamodule(cfg)
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["mask"].shape[-2:] == (64, 64)
