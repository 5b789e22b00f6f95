"""Dataset layouts (Cityscapes, PASCAL VOC, plain folders) and the file-based torch Dataset.

A *layout* turns a dataset root plus a split name or split list into ``list[Sample]``
(specs/data.md §1 for the on-disk trees, §2.3 for the list formats). :class:`SegmentationDataset`
reads one sample, checks it, and hands ``image`` (H, W, 3 uint8) and ``mask`` (H, W uint8) to a
transform. :func:`scan_samples` walks a whole list for ``task=check_data``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from semiseg_lit.data.image_io import (
    DataError,
    check_label_values,
    check_same_hw,
    check_same_size,
    image_size,
    invalid_label_values,
    label_histogram,
    read_image,
    read_mask,
)
from semiseg_lit.data.labels import CITYSCAPES_LABELID_TO_TRAINID
from semiseg_lit.data.splits import (
    Sample,
    SplitError,
    check_files_exist,
    read_split_records,
    without_missing_masks,
)

__all__ = [
    "CityscapesLayout",
    "VOCLayout",
    "FolderLayout",
    "SegmentationDataset",
    "ScanReport",
    "scan_samples",
    "build_remap_lut",
    "is_hidden",
]

PathLike = str | Path
_MAX_LISTED = 5


def _first(items: Sequence[Any], n: int = _MAX_LISTED) -> str:
    """Comma-separated first ``n`` items (as strings)."""
    return ", ".join(str(x) for x in items[:n]) + (", ..." if len(items) > n else "")


def is_hidden(path: Path, top: Path) -> bool:
    """True if a part of ``path`` below ``top`` starts with '.' (macOS ``._name.jpg`` resource forks,
    ``.DS_Store``, ``.ipynb_checkpoints/``): such files are never dataset images (as in task=predict)."""
    return any(part.startswith(".") for part in path.relative_to(top).parts)


def _require_dir(root: Path, sub: str, what: str) -> Path:
    """``root / sub`` if it is a folder, else :class:`DataError` naming the missing sub-folder."""
    d = root / sub
    if not d.is_dir():
        raise DataError(f"{what} root {root} has no '{sub}' folder (expected {d}); is data.root right?")
    return d


# ============================================================================ Cityscapes (§1.1)

# <city>_<seq:6>_<frame:6>; city names may hold '-' or '_' (e.g. bad-honnef in train_extra).
_CITY_ID = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")


def _cityscapes_id(name: str) -> re.Match[str] | None:
    """Match ``<city>_<seq>_<frame>`` after dropping a file extension and a ``_leftImg8bit`` suffix."""
    stem = name
    for ext in (".png", ".jpg"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    for suffix in ("_leftImg8bit", "_gtFine"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return _CITY_ID.match(stem)


class CityscapesLayout:
    """The official Cityscapes tree ``leftImg8bit/{split}/<city>/...`` + ``gtFine/{split}/<city>/...``.

    Masks: ``*_gtFine_labelTrainIds.png`` when present, else ``*_gtFine_labelIds.png`` read through
    ``CITYSCAPES_LABELID_TO_TRAINID``. ``Sample.id = <city>_<seq>_<frame>``.
    """

    IMAGE_DIR = "leftImg8bit"
    MASK_DIR = "gtFine"
    IMAGE_SUFFIX = "_leftImg8bit.png"
    TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"
    LABELIDS_SUFFIX = "_gtFine_labelIds.png"
    SEARCH_SPLITS = ("train", "val", "test", "train_extra")

    def __init__(self, root: PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"Cityscapes root data.root={self.root} is not a folder (expected the folder holding "
                            "leftImg8bit/ and gtFine/)")

    # ------------------------------------------------------------------ paths
    def image_path(self, split: str, sample_id: str) -> Path:
        """``leftImg8bit/{split}/<city>/<id>_leftImg8bit.png``."""
        city = _CITY_ID.match(sample_id)
        if city is None:
            raise DataError(f"'{sample_id}' is not a Cityscapes id <city>_<seq6>_<frame6>")
        return self.root / self.IMAGE_DIR / split / city["city"] / f"{sample_id}{self.IMAGE_SUFFIX}"

    def mask_for(self, split: str, sample_id: str) -> tuple[Path, np.ndarray | None]:
        """(mask path, lut): labelTrainIds if it exists, else labelIds + LUT if that exists.

        When neither exists the (missing) labelTrainIds path is returned so that the caller reports it.
        """
        city = sample_id.rsplit("_", 2)[0]
        folder = self.root / self.MASK_DIR / split / city
        train_ids = folder / f"{sample_id}{self.TRAINIDS_SUFFIX}"
        if train_ids.is_file():
            return train_ids, None
        label_ids = folder / f"{sample_id}{self.LABELIDS_SUFFIX}"
        if label_ids.is_file():
            return label_ids, CITYSCAPES_LABELID_TO_TRAINID
        return train_ids, None

    def _explicit_mask(self, rel: str) -> tuple[Path, np.ndarray | None]:
        """A mask named by a list: falls back from a missing labelTrainIds file to labelIds + LUT."""
        path = self.root / rel
        if path.name.endswith(self.LABELIDS_SUFFIX):
            return path, CITYSCAPES_LABELID_TO_TRAINID
        if not path.is_file() and path.name.endswith(self.TRAINIDS_SUFFIX):
            alt = path.with_name(path.name[: -len(self.TRAINIDS_SUFFIX)] + self.LABELIDS_SUFFIX)
            if alt.is_file():
                return alt, CITYSCAPES_LABELID_TO_TRAINID
        return path, None

    def _require_split(self, split: str, masks: bool = True) -> None:
        for top in (self.IMAGE_DIR, self.MASK_DIR) if masks else (self.IMAGE_DIR,):
            _require_dir(self.root, f"{top}/{split}", "Cityscapes")

    def has_split(self, split: str) -> bool:
        """Whether ``leftImg8bit/{split}`` exists."""
        return (self.root / self.IMAGE_DIR / split).is_dir()

    # ------------------------------------------------------------------ listing
    def samples(self, split: str, require_masks: bool = True) -> list[Sample]:
        """All images of ``split`` in the official tree, sorted by id, each paired with its mask.

        Images without a mask raise :class:`DataError` listing the first few (or get ``mask=None``
        when ``require_masks`` is False: unlabeled images, e.g. ``train_extra``, need no mask and no
        ``gtFine/{split}`` folder).
        """
        self._require_split(split, masks=require_masks)
        folder = self.root / self.IMAGE_DIR / split
        images = sorted(p for p in folder.glob(f"*/*{self.IMAGE_SUFFIX}") if not is_hidden(p, folder))
        if not images:
            raise DataError(f"no '*{self.IMAGE_SUFFIX}' images found under {folder}/<city>/")
        out: list[Sample] = []
        missing: list[str] = []
        for img in images:
            sid = img.name[: -len(self.IMAGE_SUFFIX)]
            mask, lut = self.mask_for(split, sid)
            if not mask.is_file():
                missing.append(str(img))
                if require_masks:
                    continue
                out.append(Sample(sid, img, None))
            else:
                out.append(Sample(sid, img, mask, lut))
        if missing and require_masks:
            raise DataError(
                f"{len(missing)} image(s) under {folder} have no '*{self.TRAINIDS_SUFFIX}' or "
                f"'*{self.LABELIDS_SUFFIX}' mask in {self.root / self.MASK_DIR / split}: {_first(missing)}"
            )
        return sorted(out, key=lambda s: s.id)

    def _record_to_sample(self, record: tuple[str, ...], source: Path) -> Sample:
        """One list record (UniMatch pair, U2PL image path, CPS TAB pair or bare stem) -> Sample."""
        first = record[0].replace("\\", "/").lstrip("/")
        parts = first.split("/")
        match = _cityscapes_id(parts[-1])
        if match is None:
            raise SplitError(
                f"split list {source}: cannot read a Cityscapes id <city>_<seq6>_<frame6> from record "
                f"{' '.join(record)!r}"
            )
        sid = match.group(0)
        if parts[0] == self.IMAGE_DIR and len(parts) >= 4:  # UniMatch pair / U2PL image path
            split = parts[1]
            image = self.root / first
            if len(record) == 2:
                mask, lut = self._explicit_mask(record[1].replace("\\", "/").lstrip("/"))
            else:  # U2PL: derive the mask from the image path
                mask, lut = self.mask_for(split, sid)
            return Sample(sid, image, mask, lut)
        if parts[0] == "images" and len(parts) == 3:  # CPS flattened layout -> official tree
            split = parts[1]
        else:  # bare stem <city>/<id> or <id>: find the split that holds it
            split = next(
                (s for s in self.SEARCH_SPLITS if self.image_path(s, sid).is_file()), self.SEARCH_SPLITS[0]
            )
        mask, lut = self.mask_for(split, sid)
        return Sample(sid, self.image_path(split, sid), mask, lut)

    def from_split_file(self, path: PathLike, require_masks: bool = True) -> list[Sample]:
        """Samples named by a split list in any published Cityscapes format (specs/data.md §2.3).

        Raises :class:`DataError` if a split folder the list refers to is missing and
        :class:`SplitError` if files it names do not exist. ``require_masks=False`` (unlabeled
        lists): a mask that does not exist becomes ``None``; only the images must exist.
        """
        path = Path(path)
        samples = [self._record_to_sample(r, path) for r in read_split_records(path)]
        if not require_masks:
            samples = without_missing_masks(samples)
        for split in sorted({s.image.parent.parent.name for s in samples}):
            self._require_split(split, masks=require_masks)
        check_files_exist(samples, path)
        return samples


# ============================================================================ PASCAL VOC (§1.2)


class VOCLayout:
    """``VOC2012/{JPEGImages, SegmentationClass[Aug], ImageSets/Segmentation}``; ``Sample.id`` = VOC id.

    ``mask_dir``: "auto" = SegmentationClassAug if present, else SegmentationClass; a folder name;
    or None for images only.
    """

    IMAGE_DIR = "JPEGImages"
    AUTO_MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")

    def __init__(self, root: PathLike, mask_dir: str | None = "auto"):
        self.root = Path(root)
        if not (self.root / self.IMAGE_DIR).is_dir():
            hint = next(
                (f"; did you mean {c}?" for c in (self.root / "VOC2012", self.root / "VOCdevkit" / "VOC2012")
                 if (c / self.IMAGE_DIR).is_dir()),
                "",
            )  # fmt: skip
            raise DataError(
                f"VOC root {self.root} has no '{self.IMAGE_DIR}' folder; expected the VOC2012 folder{hint}"
            )
        self.mask_dir: str | None = self._resolve_mask_dir(mask_dir)

    def _resolve_mask_dir(self, mask_dir: str | None) -> str | None:
        if mask_dir is None:
            return None
        if mask_dir == "auto":
            for name in self.AUTO_MASK_DIRS:
                if (self.root / name).is_dir():
                    return name
            raise DataError(
                f"VOC root {self.root} has neither '{self.AUTO_MASK_DIRS[0]}' nor '{self.AUTO_MASK_DIRS[1]}' "
                "folder (mask_dir='auto')"
            )
        _require_dir(self.root, mask_dir, "VOC")
        return mask_dir

    def _default_mask(self, sample_id: str) -> Path | None:
        return None if self.mask_dir is None else self.root / self.mask_dir / f"{sample_id}.png"

    def split_list(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def has_split(self, split: str) -> bool:
        """Whether ``ImageSets/Segmentation/{split}.txt`` exists."""
        return self.split_list(split).is_file()

    def samples(self, split: str, require_masks: bool = True) -> list[Sample]:
        """Samples of ``ImageSets/Segmentation/{split}.txt`` (one id per line)."""
        path = self.split_list(split)
        if not path.is_file():
            hint = ("; train_aug.txt is not part of the VOC download: copy UniMatch's splits/pascal/train_aug.txt "
                    "there, or train on the official list with data.train_split=train"
                    if split == "train_aug" else "")
            raise DataError(
                f"VOC split '{split}' (data.train_split / data.val_split / data.labeled_split): list {path} "
                f"not found (expected ImageSets/Segmentation/{split}.txt){hint}"
            )
        return self.from_split_file(path, require_masks=require_masks)

    def _record_to_sample(self, record: tuple[str, ...]) -> Sample:
        sid = Path(record[0].replace("\\", "/")).stem
        if len(record) == 1:  # bare id (U2PL / CPS) or an image path
            return Sample(sid, self.root / self.IMAGE_DIR / f"{sid}.jpg", self._default_mask(sid))
        image = self.root / record[0].lstrip("/")
        if self.mask_dir is None:
            return Sample(sid, image, None)
        mask = self.root / record[1].lstrip("/")
        default = self._default_mask(sid)
        if not mask.is_file() and default is not None and default.is_file():
            mask = default  # e.g. UniMatch's SegmentationClass/<aug id>.png -> SegmentationClassAug
        return Sample(sid, image, mask)

    def from_split_file(self, path: PathLike, require_masks: bool = True) -> list[Sample]:
        """Samples of a list of UniMatch pairs or bare ids (LF/CRLF); missing files -> SplitError.
        ``require_masks=False`` (unlabeled lists): a mask that does not exist becomes ``None``."""
        path = Path(path)
        samples = [self._record_to_sample(r) for r in read_split_records(path)]
        if not require_masks:
            samples = without_missing_masks(samples)
        check_files_exist(samples, path)
        return samples


# ============================================================================ plain folders


def _suffixes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'.jpg|.png' or ['.jpg', '.png'] -> ('.jpg', '.png') (lower-case, with a leading dot)."""
    items = spec.split("|") if isinstance(spec, str) else list(spec)
    out = tuple(s if s.startswith(".") else f".{s}" for s in (x.strip().lower() for x in items) if s)
    if not out:
        raise DataError(f"image_suffix {spec!r} names no file suffix")
    return out


