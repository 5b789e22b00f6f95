"""Your own data, end to end (issue #15, items 1, 3 and 4 of the data side).

Unlabeled images never need masks: a folder of images (``data.unlabeled_dir``, any nesting, hidden
files skipped), an unlabeled list naming no existing mask, Cityscapes ``train_extra`` images
(``data.unlabeled_split``) and VOC JPEGs outside every labeled list. ``task=eval`` and ``task=predict``
work on a download that holds only the val split. Val files are checked before step 1,
``task=check_data`` exits non-zero on problems, and the synthscapes cache folder is keyed by every
generation parameter. Every tree is written by ``layout_builders`` in the test itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from semiseg_lit.config import SynthscapesConfig
from semiseg_lit.data.datasets import FolderLayout
from semiseg_lit.data.image_io import DataError
from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.common import build_datamodule
from tests.data.layout_builders import (
    truncate_file,
    write_cityscapes,
    write_cityscapes_images,
    write_folder,
    write_images,
    write_list,
    write_macos_junk,
    write_voc,
)

REPO = Path(__file__).resolve().parents[2]
UNLABELED = [f"batch1/u_{k:03d}" for k in range(3)] + [f"batch2/deep/u_{k:03d}" for k in range(3, 6)]


def tiny(out: Path, *extra: str) -> list[str]:
    """Sizes of tests/conftest.tiny_overrides for a 48x64 folder dataset: 2 CPU steps."""
    return ["data.crop_size=32", "data.labeled_batch_size=2", "data.unlabeled_batch_size=2", "data.val_batch_size=3",
            "data.num_workers=0", "model.encoder=resnet18", "model.encoder_weights=null",
            "model.decoder_channels=16", "model.aux_channels=16", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "logger.wandb.enabled=false", f"paths.output_dir={out}", f"paths.log_dir={out / 'logs'}", *extra]


def own_tree(tmp_path: Path) -> tuple[Path, Path]:
    """``images/{train,val}`` + ``masks/{train,val}`` (6 + 3, 3 classes) and ``unlabeled/`` (6 nested
    images, no mask anywhere, plus macOS junk)."""
    root = tmp_path / "mine"
    write_folder(root, {"train": 6, "val": 3}, num_classes=3)
    unlabeled = root / "unlabeled"
    write_images(unlabeled, UNLABELED, seed=1)
    write_macos_junk(unlabeled / "batch1", names=("u_000.jpg",))
    write_macos_junk(root / "images" / "train", names=("train_000.jpg",))
    return root, unlabeled


def folder_cfg(compose_cfg, root: Path, out: Path, *extra: str):
    return compose_cfg(["data=folder", f"data.root={root}", "data.num_classes=3", *tiny(out), *extra])


def _rel(samples, top: Path) -> list[str]:
    return sorted(Path(s.image).relative_to(top).with_suffix("").as_posix() for s in samples)


# ------------------------------------------------------------------------------------ partitions


def test_unlabeled_dir_needs_no_masks_and_skips_hidden_files(compose_cfg, tmp_path):
    root, unlabeled = own_tree(tmp_path)
    assert not list(unlabeled.rglob("*.png"))  # no mask anywhere under it
    cfg = folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael", f"data.unlabeled_dir={unlabeled}")
    p = build_datamodule(cfg).resolve_partition()
    # n_labeled null: every image with a mask is labeled (the 6 train images; ._train_000.jpg is skipped)
    assert _rel(p.labeled, root / "images" / "train") == ["more/train_005"] + [f"train_{k:03d}" for k in range(5)]
    assert _rel(p.unlabeled, unlabeled) == sorted(UNLABELED)
    assert all(s.mask is None for s in p.unlabeled)
    assert len(p.val) == 3


def test_seeded_draw_takes_masked_images_and_leaves_the_others_unlabeled(compose_cfg, tmp_path):
    """Images in images/train without a mask were an error before; now they are unlabeled."""
    root = tmp_path / "mine"
    write_folder(root, {"train": 6, "val": 3}, num_classes=3)
    write_images(root / "images" / "train", ["raw_a", "sub/raw_b"], seed=2)  # no masks
    cfg = folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael", "data.n_labeled=4")
    p = build_datamodule(cfg).resolve_partition()
    assert len(p.labeled) == 4 and all(s.mask is not None and s.mask.is_file() for s in p.labeled)
    assert not {"raw_a", "sub/raw_b"} & {s.id for s in p.labeled}
    assert {"raw_a", "sub/raw_b"} <= {s.id for s in p.unlabeled}
    assert len(p.unlabeled) == 4  # 2 masked train images not drawn + 2 without masks
    # with all masks present the draw is the one it always was: only the candidates changed
    cfg_all = folder_cfg(compose_cfg, root, tmp_path / "o2", "method=ael", "data.n_labeled=4", "data.train_split=train")
    shutil.rmtree(root / "images" / "train" / "sub")
    (root / "images" / "train" / "raw_a.jpg").unlink()
    assert [s.id for s in build_datamodule(cfg_all).resolve_partition().labeled] == [s.id for s in p.labeled]


def test_unlabeled_list_without_masks_and_labeled_list_alone(compose_cfg, tmp_path):
    root, unlabeled = own_tree(tmp_path)
    write_images(root / "images" / "train", ["raw_c"], seed=3)  # in the train folder, no mask
    labeled = write_list(root / "labeled.txt", ["images/train/train_000.jpg masks/train/train_000.png",
                                                "images/train/train_001.jpg masks/train/train_001.png"])
    # an unlabeled list in pair format naming masks that do not exist, and a bare image path
    unl = write_list(root / "unlabeled.txt", ["unlabeled/batch1/u_000.jpg masks/nowhere/u_000.png",
                                              "unlabeled/batch2/deep/u_004.jpg"])
    both = build_datamodule(folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael", f"data.labeled_list={labeled}",
                                       f"data.unlabeled_list={unl}")).resolve_partition()
    assert _rel(both.unlabeled, root) == ["unlabeled/batch1/u_000", "unlabeled/batch2/deep/u_004"]
    assert all(s.mask is None for s in both.unlabeled)
    alone = build_datamodule(folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael",
                                        f"data.labeled_list={labeled}")).resolve_partition()
    # the rest of images/train, raw_c (no mask) included
    assert sorted(s.id for s in alone.unlabeled) == ["more/train_005", "raw_c", "train_002", "train_003", "train_004"]
    assert [s.mask is None for s in alone.unlabeled if s.id == "raw_c"] == [True]


def test_unlabeled_dir_drops_labeled_and_val_images(compose_cfg, tmp_path):
    """data.unlabeled_dir=<root>/images (train + val inside): only images that are neither labeled nor val."""
    root = tmp_path / "mine"
    write_folder(root, {"train": 6, "val": 3}, num_classes=3)
    cfg = folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael", "data.n_labeled=2",
                     f"data.unlabeled_dir={root / 'images'}")
    p = build_datamodule(cfg).resolve_partition()
    files = [str(Path(s.image).resolve()) for s in p.unlabeled]
    assert len(files) == len(set(files)) == 4  # the 4 undrawn train images, once each
    assert not set(files) & {str(Path(s.image).resolve()) for s in (*p.labeled, *p.val)}


def test_semi_supervised_without_unlabeled_images_names_the_options(compose_cfg, tmp_path):
    root = tmp_path / "mine"
    write_folder(root, {"train": 4, "val": 2}, num_classes=3)
    with pytest.raises(ValueError, match=r"unlabeled set is empty.*data\.unlabeled_dir"):
        build_datamodule(folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael")).resolve_partition()
    with pytest.raises(ValueError, match=r"data\.n_labeled=372 but data\.train_split='train' .* has 4 images"):
        build_datamodule(folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael",
                                    "data.n_labeled=372")).resolve_partition()
    with pytest.raises(DataError, match=rf"data\.unlabeled_dir={tmp_path / 'nope'} is not a folder"):
        build_datamodule(folder_cfg(compose_cfg, root, tmp_path / "o", "method=ael",
                                    f"data.unlabeled_dir={tmp_path / 'nope'}")).resolve_partition()


def test_hidden_files_are_skipped_by_the_folder_layout(tmp_path):
    root = tmp_path / "mine"
    write_folder(root, {"train": 3}, num_classes=3)
    junk = write_macos_junk(root / "images" / "train", names=("train_000.jpg", "train_001.jpg"))
    samples = FolderLayout(root / "images", root / "masks").samples("train")
    assert sorted(s.id for s in samples) == ["more/train_002", "train_000", "train_001"]
    assert not {str(j) for j in junk} & {str(s.image) for s in samples}


# ------------------------------------------------------------------------------------ Cityscapes / VOC


def test_cityscapes_train_extra_is_unlabeled_without_gtfine(compose_cfg, tmp_path):
    tree = write_cityscapes(tmp_path / "cs", {"train": {"aachen": 3}, "val": {"lindau": 2}})
    extra = write_cityscapes_images(tree.root, "train_extra", {"bad-honnef": 2, "heilbronn": 3})
    assert not (tree.root / "gtFine" / "train_extra").exists()
    cfg = compose_cfg(["data=cityscapes", "method=ael", *tiny(tmp_path / "o"), f"data.root={tree.root}",
                       "data.n_labeled=null", "data.unlabeled_split=train_extra"])
    dm = build_datamodule(cfg)
    p = dm.resolve_partition()
    assert sorted(s.id for s in p.labeled) == tree.splits["train"]
    assert sorted(s.id for s in p.unlabeled) == extra and all(s.mask is None for s in p.unlabeled)
    dm.setup("fit")  # the unlabeled stream loads images without masks
    batch = next(iter(dm.stream_loader("unlabeled")))
    assert batch["image"].shape == (2, 3, 32, 32) and "mask" not in batch
    cfg_bad = compose_cfg(["data=cityscapes", "method=ael", *tiny(tmp_path / "o"), f"data.root={tree.root}",
                           "data.n_labeled=null", "data.unlabeled_split=train_coarse"])
    with pytest.raises(DataError, match=r"data\.unlabeled_split='train_coarse'.*leftImg8bit/train_coarse"):
        build_datamodule(cfg_bad).resolve_partition()


def test_voc_jpegs_outside_the_labeled_lists_are_unlabeled(compose_cfg, tmp_path):
    """A plain VOC download (no SegmentationClassAug, no train_aug.txt): labeled from train.txt,
    unlabeled = every other JPEG except val."""
    tree = write_voc(tmp_path, n_train=6, n_val=3, n_sbd=4, n_detection_only=2, aug=False)
    cfg = compose_cfg(["data=voc", "method=ael", *tiny(tmp_path / "o"), f"data.root={tree.root}",
                       "data.train_split=train", "data.n_labeled=4",
                       f"data.unlabeled_dir={tree.root / 'JPEGImages'}"])
    p = build_datamodule(cfg).resolve_partition()
    unl = {Path(s.image).stem for s in p.unlabeled}
    assert len(p.unlabeled) == len(unl) == 2 + 4 + 2  # undrawn train, SBD ids (no mask anywhere), detection-only
    assert not unl & set(tree.splits["val"]) and not unl & {s.id for s in p.labeled}
    assert set(tree.splits["sbd"]) <= unl


def test_voc_without_train_aug_says_how_to_fix_it(compose_cfg, tmp_path):
    tree = write_voc(tmp_path, aug=False)
    cfg = compose_cfg(["data=voc", "method=supervised", *tiny(tmp_path / "o"), f"data.root={tree.root}"])
    with pytest.raises(DataError, match=r"train_aug\.txt.*data\.train_split=train"):
        build_datamodule(cfg).resolve_partition()


def test_readme_voc_check_data_example_works_on_a_plain_voc_download(compose_cfg, tmp_path, capsys):
    tree = write_voc(tmp_path, n_train=8, n_val=3, aug=False)
    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "task=check_data data=voc" in x)
    args = [a for a in line.split()[3:] if not a.startswith(("data.root=", "data.n_labeled="))]
    # data.n_labeled (default 1323) is sized for the real 1,464 train images, not for these 8
    assert run_task(compose_cfg([*args, f"data.root={tree.root}", "data.n_labeled=4",
                                 f"paths.output_dir={tmp_path / 'c'}"])) == 0
    assert "0 problems found" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ training


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "ael", "eln"])
def test_own_labeled_plus_unlabeled_folders_train_from_overrides_alone(compose_cfg, tmp_path, method):
    """The README's own-data command: labeled images/ + masks/, an unlabeled folder without masks."""
    root, unlabeled = own_tree(tmp_path)
    extra = ["method.eln.encoder_weights=null", "method.eln.pretrain_steps=0", "method.eln.eln_steps=1",
             "method.eln.decoder_channels=16", "method.eln.n_crops=2", "method.eln.crop_size=4"] if method == "eln" else []
    out = tmp_path / "run"
    cfg = folder_cfg(compose_cfg, root, out, f"method={method}", f"data.unlabeled_dir={unlabeled}", *extra)
    assert cfg.model.projection_dim is None  # ELN brings its own projection head
    miou = run_task(cfg)
    assert 0.0 <= miou <= 1.0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] >= 2
    if method == "eln":
        assert ckpt["hyper_parameters"]["config"]["model"]["projection_dim"] == 128
        assert any(k.startswith("student.projection_head.") for k in ckpt["state_dict"])
    assert json.loads((out / "metrics.json").read_text())["miou"] == pytest.approx(miou)


