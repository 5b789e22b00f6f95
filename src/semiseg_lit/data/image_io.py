"""Reading images and index masks from disk, with clear errors for bad files (specs/data.md §1).

Masks are read as *raw class indices*: palette ('P') PNGs give their palette indices and grey ('L')
PNGs their grey values. ``.convert('L')`` is never used on masks, since on a palette image it would
turn class colours into luminance (specs/data.md §1.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from semiseg_lit.errors import UserError

__all__ = [
    "DataError",
    "read_image",
    "image_size",
    "tail_looks_truncated",
    "read_mask",
    "label_histogram",
    "invalid_label_values",
    "check_label_values",
    "check_same_hw",
    "check_same_size",
    "validate_lut",
]

PathLike = str | Path

# PIL modes holding 16-bit / 32-bit / float samples.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# PIL modes whose first band is a raw 8-bit index / grey value.
_INDEX_MODES = ("P", "L", "1", "LA", "PA")
_MAX_LISTED = 10


class DataError(UserError):
    """A data file (image, mask) or data folder is missing, unreadable or inconsistent (a ``ValueError``;
    a user error wherever it is raised, e.g. a val image that breaks during training: exit code 2)."""


def _open_loaded(path: PathLike, what: str) -> Image.Image:
    """Open ``path`` with PIL and decode it fully, turning every failure into :class:`DataError`.

    PIL refuses truncated files unless ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set; we refuse to run
    with that flag on, because it would pad truncated images with grey silently.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DataError(
            f"PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated {what} files like {path} would load "
            "silently; set it back to False"
        )
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file not found: {p}")
    if p.stat().st_size == 0:
        raise DataError(f"{what} file is empty (0 bytes): {p}")
    try:
        im = Image.open(p)
        im.load()
    except UnidentifiedImageError as e:
        raise DataError(f"cannot read {what} file {p}: not a recognised image format ({e})") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read {what} file {p}: truncated or corrupt ({e})") from e
    return im


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the last 8 bytes of every complete PNG (chunk type + CRC)
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


def tail_looks_truncated(path: PathLike) -> bool:
    """Cheap completeness test from the first and last bytes only: a PNG must end with its IEND chunk,
    a JPEG with the EOI marker. False for other formats; True can be a false alarm (data appended
    after the end marker), so callers confirm it with a full decode."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 16))
        tail = f.read()
    if head.startswith(_PNG_SIGNATURE):
        return not tail.endswith(_PNG_IEND)
    if head.startswith(_JPEG_SOI):
        return not tail.rstrip(b"\x00").endswith(_JPEG_EOI)
    return False


def image_size(path: PathLike, decode: bool = False) -> tuple[int, int]:
    """(H, W) of an image without decoding its pixels (unless ``decode``), raising
    :class:`DataError` for a missing, empty or unreadable file; a PNG/JPEG whose end marker is
    missing (see :func:`tail_looks_truncated`) is fully decoded, which catches truncated files."""
    p = Path(path)
    if decode:
        return read_image(p).shape[:2]  # type: ignore[return-value]
    if p.is_file() and p.stat().st_size == 0:
        raise DataError(f"image file is empty (0 bytes): {p}")
    try:
        with Image.open(p) as im:
            size = (im.height, im.width)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image file {p}: {e}") from e
    if tail_looks_truncated(p):
        read_image(p)  # raises DataError when the file really is truncated
    return size


def _read_rgb_png_fast(path: PathLike) -> np.ndarray | None:
    """An RGB PNG decoded by OpenCV's libpng (1.3-1.7× faster than PIL on a 2048×1024 Cityscapes-sized
    image, BENCHMARKS.md; PNG is lossless, so the pixels are the same). ``None`` for anything else — another format or
    mode, a file whose end marker is missing, a file OpenCV cannot decode or decodes to another size — and
    :func:`read_image` then reads it with PIL, which reports what is wrong."""
    import cv2

    p = Path(path)
    try:
        with Image.open(p) as im:  # header only
            if im.format != "PNG" or im.mode != "RGB":
                return None
            size = (im.height, im.width)
        if tail_looks_truncated(p):
            return None
        rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10: decode straight to RGB
        flags = (cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag) | cv2.IMREAD_IGNORE_ORIENTATION
        out = cv2.imdecode(np.fromfile(p, dtype=np.uint8), flags)
    except Exception:  # noqa: BLE001 - the PIL path reads the file again and names the problem
        return None
    if out is None or out.dtype != np.uint8 or out.shape != (*size, 3):
        return None
    return out if rgb_flag is not None else cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def read_image(path: PathLike) -> np.ndarray:
    """Read an 8-bit image as an (H, W, 3) uint8 RGB array.

    Grey ('L', '1'), palette ('P'), 'RGBA', 'CMYK', 'YCbCr', ... are converted to RGB (alpha dropped).
    16-bit / float images raise :class:`DataError`. EXIF orientation is *not* applied, because
    masks carry no EXIF and would no longer line up with the image. RGB PNGs (Cityscapes) are decoded
    by OpenCV (:func:`_read_rgb_png_fast`), everything else by PIL.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        fast = _read_rgb_png_fast(path)
        if fast is not None:
            return fast
    im = _open_loaded(path, "image")
    with im:
        if im.mode in _WIDE_MODES:
            raise DataError(
                f"image {path} has 16-bit/float mode {im.mode!r}; expected an 8-bit RGB or grey image"
            )
        if im.mode != "RGB":
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8).copy()
    return arr


