"""Class names, colour palettes and label-id tables (specs/data.md §1.1, §1.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClassInfo",
    "CITYSCAPES",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "VOC",
    "VOC_VOID_COLOR",
    "voc_colormap",
    "colorize",
]

Color = tuple[int, int, int]


@dataclass(frozen=True)
class ClassInfo:
    """Names and RGB colours of a dataset's C classes (index = class id; 255 = ignore).

    ``head`` / ``tail`` are optional class-id groups used to report head and tail mIoU
    separately (specs/data.md §4.2).
    """

    name: str
    names: tuple[str, ...]
    palette: tuple[Color, ...]
    head: tuple[int, ...] = ()
    tail: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(
                f"ClassInfo {self.name!r}: {len(self.names)} names but {len(self.palette)} palette colours; "
                "expected one colour per class"
            )
        for group, ids in (("head", self.head), ("tail", self.tail)):
            bad = [i for i in ids if not 0 <= i < len(self.names)]
            if bad:
                raise ValueError(f"ClassInfo {self.name!r}: {group} ids {bad} outside [0, {len(self.names)})")

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.names)


# --------------------------------------------------------------------------- Cityscapes (§1.1)

_CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
_CITYSCAPES_COLORS: tuple[Color, ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
# labelIds (0..33) of the 19 evaluated classes, in trainId order (cityscapesScripts labels.py).
_CITYSCAPES_EVAL_LABELIDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# Head = classes with > 1 % of pixels in the reported count (§1.1 table); tail = the rest.
_CITYSCAPES_HEAD = (0, 1, 2, 5, 8, 10, 11, 13)
_CITYSCAPES_TAIL = tuple(i for i in range(19) if i not in _CITYSCAPES_HEAD)

CITYSCAPES = ClassInfo(
    name="cityscapes",
    names=_CITYSCAPES_NAMES,
    palette=_CITYSCAPES_COLORS,
    head=_CITYSCAPES_HEAD,
    tail=_CITYSCAPES_TAIL,
)


def _labelid_to_trainid_lut() -> np.ndarray:
    """``lut[label_id] = train_id`` for the 19 evaluated ids, 255 elsewhere (§1.1)."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[list(_CITYSCAPES_EVAL_LABELIDS)] = np.arange(19, dtype=np.uint8)
    lut.setflags(write=False)
    return lut


CITYSCAPES_LABELID_TO_TRAINID: np.ndarray = _labelid_to_trainid_lut()

# --------------------------------------------------------------------------- PASCAL VOC (§1.2)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC bit-interleaved colormap, shape (n, 3) uint8.

    For index i with bits c_0 c_1 c_2 ... (LSB first), bit 3j+k of i goes to bit 7-j of channel k
    (k = 0 R, 1 G, 2 B), for j = 0..7 (specs/data.md §1.2 "Colormap code").
    """
    if not 0 <= n <= 256:
        raise ValueError(f"voc_colormap: n={n}; expected 0 <= n <= 256")
    idx = np.arange(n, dtype=np.int64)[:, None, None]  # (n,1,1)
    j = np.arange(8, dtype=np.int64)[None, :, None]  # (1,8,1)
    k = np.arange(3, dtype=np.int64)[None, None, :]  # (1,1,3)
    bits = (idx >> (3 * j + k)) & 1  # (n,8,3)
    return (bits << (7 - j)).sum(axis=1).astype(np.uint8)


VOC_VOID_COLOR: Color = (224, 224, 192)

_VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

VOC = ClassInfo(
    name="voc",
    names=_VOC_NAMES,
    palette=tuple(tuple(int(v) for v in rgb) for rgb in voc_colormap(21)),  # type: ignore[misc]
)

# --------------------------------------------------------------------------- colouring


def colorize(
    mask: np.ndarray,
    palette: Sequence[Sequence[int]] | np.ndarray,
    ignore_index: int = 255,
    ignore_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Map an (H, W) integer mask to an (H, W, 3) uint8 RGB image with a 256-entry LUT.

    ``rgb[y, x] = lut[mask[y, x]]``, where ``lut[c] = palette[c]`` for c < len(palette),
    ``lut[ignore_index] = ignore_color`` and every other entry is black.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            f"colorize: expected an (H, W) integer mask, got shape {mask.shape} dtype {mask.dtype}"
        )
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    if len(pal) > 256 or (pal.size and (pal.min() < 0 or pal.max() > 255)):
        raise ValueError(f"colorize: palette must hold <= 256 RGB colours in 0..255, got shape {pal.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"colorize: mask values must lie in 0..255, got range [{mask.min()}, {mask.max()}]")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(pal)] = pal
    if 0 <= ignore_index <= 255:
        lut[ignore_index] = np.asarray(ignore_color, dtype=np.uint8)
    return lut[mask]
