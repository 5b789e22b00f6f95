"""Real datasets end to end, on tiny trees in the exact official layouts (specs/data.md §1, §2).

* every ``<method>_{cityscapes,voc}_<partition>`` experiment composes with the reference
  hyper-parameters (ael.md §1) and, with smoke overrides, resolves its partition on a tiny tree and
  yields a labeled batch;
* one supervised and one AEL experiment per dataset train 2 steps and are evaluated with
  ``task=eval ckpt_path=...`` (Cityscapes labelTrainIds and labelIds-only trees; VOC grey
  SegmentationClassAug and palette SegmentationClass masks with 255 borders); a folder dataset trains;
* ``task=check_data`` counts and histograms, and a corrupt file reported;
* UniMatch-format split lists via ``data.labeled_list`` / ``data.unlabeled_list``;
* the bad-input cases: wrong root, image without mask, mask values outside the class set, split list
  naming missing files, labeled/unlabeled overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.config import DataConfig
from semiseg_lit.data.image_io import DataError
from semiseg_lit.data.labels import CITYSCAPES, VOC
from semiseg_lit.data.splits import SplitError
from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.common import build_datamodule
from tests.conftest import REPO_ROOT
from tests.data.layout_builders import (
    Tree,
    cityscapes_pair,
    truncate_file,
    voc_pair,
    write_cityscapes,
    write_folder,
    write_list,
    write_voc,
)

REAL_EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")
                          if p.stem.split("_")[0] in ("supervised", "ael")
                          and p.stem.split("_")[1] in ("cityscapes", "voc"))

# Partition -> (n_labeled, max_steps). max_steps = epochs × floor(ceil(N_unl / 8) / 2) (ael.md §1,
# "Iterations actually run": 8 GPUs, batch 2, drop_last), hand-computed:
#   Cityscapes (2975 train, 200 epochs): 1/16 N_unl=2789: ceil(348.6)=349 -> 174 -> 34,800;
#     1/8 2603: 326 -> 163 -> 32,600;  1/4 2231: 279 -> 139 -> 27,800;  1/2 1487: 186 -> 93 -> 18,600.
#   VOC (10582 train_aug, 80 epochs): 92 N_unl=10490: ceil(1311.25)=1312 -> 656 -> 52,480;
#     183 10399: 1300 -> 650 -> 52,000;  366 10216: 1277 -> 638 -> 51,040;  732 9850: 1232 -> 616 -> 49,280;
#     1464 9118: 1140 -> 570 -> 45,600;  blended 1/16 9920: 1240 -> 620 -> 49,600;
#     1/8 9259: 1158 -> 579 -> 46,320;  1/4 7936: 992 -> 496 -> 39,680 (the spec's listed values).
REFERENCE = {
    "cityscapes_1_16": (186, 34_800), "cityscapes_1_8": (372, 32_600), "cityscapes_1_4": (744, 27_800),
    "cityscapes_1_2": (1488, 18_600), "voc_92": (92, 52_480), "voc_183": (183, 52_000), "voc_366": (366, 51_040),
    "voc_732": (732, 49_280), "voc_1464": (1464, 45_600), "voc_blend_1_16": (662, 49_600),
    "voc_blend_1_8": (1323, 46_320), "voc_blend_1_4": (2646, 39_680),
    # the paper's other columns: Cityscapes 1/32 N_unl=2882: 361 -> 180 -> 36,000; VOC blended 1/32
    # 10251: 1282 -> 641 -> 51,280; 1/2 5291: 662 -> 331 -> 26,480
    "cityscapes_1_32": (93, 36_000), "voc_blend_1_32": (331, 51_280), "voc_blend_1_2": (5291, 26_480),
}  # fmt: skip
HAS_LABELED_SPLIT = "labeled_split" in {f.name for f in fields(DataConfig)}


def _partition_key(name: str) -> str:
    return name.split("_", 1)[1]


# ------------------------------------------------------------------------------------ trees


@pytest.fixture(scope="session")
def city_tree(tmp_path_factory) -> Tree:
    """Cityscapes after csCreateTrainIdLabelImgs: labelIds + labelTrainIds (12 train, 6 val, 64×128)."""
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes") / "cityscapes", masks="trainIds", seed=0)


@pytest.fixture(scope="session")
def city_labelids_tree(tmp_path_factory) -> Tree:
    """The official Cityscapes download: labelIds only (no labelTrainIds)."""
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes_ids") / "cityscapes", masks="labelIds", seed=1)


@pytest.fixture(scope="session")
def voc_tree(tmp_path_factory) -> Tree:
    """VOCdevkit/VOC2012 with palette SegmentationClass, grey SegmentationClassAug and train_aug.txt."""
    return write_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="session")
def unimatch_splits(tmp_path_factory, city_tree: Tree, voc_tree: Tree) -> Path:
    """UniMatch-format lists (``<img> <mask>``, no final newline) outside the dataset trees."""
    out = tmp_path_factory.mktemp("splits")
    train = city_tree.splits["train"]
    write_list(out / "cityscapes/1_8/labeled.txt", [cityscapes_pair("train", i) for i in train[::4]])
    write_list(out / "cityscapes/1_8/unlabeled.txt",
               [cityscapes_pair("train", i) for k, i in enumerate(train) if k % 4])
    write_list(out / "cityscapes/val.txt", [cityscapes_pair("val", i) for i in city_tree.splits["val"]])
    # classic: labeled from VOC train, unlabeled = the rest of train_aug (SBD ids only in SegmentationClassAug)
    labeled = voc_tree.splits["train"][:3]
    write_list(out / "pascal/92/labeled.txt", [voc_pair(i) for i in labeled])
    write_list(out / "pascal/92/unlabeled.txt",
               [voc_pair(i) for i in voc_tree.splits["train_aug"] if i not in labeled])
    return out


def smoke(root: Path, out: Path, n_labeled: int = 4) -> list[str]:
    """Overrides that shrink a real-dataset experiment to a few CPU seconds (smp's small DeepLabV3+ in
    place of the experiments' reference networks, which tests/models/test_reference_nets.py runs)."""
    return [
        "model=deeplabv3plus", f"data.root={root}", "data.crop_size=64", "data.val_crop_size=64", "data.labeled_batch_size=4",
        "data.unlabeled_batch_size=4", "data.val_batch_size=4", "data.num_workers=0", f"data.n_labeled={n_labeled}",
        "model.encoder=resnet18", "model.encoder_weights=null", "model.decoder_channels=32", "model.aux_channels=32",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "logger.wandb.enabled=false",
        f"paths.output_dir={out}", f"paths.log_dir={out / 'logs'}",
    ]


def _ids(samples) -> list[str]:
    return sorted(s.id for s in samples)


# ------------------------------------------------------------------------------------ composition


@pytest.mark.parametrize("name", REAL_EXPERIMENTS)
def test_experiment_has_the_reference_hyper_parameters(compose_cfg, name):
    cfg = compose_cfg([f"+experiment={name}"])
    method, dataset = name.split("_")[:2]
    n_labeled, steps = REFERENCE[_partition_key(name)]
    d, m, o = cfg.data, cfg.model, cfg.method
    assert (cfg.name, d.dataset, cfg.method.name) == (name, dataset, method)
    assert d.n_labeled == n_labeled and cfg.trainer.max_steps == steps
    assert list(d.augment.scale_range) == [0.5, 2.0] and d.augment.hflip
    # global: 2 labeled + 1 kept unlabeled per GPU × 8 (tests/test_presets.py has the full official table)
    assert (d.labeled_batch_size, d.unlabeled_batch_size) == (16, 8 if method == "ael" else 16)
    # the supervised twins train the same official AEL network
    arch, encoder = ("deeplabv3plus_ael", "resnet101s")
    assert (m.arch, m.encoder, m.encoder_weights, m.output_stride, m.aux_head) == (arch, encoder, "imagenet", 8, True)
    assert (o.loss.name, o.loss.ohem_thresh, o.loss.ohem_min_kept, o.loss.aux_weight) == ("ohem", 0.7, 100000, 0.4)
    assert (o.optim.name, o.optim.lr, o.optim.head_lr_mult, o.optim.weight_decay) == ("sgd", 0.01, 10.0, 1e-4)
    assert (o.optim.scheduler, o.optim.poly_power, o.optim.momentum) == ("poly", 0.9, 0.9)
    if dataset == "cityscapes":
        assert (d.num_classes, d.crop_size, d.val_mode, d.val_crop_size) == (19, 769, "sliding", 769)
        assert list(d.stuff_classes) == [0, 1, 2, 8, 10] and d.train_split == "train"
    else:
        # the reference's in-training check: 513 centre crop, padding = background (parity=clean: whole)
        assert (d.num_classes, d.crop_size, d.val_mode, d.val_pad_label) == (21, 513, "center_crop", 0)
        assert list(d.stuff_classes) == [0] and d.train_split == "train_aug"
    if method == "ael":
        a = o.ael
        expected = (0.0, 3, 0.005, 0.01) if dataset == "cityscapes" else (0.7, 1, 0.03, 0.03)
        assert (a.threshold, a.copy_paste_k, a.cutmix_area_thresh, a.cutmix_bank_area_thresh) == expected
        assert o.eval_model == "teacher"
    else:
        assert o.ael is None and o.eval_model == "student"


def test_experiment_keeps_command_line_trainer_choice(compose_cfg):
    cfg = compose_cfg(["+experiment=ael_cityscapes_1_8", "trainer=ddp", "data.augment.pad_label=0"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm
    assert cfg.data.augment.pad_label == 0 and cfg.trainer.max_steps == 32_600


def test_cli_prints_the_composed_experiment():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "semiseg_lit", "--cfg", "job", "+experiment=ael_voc_blend_1_4"],
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert "max_steps: 39680" in out.stdout and "n_labeled: 2646" in out.stdout and "threshold: 0.7" in out.stdout


@pytest.mark.parametrize("name", REAL_EXPERIMENTS)
def test_experiment_resolves_its_partition_on_a_tiny_tree(compose_cfg, city_tree, voc_tree, tmp_path, name):
    tree = city_tree if "cityscapes" in name else voc_tree
    # the 4-image smoke batch does not split over the reference's 8 emulated GPUs
    one_group = ["method.ael.virtual_ranks=1"] if name.startswith("ael_") else []
    cfg = compose_cfg([f"+experiment={name}", *smoke(tree.root, tmp_path, n_labeled=3), *one_group])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    p = dm.partition
    pool = tree.splits[cfg.data.train_split]
    labeled, unlabeled = _ids(p.labeled), _ids(p.unlabeled)
    if name.endswith("voc_1464"):  # labeled_list = ImageSets/Segmentation/train.txt: every train image
        assert labeled == tree.splits["train"] and unlabeled == tree.splits["sbd"]
    else:
        assert len(labeled) == 3
        labeled_pool = tree.splits[cfg.data.labeled_split] if HAS_LABELED_SPLIT and cfg.data.labeled_split else pool
        assert set(labeled) <= set(labeled_pool)
    assert not set(labeled) & set(unlabeled) and sorted(labeled + unlabeled) == pool
    assert _ids(p.val) == tree.splits["val"]
    batch = next(iter(dm.stream_loader("labeled")))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    values = set(torch.unique(batch["mask"]).tolist())
    assert values <= set(range(cfg.data.num_classes)) | {255}


@pytest.mark.skipif(not HAS_LABELED_SPLIT, reason="needs DataConfig.labeled_split (classic VOC seeded draw)")
@pytest.mark.parametrize("name", ["supervised_voc_92", "ael_voc_732"])
def test_voc_classic_seeded_draw_takes_labeled_from_train(compose_cfg, voc_tree, tmp_path, name):
    cfg = compose_cfg([f"+experiment={name}", *smoke(voc_tree.root, tmp_path, n_labeled=3)])
    assert cfg.data.labeled_split == "train"
    dm = build_datamodule(cfg)
    p = dm.resolve_partition()
    assert set(_ids(p.labeled)) <= set(voc_tree.splits["train"])
    assert _ids(p.unlabeled) == sorted(set(voc_tree.splits["train_aug"]) - set(_ids(p.labeled)))


# ------------------------------------------------------------------------------------ split lists


def test_unimatch_cityscapes_lists_give_exactly_their_partition(compose_cfg, city_tree, unimatch_splits, tmp_path):
    lists = unimatch_splits / "cityscapes"
    cfg = compose_cfg(["+experiment=ael_cityscapes_1_8", *smoke(city_tree.root, tmp_path),
                       f"data.labeled_list={lists / '1_8/labeled.txt'}",
                       f"data.unlabeled_list={lists / '1_8/unlabeled.txt'}", f"data.val_list={lists / 'val.txt'}"])
    p = build_datamodule(cfg).resolve_partition()
    train = city_tree.splits["train"]
    assert _ids(p.labeled) == sorted(train[::4]) and len(p.unlabeled) == len(train) - len(train[::4])
    assert _ids(p.val) == city_tree.splits["val"]
    assert all(s.mask.name.endswith("_gtFine_labelTrainIds.png") for s in p.labeled)


def test_unimatch_list_on_a_labelids_only_tree_reads_label_ids(compose_cfg, city_labelids_tree, tmp_path):
    # the list names *_labelTrainIds.png, which the official download lacks: labelIds + LUT are used
    train = city_labelids_tree.splits["train"]
    lst = write_list(tmp_path / "labeled.txt", [cityscapes_pair("train", i) for i in train[:2]])
    cfg = compose_cfg(["+experiment=supervised_cityscapes_1_8", *smoke(city_labelids_tree.root, tmp_path),
                       f"data.labeled_list={lst}"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert all(s.mask.name.endswith("_gtFine_labelIds.png") for s in dm.partition.labeled)
    _, mask = dm._datasets["labeled"].load(0)
    np.testing.assert_array_equal(mask, city_labelids_tree.labels[dm.partition.labeled[0].id])


def test_voc_classic_list_without_unlabeled_list_takes_the_rest_of_train_aug(compose_cfg, voc_tree,
                                                                             unimatch_splits, tmp_path):
    cfg = compose_cfg(["+experiment=ael_voc_92", *smoke(voc_tree.root, tmp_path),
                       f"data.labeled_list={unimatch_splits / 'pascal/92/labeled.txt'}"])
    p = build_datamodule(cfg).resolve_partition()
    labeled = voc_tree.splits["train"][:3]
    assert _ids(p.labeled) == labeled
    assert _ids(p.unlabeled) == sorted(set(voc_tree.splits["train_aug"]) - set(labeled))
    # the list names SegmentationClass/<id>.png: VOC ids have it, SBD ids fall back to SegmentationClassAug
    masks = {s.id: s.mask.parent.name for s in p.unlabeled}
    assert {masks[i] for i in voc_tree.splits["sbd"]} == {"SegmentationClassAug"}


def test_voc_blended_draw_is_seeded(compose_cfg, voc_tree, tmp_path):
    def labeled(seed: int) -> list[str]:
        cfg = compose_cfg(["+experiment=supervised_voc_blend_1_8", *smoke(voc_tree.root, tmp_path, n_labeled=5),
                           f"data.split_seed={seed}"])
        return _ids(build_datamodule(cfg).resolve_partition().labeled)

    first = labeled(0)
    assert first == labeled(0) and set(first) <= set(voc_tree.splits["train_aug"])
    assert any(labeled(s) != first for s in (1, 2, 3))


# ------------------------------------------------------------------------------------ train + eval

FAST = "model.output_stride=16"  # the experiments' stride 8 runs in the first case only (CPU time)
TRAIN_CASES = {
    # name: (experiment, tree fixture, extra overrides (format with {splits}), names of the classes)
    "cityscapes_trainids_ael_unimatch_lists": (
        "ael_cityscapes_1_8", "city_tree",
        ["data.labeled_list={splits}/cityscapes/1_8/labeled.txt",
         "data.unlabeled_list={splits}/cityscapes/1_8/unlabeled.txt", "method.ael.virtual_ranks=1"],
        CITYSCAPES.names),
    "cityscapes_labelids_supervised": ("supervised_cityscapes_1_16", "city_labelids_tree", [FAST], CITYSCAPES.names),
    # parity=clean: whole-image validation, the protocol task=eval data=voc uses below
    # (virtual_ranks=1: the smoke batch of 4 is not split into the reference's 8 groups)
    "voc_aug_ael_blended": ("ael_voc_blend_1_8", "voc_tree", [FAST, "parity=clean", "method.ael.virtual_ranks=1"],
                            VOC.names),
    "voc_palette_supervised": ("supervised_voc_92", "voc_tree",
                               ["data.voc_mask_dir=SegmentationClass", "data.train_split=train", FAST,
                                "parity=clean"], VOC.names),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_two_steps_then_eval_the_checkpoint(compose_cfg, request, unimatch_splits, tmp_path, case):
    experiment, fixture, extra, names = TRAIN_CASES[case]
    tree: Tree = request.getfixturevalue(fixture)
    extra = [e.format(splits=unimatch_splits) for e in extra]
    train_out = tmp_path / "train"
    miou = run_task(compose_cfg([f"+experiment={experiment}", *smoke(tree.root, train_out), *extra]))
    metrics = json.loads((train_out / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == list(names) and metrics["miou"] == pytest.approx(miou)
    ckpt = train_out / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 2

    # python -m semiseg_lit task=eval ckpt_path=... data=<dataset> data.root=...
    dataset = experiment.split("_")[1]
    eval_cfg = compose_cfg(["task=eval", f"ckpt_path={ckpt}", f"data={dataset}",
                            *smoke(tree.root, tmp_path / "eval"), *extra])
    eval_miou = run_task(eval_cfg)
    result = json.loads((train_out / "checkpoints" / "last_eval.json").read_text())
    assert result["mode"] == ("sliding" if dataset == "cityscapes" else "whole")
    assert result["model"] == ("teacher" if experiment.startswith("ael") else "student")
    assert result["miou"] == pytest.approx(eval_miou) == pytest.approx(metrics["miou"], abs=1e-6)


@pytest.mark.slow
def test_folder_dataset_trains_with_a_label_remap(compose_cfg, tmp_path):
    tree = write_folder(tmp_path / "mine", num_classes=3, void_value=11)
    overrides = ["data=folder", "method=supervised", *smoke(tree.root, tmp_path / "run"), FAST, "data.num_classes=3",
                 "data.class_names=[background,crack,stain]", "++data.label_remap={11:255}"]
    assert 0.0 <= run_task(compose_cfg(overrides)) <= 1.0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == ["background", "crack", "stain"]


# ------------------------------------------------------------------------------------ check_data


def _check_data(compose_cfg, overrides: list[str], out: Path) -> tuple[int, dict]:
    problems = run_task(compose_cfg(["task=check_data", *overrides, f"paths.output_dir={out}"]))
    return problems, json.loads((out / "check_data.json").read_text())


def test_check_data_counts_histograms_and_a_corrupt_file(compose_cfg, tmp_path):
    tree = write_cityscapes(tmp_path / "cs", {"train": {"aachen": 3, "ulm": 2}, "val": {"lindau": 2}}, seed=3)
    broken = tree.root / "leftImg8bit/train/ulm" / f"{tree.splits['train'][-1]}_leftImg8bit.png"
    truncate_file(broken)
    _save_mask_values(tree, "val", tree.splits["val"][0], {19, 40})
    problems, rep = _check_data(compose_cfg, ["data=cityscapes", "method=supervised", f"data.root={tree.root}",
                                              "data.n_labeled=2"], tmp_path / "out")
    assert problems == 2
    splits = rep["splits"]
    assert [splits[s]["images"] for s in ("labeled", "unlabeled", "val")] == [2, 3, 2]
    assert [splits[s]["masks"] for s in ("labeled", "unlabeled", "val")] == [2, 3, 2]
    found = [p for s in splits.values() for p in s["problems"]]
    assert any(p["file"] == str(broken) for p in found)
    assert any("19, 40" in p["problem"] and p["file"].endswith("_gtFine_labelTrainIds.png") for p in found)
    # train masks: the histogram over labeled + unlabeled is exactly what was written
    hist, ignore = tree.histogram(tree.splits["train"], 19)
    got = [splits["labeled"]["class_pixels"][n] + splits["unlabeled"]["class_pixels"][n] for n in CITYSCAPES.names]
    assert got == hist.tolist()
    assert splits["labeled"]["ignore_pixels"] + splits["unlabeled"]["ignore_pixels"] == ignore


def _save_mask_values(tree: Tree, split: str, sample_id: str, values: set[int]) -> Path:
    """Overwrite the first pixels of a labelTrainIds mask with out-of-range ``values``."""
    city = sample_id.rsplit("_", 2)[0]
    path = tree.root / "gtFine" / split / city / f"{sample_id}_gtFine_labelTrainIds.png"
    mask = np.array(Image.open(path))
    mask.flat[: len(values)] = sorted(values)
    Image.fromarray(mask).save(path)
    return path


def test_check_data_reads_labelids_through_the_trainid_table(compose_cfg, city_labelids_tree, tmp_path):
    problems, rep = _check_data(compose_cfg, ["data=cityscapes", "method=supervised",
                                              f"data.root={city_labelids_tree.root}", "data.n_labeled=4"], tmp_path)
    assert problems == 0
    hist, ignore = city_labelids_tree.histogram(city_labelids_tree.splits["val"], 19)
    assert [rep["splits"]["val"]["class_pixels"][n] for n in CITYSCAPES.names] == hist.tolist()
    assert rep["splits"]["val"]["ignore_pixels"] == ignore > 0


def test_check_data_reads_voc_palette_masks_as_indices_with_void_borders(compose_cfg, voc_tree, tmp_path):
    problems, rep = _check_data(compose_cfg, ["data=voc", "method=supervised", f"data.root={voc_tree.root}",
                                              "data.voc_mask_dir=SegmentationClass", "data.train_split=train",
                                              "data.n_labeled=2"], tmp_path)
    assert problems == 0
    assert [rep["splits"][s]["images"] for s in ("labeled", "unlabeled", "val")] == [2, 6, 4]
    hist, ignore = voc_tree.histogram(voc_tree.splits["val"], 21)
    assert [rep["splits"]["val"]["class_pixels"][n] for n in VOC.names] == hist.tolist()
    assert rep["splits"]["val"]["ignore_pixels"] == ignore > 0  # the 255 boundary bands


# ------------------------------------------------------------------------------------ bad input


def _train(compose_cfg, experiment: str, root: Path, out: Path, *extra: str):
    return run_task(compose_cfg([f"+experiment={experiment}", *smoke(root, out), *extra]))


def test_wrong_cityscapes_root_names_the_missing_subfolder(compose_cfg, city_tree, tmp_path):
    with pytest.raises(DataError, match=r"no 'leftImg8bit/train' folder"):
        _train(compose_cfg, "supervised_cityscapes_1_8", city_tree.root / "gtFine", tmp_path)


def test_wrong_voc_root_suggests_the_voc2012_folder(compose_cfg, voc_tree, tmp_path):
    with pytest.raises(DataError, match=r"no 'JPEGImages' folder.*did you mean .*VOC2012"):
        _train(compose_cfg, "supervised_voc_1464", voc_tree.root.parent.parent, tmp_path)


def test_image_without_mask_is_unlabeled_never_labeled(compose_cfg, tmp_path):
    """A train image without a mask is an unlabeled image (issue #15): never drawn as labeled."""
    tree = write_cityscapes(tmp_path / "cs", {"train": {"jena": 6}, "val": {"lindau": 2}}, seed=4)
    orphan = tree.splits["train"][2]
    for kind in ("labelTrainIds", "labelIds"):
        (tree.root / "gtFine/train/jena" / f"{orphan}_gtFine_{kind}.png").unlink()
    cfg = compose_cfg(["+experiment=ael_cityscapes_1_8", *smoke(tree.root, tmp_path / "out", n_labeled=5)])
    p = build_datamodule(cfg).resolve_partition()
    assert orphan not in _ids(p.labeled) and len(p.labeled) == 5
    assert [(s.id, s.mask) for s in p.unlabeled] == [(orphan, None)]
    # a labeled list naming the missing mask is still an error naming it
    lst = write_list(tmp_path / "labeled.txt", [cityscapes_pair("train", orphan)])
    with pytest.raises(SplitError, match=rf"{orphan}_gtFine_labelTrainIds.png"):
        _train(compose_cfg, "supervised_cityscapes_1_8", tree.root, tmp_path / "out", f"data.labeled_list={lst}")


def test_mask_values_outside_the_class_set_are_named(compose_cfg, tmp_path):
    tree = write_cityscapes(tmp_path / "cs", {"train": {"jena": 4}, "val": {"lindau": 2}}, seed=5)
    bad = _save_mask_values(tree, "train", tree.splits["train"][1], {19, 40})
    lst = write_list(tmp_path / "labeled.txt", [cityscapes_pair("train", i) for i in tree.splits["train"][:2]])
    with pytest.raises(DataError, match=rf"{bad.name} has label values \[19, 40\]"):
        _train(compose_cfg, "supervised_cityscapes_1_8", tree.root, tmp_path / "out", f"data.labeled_list={lst}")


def test_split_list_naming_missing_files_lists_the_first_few(compose_cfg, city_tree, tmp_path):
    ghosts = [f"ghost_{k:06d}_000019" for k in range(7)]
    lst = write_list(tmp_path / "labeled.txt", [cityscapes_pair("train", g) for g in ghosts])
    with pytest.raises(SplitError) as err:
        _train(compose_cfg, "supervised_cityscapes_1_8", city_tree.root, tmp_path / "out", f"data.labeled_list={lst}")
    msg = str(err.value)
    assert "14 file(s)" in msg and str(lst) in msg  # 7 images + 7 masks
    assert f"{ghosts[0]}_leftImg8bit.png" in msg and msg.count("ghost_") == 5 and msg.endswith("...")


def test_labeled_unlabeled_overlap_is_named(compose_cfg, voc_tree, tmp_path):
    train = voc_tree.splits["train"]
    labeled = write_list(tmp_path / "labeled.txt", [voc_pair(i) for i in train[:3]])
    unlabeled = write_list(tmp_path / "unlabeled.txt", train[2:])  # bare ids (U2PL format), shares train[2]
    with pytest.raises(SplitError, match=rf"share 1 id\(s\): {train[2]}"):
        _train(compose_cfg, "ael_voc_blend_1_8", voc_tree.root, tmp_path / "out",
               f"data.labeled_list={labeled}", f"data.unlabeled_list={unlabeled}", "method.ael.virtual_ranks=1")


def test_folder_without_num_classes_or_remap_is_a_clear_error(compose_cfg, tmp_path):
    tree = write_folder(tmp_path / "mine", num_classes=3, void_value=11)
    base = ["data=folder", "method=supervised", *smoke(tree.root, tmp_path / "out")]
    with pytest.raises(MissingMandatoryValue, match="num_classes"):
        run_task(compose_cfg(base))
    problems, rep = _check_data(compose_cfg, [*base, "data.num_classes=3"], tmp_path / "check")
    assert problems == len(tree.splits["train"]) + len(tree.splits["val"])
    assert all("[11]" in p["problem"] for s in rep["splits"].values() for p in s["problems"])


def test_flat_folder_needs_split_subfolders_or_split_lists(compose_cfg, tmp_path):
    tree = write_folder(tmp_path / "flat", {"train": 5, "val": 2}, num_classes=2, flat=True)
    base = ["data=folder", "method=supervised", *smoke(tree.root, tmp_path / "out"), "data.num_classes=2"]
    with pytest.raises(DataError, match=r"no 'train' folder"):
        run_task(compose_cfg(base))
    # with the three lists nothing needs split folders: pairs, bare stems and image paths all work
    train = tree.splits["train"]
    labeled = write_list(tmp_path / "labeled.txt", [f"images/{i}.jpg masks/{i}.png" for i in train[:2]])
    unlabeled = write_list(tmp_path / "unlabeled.txt", train[2:])
    val = write_list(tmp_path / "val.txt", [f"images/{i}.jpg" for i in tree.splits["val"]])
    cfg = compose_cfg([*base, f"data.labeled_list={labeled}", f"data.unlabeled_list={unlabeled}",
                       f"data.val_list={val}"])
    p = build_datamodule(cfg).resolve_partition()
    assert (_ids(p.labeled), _ids(p.unlabeled), _ids(p.val)) == (sorted(train[:2]), sorted(train[2:]),
                                                                 tree.splits["val"])
    assert all(s.mask is not None and s.mask.is_file() for s in p.labeled + p.val)


# ------------------------------------------------------------------------------------ ELN experiments

ELN_EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("eln_*.yaml")
                         if "synthscapes" not in p.stem)
# eln.md §5: labeled counts of the ELN code's lists (floor(N × split), +1 when % 8 == 1: Cityscapes
# 371/743/1487, VOC 1/20 530, 1/8 1322, 1/4 2645; 1/16, not in the ELN lists: AEL's 662), stage steps = epochs × 266
ELN_REFERENCE = {
    "cityscapes_1_8": 371, "cityscapes_1_4": 743, "cityscapes_1_2": 1487,
    "voc_blend_1_20": 530, "voc_blend_1_16": 662, "voc_blend_1_8": 1322, "voc_blend_1_4": 2645,
}  # fmt: skip


def eln_smoke(root: Path, out: Path, n_labeled: int = 4) -> list[str]:
    """ELN experiments shrunk to CPU seconds: stage 1 = step 0, stage 2 = step 1, stage 3 from step 2."""
    return [*smoke(root, out, n_labeled), "data.crop_size=64", "data.augment.resize=null", "data.val_resize=null",
            "method.eln.encoder=resnet18", "method.eln.encoder_weights=null",
            "method.eln.pretrain_steps=1", "method.eln.eln_steps=1", "trainer.max_steps=3",
            "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "model.projection_dim=16",
            "trainer.precision=32-true"]  # the experiments' 16-mixed is bf16 on a CPU: slow there


def test_eln_experiments_exist_for_every_published_partition():
    assert ELN_EXPERIMENTS == sorted(f"eln_{k}" for k in ELN_REFERENCE)


@pytest.mark.parametrize("name", ELN_EXPERIMENTS)
def test_eln_experiment_has_the_reference_hyper_parameters(compose_cfg, name):
    cfg = compose_cfg([f"+experiment={name}"])
    d, m, o = cfg.data, cfg.model, cfg.method
    city = "cityscapes" in name
    assert (cfg.name, o.name, d.n_labeled) == (name, "eln", ELN_REFERENCE[name.split("_", 1)[1]])
    assert (m.arch, m.encoder, m.encoder_weights, m.output_stride) == (
        "deeplabv3plus_eln", "resnet50" if city else "resnet101", "imagenet", 16)
    assert list(m.atrous_rates) == [6, 12, 18] and m.projection_dim == 128 and m.decoder_channels == 256
    assert (o.optim.name, o.optim.lr, o.optim.backbone_lr_mult, o.optim.weight_decay, o.optim.scheduler) == (
        "adamw", 1e-4, 0.1, 1e-5, "constant")
    e = o.eln
    assert e.network == "reference"
    assert (e.encoder, e.encoder_weights, e.threshold, e.ema_decay, e.temperature, e.n_crops, e.crop_size) == (
        "resnet34", "imagenet", 0.5, 0.995, 0.5, 8, 32)
    # stages in reference "epochs" of 266 steps: VOC 70 / 50, Cityscapes 100 / 58; 500 epochs in all
    assert (e.pretrain_steps, e.eln_steps) == ((100 * 266, 58 * 266) if city else (70 * 266, 50 * 266))
    assert cfg.trainer.max_steps == 500 * 266
    assert list(d.augment.scale_range) == [1.0, 1.0] and d.augment.hflip and d.val_mode == "whole"
    jitter, gray = d.augment.strong
    assert jitter._target_ == "albumentations.ColorJitter" and jitter.p == 1.0
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.4, 0.4, 0.4, 0.1)
    assert gray._target_ == "albumentations.ToGray" and gray.p == 0.2
    if city:
        assert list(d.crop_size) == [512, 1024] and d.augment.resize is None and d.val_resize is None
        assert (d.labeled_batch_size, d.unlabeled_batch_size) == (4, 4)
    else:
        assert d.crop_size == 505 and list(d.augment.resize) == [505, 505] and list(d.val_resize) == [505, 505]
        assert (d.labeled_batch_size, d.unlabeled_batch_size) == (6, 6)
        assert d.voc_mask_dir == "SegmentationClassAug" and d.train_split == "train_aug"


def test_eln_cityscapes_crops_512x1024_and_voc_resizes_to_505(compose_cfg, city_tree, voc_tree, tmp_path):
    """The reference geometries on real trees: non-square crop (Cityscapes), exact resize (VOC)."""
    cfg = compose_cfg(["+experiment=eln_cityscapes_1_4", *smoke(city_tree.root, tmp_path / "c", n_labeled=3),
                       "data.crop_size=[32,64]"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.stream_loader("unlabeled")))
    assert batch["image"].shape == (4, 3, 32, 64) and batch["image_strong"].shape == (4, 3, 32, 64)
    cfg = compose_cfg(["+experiment=eln_voc_blend_1_8", *smoke(voc_tree.root, tmp_path / "v", n_labeled=3),
                       "data.crop_size=40", "data.augment.resize=[40,40]", "data.val_resize=[24,40]"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.stream_loader("labeled")))
    assert batch["image"].shape == (4, 3, 40, 40)
    assert set(torch.unique(batch["mask"]).tolist()) <= set(range(21)) | {255}
    val = dm._datasets["val"][0]
    assert val["image"].shape == (3, 24, 40) and val["mask"].shape == (24, 40)


@pytest.mark.slow
@pytest.mark.parametrize("experiment, fixture", [("eln_cityscapes_1_8", "city_tree")])  # VOC geometry: above
def test_eln_experiment_runs_the_three_stages_on_a_real_tree(compose_cfg, request, tmp_path, experiment, fixture):
    tree: Tree = request.getfixturevalue(fixture)
    out = tmp_path / "train"
    miou = run_task(compose_cfg([f"+experiment={experiment}", *eln_smoke(tree.root, out)]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(miou) and metrics["step"] == 3
    rows = (out / "csv" / "metrics.csv").read_text()
    for term in ("train/eln", "train/pl_weak", "train/con_strong"):  # stage 2 and 3 losses were logged
        assert term in rows, term
    # stage 3: student and teacher validated (val/miou = the evaluated student), best entry at that step
    assert "val/miou_student" in rows and "val/miou_teacher" in rows
    assert metrics["best"]["step"] == 3 and metrics["best"]["evaluated_model"] == "student"