def validate_lut(lut: np.ndarray, name: str = "lut") -> np.ndarray:
    """Check that ``lut`` is a 256-entry integer table with values in 0..255; return it as uint8."""
    lut = np.asarray(lut)
    if lut.shape != (256,) or not np.issubdtype(lut.dtype, np.integer):
        raise DataError(
            f"{name} must be an integer array of shape (256,), got shape {lut.shape} dtype {lut.dtype}"
        )
    if lut.min() < 0 or lut.max() > 255:
        raise DataError(f"{name} values must lie in 0..255, got range [{lut.min()}, {lut.max()}]")
    return lut.astype(np.uint8, copy=False)


def read_mask(path: PathLike, lut: np.ndarray | None = None) -> np.ndarray:
    """Read an 8-bit index mask as an (H, W) uint8 array of raw class indices.

    'P' palette PNGs give palette indices and 'L' PNGs grey values (never luminance). With ``lut``
    (256 entries, e.g. Cityscapes labelIds -> trainIds) the result is ``lut[mask]``.
    16-bit and RGB colour masks raise :class:`DataError`.
    """
    im = _open_loaded(path, "mask")
    with im:
        mode = im.mode
        if mode in _WIDE_MODES:
            raise DataError(
                f"mask {path} is a 16-bit mask (PIL mode {mode!r}); expected an 8-bit index PNG "
                "(mode 'L' or 'P') whose pixel values are class ids"
            )
        if mode not in _INDEX_MODES:
            raise DataError(
                f"mask {path} is a colour image (PIL mode {mode!r}); expected an 8-bit index/palette PNG "
                "(mode 'L' or 'P') whose pixel values are class ids, not colours (e.g. use "
                "*_gtFine_labelTrainIds.png, not *_gtFine_color.png)"
            )
        band = im if mode in ("P", "L", "1") else im.getchannel(0)
        mask = np.asarray(band).astype(np.uint8, copy=True)
    if lut is not None:
        mask = validate_lut(lut)[mask]
    return mask


def label_histogram(mask: np.ndarray) -> np.ndarray:
    """Pixel count per value of a uint8 mask: ``hist[v] = #{pixels with value v}``, int64[256]."""
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        raise DataError(f"label_histogram expects a uint8 mask, got dtype {mask.dtype}")
    return np.bincount(mask.ravel(), minlength=256).astype(np.int64, copy=False)


def _allowed_values(num_classes: int, ignore_index: int) -> np.ndarray:
    """Boolean table over 0..255 that is True on ``[0, C) ∪ {ignore_index}``."""
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes={num_classes}; expected 1 <= num_classes <= 256 for uint8 masks")
    allowed = np.zeros(256, dtype=bool)
    allowed[:num_classes] = True
    if 0 <= ignore_index <= 255:
        allowed[ignore_index] = True
    return allowed


def invalid_label_values(hist: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Sorted values v with ``hist[v] > 0`` outside ``[0, C) ∪ {ignore_index}`` (int64 array)."""
    return np.flatnonzero((np.asarray(hist) > 0) & ~_allowed_values(num_classes, ignore_index))


def _format_allowed(num_classes: int, ignore_index: int) -> str:
    return f"[0, {num_classes}) ∪ {{{ignore_index}}}"


def check_label_values(mask: np.ndarray, num_classes: int, path: PathLike, ignore_index: int = 255) -> None:
    """Raise :class:`DataError` naming ``path`` if ``mask`` holds a value outside ``[0, C) ∪ {ignore}``.

    The message lists the offending values (sorted, at most 10) and the allowed set.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DataError(
                f"mask {path} has values in [{mask.min()}, {mask.max()}]; allowed values are "
                f"{_format_allowed(num_classes, ignore_index)}"
            )
        mask = mask.astype(np.uint8)
    bad = invalid_label_values(label_histogram(mask), num_classes, ignore_index)
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:_MAX_LISTED])
        more = f" (and {bad.size - _MAX_LISTED} more)" if bad.size > _MAX_LISTED else ""
        raise DataError(
            f"mask {path} has label values [{shown}]{more} outside the allowed set "
            f"{_format_allowed(num_classes, ignore_index)}; wrong num_classes, a missing label map "
            "(e.g. Cityscapes labelIds -> trainIds) or a colour mask?"
        )


def check_same_hw(
    image_hw: Sequence[int], mask_hw: Sequence[int], image_path: PathLike, mask_path: PathLike
) -> None:
    """Raise :class:`DataError` naming both files and sizes if (H, W) of image and mask differ."""
    ih, iw = (int(v) for v in tuple(image_hw)[:2])
    mh, mw = (int(v) for v in tuple(mask_hw)[:2])
    if (ih, iw) != (mh, mw):
        raise DataError(
            f"image {image_path} is {iw}x{ih} (WxH) but its mask {mask_path} is {mw}x{mh}; "
            "image and mask must have the same size"
        )


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: PathLike, mask_path: PathLike) -> None:
    """Raise :class:`DataError` naming both files and sizes if image and mask differ in (H, W)."""
    check_same_hw(image.shape[:2], mask.shape[:2], image_path, mask_path)
