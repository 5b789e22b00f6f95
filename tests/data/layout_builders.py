"""Writers of tiny dataset trees in the exact official on-disk layouts (specs/data.md §1), for tests.

Every writer returns a :class:`Tree`: the root, the sample ids of each split and the class-index
mask each sample is expected to read as (after the labelIds -> trainIds table, the palette, or a
label remap), so tests can compare what the library reads with what was written.

* :func:`write_cityscapes` — ``leftImg8bit/{split}/<city>/<city>_<seq6>_<frame6>_leftImg8bit.png`` and
  ``gtFine/{split}/<city>/..._gtFine_{labelIds,labelTrainIds,color,instanceIds}.png`` + ``_polygons.json``
  (§1.1). ``masks="trainIds"`` is the tree after cityscapesScripts' ``csCreateTrainIdLabelImgs``;
  ``masks="labelIds"`` is the official download (no labelTrainIds files).
* :func:`write_voc` — ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass (palette 'P', 255 borders),
  SegmentationClassAug (grey 'L'), ImageSets/Segmentation/{train,val,trainval,train_aug}.txt}`` (§1.2).
* :func:`write_folder` — ``images/{split}/<stem>.jpg`` + ``masks/{split}/<stem>.png`` (a plain folder dataset).
* :func:`write_list` / :func:`cityscapes_pair` / :func:`voc_pair` — UniMatch-format split lists (§2.2-2.3).
* :func:`write_images` — images only, no mask anywhere (unlabeled folders, Cityscapes ``train_extra``);
  :func:`write_macos_junk` — hidden files a copy from macOS leaves (``._<name>.jpg``, ``.DS_Store``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg_lit.data.labels import CITYSCAPES, VOC, voc_colormap

__all__ = [
    "Tree",
    "CITYSCAPES_TRAINID_TO_LABELID",
    "CITYSCAPES_VOID_LABELIDS",
    "street_train_ids",
    "train_ids_to_label_ids",
    "write_cityscapes",
    "cityscapes_pair",
    "voc_ids",
    "object_mask",
    "write_voc",
    "voc_pair",
    "write_folder",
    "write_list",
    "label_image",
    "truncate_file",
    "write_images",
    "write_cityscapes_images",
    "write_macos_junk",
]

# trainId k <-> labelId CITYSCAPES_TRAINID_TO_LABELID[k] (cityscapesScripts labels.py, data.md §1.1 table)
CITYSCAPES_TRAINID_TO_LABELID = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33],
                                         np.uint8)
# labelIds whose trainId is 255 (void / ignoreInEval), e.g. 1 = ego vehicle, 9 = parking
CITYSCAPES_VOID_LABELIDS = np.array([0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30], np.uint8)
# Cityscapes "instance" classes: instanceIds holds id*1000+k for them (person .. bicycle)
_INSTANCE_LABELIDS = (24, 25, 26, 27, 28, 31, 32, 33)


@dataclass
class Tree:
    """A generated dataset tree: ``splits[name]`` = sorted sample ids, ``labels[id]`` = expected mask."""

    root: Path
    splits: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def histogram(self, ids: Iterable[str], num_classes: int) -> tuple[np.ndarray, int]:
        """(pixels per class ``int64[C]``, ignore (255) pixels) summed over the masks of ``ids``."""
        hist = np.zeros(256, np.int64)
        for i in ids:
            hist += np.bincount(self.labels[i].ravel(), minlength=256)
        return hist[:num_classes], int(hist[255])


# ------------------------------------------------------------------------------------ file helpers


def _save(path: Path, array: np.ndarray, palette: np.ndarray | None = None, **kwargs) -> Path:
    """Write ``array`` with PIL (mode from the dtype/shape; 'P' when a palette is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
    im.save(path, **kwargs)
    return path


def write_list(path: Path, lines: Sequence[str], final_newline: bool = False, crlf: bool = False) -> Path:
    """A split list, one record per line; UniMatch's files mostly lack the final newline (§2.2)."""
    sep = "\r\n" if crlf else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((sep.join(lines) + (sep if final_newline else "")).encode())
    return path


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (a corrupt / partly downloaded image)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def label_image(labels: np.ndarray, palette: Sequence[Sequence[int]], rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image whose colour follows the class map (palette colour + noise; 255 -> grey)."""
    lut = np.full((256, 3), 128, np.int16)
    lut[: len(palette)] = np.asarray(palette, np.int16)
    noise = rng.integers(-40, 41, (*labels.shape, 3), dtype=np.int16)
    return np.clip(lut[labels] + noise, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ Cityscapes


def street_train_ids(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A street-like trainId map (uint8 H×W, vectorised): sky / building / vegetation bands above a road
    with sidewalks, a car, a person, a pole, and a 255 ego-vehicle band at the bottom."""
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    horizon = int(height * rng.uniform(0.35, 0.5))
    skyline = int(height * rng.uniform(0.12, 0.25))
    m = np.full((height, width), 0, np.uint8)  # road
    m[rows[:, 0] < horizon] = 2  # building
    m[(rows < skyline) & np.ones_like(cols, bool)] = 10  # sky
    tree_lo = int(rng.integers(0, width // 2))
    m[(rows >= skyline) & (rows < horizon) & (cols >= tree_lo) & (cols < tree_lo + width // 6)] = 8  # vegetation
    side = (rows >= horizon) & ((cols < (rows - horizon) // 2) | (cols >= width - (rows - horizon) // 2))
    m[side] = 1  # sidewalk
    car_x = int(rng.integers(width // 4, width // 2))
    m[(rows >= horizon + 4) & (rows < horizon + 12) & (cols >= car_x) & (cols < car_x + 16)] = 13  # car
    px = int(rng.integers(width // 2, width - 8))
    m[(rows >= horizon - 6) & (rows < horizon + 6) & (cols >= px) & (cols < px + 3)] = 11  # person
    m[(rows >= skyline) & (rows < horizon + 8) & (cols == width - 6)] = 5  # pole
    m[rows[:, 0] >= height - 3] = 255  # ego vehicle (void)
    return m


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Invert the labelIds -> trainIds table: class k -> its labelId, 255 -> a void labelId
    (ego vehicle = 1 on the bottom rows, others cycling through the void ids by column)."""
    lut = np.zeros(256, np.uint8)
    lut[: len(CITYSCAPES_TRAINID_TO_LABELID)] = CITYSCAPES_TRAINID_TO_LABELID
    out = lut[train_ids]
    void = train_ids == 255
    cols = np.broadcast_to(np.arange(train_ids.shape[1])[None, :], train_ids.shape)
    out[void] = CITYSCAPES_VOID_LABELIDS[cols[void] % len(CITYSCAPES_VOID_LABELIDS)]
    out[void & (np.arange(train_ids.shape[0])[:, None] >= train_ids.shape[0] - 3)] = 1  # ego vehicle
    return out


def _instance_ids(label_ids: np.ndarray) -> np.ndarray:
    """16-bit instanceIds: the labelId, or labelId*1000 + 0 for the instance classes (one instance each)."""
    inst = label_ids.astype(np.uint16)
    things = np.isin(label_ids, _INSTANCE_LABELIDS)
    inst[things] = inst[things] * 1000
    return inst


def cityscapes_pair(split: str, sample_id: str, mask: str = "labelTrainIds") -> str:
    """UniMatch line: ``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png gtFine/<split>/<city>/<id>_gtFine_<mask>.png``."""
    city = sample_id.rsplit("_", 2)[0]
    return (f"leftImg8bit/{split}/{city}/{sample_id}_leftImg8bit.png "
            f"gtFine/{split}/{city}/{sample_id}_gtFine_{mask}.png")


def write_cityscapes(root: Path, cities: Mapping[str, Mapping[str, int]] | None = None,
                     size: tuple[int, int] = (64, 128), masks: str = "trainIds", seed: int = 0) -> Tree:
    """Write the official Cityscapes tree (data.md §1.1) under ``root``.

    Args:
        cities: ``{split: {city: n_images}}``; default 3 train cities × 4 and 2 val cities (6 images).
        size: (H, W) of every image (the real ones are 1024×2048).
        masks: "trainIds" (labelIds + labelTrainIds, as after csCreateTrainIdLabelImgs) or
            "labelIds" (the official download only).
    Every mask also gets ``_gtFine_color.png`` (RGBA), ``_gtFine_instanceIds.png`` (16-bit) and
    ``_gtFine_polygons.json``, which the loaders must ignore.
    """
    if masks not in ("trainIds", "labelIds"):
        raise ValueError(f"masks={masks!r}: expected 'trainIds' or 'labelIds'")
    cities = cities or {"train": {"aachen": 4, "jena": 4, "zurich": 4}, "val": {"frankfurt": 4, "lindau": 2}}
    rng = np.random.default_rng(seed)
    tree = Tree(root=Path(root))
    colors = np.zeros((256, 4), np.uint8)
    colors[: CITYSCAPES.num_classes, :3] = np.asarray(CITYSCAPES.palette, np.uint8)
    colors[: CITYSCAPES.num_classes, 3] = 255
    for split, per_city in cities.items():
        ids: list[str] = []
        for c, (city, n) in enumerate(sorted(per_city.items())):
            for k in range(n):
                sid = f"{city}_{c:06d}_{19 + k:06d}"
                train_ids = street_train_ids(*size, rng)
                label_ids = train_ids_to_label_ids(train_ids)
                _save(root / "leftImg8bit" / split / city / f"{sid}_leftImg8bit.png",
                      label_image(train_ids, CITYSCAPES.palette, rng))
                gt = root / "gtFine" / split / city
                _save(gt / f"{sid}_gtFine_labelIds.png", label_ids)
                if masks == "trainIds":
                    _save(gt / f"{sid}_gtFine_labelTrainIds.png", train_ids)
                _save(gt / f"{sid}_gtFine_color.png", colors[train_ids])
                _save(gt / f"{sid}_gtFine_instanceIds.png", _instance_ids(label_ids))
                (gt / f"{sid}_gtFine_polygons.json").write_text(
                    json.dumps({"imgHeight": size[0], "imgWidth": size[1], "objects": []}))
                tree.labels[sid] = train_ids
                ids.append(sid)
        tree.splits[split] = sorted(ids)
    return tree


# ------------------------------------------------------------------------------------ PASCAL VOC


def voc_ids(year: int, n: int, start: int = 1) -> list[str]:
    """VOC-style ids ``<year>_<6 digits>``."""
    return [f"{year}_{start + k:06d}" for k in range(n)]


def _window_min_max(labels: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of ``labels`` over each (2r+1)² window (edge-padded), via shifted views."""
    h, w = labels.shape
    pad = np.pad(labels, r, mode="edge")
    stack = np.stack([pad[dy:dy + h, dx:dx + w] for dy in range(2 * r + 1) for dx in range(2 * r + 1)])
    return stack.min(0), stack.max(0)


def object_mask(height: int, width: int, rng: np.random.Generator, n_objects: int = 2,
                border: int = 1, difficult: bool = False) -> np.ndarray:
    """A VOC-like class map: background 0 and ``n_objects`` ellipses of classes 1..20.

    ``border`` > 0 sets every pixel within ``border`` px of a class change to 255 (the void band of
    SegmentationClass; SBD masks have none); ``difficult`` makes the last object all 255 ("difficult").
    """
    yy, xx = np.mgrid[:height, :width]
    m = np.zeros((height, width), np.uint8)
    last = np.zeros((height, width), bool)
    for _ in range(n_objects):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        m[inside] = int(rng.integers(1, 21))
        last = inside
    if border:
        lo, hi = _window_min_max(m, border)
        m[lo != hi] = 255
    if difficult:
        m[last] = 255
    return m


def voc_pair(sample_id: str, mask_dir: str = "SegmentationClass") -> str:
    """UniMatch line: ``JPEGImages/<id>.jpg SegmentationClass/<id>.png``."""
    return f"JPEGImages/{sample_id}.jpg {mask_dir}/{sample_id}.png"


_VOC_SIZES = ((48, 64), (64, 48), (56, 72), (64, 64))


def write_voc(base: Path, n_train: int = 8, n_val: int = 4, n_sbd: int = 8, n_detection_only: int = 2,
              aug: bool = True, seed: int = 0) -> Tree:
    """Write ``<base>/VOCdevkit/VOC2012`` (data.md §1.2); ``Tree.root`` is the VOC2012 folder.

    * ``JPEGImages/<id>.jpg`` for train, val, SBD and ``n_detection_only`` ids that no list names;
    * ``SegmentationClass/<id>.png``: palette 'P' PNGs (standard colormap, 255 = void on object
      borders and one "difficult" object) for train + val;
    * ``SegmentationClassAug/<id>.png`` (when ``aug``): grey 'L' PNGs for train + val + SBD — VOC ids
      keep their 255 borders, SBD ids have none;
    * ``ImageSets/Segmentation/{train,val,trainval}.txt`` (bare ids, final newline) and, when
      ``aug``, ``train_aug.txt`` = train ∪ SBD.
    ``Tree.splits`` has train, val, sbd and train_aug.
    """
    root = Path(base) / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    tree = Tree(root=root)
    palette = voc_colormap(256)
    palette[255] = (224, 224, 192)  # void colour
    train, val = voc_ids(2007, n_train), voc_ids(2008, n_val)
    sbd = voc_ids(2009, n_sbd)
    extra = voc_ids(2010, n_detection_only)
    for k, sid in enumerate(train + val + sbd + extra):
        h, w = _VOC_SIZES[k % len(_VOC_SIZES)]
        is_voc = sid in train or sid in val
        labels = object_mask(h, w, rng, n_objects=1 + k % 2, border=1 if is_voc else 0,
                             difficult=is_voc and k % 4 == 1)
        _save(root / "JPEGImages" / f"{sid}.jpg", label_image(labels, VOC.palette, rng), quality=95)
        if sid in extra:
            continue
        if is_voc:
            _save(root / "SegmentationClass" / f"{sid}.png", labels, palette=palette)
        if aug:
            _save(root / "SegmentationClassAug" / f"{sid}.png", labels)
        tree.labels[sid] = labels
    sets = root / "ImageSets" / "Segmentation"
    write_list(sets / "train.txt", train, final_newline=True)
    write_list(sets / "val.txt", val, final_newline=True)
    write_list(sets / "trainval.txt", sorted(train + val), final_newline=True)
    tree.splits.update(train=sorted(train), val=sorted(val), sbd=sorted(sbd))
    if aug:
        write_list(sets / "train_aug.txt", sorted(train + sbd), final_newline=True)
        tree.splits["train_aug"] = sorted(train + sbd)
    return tree


# ------------------------------------------------------------------------------------ plain folder


def write_folder(root: Path, counts: Mapping[str, int] | None = None, num_classes: int = 3,
                 size: tuple[int, int] = (48, 64), void_value: int | None = None, flat: bool = False,
                 seed: int = 0) -> Tree:
    """``<root>/images/<split>/<stem>.jpg`` + ``<root>/masks/<split>/<stem>.png`` ('L' index PNGs).

    Masks hold horizontal bands of classes 0..num_classes-1; with ``void_value`` a 4-px corner square
    holds that raw value, expected to read as 255 (``label_remap: {void_value: 255}``). The last image of
    each split sits in a sub-folder (``images/<split>/more/<stem>.jpg``). ``flat`` drops the split
    folders (``images/<stem>.jpg``; stems start with the split name, so they stay unique).
    """
    counts = counts or {"train": 8, "val": 3}
    rng = np.random.default_rng(seed)
    tree = Tree(root=Path(root))
    palette = voc_colormap(max(num_classes, 1))
    for split, n in counts.items():
        ids = []
        for k in range(n):
            stem = f"more/{split}_{k:03d}" if k == n - 1 else f"{split}_{k:03d}"
            rows = np.arange(size[0])[:, None] * num_classes // size[0]
            shift = int(rng.integers(0, num_classes))
            labels = np.broadcast_to((rows + shift) % num_classes, size).astype(np.uint8).copy()
            raw = labels.copy()
            if void_value is not None:
                raw[:4, :4] = void_value
                labels[:4, :4] = 255
            sub = "" if flat else split
            _save(root / "images" / sub / f"{stem}.jpg", label_image(labels, palette, rng), quality=95)
            _save(root / "masks" / sub / f"{stem}.png", raw)
            tree.labels[stem] = labels
            ids.append(stem)
        tree.splits[split] = sorted(ids)
    return tree


# ------------------------------------------------------------------------------------ images only


def write_images(folder: Path, rel_stems: Sequence[str], size: tuple[int, int] = (48, 64), suffix: str = ".jpg",
                 seed: int = 0) -> list[Path]:
    """``<folder>/<rel_stem><suffix>`` RGB images (sub-folders allowed) and no mask anywhere; returns the paths."""
    rng = np.random.default_rng(seed)
    out = []
    for stem in rel_stems:
        labels = (np.arange(size[0])[:, None] * 3 // size[0] + np.zeros(size, int)).astype(np.uint8)
        out.append(_save(Path(folder) / f"{stem}{suffix}", label_image(labels, voc_colormap(3), rng), quality=95))
    return out


def write_cityscapes_images(root: Path, split: str, per_city: Mapping[str, int], size: tuple[int, int] = (64, 128),
                            seed: int = 0) -> list[str]:
    """``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` with no gtFine at all (like ``train_extra``,
    whose only labels are coarse); returns the sorted ids."""
    ids = [f"{city}_{c:06d}_{k:06d}" for c, (city, n) in enumerate(sorted(per_city.items())) for k in range(n)]
    write_images(Path(root) / "leftImg8bit" / split, [f"{i.rsplit('_', 2)[0]}/{i}_leftImg8bit" for i in ids],
                 size=size, suffix=".png", seed=seed)
    return sorted(ids)


def write_macos_junk(folder: Path, names: Sequence[str] = ("a.jpg",)) -> list[Path]:
    """What a copy from macOS leaves: ``._<name>`` AppleDouble files (not images, despite the suffix),
    ``.DS_Store`` and a hidden folder holding a broken ``.jpg``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        out.append(folder / f"._{name}")
        out[-1].write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / ".thumbnails").mkdir(exist_ok=True)
    (folder / ".thumbnails" / "x.jpg").write_bytes(b"not a jpeg")
    return [*out, folder / ".DS_Store", folder / ".thumbnails" / "x.jpg"]
