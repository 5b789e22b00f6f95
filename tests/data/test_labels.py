"""Tests for semiseg_lit.data.labels (specs/data.md §1.1, §1.2)."""

from __future__ import annotations

import numpy as np
import pytest

from semiseg_lit.data.labels import (
    CITYSCAPES,
    CITYSCAPES_LABELID_TO_TRAINID,
    VOC,
    ClassInfo,
    colorize,
    voc_colormap,
)


def _voc_colormap_reference(n: int) -> np.ndarray:
    """The loop from specs/data.md §1.2, written out literally."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def test_classinfo_num_classes_and_validation():
    info = ClassInfo("toy", ("a", "b"), ((0, 0, 0), (1, 2, 3)), head=(0,), tail=(1,))
    assert info.num_classes == 2
    with pytest.raises(ValueError, match="2 names but 1 palette"):
        ClassInfo("toy", ("a", "b"), ((0, 0, 0),))
    with pytest.raises(ValueError, match=r"tail ids \[2\]"):
        ClassInfo("toy", ("a", "b"), ((0, 0, 0), (1, 1, 1)), tail=(2,))


def test_cityscapes_classes():
    assert CITYSCAPES.num_classes == 19
    assert (
        CITYSCAPES.names[0] == "road"
        and CITYSCAPES.names[11] == "person"
        and CITYSCAPES.names[18] == "bicycle"
    )
    assert CITYSCAPES.palette[0] == (128, 64, 128)
    assert CITYSCAPES.palette[13] == (0, 0, 142)
    assert CITYSCAPES.palette[18] == (119, 11, 32)
    # head = >1 % of pixels in the §1.1 table: road, sidewalk, building, pole, vegetation, sky, person, car
    assert set(CITYSCAPES.head) == {0, 1, 2, 5, 8, 10, 11, 13}
    assert set(CITYSCAPES.head).isdisjoint(CITYSCAPES.tail)
    assert set(CITYSCAPES.head) | set(CITYSCAPES.tail) == set(range(19))


def test_cityscapes_labelid_to_trainid_lut():
    lut = CITYSCAPES_LABELID_TO_TRAINID
    assert lut.shape == (256,) and lut.dtype == np.uint8
    # hand-checked rows of the §1.1 table: id 7 road -> 0, 26 car -> 13, 33 bicycle -> 18,
    # 0 unlabeled / 9 parking / 29 caravan / 255 -> 255
    assert (lut[7], lut[26], lut[33], lut[24]) == (0, 13, 18, 11)
    assert (lut[0], lut[9], lut[29], lut[34], lut[255]) == (255, 255, 255, 255, 255)
    assert sorted(lut[lut != 255].tolist()) == list(range(19))
    with pytest.raises(ValueError):
        lut[0] = 3  # shared table is read-only


def test_voc_colormap_hand_values():
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    # 1 = 0b001 -> bit0 to R bit7: (128,0,0); 5 = 0b101 -> R bit7 and B bit7: (128,0,128)
    # 8 = 0b001_000 -> second group (j=1), bit0 -> R bit6: (64,0,0); 255 -> the void colour
    assert tuple(cmap[1]) == (128, 0, 0)
    assert tuple(cmap[5]) == (128, 0, 128)
    assert tuple(cmap[8]) == (64, 0, 0)
    assert tuple(cmap[255]) == (224, 224, 192)
    np.testing.assert_array_equal(cmap, _voc_colormap_reference(256))
    assert voc_colormap(3).shape == (3, 3)
    with pytest.raises(ValueError, match="n=300"):
        voc_colormap(300)


def test_voc_classes():
    assert VOC.num_classes == 21
    assert VOC.names[0] == "background" and VOC.names[15] == "person" and VOC.names[20] == "tvmonitor"
    assert VOC.palette[15] == (192, 128, 128)
    assert VOC.palette[20] == (0, 64, 128)


def test_colorize_hand_example():
    mask = np.array([[0, 1], [255, 7]], np.uint8)
    rgb = colorize(mask, [(10, 20, 30), (40, 50, 60)], ignore_color=(1, 2, 3))
    # 0 -> palette[0]; 1 -> palette[1]; 255 -> ignore colour; 7 (no palette entry) -> black
    expected = np.array([[[10, 20, 30], [40, 50, 60]], [[1, 2, 3], [0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(rgb, expected)
    assert rgb.dtype == np.uint8


def test_colorize_rejects_bad_input():
    with pytest.raises(ValueError, match="integer mask"):
        colorize(np.zeros((2, 2, 3), np.uint8), [(0, 0, 0)])
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[300]]), [(0, 0, 0)])
    with pytest.raises(ValueError, match="palette"):
        colorize(np.zeros((2, 2), np.uint8), [(0, 0, 400)])