class FolderLayout:
    """Images in ``image_dir`` paired by relative stem with ``<mask_dir>/<stem><mask_suffix>``.

    ``mask_dir=None`` = unlabeled-only folder. ``Sample.id`` = path relative to ``image_dir``
    without suffix (POSIX). Pair lists are relative to ``root`` (default: ``image_dir``'s parent).
    """

    def __init__(
        self,
        image_dir: PathLike,
        mask_dir: PathLike | None = None,
        image_suffix: str | Sequence[str] = (".jpg", ".jpeg", ".png"),
        mask_suffix: str = ".png",
        root: PathLike | None = None,
    ):
        self.image_dir = Path(image_dir)
        self.mask_dir = None if mask_dir is None else Path(mask_dir)
        self.image_suffixes = _suffixes(image_suffix)
        self.mask_suffix = mask_suffix
        self.root = Path(root) if root is not None else self.image_dir.parent
        for what, d in (("image_dir", self.image_dir), ("mask_dir", self.mask_dir)):
            if d is not None and not d.is_dir():
                raise DataError(f"folder layout: data.{what} {d} is not a folder")

    def _mask(self, folder: Path | None, sample_id: str) -> Path | None:
        return None if folder is None else folder / f"{sample_id}{self.mask_suffix}"

    def has_split(self, split: str) -> bool:
        """Whether ``image_dir/{split}`` exists."""
        return (self.image_dir / split).is_dir()

    def samples(self, split: str | None = None, require_masks: bool = True) -> list[Sample]:
        """Every image under ``image_dir`` (or ``image_dir/split``), sorted by id, with its mask.

        Hidden files and folders (``._name.jpg``, ``.DS_Store``, ``.cache/``) are skipped. Images
        without a mask raise :class:`DataError` listing the first few, unless mask_dir is None or
        ``require_masks`` is False (then their ``mask`` is None: unlabeled images).
        """
        idir = self.image_dir if split is None else _require_dir(self.image_dir, split, "folder-layout image")
        mdir = self.mask_dir if split is None or self.mask_dir is None else self.mask_dir / split
        files = sorted(p for p in idir.rglob("*")
                       if p.suffix.lower() in self.image_suffixes and not is_hidden(p, idir) and p.is_file())
        if not files:
            raise DataError(f"no images with suffix {'|'.join(self.image_suffixes)} (data.image_suffix) found "
                            f"under {idir}")
        ids = [p.relative_to(idir).with_suffix("").as_posix() for p in files]
        by_id: dict[str, list[Path]] = {}
        for i, p in zip(ids, files):
            by_id.setdefault(i, []).append(p)
        dups = [" / ".join(str(p) for p in ps) for ps in by_id.values() if len(ps) > 1]
        if dups:
            raise DataError(f"{len(dups)} image id(s) under {idir} occur with two suffixes: {_first(dups)}")
        samples = [Sample(i, p, self._mask(mdir, i)) for i, p in zip(ids, files)]
        if not require_masks:
            return sorted(without_missing_masks(samples), key=lambda s: s.id)
        missing = [str(s.image) for s in samples if s.mask is not None and not s.mask.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) under {idir} have no mask '<stem>{self.mask_suffix}' in {mdir}: "
                f"{_first(missing)}; labeled images need a mask (put unlabeled images in their own folder "
                "and give it as data.unlabeled_dir)"
            )
        return sorted(samples, key=lambda s: s.id)

    def _id_of(self, image: Path) -> str:
        try:
            return image.relative_to(self.image_dir).with_suffix("").as_posix()
        except ValueError:
            return image.stem

    def _find_image(self, stem: str) -> Path:
        """``image_dir/<stem><suffix>`` for the first suffix that exists (else the first suffix)."""
        candidates = [self.image_dir / f"{stem}{s}" for s in self.image_suffixes]
        return next((c for c in candidates if c.is_file()), candidates[0])

    def _record_to_sample(self, record: tuple[str, ...]) -> Sample:
        rel = record[0].replace("\\", "/").lstrip("/")
        if len(record) == 2:
            image = self.root / rel
            mask = None if self.mask_dir is None else self.root / record[1].replace("\\", "/").lstrip("/")
            return Sample(self._id_of(image), image, mask)
        if Path(rel).suffix.lower() in self.image_suffixes:  # an image path (relative to root or image_dir)
            image = self.root / rel if (self.root / rel).is_file() else self.image_dir / rel
            sid = self._id_of(image)
        else:  # bare stem
            sid, image = rel, self._find_image(rel)
        return Sample(sid, image, self._mask(self.mask_dir, sid))

    def from_split_file(self, path: PathLike, require_masks: bool = True) -> list[Sample]:
        """Samples of a list of ``image mask`` pairs (relative to ``root``), image paths or bare stems.
        ``require_masks=False`` (unlabeled lists): a mask that does not exist becomes ``None``."""
        path = Path(path)
        samples = [self._record_to_sample(r) for r in read_split_records(path)]
        if not require_masks:
            samples = without_missing_masks(samples)
        check_files_exist(samples, path)
        return samples


