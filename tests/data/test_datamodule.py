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


def test_one_image_per_device_needs_sync_batchnorm_on_several_devices(synth_root):
    # the reference: 8 GPUs, 1 unlabeled (mixed) crop each, SyncBN
    dm = SemiSegDataModule(data_cfg(synth_root, labeled_batch_size=16, unlabeled_batch_size=8), seed=0,
                           virtual_ranks=8, sync_batchnorm=True)
    dm._world = lambda: (3, 8)
    assert dm.per_device_batch("unlabeled") == dm.per_device_batch("bank") == 1
    assert dm.per_device_batch("labeled") == 2
    plain = SemiSegDataModule(data_cfg(synth_root, unlabeled_batch_size=8), seed=0, virtual_ranks=8)
    plain._world = lambda: (3, 8)
    with pytest.raises(ValueError, match="trainer.sync_batchnorm=true"):
        plain.per_device_batch("unlabeled")
    one_device = SemiSegDataModule(data_cfg(synth_root, unlabeled_batch_size=1), seed=0, sync_batchnorm=True)
    with pytest.raises(ValueError, match="set data.unlabeled_batch_size=2 or more"):  # SyncBN on one device = plain BN
        one_device.per_device_batch("unlabeled")


def test_virtual_ranks_must_divide_the_world_and_the_batches(synth_root):
    dm = SemiSegDataModule(data_cfg(synth_root, labeled_batch_size=12, unlabeled_batch_size=8), seed=0,
                           virtual_ranks=8)
    assert dm.groups_per_device() == 8 and dm.per_device_batch("unlabeled") == 8
    with pytest.raises(ValueError, match=r"data.labeled_batch_size=12 .*method.ael.virtual_ranks=8"):
        dm.per_device_batch("labeled")
    dm._world = lambda: (0, 3)
    with pytest.raises(ValueError, match=r"method.ael.virtual_ranks=8 .*world size 3"):
        dm.groups_per_device()


def test_device_batch_is_the_emulated_gpus_shards_side_by_side(synth_root):
    # 2 emulated GPUs on one device: the batch = what 2 devices would get, concatenated
    cfg = data_cfg(synth_root, labeled_batch_size=4, unlabeled_batch_size=4)
    one = SemiSegDataModule(cfg, seed=2, streams=("labeled",), virtual_ranks=2)
    one.setup()
    device = next(iter(one.train_dataloader()))[0]["labeled"]["index"].tolist()
    shards = []
    for rank in (0, 1):
        dm = SemiSegDataModule(cfg, seed=2, streams=("labeled",), virtual_ranks=2)
        dm._world = lambda rank=rank: (rank, 2)
        dm.setup()
        shards += next(iter(dm.train_dataloader()))[0]["labeled"]["index"].tolist()
    assert device == shards


def test_labeled_styles_uses_the_generated_lists_and_refuses_a_seeded_draw(tmp_path):
    synth = {**TINY_SYNTH, "n_train": 160, "labeled_styles": 2}
    dm = SemiSegDataModule(data_cfg(tmp_path / "ls", n_labeled=8, synthscapes=synth), seed=0)
    dm.setup("fit")
    styles = {s.image.parent.name for s in dm.partition.labeled}
    assert styles <= {"style00", "style01"} and len(dm.partition.labeled) == 8
    bad = SemiSegDataModule(data_cfg(tmp_path / "ls", n_labeled=5, synthscapes=synth), seed=0)
    with pytest.raises(ValueError, match=r"data.n_labeled=5 with data.synthscapes.labeled_styles=2"):
        bad.setup("fit")


def test_labeled_styles_generates_only_the_lists_that_fit_and_names_them(tmp_path):
    # 40 train images of 16 styles: few in styles 0..3, so only the counts that fit get lists
    from semiseg_lit.data.synthscapes import labeled_pool_size

    synth = {**TINY_SYNTH, "n_styles": 16, "labeled_styles": 4}
    pool = labeled_pool_size(40, 16, 0, 4)
    fits = [n for n in (8, 16, 32) if n <= pool]
    assert 8 in fits and len(fits) < 3
    dm = SemiSegDataModule(data_cfg(tmp_path / "small", n_labeled=8, synthscapes=synth), seed=0)
    dm.setup("fit")
    assert len(dm.partition.labeled) == 8
    big = [n for n in (8, 16, 32) if n > pool][0]
    with pytest.raises(ValueError, match=rf"data.n_labeled={big} .* exist for n_labeled in \[{', '.join(map(str, fits))}\]"):
        SemiSegDataModule(data_cfg(tmp_path / "small", n_labeled=big, synthscapes=synth), seed=0).setup("fit")
