"""Tests for semiseg_lit.data.datasets: layouts on tiny official trees, the Dataset, scan_samples."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg_lit.data.datasets import (
    CityscapesLayout,
    FolderLayout,
    SegmentationDataset,
    VOCLayout,
    build_remap_lut,
    scan_samples,
)
from semiseg_lit.data.image_io import DataError
from semiseg_lit.data.labels import CITYSCAPES_LABELID_TO_TRAINID, voc_colormap
from semiseg_lit.data.splits import Sample, SplitError, read_split_records

SHARED_SPLITS = Path(__file__).resolve().parents[2].parent / "shared" / "splits"
H, W = 4, 6

# ------------------------------------------------------------------ tiny trees


def _save(path: Path, arr: np.ndarray, palette: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette.ravel().tolist())  # "L" -> "P"
    im.save(path)
    return path


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _train_ids(seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).integers(0, 19, (H, W), dtype=np.uint8)
    m[0, 0] = 255
    return m


CITY_IDS = {"train": ["jena_000078_000019", "aachen_000000_000019", "bad-honnef_000001_000002"],
            "val": ["lindau_000023_000019"]}  # fmt: skip


def make_cityscapes(root: Path, kind: str = "trainIds", splits: dict[str, list[str]] = CITY_IDS) -> Path:
    """Official tree: leftImg8bit/{split}/<city>/<id>_leftImg8bit.png + gtFine/.../<id>_gtFine_<kind>.png."""
    for split, ids in splits.items():
        for k, sid in enumerate(ids):
            city = sid.rsplit("_", 2)[0]
            _save(root / "leftImg8bit" / split / city / f"{sid}_leftImg8bit.png", _image(k))
            gt = root / "gtFine" / split / city
            if kind == "trainIds":
                _save(gt / f"{sid}_gtFine_labelTrainIds.png", _train_ids(k))
            else:  # labelIds: 0..33 with the trainId classes at the ids of §1.1
                label_ids = np.array([7, 8, 26, 33, 0, 1], np.uint8)[np.arange(H * W).reshape(H, W) % 6]
                _save(gt / f"{sid}_gtFine_labelIds.png", label_ids)
            _save(gt / f"{sid}_gtFine_color.png", np.zeros((H, W, 4), np.uint8))
    return root


VOC_IDS = ["2007_000032", "2007_000033", "2008_000001"]


def _voc_indices(k: int) -> np.ndarray:
    m = np.random.default_rng(k).integers(0, 21, (H, W), dtype=np.uint8)
    m[0, :] = 255  # boundary band
    return m


def make_voc(root: Path, palette_gt: bool = True, aug_gt: bool = False) -> Path:
    """VOC2012 folder: JPEGImages, SegmentationClass ('P' PNGs), optional grey SegmentationClassAug."""
    for k, sid in enumerate(VOC_IDS):
        _save(root / "JPEGImages" / f"{sid}.jpg", _image(k))
        if palette_gt:
            _save(root / "SegmentationClass" / f"{sid}.png", _voc_indices(k), palette=voc_colormap())
    if aug_gt:
        for k, sid in enumerate(VOC_IDS + ["2011_003276"]):
            _save(root / "SegmentationClassAug" / f"{sid}.png", _voc_indices(k))
        _save(root / "JPEGImages" / "2011_003276.jpg", _image(9))
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("\n".join(VOC_IDS[:2]) + "\n")
    (sets / "val.txt").write_text(VOC_IDS[2] + "\n")
    return root


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


# ------------------------------------------------------------------ Cityscapes


def test_cityscapes_samples_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    samples = CityscapesLayout(root).samples("train")
    assert [s.id for s in samples] == sorted(CITY_IDS["train"])
    s = next(s for s in samples if s.id == "jena_000078_000019")
    assert s.image == root / "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png"
    assert s.mask == root / "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png"
    assert s.lut is None
    out = SegmentationDataset(samples, 19)[samples.index(s)]
    np.testing.assert_array_equal(out["mask"], _train_ids(0))
    np.testing.assert_array_equal(out["image"], _image(0))


def test_cityscapes_label_ids_only_uses_lut(tmp_path):
    root = make_cityscapes(tmp_path / "cs", kind="labelIds")
    samples = CityscapesLayout(root).samples("val")
    assert samples[0].mask.name == "lindau_000023_000019_gtFine_labelIds.png"
    assert samples[0].lut is CITYSCAPES_LABELID_TO_TRAINID
    mask = SegmentationDataset(samples, 19)[0]["mask"]
    # labelIds 7, 8, 26, 33, 0, 1 -> trainIds 0, 1, 13, 18, 255, 255 (§1.1 table)
    np.testing.assert_array_equal(mask[0], [0, 1, 13, 18, 255, 255])


def test_cityscapes_missing_masks_and_wrong_root(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    (root / "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png").unlink()
    layout = CityscapesLayout(root)
    with pytest.raises(DataError, match=r"1 image\(s\) .* no .*mask.*jena_000078_000019_leftImg8bit\.png"):
        layout.samples("train")
    lenient = layout.samples("train", require_masks=False)
    assert [s.mask is None for s in lenient] == [False, False, True]
    with pytest.raises(DataError, match=r"no 'leftImg8bit/test' folder"):
        layout.samples("test")
    with pytest.raises(DataError, match=r"no 'leftImg8bit/train' folder"):
        CityscapesLayout(root / "leftImg8bit").samples("train")
    (root / "gtFine/val/lindau/lindau_000023_000019_gtFine_labelTrainIds.png").unlink()
    (root / "gtFine/val/lindau/lindau_000023_000019_gtFine_color.png").unlink()
    (root / "gtFine/val/lindau").rmdir()
    (root / "gtFine/val").rmdir()
    with pytest.raises(DataError, match=r"no 'gtFine/val' folder"):
        layout.samples("val")
    with pytest.raises(DataError, match="is not a folder"):
        CityscapesLayout(tmp_path / "nowhere")


def test_cityscapes_split_file_formats(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    layout = CityscapesLayout(root)
    unimatch = _write(
        tmp_path / "unimatch.txt",
        "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png "
        "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png\n"
        "leftImg8bit/val/lindau/lindau_000023_000019_leftImg8bit.png "
        "gtFine/val/lindau/lindau_000023_000019_gtFine_labelTrainIds.png",
    )
    u2pl = _write(
        tmp_path / "u2pl.txt",
        "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png\n"
        "leftImg8bit/val/lindau/lindau_000023_000019_leftImg8bit.png\n",
    )
    cps = _write(
        tmp_path / "cps.txt",
        "/images/train/jena_000078_000019.png\t/segmentation/train/jena_000078_000019_gtFine.png\r\n"
        "/images/val/lindau_000023_000019.png\t/segmentation/val/lindau_000023_000019_gtFine.png\r\n",
    )
    stems = _write(tmp_path / "stems.txt", "jena/jena_000078_000019\r\nlindau_000023_000019")
    expected = [
        ("jena_000078_000019", "train/jena/jena_000078_000019"),
        ("lindau_000023_000019", "val/lindau/lindau_000023_000019"),
    ]
    for lst in (unimatch, u2pl, cps, stems):
        samples = layout.from_split_file(lst)
        assert [s.id for s in samples] == [e[0] for e in expected], lst.name
        for s, (_, stem) in zip(samples, expected):
            assert s.image == root / "leftImg8bit" / f"{stem}_leftImg8bit.png"
            assert s.mask == root / "gtFine" / f"{stem}_gtFine_labelTrainIds.png"
            assert s.lut is None


def test_cityscapes_split_file_falls_back_to_label_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs", kind="labelIds")
    lst = _write(
        tmp_path / "l.txt",
        "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png "
        "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png\n",
    )
    (s,) = CityscapesLayout(root).from_split_file(lst)
    assert s.mask.name == "jena_000078_000019_gtFine_labelIds.png" and s.lut is CITYSCAPES_LABELID_TO_TRAINID
    (s,) = CityscapesLayout(root).from_split_file(_write(tmp_path / "b.txt", "jena_000078_000019\n"))
    assert s.mask.name.endswith("_labelIds.png") and s.lut is CITYSCAPES_LABELID_TO_TRAINID


def test_cityscapes_split_file_errors(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    layout = CityscapesLayout(root)
    with pytest.raises(SplitError, match=r"bad\.txt: cannot read a Cityscapes id .*'foo\.png'"):
        layout.from_split_file(_write(tmp_path / "bad.txt", "foo.png\n"))
    with pytest.raises(
        SplitError, match=r"2 file\(s\) named by split list .*miss\.txt.*ulm_000001_000002_leftImg8bit"
    ):
        layout.from_split_file(_write(tmp_path / "miss.txt", "jena_000078_000019\nulm_000001_000002\n"))
    cps_extra = "/images/train_extra/heilbronn_000000_000465.png\t/segmentation/train_extra/x_gtCoarse.png\n"
    with pytest.raises(DataError, match=r"no 'leftImg8bit/train_extra' folder"):
        layout.from_split_file(_write(tmp_path / "extra.txt", cps_extra))


# ------------------------------------------------------------------ VOC


def test_voc_palette_masks_read_as_indices(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    layout = VOCLayout(root)
    assert layout.mask_dir == "SegmentationClass"
    samples = layout.samples("train")
    assert [s.id for s in samples] == VOC_IDS[:2]
    assert samples[0].image == root / "JPEGImages/2007_000032.jpg"
    assert Image.open(samples[0].mask).mode == "P"
    mask = SegmentationDataset(samples, 21)[0]["mask"]
    np.testing.assert_array_equal(mask, _voc_indices(0))  # raw indices 0..20 and 255, not luminance
    assert set(np.unique(mask).tolist()) <= set(range(21)) | {255}


def test_voc_aug_auto_and_unimatch_pairs(tmp_path):
    root = make_voc(tmp_path / "VOC2012", aug_gt=True)
    layout = VOCLayout(root)
    assert layout.mask_dir == "SegmentationClassAug"
    # UniMatch names SegmentationClass/<id>.png; for the SBD id 2011_003276 only the Aug mask exists
    lst = _write(
        tmp_path / "l.txt",
        "JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n"
        "JPEGImages/2011_003276.jpg SegmentationClass/2011_003276.png",
    )
    a, b = layout.from_split_file(lst)
    assert (a.id, a.mask) == ("2007_000032", root / "SegmentationClass/2007_000032.png")
    assert (b.id, b.mask) == ("2011_003276", root / "SegmentationClassAug/2011_003276.png")
    grey = SegmentationDataset([b], 21)[0]["mask"]
    np.testing.assert_array_equal(grey, _voc_indices(3))
    # bare ids (U2PL / CPS), CRLF, no final newline -> the chosen mask_dir
    bare = layout.from_split_file(_write(tmp_path / "b.txt", "2007_000033\r\n2011_003276"))
    assert [s.mask for s in bare] == [root / "SegmentationClassAug/2007_000033.png",
                                      root / "SegmentationClassAug/2011_003276.png"]  # fmt: skip
    explicit = VOCLayout(root, mask_dir="SegmentationClass").from_split_file(
        _write(tmp_path / "c.txt", "2007_000033")
    )
    assert explicit[0].mask == root / "SegmentationClass/2007_000033.png"
    with pytest.raises(SplitError, match=r"1 file\(s\).*SegmentationClass/2011_003276\.png"):
        VOCLayout(root, mask_dir="SegmentationClass").from_split_file(tmp_path / "b.txt")
    unlabeled = VOCLayout(root, mask_dir=None).from_split_file(lst)
    assert all(s.mask is None for s in unlabeled)


def test_voc_errors(tmp_path):
    root = make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(DataError, match=r"no 'JPEGImages' folder.*did you mean .*VOCdevkit/VOC2012"):
        VOCLayout(tmp_path)
    with pytest.raises(DataError, match=r"no 'SegmentationClassAug' folder"):
        VOCLayout(root, mask_dir="SegmentationClassAug")
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/trainval\.txt"):
        VOCLayout(root).samples("trainval")
    (root / "SegmentationClass/2007_000033.png").unlink()
    with pytest.raises(SplitError, match=r"train\.txt.*2007_000033\.png"):
        VOCLayout(root).samples("train")
    bare = make_voc(tmp_path / "bare", palette_gt=False)
    with pytest.raises(DataError, match="neither 'SegmentationClassAug' nor 'SegmentationClass'"):
        VOCLayout(bare)


# ------------------------------------------------------------------ folders


def _make_folder(root: Path, stems=("a", "b", "sub/c"), masks=True) -> Path:
    for k, stem in enumerate(stems):
        _save(root / "images" / f"{stem}.jpg", _image(k))
        if masks:
            _save(root / "masks" / f"{stem}.png", _train_ids(k))
    return root


def test_folder_layout_pairs_by_stem(tmp_path):
    root = _make_folder(tmp_path)
    layout = FolderLayout(root / "images", root / "masks", image_suffix=".jpg|.png")
    samples = layout.samples()
    assert [s.id for s in samples] == ["a", "b", "sub/c"]
    assert samples[2].mask == root / "masks/sub/c.png"
    assert [s.mask for s in FolderLayout(root / "images").samples()] == [None, None, None]
    (root / "masks/b.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) .* no mask.*b\.jpg"):
        layout.samples()
    _save(root / "images/a.png", _image(0))
    with pytest.raises(DataError, match=r"occur with two suffixes: .*a\.jpg / .*a\.png"):
        FolderLayout(root / "images", image_suffix=[".jpg", "png"]).samples()
    with pytest.raises(DataError, match=r"mask_dir .*nope is not a folder"):
        FolderLayout(root / "images", root / "nope")
    with pytest.raises(DataError, match=r"no images with suffix \.bmp"):
        FolderLayout(root / "images", image_suffix=".bmp").samples()


def test_folder_layout_split_subfolders_and_lists(tmp_path):
    root = _make_folder(tmp_path, stems=("train/x", "train/y", "val/z"))
    layout = FolderLayout(root / "images", root / "masks", image_suffix=".jpg")
    assert [(s.id, s.mask) for s in layout.samples("train")] == [("x", root / "masks/train/x.png"),
                                                                 ("y", root / "masks/train/y.png")]  # fmt: skip
    with pytest.raises(DataError, match=r"no 'test' folder"):
        layout.samples("test")
    pairs = _write(tmp_path / "pairs.txt", "images/train/x.jpg masks/train/x.png\n")
    stems = _write(tmp_path / "stems.txt", "train/y\r\nimages/val/z.jpg\r\n")
    assert [(s.id, s.image, s.mask) for s in layout.from_split_file(pairs)] == [
        ("train/x", root / "images/train/x.jpg", root / "masks/train/x.png")
    ]
    assert [(s.id, s.image, s.mask) for s in layout.from_split_file(stems)] == [
        ("train/y", root / "images/train/y.jpg", root / "masks/train/y.png"),
        ("val/z", root / "images/val/z.jpg", root / "masks/val/z.png"),
    ]
    with pytest.raises(SplitError, match=r"missing\.txt.*nope\.jpg"):
        layout.from_split_file(_write(tmp_path / "missing.txt", "nope\n"))


# ------------------------------------------------------------------ SegmentationDataset


class _RecordingTransform:
    """Picklable stand-in for an albumentations-style transform."""

    def __call__(self, image, mask=None, seed=None):
        out = {"image": torch.from_numpy(image).permute(2, 0, 1).float(), "seed": seed}
        if mask is not None:
            out["mask"] = torch.from_numpy(mask).long()
        return out


def _samples_on_disk(tmp_path: Path, masks: list[np.ndarray]) -> list[Sample]:
    out = []
    for k, m in enumerate(masks):
        img = _save(tmp_path / f"i{k}.png", np.zeros((*m.shape, 3), np.uint8) + k)
        out.append(Sample(f"s{k}", img, _save(tmp_path / f"m{k}.png", m)))
    return out


def test_dataset_items_transform_seed_and_index(tmp_path):
    samples = _samples_on_disk(tmp_path, [np.zeros((H, W), np.uint8), np.ones((H, W), np.uint8)])
    ds = SegmentationDataset(samples, 3)
    assert len(ds) == 2
    item = ds[1]
    assert set(item) == {"image", "mask", "index"} and item["index"] == 1
    assert item["image"].shape == (H, W, 3) and item["image"][0, 0, 0] == 1 and item["mask"].max() == 1
    tds = SegmentationDataset(samples, 3, transform=_RecordingTransform())
    assert tds[0]["seed"] is None and tds.get(0, seed=123)["seed"] == 123
    assert tds[0]["mask"].dtype == torch.int64
    no_mask = SegmentationDataset(samples, 3, load_mask=False)[0]
    assert set(no_mask) == {"image", "index"}
    unlabeled = SegmentationDataset([Sample("u", samples[0].image, None)], 3, transform=_RecordingTransform())
    assert "mask" not in unlabeled[0]


def test_dataset_label_remap_hand_example(tmp_path):
    mask = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    (s,) = _samples_on_disk(tmp_path, [mask])
    # remap {3: 255, 2: 0}: 0->0, 1->1, 2->0, 3->255, 255->255
    out = SegmentationDataset([s], 2, label_remap={3: 255, 2: 0})[0]["mask"]
    np.testing.assert_array_equal(out, [[0, 1, 0], [255, 255, 1]])
    lut = build_remap_lut({"7": "1"})
    assert lut[7] == 1 and lut[6] == 6 and build_remap_lut(None) is None
    with pytest.raises(DataError, match="outside 0..255"):
        build_remap_lut({1: 300})
    with pytest.raises(DataError, match="not an integer pair"):
        build_remap_lut({"a": 1})


def test_dataset_checks_values_and_sizes(tmp_path):
    (bad,) = _samples_on_disk(tmp_path, [np.array([[0, 19, 33]], np.uint8)])
    with pytest.raises(DataError, match=r"m0\.png has label values \[19, 33\]"):
        SegmentationDataset([bad], 19)[0]
    assert SegmentationDataset([bad], 19, check_values=False)[0]["mask"].max() == 33
    small = _save(tmp_path / "small.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"i0\.png is 3x1 .*small\.png is 2x2"):
        SegmentationDataset([Sample("x", bad.image, small)], 19)[0]
    with pytest.raises(DataError, match="num_classes=0"):
        SegmentationDataset([bad], 0)


def test_dataset_is_picklable_and_collates(tmp_path):
    samples = _samples_on_disk(tmp_path, [np.zeros((H, W), np.uint8)] * 3)
    ds = SegmentationDataset(samples, 2, transform=_RecordingTransform(), label_remap={1: 0})
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[2]["image"], ds[2]["image"])
    batch = next(iter(torch.utils.data.DataLoader(SegmentationDataset(samples, 2), batch_size=3)))
    assert batch["image"].shape == (3, H, W, 3) and batch["index"].tolist() == [0, 1, 2]


# ------------------------------------------------------------------ scan_samples


def test_scan_samples_collects_problems_and_histogram(tmp_path):
    good = np.array([[0, 0, 1], [255, 2, 2]], np.uint8)
    bad_values = np.array([[0, 7, 7], [1, 1, 1]], np.uint8)
    good_s, bad_s = _samples_on_disk(tmp_path, [good, bad_values])
    trunc = _save(
        tmp_path / "big.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    )
    trunc.write_bytes(trunc.read_bytes()[:200])
    small = _save(tmp_path / "small.png", np.zeros((1, 1), np.uint8))
    samples = [
        good_s,
        bad_s,
        Sample("trunc", trunc, None),
        Sample("size", good_s.image, small),
        Sample("nomask", good_s.image, tmp_path / "gone.png"),
        Sample("unlabeled", good_s.image, None),
    ]
    rep = scan_samples(samples, num_classes=3)
    # histogram over the 3 readable masks (good, bad_values, small 1x1 zero):
    #   class 0: 2 + 1 + 1 = 4; class 1: 1 + 3 = 4; class 2: 2; ignore (255): 1; invalid (7): 2
    assert rep.histogram.tolist() == [4, 4, 2] and rep.histogram.dtype == np.int64
    assert (rep.ignore_pixels, rep.invalid_pixels) == (1, 2)
    assert (rep.n_samples, rep.n_images, rep.n_masks) == (6, 5, 3)
    files = [Path(f).name for f, _ in rep.problems]
    assert files == ["m1.png", "big.png", "small.png", "gone.png"]
    assert (
        "[7]" in rep.problems[0][1] and "truncated" in rep.problems[1][1] and "2x1" not in rep.problems[2][1]
    )
    assert not rep.ok
    # header-only mode sees the truncation too: the PNG lacks its IEND end marker (image_io.image_size)
    fast = scan_samples(samples, num_classes=3, decode_images=False)
    assert [Path(f).name for f, _ in fast.problems] == ["m1.png", "big.png", "small.png", "gone.png"]
    assert scan_samples([good_s], 3).ok
    remapped = scan_samples([bad_s], 3, label_remap={7: 255})
    assert remapped.ok and remapped.ignore_pixels == 2


# ------------------------------------------------------------------ the published lists on a tree of empty files


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _shared(rel: str) -> Path:
    if not SHARED_SPLITS.is_dir():
        pytest.skip("../shared/splits not found (only present in the development checkout)")
    p = SHARED_SPLITS / rel
    if not p.is_file():
        pytest.skip(f"{rel} not in ../shared/splits")
    return p


def test_published_cityscapes_1_16_lists_resolve_to_the_same_ids(tmp_path):
    unimatch = _shared("unimatch/cityscapes/1_16/labeled.txt")
    cps = _shared("torchsemiseg_cps/city/config_new/subset_train/train_aug_labeled_1-16.txt")
    u2pl = _shared("u2pl/cityscapes/186/labeled.txt")
    for rel in {p for r in read_split_records(unimatch) + read_split_records(u2pl) for p in r[:1]}:
        _touch(tmp_path / rel)
        sid = Path(rel).name.replace("_leftImg8bit.png", "")
        _touch(tmp_path / rel.replace("leftImg8bit/", "gtFine/", 1).replace(Path(rel).name,
                                                                            f"{sid}_gtFine_labelTrainIds.png"))  # fmt: skip
    layout = CityscapesLayout(tmp_path)
    a, b = layout.from_split_file(unimatch), layout.from_split_file(cps)
    assert len(a) == 186 and [s.id for s in a] == [s.id for s in b]  # §2.4: same ids, same order
    assert [s.mask for s in a] == [s.mask for s in b]
    c = layout.from_split_file(u2pl)
    assert len(c) == 186 and len({s.id for s in a} & {s.id for s in c}) == 8  # §2.4: overlap 8/186


def test_published_pascal_92_unimatch_equals_u2pl(tmp_path):
    unimatch = _shared("unimatch/pascal/92/labeled.txt")
    u2pl = _shared("u2pl/pascal/92/labeled.txt")
    for (sid,) in read_split_records(u2pl):
        _touch(tmp_path / "JPEGImages" / f"{sid}.jpg")
        _touch(tmp_path / "SegmentationClassAug" / f"{sid}.png")
    layout = VOCLayout(tmp_path)
    a, b = layout.from_split_file(unimatch), layout.from_split_file(u2pl)
    assert len(a) == 92 and [(s.id, s.mask) for s in a] == [(s.id, s.mask) for s in b]