# ============================================================================ torch Dataset


def build_remap_lut(label_remap: Mapping[Any, Any] | None) -> np.ndarray | None:
    """256-entry uint8 LUT: identity, except ``lut[k] = v`` for each ``k -> v`` in ``label_remap``."""
    if not label_remap:
        return None
    lut = np.arange(256, dtype=np.uint8)
    for k, v in label_remap.items():
        try:
            ki, vi = int(k), int(v)
        except (TypeError, ValueError) as e:
            raise DataError(f"label_remap entry {k!r}: {v!r} is not an integer pair") from e
        if not (0 <= ki <= 255 and 0 <= vi <= 255):
            raise DataError(f"label_remap entry {k!r}: {v!r} is outside 0..255 (masks are uint8)")
        lut[ki] = vi
    return lut


class SegmentationDataset(Dataset):
    """Reads ``samples[i]``: image (H, W, 3 uint8 RGB) and, if present, mask (H, W uint8).

    Mask pipeline: raw indices -> ``sample.lut`` -> ``label_remap`` -> checks (same size as the image,
    values in ``[0, C) ∪ {ignore_index}``). Then ``transform(image=..., mask=..., [seed=...])``,
    or ``{"image", "mask"}`` without a transform; ``out["index"] = i``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        transform: Callable[..., dict[str, Any]] | None = None,
        ignore_index: int = 255,
        label_remap: Mapping[int, int] | None = None,
        load_mask: bool = True,
        check_values: bool = True,
    ):
        if not 1 <= int(num_classes) <= 256:
            raise DataError(f"num_classes={num_classes}; expected 1..256")
        self.samples = list(samples)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.ignore_index = int(ignore_index)
        self.remap_lut = build_remap_lut(label_remap)
        self.load_mask = load_mask
        self.check_values = check_values

    def __len__(self) -> int:
        return len(self.samples)

    def mask_of(self, sample: Sample) -> np.ndarray:
        """Mask of ``sample`` after its LUT and the label remap (no value check)."""
        mask = read_mask(sample.mask, sample.lut)  # type: ignore[arg-type]
        return mask if self.remap_lut is None else self.remap_lut[mask]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(image, mask or None) of sample ``i``, checked, before any transform."""
        sample = self.samples[i]
        image = read_image(sample.image)
        if not (self.load_mask and sample.mask is not None):
            return image, None
        mask = self.mask_of(sample)
        check_same_size(image, mask, sample.image, sample.mask)
        if self.check_values:
            check_label_values(mask, self.num_classes, sample.mask, self.ignore_index)
        return image, mask

    def get(self, i: int, seed: int | None = None) -> dict[str, Any]:
        """Item ``i``; ``seed`` (if given) is passed to the transform to fix its randomness."""
        image, mask = self.load(i)
        if self.transform is None:
            out: dict[str, Any] = {"image": image} if mask is None else {"image": image, "mask": mask}
        else:
            kwargs: dict[str, Any] = {"image": image}
            if mask is not None:
                kwargs["mask"] = mask
            if seed is not None:
                kwargs["seed"] = seed
            out = dict(self.transform(**kwargs))
        out["index"] = i
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(i)


