"""Tests for semiseg_lit.data.image_io."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from semiseg_lit.data.image_io import (
    DataError,
    check_label_values,
    check_same_hw,
    check_same_size,
    invalid_label_values,
    label_histogram,
    read_image,
    read_mask,
    validate_lut,
)
from semiseg_lit.data.labels import CITYSCAPES_LABELID_TO_TRAINID, voc_colormap


def _rgb(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _voc_palette_png(path: Path, indices: np.ndarray) -> Path:
    im = Image.fromarray(indices.astype(np.uint8))  # putpalette turns this "L" image into "P"
    im.putpalette(voc_colormap(256).ravel().tolist())
    im.save(path)
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ------------------------------------------------------------------ read_image


def test_read_image_rgb_roundtrip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, arr)


def test_read_image_converts_grey_palette_rgba_cmyk(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(6, 5)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out[..., 1], grey)

    _voc_palette_png(tmp_path / "p.png", np.array([[1, 2]]))
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[128, 0, 0], [0, 128, 0]]])

    rgba = np.dstack([_rgb(), np.full((6, 5), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])

    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8


def test_read_image_truncated_png_and_jpeg(tmp_path):
    big = _rgb(64, 64)
    Image.fromarray(big).save(tmp_path / "t.png")
    Image.fromarray(big).save(tmp_path / "t.jpg", quality=95)
    for name in ("t.png", "t.jpg"):
        _truncate(tmp_path / name)
        with pytest.raises(DataError, match=rf"{name}.*truncated or corrupt"):
            read_image(tmp_path / name)


def test_read_image_refuses_when_pil_loads_truncated_images(tmp_path, monkeypatch):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(tmp_path / "a.png")


def test_read_image_zero_byte_missing_and_not_an_image(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty \(0 bytes\).*z\.png"):
        read_image(tmp_path / "z.png")
    with pytest.raises(DataError, match=r"not found.*nope\.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "t.png").write_text("hello, not a png")
    with pytest.raises(DataError, match=r"t\.png.*not a recognised image"):
        read_image(tmp_path / "t.png")


def test_read_image_16bit_rejected(tmp_path):
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "w.png")
    with pytest.raises(DataError, match=r"w\.png.*16-bit"):
        read_image(tmp_path / "w.png")


# ------------------------------------------------------------------ read_mask


def test_read_mask_palette_gives_raw_indices_not_luminance(tmp_path):
    idx = np.array([[0, 1, 2, 15], [20, 255, 255, 7]], np.uint8)
    path = _voc_palette_png(tmp_path / "m.png", idx)
    assert Image.open(path).mode == "P"
    out = read_mask(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, idx)
    # luminance of the palette colours is something else (e.g. class 1 (128,0,0) -> 38)
    lum = np.asarray(Image.open(path).convert("L"))
    assert not np.array_equal(lum, idx)


def test_read_mask_grey_and_lut(tmp_path):
    label_ids = np.array([[7, 26], [0, 33]], np.uint8)
    Image.fromarray(label_ids).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png"), label_ids)
    # labelIds -> trainIds: 7 road -> 0, 26 car -> 13, 0 unlabeled -> 255, 33 bicycle -> 18
    out = read_mask(tmp_path / "l.png", lut=CITYSCAPES_LABELID_TO_TRAINID)
    np.testing.assert_array_equal(out, [[0, 13], [255, 18]])


def test_read_mask_rejects_16bit_and_colour(tmp_path):
    Image.fromarray(np.full((3, 3), 26001, np.uint16)).save(tmp_path / "inst.png")  # instanceIds-like
    with pytest.raises(DataError, match=r"inst\.png is a 16-bit mask.*expected an 8-bit index PNG"):
        read_mask(tmp_path / "inst.png")
    Image.fromarray(_rgb()).save(tmp_path / "color.png")
    with pytest.raises(DataError, match=r"color\.png is a colour image.*index/palette PNG"):
        read_mask(tmp_path / "color.png")
    Image.fromarray(np.dstack([_rgb(), _rgb()[..., :1]])).save(tmp_path / "rgba.png")
    with pytest.raises(DataError, match=r"rgba\.png.*'RGBA'"):
        read_mask(tmp_path / "rgba.png")


def test_read_mask_truncated_and_bad_lut(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 20, (64, 64), dtype=np.uint8)).save(
        tmp_path / "m.png"
    )
    with pytest.raises(DataError, match="lut must be an integer array of shape"):
        read_mask(tmp_path / "m.png", lut=np.zeros(10, np.uint8))
    _truncate(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"mask file .*m\.png.*truncated"):
        read_mask(tmp_path / "m.png")


def test_validate_lut():
    assert validate_lut(np.arange(256, dtype=np.int64)).dtype == np.uint8
    with pytest.raises(DataError, match=r"0\.\.255"):
        validate_lut(np.full(256, 300))
    with pytest.raises(DataError, match="integer"):
        validate_lut(np.zeros(256, np.float32))


# ------------------------------------------------------------------ value / size checks


def test_label_histogram_and_invalid_values_hand_example():
    mask = np.array([[0, 0, 2], [255, 9, 9]], np.uint8)
    hist = label_histogram(mask)
    # counts: value 0 twice, 2 once, 9 twice, 255 once
    assert hist.dtype == np.int64 and hist.shape == (256,)
    assert (hist[0], hist[2], hist[9], hist[255], hist.sum()) == (2, 1, 2, 1, 6)
    # C = 3: allowed {0,1,2,255}; 9 is invalid
    assert invalid_label_values(hist, 3).tolist() == [9]
    assert invalid_label_values(hist, 10).tolist() == []
    assert invalid_label_values(hist, 10, ignore_index=254).tolist() == [255]
    with pytest.raises(DataError, match="uint8"):
        label_histogram(mask.astype(np.int32))


def test_check_label_values_messages():
    check_label_values(np.array([[0, 18, 255]], np.uint8), 19, "ok.png")
    with pytest.raises(DataError) as e:
        check_label_values(np.array([[33, 19, 0, 255, 33]], np.uint8), 19, "gt/x_labelIds.png")
    msg = str(e.value)
    assert "gt/x_labelIds.png" in msg and "[19, 33]" in msg and "[0, 19) ∪ {255}" in msg
    # more than 10 offending values: first 10 listed, the rest counted
    with pytest.raises(DataError, match=r"\[10, 11, 12, 13, 14, 15, 16, 17, 18, 19\] \(and 2 more\)"):
        check_label_values(np.arange(22, dtype=np.uint8)[None], 10, "many.png")
    with pytest.raises(DataError, match=r"\[-1, 3\]"):
        check_label_values(np.array([[-1, 3]]), 4, "neg.png")
    check_label_values(np.array([[0, 3]], np.int64), 4, "int64.png")
    with pytest.raises(DataError, match=r"\[255\].*\{0\}"):
        check_label_values(np.array([[0, 255]], np.uint8), 4, "ign0.png", ignore_index=0)


def test_check_same_size():
    check_same_size(np.zeros((4, 5, 3)), np.zeros((4, 5)), "i.png", "m.png")
    with pytest.raises(DataError, match=r"image i\.png is 5x4 \(WxH\) but its mask m\.png is 6x4"):
        check_same_size(np.zeros((4, 5, 3)), np.zeros((4, 6)), "i.png", "m.png")
    with pytest.raises(DataError, match="2x3.*3x2"):
        check_same_hw((3, 2), (2, 3), "i.png", "m.png")


def test_rgb_png_fast_path_gives_the_pil_pixels_and_falls_back(tmp_path, monkeypatch):
    """RGB PNGs are decoded by OpenCV: the same array as PIL's; other files take the PIL path."""
    import semiseg_lit.data.image_io as io

    arr = _rgb(37, 53, seed=3)
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(arr).save(tmp_path / "rgb.jpg", quality=95)
    fast = io._read_rgb_png_fast(tmp_path / "rgb.png")
    assert fast is not None and fast.flags["C_CONTIGUOUS"]
    with Image.open(tmp_path / "rgb.png") as im:
        np.testing.assert_array_equal(fast, np.asarray(im.convert("RGB")))
    assert io._read_rgb_png_fast(tmp_path / "grey.png") is None  # mode L: PIL converts
    assert io._read_rgb_png_fast(tmp_path / "rgb.jpg") is None  # JPEG: PIL (decoders may differ by rounding)
    # a truncated RGB PNG is not decoded by OpenCV (it could return a partial image): PIL raises
    _truncate(tmp_path / "rgb.png", keep=0.6)
    assert io._read_rgb_png_fast(tmp_path / "rgb.png") is None
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_image(tmp_path / "rgb.png")
