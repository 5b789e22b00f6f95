"""SemiSegDataModule: streams, batch composition, partitions, and bad input before training."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from semiseg_lit.config import DataConfig
from semiseg_lit.data.datamodule import SemiSegDataModule
from tests.conftest import TINY_SYNTH


def data_cfg(root: Path, **kw):
    cfg = OmegaConf.structured(DataConfig)
    cfg.merge_with({"name": "synthscapes", "dataset": "synthscapes", "root": str(root), "num_classes": 10,
                    "n_labeled": 8, "crop_size": 48, "labeled_batch_size": 4, "unlabeled_batch_size": 4,
                    "num_workers": 0, "synthscapes": TINY_SYNTH, **kw})
    return cfg


def test_batches_combine_streams_with_expected_shapes(synth_root):
    dm = SemiSegDataModule(data_cfg(synth_root), seed=0, streams=("labeled", "unlabeled", "partner"))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.partition.labeled) == 8 and len(dm.partition.unlabeled) == 32 and len(dm.partition.val) == 12
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"labeled", "unlabeled", "partner"}
    lab, unl = batch["labeled"], batch["unlabeled"]
    assert lab["image"].shape == (4, 3, 48, 48) and lab["mask"].shape == (4, 48, 48)
    assert unl["image"].shape == unl["image_strong"].shape == (4, 3, 48, 48)
    assert lab["mask"].dtype == torch.int64
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[-2:] == (TINY_SYNTH["height"], TINY_SYNTH["width"])


def test_labeled_stream_cycles_independently_and_never_yields_batch_of_one(synth_root):
    cfg = data_cfg(synth_root, labeled_batch_size=3)
    dm = SemiSegDataModule(cfg, seed=0, streams=("labeled", "unlabeled"))
    dm.setup()
    seen = []
    for batch, _, _ in itertools.islice(iter(dm.train_dataloader()), 12):  # 36 labeled draws over 8 images
        assert batch["labeled"]["image"].shape[0] == 3 and batch["unlabeled"]["image"].shape[0] == 4
        seen += batch["labeled"]["index"].tolist()
    # each pass over the 8 labeled images is a permutation, passes keep coming
    assert sorted(seen[:8]) == list(range(8)) and sorted(seen[8:16]) == list(range(8))


def test_streams_are_reproducible(synth_root):
    def first_masks():
        dm = SemiSegDataModule(data_cfg(synth_root), seed=5, streams=("labeled",))
        dm.setup()
        return next(iter(dm.train_dataloader()))[0]["labeled"]["mask"]

    assert torch.equal(first_masks(), first_masks())


def test_global_batch_must_leave_two_images_per_device(synth_root):
    dm = SemiSegDataModule(data_cfg(synth_root, labeled_batch_size=1), seed=0)
    with pytest.raises(ValueError, match="at least 2 images per device"):
        dm.per_device_batch("labeled")


def test_missing_root_names_the_expected_folder(tmp_path):
    cfg = data_cfg(tmp_path / "nowhere", dataset="cityscapes", name="cityscapes", num_classes=19)
    with pytest.raises(ValueError, match="nowhere is not a folder"):
        SemiSegDataModule(cfg, seed=0).setup()
    (tmp_path / "empty_root").mkdir()
    cfg.root = str(tmp_path / "empty_root")
    with pytest.raises(ValueError, match="leftImg8bit"):
        SemiSegDataModule(cfg, seed=0).setup()


def test_empty_split_list_is_named(synth_root, tmp_path):
    empty = tmp_path / "labeled.txt"
    empty.write_text("")
    dm = SemiSegDataModule(data_cfg(synth_root, labeled_list=str(empty)), seed=0)
    with pytest.raises(ValueError, match="labeled.txt"):
        dm.setup()


def test_malformed_split_list_names_the_line(synth_root, tmp_path):
    bad = tmp_path / "labeled.txt"
    bad.write_text("a b c\n")
    dm = SemiSegDataModule(data_cfg(synth_root, labeled_list=str(bad)), seed=0)
    with pytest.raises(ValueError, match="labeled.txt"):
        dm.setup()


def test_unlabeled_set_empty_is_a_clear_error(synth_root):
    dm = SemiSegDataModule(data_cfg(synth_root, n_labeled=40), seed=0, streams=("labeled", "unlabeled"))
    with pytest.raises(ValueError, match="unlabeled set is empty"):
        dm.setup()


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_mask_size_mismatch_and_bad_values_fail_with_the_file(synth_root, tmp_path):
    root = _copy_tree(synth_root, tmp_path / "copy")
    dm = SemiSegDataModule(data_cfg(root), seed=0, streams=("labeled",))
    dm.setup()
    first = dm.partition.labeled[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(first.mask)
    with pytest.raises(ValueError, match=first.mask.name):
        dm._datasets["labeled"].get(0)
    Image.fromarray(np.full((TINY_SYNTH["height"], TINY_SYNTH["width"]), 42, np.uint8)).save(first.mask)
    with pytest.raises(ValueError, match="42"):
        dm._datasets["labeled"].get(0)


def test_class_info_overrides_are_validated(synth_root):
    with pytest.raises(ValueError, match="class_names"):
        SemiSegDataModule(data_cfg(synth_root, class_names=["a", "b"]), seed=0)
    with pytest.raises(ValueError, match="head_classes"):
        SemiSegDataModule(data_cfg(synth_root, head_classes=[12]), seed=0)


def test_bad_labeled_mask_fails_before_training(synth_root, tmp_path):
    root = _copy_tree(synth_root, tmp_path / "copy2")
    dm = SemiSegDataModule(data_cfg(root), seed=0, streams=("labeled",))
    dm.setup()
    bad = dm.partition.labeled[3].mask
    Image.fromarray(np.full((TINY_SYNTH["height"], TINY_SYNTH["width"]), 77, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=rf"(?s)labeled images.*{bad.name}.*77"):
        SemiSegDataModule(data_cfg(root), seed=0, streams=("labeled",)).setup()
    SemiSegDataModule(data_cfg(root, check_before_training="none"), seed=0, streams=("labeled",)).setup()