# ============================================================================ check_data


@dataclass
class ScanReport:
    """Result of :func:`scan_samples`: counts, class histogram and every problem found."""

    n_samples: int = 0
    n_images: int = 0  # images decoded without error
    n_masks: int = 0  # masks read without error (values may still be invalid)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64[C] pixels per class
    ignore_pixels: int = 0
    invalid_pixels: int = 0  # pixels outside [0, C) ∪ {ignore}
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, message)

    @property
    def ok(self) -> bool:
        return not self.problems


def scan_samples(
    samples: Sequence[Sample],
    num_classes: int,
    ignore_index: int = 255,
    label_remap: Mapping[int, int] | None = None,
    decode_images: bool = True,
    read_masks: bool = True,
) -> ScanReport:
    """Read every sample, collecting (not raising) problems, and count mask pixels per class.

    ``histogram[c] = Σ_files #{pixels == c}`` for c < C (np.bincount per mask); ignore and
    out-of-range pixels are counted separately. ``decode_images=False`` reads only image headers.
    ``read_masks=False`` reads only mask headers too (readable, same size as the image; a PNG/JPEG
    without its end marker is decoded to confirm), counting no pixels: the cheap pre-training check
    of the validation files.
    """
    remap = build_remap_lut(label_remap)
    rep = ScanReport(n_samples=len(samples), histogram=np.zeros(num_classes, np.int64))
    for s in samples:
        size = None
        try:
            size = image_size(s.image, decode_images)
            rep.n_images += 1
        except DataError as e:
            rep.problems.append((str(s.image), str(e)))
        if s.mask is None:
            continue
        if not read_masks:
            try:
                mask_hw = image_size(s.mask)
                rep.n_masks += 1
                if size is not None:
                    check_same_hw(size, mask_hw, s.image, s.mask)
            except DataError as e:
                rep.problems.append((str(s.mask), str(e).replace("image file", "mask file")))
            continue
        try:
            mask = read_mask(s.mask, s.lut)
        except DataError as e:
            rep.problems.append((str(s.mask), str(e)))
            continue
        rep.n_masks += 1
        if remap is not None:
            mask = remap[mask]
        if size is not None:
            try:
                check_same_hw(size, mask.shape, s.image, s.mask)
            except DataError as e:
                rep.problems.append((str(s.mask), str(e)))
        hist = label_histogram(mask)
        rep.histogram += hist[:num_classes]
        if 0 <= ignore_index <= 255 and ignore_index >= num_classes:
            rep.ignore_pixels += int(hist[ignore_index])
        bad = invalid_label_values(hist, num_classes, ignore_index)
        if bad.size:
            rep.invalid_pixels += int(hist[bad].sum())
            try:
                check_label_values(mask, num_classes, s.mask, ignore_index)
            except DataError as e:
                rep.problems.append((str(s.mask), str(e)))
    return rep