@pytest.mark.slow
def test_eval_and_predict_on_a_val_only_download(compose_cfg, tmp_path):
    root, _ = own_tree(tmp_path)
    run_task(folder_cfg(compose_cfg, root, tmp_path / "run", "method=supervised"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    val_only = tmp_path / "val_only"
    for top in ("images", "masks"):
        shutil.copytree(root / top / "val", val_only / top / "val")
    assert not (val_only / "images" / "train").exists()
    miou = run_task(folder_cfg(compose_cfg, val_only, tmp_path / "eval", "task=eval", f"ckpt_path={ckpt}"))
    assert 0.0 <= miou <= 1.0
    assert json.loads(Path(f"{ckpt.with_suffix('')}_eval.json").read_text())["miou"] == pytest.approx(miou)
    pred = tmp_path / "pred"
    run_task(folder_cfg(compose_cfg, val_only, tmp_path / "p", "task=predict", f"ckpt_path={ckpt}",
                        f"input={val_only / 'images' / 'val'}", f"output={pred}"))
    assert sorted(p.relative_to(pred).as_posix() for p in pred.rglob("*.png")
                  if not p.stem.endswith(("_color", "_overlay"))) == [
        "more/val_002.png", "val_000.png", "val_001.png"]


def test_cityscapes_eval_partition_needs_only_the_val_split(compose_cfg, tmp_path):
    tree = write_cityscapes(tmp_path / "cs", {"val": {"lindau": 2, "munster": 1}})
    cfg = compose_cfg(["data=cityscapes", "method=supervised", *tiny(tmp_path / "o"), f"data.root={tree.root}"])
    dm = build_datamodule(cfg)
    p = dm.resolve_partition("validate")
    assert sorted(s.id for s in p.val) == tree.splits["val"] and not p.labeled
    with pytest.raises(DataError, match="leftImg8bit/train"):  # training does need the train split
        build_datamodule(cfg).resolve_partition("fit")


# ------------------------------------------------------------------------------------ checks before training


def test_corrupt_val_image_is_found_before_training_naming_the_file(compose_cfg, tmp_path):
    root = tmp_path / "mine"
    write_folder(root, {"train": 4, "val": 3}, num_classes=3)
    bad = truncate_file(root / "images" / "val" / "val_001.jpg")
    out = tmp_path / "run"
    with pytest.raises(DataError, match=rf"(?s)1 problem in the val images.*{bad}"):
        run_task(folder_cfg(compose_cfg, root, out, "method=supervised"))
    assert not (out / "checkpoints").exists()  # no step was run


def test_val_mask_of_another_size_is_found_before_training(compose_cfg, tmp_path):
    root = tmp_path / "mine"
    write_folder(root, {"train": 4, "val": 3}, num_classes=3)
    from PIL import Image

    bad = root / "masks" / "val" / "val_000.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad)
    with pytest.raises(DataError, match=rf"(?s)val images.*{bad}.*12x10"):
        build_datamodule(folder_cfg(compose_cfg, root, tmp_path / "o", "method=supervised")).setup("fit")


def test_check_data_exit_status_and_problem_count(compose_cfg, tmp_path, capsys):
    root = tmp_path / "mine"
    write_folder(root, {"train": 4, "val": 2}, num_classes=3)
    write_macos_junk(root / "images" / "val", names=("val_000.jpg",))  # skipped: not a problem
    args = ["task=check_data", "data=folder", f"data.root={root}", "data.num_classes=3", "method=supervised",
            "logger.wandb.enabled=false"]
    assert run_task(compose_cfg([*args, f"paths.output_dir={tmp_path / 'ok'}"])) == 0
    assert "0 problems found" in capsys.readouterr().out
    bad = truncate_file(root / "images" / "train" / "train_002.jpg")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "semiseg_lit", *args, f"paths.output_dir={tmp_path / 'bad'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "1 problem found" in done.stdout and "1 problems" not in done.stdout
    assert f"PROBLEM {bad}" in done.stdout


# ------------------------------------------------------------------------------------ synthscapes cache


def test_synthscapes_cache_folder_is_keyed_by_every_generation_parameter(compose_cfg, tmp_path):
    base = compose_cfg(["data=synthscapes", f"paths.cache_dir={tmp_path}"]).data.root
    roots = {base}
    for f in dataclasses.fields(SynthscapesConfig):
        default = getattr(SynthscapesConfig(), f.name)
        value = 2 if default is None else ("permuted" if isinstance(default, str) else default + 1)
        root = compose_cfg(["data=synthscapes", f"paths.cache_dir={tmp_path}",
                            f"data.synthscapes.{f.name}={value}"]).data.root
        assert root not in roots, f"changing data.synthscapes.{f.name} keeps the cache folder {root}"
        roots.add(root)
    assert all(Path(r).parent == tmp_path for r in roots)
