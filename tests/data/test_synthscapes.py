"""Tests of the procedural synthscapes dataset (specs/data.md §4; layout §1.1, split lists §2.2-2.3)."""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import semiseg_lit.data.synthscapes as S
from semiseg_lit.data.synthscapes import (
    GENERATOR_VERSION,
    SYNTHSCAPES,
    boundary_band,
    camera_transform,
    class_table,
    ensure_synthscapes,
    generate_synthscapes,
    image_rng,
    iter_scenes,
    make_styles,
    read_manifest,
    render_scene,
    style_name,
)

SMALL = dict(n_train=40, n_val=8, height=64, width=64, n_styles=4, seed=0, labeled_counts=(8, 16))
C = SYNTHSCAPES.num_classes


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def read_list(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ")) for line in path.read_text().splitlines()]  # type: ignore[misc]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return generate_synthscapes(tmp_path_factory.mktemp("synth") / "ds", **SMALL)


# ------------------------------------------------------------------------------------------ classes / styles


def test_class_info_order_palette_and_head_tail():
    assert SYNTHSCAPES.names == ("road", "sidewalk", "building", "vegetation", "sky", "car", "pole", "sign",
                                 "person", "bicycle")
    assert len(set(SYNTHSCAPES.palette)) == C  # distinct colours
    assert set(SYNTHSCAPES.head) == {0, 1, 2, 3, 4, 5}  # stuff + car
    assert set(SYNTHSCAPES.tail) == {6, 7, 8, 9}  # thing classes
    assert not set(SYNTHSCAPES.head) & set(SYNTHSCAPES.tail)


def test_style_name():
    assert style_name(0) == "style00" and style_name(15) == "style15"


def test_make_styles_ranges_determinism_and_prefix_stability():
    styles = make_styles(16, seed=0)
    assert [s.name for s in styles] == [f"style{k:02d}" for k in range(16)]
    scale = np.array([s.freq_scale for s in styles])
    angle = np.array([s.angle_offset for s in styles])
    colour = np.array([s.colours for s in styles])
    assert scale.shape == angle.shape == (16, C) and colour.shape == (16, C, 3)
    assert scale.min() >= 0.6 and scale.max() <= 1.7
    assert np.abs(angle).max() <= 0.6
    assert colour.min() >= 0.05 and colour.max() <= 0.95
    # the redrawn colours spread around the base colours with sd ~0.22 (clipping lowers it a bit)
    assert 0.12 < colour.std(axis=0).mean() < 0.3
    assert make_styles(16, seed=0) == styles
    assert make_styles(4, seed=0) == styles[:4]  # style k does not depend on n_styles
    assert make_styles(16, seed=1) != styles
    with pytest.raises(ValueError, match="n_styles"):
        make_styles(0, seed=0)


def test_permuted_styles_keep_the_style_draws_and_permute_the_texture_table():
    shared = make_styles(16, seed=0)
    permuted = make_styles(16, seed=0, textures="permuted")
    assert all(s.texture_of == tuple(range(C)) for s in shared)
    for a, b in zip(shared, permuted):
        # the same frequencies, angles and colours: only which class wears which texture changes
        assert (a.name, a.freq_scale, a.angle_offset, a.colours) == (b.name, b.freq_scale, b.angle_offset, b.colours)
        assert sorted(b.texture_of) == list(range(C))
    # 16 draws of a permutation of 10: all different, and most classes change texture in most styles
    assert len({s.texture_of for s in permuted}) == 16
    moved = np.mean([[t != c for c, t in enumerate(s.texture_of)] for s in permuted])
    assert moved > 0.7
    assert make_styles(4, seed=0, textures="permuted") == permuted[:4]
    assert make_styles(16, seed=1, textures="permuted") != permuted
    # permuted_head: the head classes swap textures among themselves, the tail things keep theirs
    head_only = make_styles(16, seed=0, textures="permuted_head")
    for a, b in zip(shared, head_only):
        assert (a.freq_scale, a.angle_offset, a.colours) == (b.freq_scale, b.angle_offset, b.colours)
        assert sorted(b.texture_of[:6]) == list(SYNTHSCAPES.head) and b.texture_of[6:] == (6, 7, 8, 9)
    assert len({s.texture_of for s in head_only}) > 10
    with pytest.raises(ValueError, match=r"textures='random'; expected one of \['shared', 'permuted', 'permuted_head'\]"):
        make_styles(2, seed=0, textures="random")


def test_permuted_textures_move_the_texture_to_another_class():
    # a road-only label map: the shared road wears the fine grating (period 4.5 ref px: neighbours jump);
    # a style that gives the road the sky's texture (period 200: smooth) shades it smoothly
    style = make_styles(1, seed=0)[0]
    label = np.full((32, 32), S.ROAD, np.uint8)
    inst = np.zeros((32, 32), np.int16)
    inst_colour = np.zeros((1, 3), np.float32)
    smooth_road = S.Style(style.name, style.freq_scale, style.angle_offset, style.colours,
                          texture_of=(S.SKY, 1, 2, 3, S.ROAD, 5, 6, 7, 8, 9))
    grating = S._shade(np.random.default_rng(0), style, label, inst, inst_colour)
    smooth = S._shade(np.random.default_rng(0), smooth_road, label, inst, inst_colour)
    assert np.abs(np.diff(grating[16, :, 0])).max() > 0.1
    assert np.abs(np.diff(smooth[16, :, 0])).max() < 0.025


def test_permuted_dataset_has_the_same_masks_and_other_images():
    shared = list(iter_scenes(6, height=48, width=48, n_styles=4, seed=0))
    permuted = list(iter_scenes(6, height=48, width=48, n_styles=4, seed=0, style_textures="permuted"))
    for (k1, _img1, m1), (k2, _img2, m2) in zip(shared, permuted):
        assert k1 == k2 and np.array_equal(m1, m2)
    assert np.mean([(a[1] != b[1]).mean() for a, b in zip(shared, permuted)]) > 0.5


def test_image_rng_is_a_function_of_seed_split_index():
    a = image_rng(0, "train", 5).random(4)
    assert np.array_equal(a, image_rng(0, "train", 5).random(4))
    assert not np.array_equal(a, image_rng(0, "val", 5).random(4))
    assert not np.array_equal(a, image_rng(0, "train", 6).random(4))
    assert not np.array_equal(a, image_rng(1, "train", 5).random(4))
    with pytest.raises(ValueError, match="split='test'"):
        image_rng(0, "test", 0)


# ------------------------------------------------------------------------------------------ pure helpers


def test_texture_hand_computed_values():
    t = S._texture
    ph0 = np.zeros(2)
    table = np.arange(16, dtype=np.float32).reshape(4, 4)
    ys, xs = np.array([0.0, 0.0]), np.array([1.0, 3.0])
    # sine, period 4, angle 0: sin(2 pi x / 4) at x = 1, 3 -> 1, -1
    np.testing.assert_allclose(t(S._Texture("sine", 4, 0, 1), 4.0, 0.0, ph0, table, ys, xs), [1, -1], atol=1e-6)
    # the same wave rotated by pi/2 varies along y: at y = 0 it is sin(0) = 0
    np.testing.assert_allclose(t(S._Texture("sine", 4, 0, 1), 4.0, math.pi / 2, ph0, table, ys, xs), [0, 0], atol=1e-6)
    # square: sign(sin(2 pi x / 4)) at x = 1, 3 -> +1, -1
    np.testing.assert_array_equal(t(S._Texture("square", 4, 0, 1), 4.0, 0.0, ph0, table, ys, xs), [1, -1])
    # checker, period 4, at (y, x) = (1, 1): (+1)(+1) = 1; (1, 3): (-1)(+1) = -1
    yc = np.array([1.0, 1.0])
    np.testing.assert_array_equal(t(S._Texture("checker", 4, 0, 1), 4.0, 0.0, ph0, table, yc, xs), [1, -1])
    # grid, period 4: u/4 = 0.25 -> frac < 0.55 (window column); v/4.8 = 1/4.8 = 0.21 < 0.6 -> window (-1);
    # at x = 3: frac(0.75) >= 0.55 -> wall (+0.4)
    np.testing.assert_allclose(t(S._Texture("grid", 4, 0, 1), 4.0, 0.0, ph0, table, yc, xs), [-1, 0.4])
    # blocks, period 2, angle 0: cell (floor(x/2), floor(y/2)) = (0, 0) -> table[0, 0] = 0, (1, 0) -> table[1, 0] = 4
    np.testing.assert_array_equal(t(S._Texture("blocks", 2, 0, 1), 2.0, 0.0, ph0, table, yc, xs), [0, 4])
    with pytest.raises(ValueError, match="unknown texture kind 'wave'"):
        t(S._Texture("wave", 4, 0, 1), 4.0, 0.0, ph0, table, ys, xs)


def test_boundary_band_hand_example():
    mask = np.array([[0, 0, 1],
                     [0, 0, 1],
                     [2, 2, 2]], dtype=np.uint8)  # fmt: skip
    # (0,1): right neighbour 1 != 0; (1,0), (1,1), (1,2): lower neighbour 2 differs ((1,1) also its right);
    # (0,2): lower neighbour 1 == 1 stays; bottom row: equal right neighbours, no lower one.
    expected = np.array([[0, 255, 1],
                         [255, 255, 255],
                         [2, 2, 2]], dtype=np.uint8)  # fmt: skip
    out = boundary_band(mask)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and mask[0, 1] == 0  # input untouched
    with pytest.raises(ValueError, match="shape"):
        boundary_band(np.zeros((2, 2, 2), np.uint8))


class _MinRng:
    """Stand-in generator: every uniform draw returns its lower bound, noise is zero."""

    def uniform(self, low, high, size=None):
        return np.full(size, low, dtype=np.float64) if size is not None else float(low)

    def standard_normal(self, shape, dtype=np.float64):
        return np.zeros(shape, dtype=dtype)


def test_camera_transform_hand_example():
    # constant 0.5 image; gain 0.7 -> 0.35 = mean m; contrast 0.7 keeps 0.35; brightness -0.15 -> 0.2;
    # gamma 0.7: 0.2 ** 0.7 = exp(0.7 ln 0.2) = exp(-1.12661) = 0.32413; noise sd 0 -> unchanged.
    out = camera_transform(np.full((2, 3, 3), 0.5, np.float32), _MinRng())
    np.testing.assert_allclose(out, 0.32413, atol=1e-4)


def test_camera_transform_range_and_determinism():
    img = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    a = camera_transform(img, np.random.default_rng(1))
    assert a.shape == img.shape and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, camera_transform(img, np.random.default_rng(1)))
    assert not np.array_equal(a, camera_transform(img, np.random.default_rng(2)))


def test_background_layout():
    h = w = 64
    for seed in range(10):
        rng = np.random.default_rng(seed)
        ground = S._sample_ground(rng, h, w)
        label = S._background(rng, ground, h, w)
        assert label.shape == (h, w) and label.dtype == np.uint8
        hz = int(math.ceil(ground.hz))
        assert 0.35 * h <= ground.hz <= 0.55 * h
        assert set(label[0].tolist()) <= {S.SKY, S.BUILDING, S.VEGETATION}
        # ground classes only below the horizon, sky only above it
        assert not np.isin(label[: int(ground.hz)], [S.ROAD, S.SIDEWALK]).any()
        assert not (label[hz:] == S.SKY).any()
        # the bottom row under the vanishing point is road
        assert label[h - 1, int(ground.vx)] == S.ROAD


def test_car_parts_hand_computed_area():
    # car with s = 100 on row y = 50, centre x = 50: body rows 39..49 (11) x cols 35..64 (|x+0.5-50| <= 15: 30)
    # = 330 px; cabin rows 32..38 (7) x cols 40..59 (|x+0.5-50| <= 9.5: 20) = 140 px; total 470.
    car = S._Thing(S.CAR, d=1.0, y=50.0, x=50.0, s=100.0)
    (cls, box, inside), = S._thing_parts(car)
    sy, sx, ys, xs = S._window(*box, 100, 100)
    m = inside(ys, xs)
    assert cls == S.CAR and m.sum() == 470
    canvas = np.zeros((100, 100), bool)
    canvas[sy, sx] = m
    assert canvas[39:50, 35:65].all() and canvas[32:39, 40:60].all() and not canvas[31].any()


def test_thing_parts_pole_sign_person_bicycle():
    pole = S._Thing(S.POLE, d=0.5, y=60.0, x=20.5, s=40.0, sign=True)
    parts = S._thing_parts(pole)
    assert [p[0] for p in parts] == [S.POLE, S.SIGN]
    sy, sx, ys, xs = S._window(*parts[0][1], 64, 64)
    m = parts[0][2](ys, xs)
    assert m.sum(axis=1).max() == 1  # a 1-px wide pole at this scale (half-width 0.48 -> 0.5 px)
    assert m.sum() == 34  # 0.85 * 40 = 34 rows
    for cls in (S.PERSON, S.BICYCLE):
        (c, box, inside), = S._thing_parts(S._Thing(cls, d=0.8, y=60.0, x=32.0, s=51.2))
        sy, sx, ys, xs = S._window(*box, 64, 64)
        m = inside(ys, xs)
        assert c == cls and m.any()
        # the bounding box holds the whole shape: nothing on its border
        assert not (m[0].any() or m[:, 0].any() or m[:, -1].any())
    with pytest.raises(ValueError, match="unknown thing class"):
        S._thing_parts(S._Thing(S.ROAD, d=0.5, y=1.0, x=1.0, s=1.0))


def test_tail_scale_enlarges_only_the_tail_things():
    # pole with s = 100: half-width 1.2 px at k = 1 (cols |x + 0.5 - 50| <= 1.2: 2 px), 2.4 px at k = 2 (4 px);
    # the height stays 0.85 s = 85 rows. Person body semi-axes scale by k, so its area by about k^2.
    pole = S._Thing(S.POLE, d=1.0, y=90.0, x=50.0, s=100.0)
    for k, width in ((1.0, 2), (2.0, 4)):
        (_, box, inside), = S._thing_parts(pole, tail_scale=k)
        sy, sx, ys, xs = S._window(*box, 100, 100)
        m = inside(ys, xs)
        assert m.sum(axis=1).max() == width and m.any(axis=1).sum() == 85
    person = S._Thing(S.PERSON, d=1.0, y=99.0, x=50.0, s=100.0)
    areas = []
    for k in (1.0, 2.0):
        (_, box, inside), = S._thing_parts(person, tail_scale=k)
        sy, sx, ys, xs = S._window(*box, 400, 400)
        areas.append(int(inside(ys, xs).sum()))
    assert 3.6 < areas[1] / areas[0] < 4.4
    car = S._Thing(S.CAR, d=1.0, y=50.0, x=50.0, s=100.0)
    (_, box1, in1), = S._thing_parts(car)
    (_, box2, in2), = S._thing_parts(car, tail_scale=2.0)
    assert box1 == box2  # head things keep their geometry
    # a whole scene: the same draws (stuff identical), more tail pixels
    style = make_styles(1, 0)[0]
    _, m1 = render_scene(np.random.default_rng(5), style, 128, 128)
    _, m2 = render_scene(np.random.default_rng(5), style, 128, 128, tail_scale=2.0)
    tail = [S.POLE, S.SIGN, S.PERSON, S.BICYCLE]
    assert np.isin(m2, tail).sum() > np.isin(m1, tail).sum()
    assert ((m1 == m2) | np.isin(m1, tail) | np.isin(m2, tail)).all()


def test_labeled_styles_withholds_styles_from_the_labeled_lists(tmp_path: Path):
    root = generate_synthscapes(tmp_path / "ls", n_train=60, n_val=4, height=32, width=32, n_styles=4,
                                labeled_counts=(8, 16), labeled_styles=2)
    train = read_list(root / "splits" / "train.txt")
    previous: set = set()
    for n in (8, 16):
        labeled = read_list(root / "splits" / str(n) / "labeled.txt")
        unlabeled = read_list(root / "splits" / str(n) / "unlabeled.txt")
        assert len(labeled) == n and {img.split("/")[2] for img, _ in labeled} <= {"style00", "style01"}
        assert set(labeled) | set(unlabeled) == set(train) and not set(labeled) & set(unlabeled)
        assert {img.split("/")[2] for img, _ in unlabeled} == {"style00", "style01", "style02", "style03"}
        assert previous <= set(labeled)
        previous = set(labeled)
    assert read_manifest(root)["params"]["labeled_styles"] == 2
    # too few images of the labeled styles: refused before anything is rendered
    with pytest.raises(ValueError, match="labeled_styles=1 leaves"):
        generate_synthscapes(tmp_path / "few", n_train=20, n_val=0, height=32, width=32, n_styles=4,
                             labeled_counts=(16,), labeled_styles=1)
    assert not (tmp_path / "few").exists() or not any((tmp_path / "few").rglob("*.png"))
    for bad in ({"labeled_styles": 5}, {"tail_scale": 0.5}, {"tail_scale": "big"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate_synthscapes(tmp_path / "bad", n_train=20, n_val=0, height=32, width=32, n_styles=4,
                                 labeled_counts=(8,), **bad)


def test_window_clips_to_the_image():
    sy, sx, ys, xs = S._window(-10.0, 70.0, 3.0, 3.0, 64, 64)  # entirely off-screen
    assert ys.size == 0 and xs.size == 0
    sy, sx, ys, xs = S._window(2.0, 2.0, 5.0, 5.0, 64, 64)
    assert sy == slice(0, 8) and sx == slice(0, 8) and ys[0, 0] == 0.5


def test_sample_things_far_to_near_and_cars_on_road():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        ground = S._sample_ground(rng, 64, 64)
        things = S._sample_things(rng, ground, 64, 64)
        depths = [t.d for t in things]
        assert depths == sorted(depths)
        cars = [t for t in things if t.cls == S.CAR]
        assert 1 <= len(cars) <= 4
        for t in cars:
            lo, hi = ground.road_edges(t.d, 64)
            assert lo <= t.x <= hi


# ------------------------------------------------------------------------------------------ render_scene


def test_render_scene_shapes_values_and_determinism():
    style = make_styles(2, seed=0)[1]
    img, mask = render_scene(np.random.default_rng(3), style, 48, 64)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert mask.shape == (48, 64) and mask.dtype == np.uint8
    assert mask.max() < C  # no ignore band by default
    img2, mask2 = render_scene(np.random.default_rng(3), style, 48, 64)
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    img3, _ = render_scene(np.random.default_rng(4), style, 48, 64)
    assert not np.array_equal(img, img3)


def test_render_scene_boundary_band_flag():
    style = make_styles(1, seed=0)[0]
    _, plain = render_scene(np.random.default_rng(0), style, 64, 64)
    _, banded = render_scene(np.random.default_rng(0), style, 64, 64, boundary_ignore=True)
    np.testing.assert_array_equal(banded, boundary_band(plain))
    assert (banded == 255).any() and set(np.unique(banded)) <= set(range(C)) | {255}


def test_render_scene_rejects_bad_input():
    style = make_styles(1, seed=0)[0]
    with pytest.raises(ValueError, match="height=8"):
        render_scene(np.random.default_rng(0), style, 8, 64)
    bad = S.Style("x", style.freq_scale[:3], style.angle_offset, style.colours)
    with pytest.raises(ValueError, match="style 'x'"):
        render_scene(np.random.default_rng(0), bad, 32, 32)


def test_style_changes_appearance_not_layout():
    # same rng seed -> same scene and camera; only the style differs, so the mask is equal and the
    # class colours differ measurably (style colours are redrawn with sd 0.22 = ~56 grey levels).
    a, b = make_styles(2, seed=0)
    diffs = []
    for seed in range(8):
        img_a, mask_a = render_scene(np.random.default_rng(seed), a, 64, 64)
        img_b, mask_b = render_scene(np.random.default_rng(seed), b, 64, 64)
        assert np.array_equal(mask_a, mask_b)
        sky = mask_a == S.SKY
        diffs.append(np.abs(img_a[sky].mean(0) - img_b[sky].mean(0)).max())
    assert np.mean(diffs) > 30


def test_styles_differ_across_the_dataset():
    # mean vegetation colour per style over 160 images, 4 styles: style means differ by far more
    # than the per-image scatter would explain (camera gain etc. averages out over ~40 images).
    means = {}
    for k, img, mask in iter_scenes(160, height=32, width=32, n_styles=4, seed=0):
        means.setdefault(k, []).append(img[mask == S.VEGETATION].mean(0))
    per_style = np.array([np.mean(v, axis=0) for _, v in sorted(means.items())])
    spread = max(np.abs(per_style[i] - per_style[j]).max() for i in range(4) for j in range(i))
    assert spread > 40


def test_long_tail_head_and_tail_presence():
    pixels = np.zeros(256, np.int64)
    presence = np.zeros(256, np.int64)
    n = 200
    for _, _, mask in iter_scenes(n, height=64, width=64):
        counts = np.bincount(mask.ravel(), minlength=256)
        pixels += counts
        presence += counts > 0
    share = pixels[:C] / pixels[:C].sum()
    assert share.min() > 0  # every class appears
    assert share.max() / share.min() > 100  # long tail (§4.1 (a): ~130:1)
    pres = presence[:C] / n
    head, tail = list(SYNTHSCAPES.head), list(SYNTHSCAPES.tail)
    assert pres[head].min() >= 0.95
    assert pres[tail].max() < 0.8 and share[tail].max() < share[head].min()


def test_class_table_hand_example():
    px = np.zeros(256, np.int64)
    px[[0, 1, 255]] = [3, 1, 50]  # ignore pixels do not count
    pres = np.zeros(256, np.int64)
    pres[[0, 1]] = [2, 1]
    rows = class_table(px, pres, n_images=2)
    assert rows[0] == {"class": "road", "share": 0.75, "presence": 1.0}
    assert rows[1] == {"class": "sidewalk", "share": 0.25, "presence": 0.5}
    assert len(rows) == C and all(r["share"] == 0 for r in rows[2:])


# ------------------------------------------------------------------------------------------ on-disk dataset

NAME = re.compile(r"^style(\d\d)_(\d{6})_000019$")


def test_layout_names_and_pngs(small_root: Path):
    root = small_root
    for split, n in (("train", 40), ("val", 8)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        masks = sorted((root / "gtFine" / split).glob("*/*_gtFine_labelTrainIds.png"))
        assert len(images) == len(masks) == n
        for img_p, mask_p in zip(images, masks):
            stem = img_p.name[: -len("_leftImg8bit.png")]
            m = NAME.match(stem)
            assert m and img_p.parent.name == f"style{m.group(1)}" and int(m.group(1)) < 4
            assert mask_p == root / "gtFine" / split / img_p.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        with Image.open(images[0]) as im, Image.open(masks[0]) as mk:
            assert im.mode == "RGB" and im.size == (64, 64) and mk.mode == "L" and mk.size == (64, 64)
    seqs = sorted(int(NAME.match(p.name[:-16]).group(2)) for p in (root / "leftImg8bit" / "train").glob("*/*.png"))
    assert seqs == list(range(40))


def test_split_files(small_root: Path):
    root = small_root
    train = read_list(root / "splits" / "train.txt")
    val = read_list(root / "splits" / "val.txt")
    assert len(train) == 40 and len(val) == 8
    for img, mask in train + val:
        assert (root / img).is_file() and (root / mask).is_file()
        assert mask == "gtFine/" + img[len("leftImg8bit/"): -len("leftImg8bit.png")] + "gtFine_labelTrainIds.png"
    assert (root / "splits" / "train.txt").read_text().endswith("\n")
    previous: set = set()
    for n in (8, 16):
        labeled = read_list(root / "splits" / str(n) / "labeled.txt")
        unlabeled = read_list(root / "splits" / str(n) / "unlabeled.txt")
        assert len(labeled) == n and len(unlabeled) == 40 - n
        assert not set(labeled) & set(unlabeled) and set(labeled) | set(unlabeled) == set(train)
        assert unlabeled == sorted(unlabeled, key=train.index)  # sorted complement
        assert labeled != sorted(labeled, key=train.index)  # a random draw, not the first n
        assert previous <= set(labeled)  # nested, like UniMatch's Cityscapes lists
        previous = set(labeled)


def test_manifest_and_class_counts(small_root: Path):
    m = read_manifest(small_root)
    assert m["generator"] == GENERATOR_VERSION
    assert m["params"] == {"n_train": 40, "n_val": 8, "height": 64, "width": 64, "n_styles": 4, "seed": 0,
                           "labeled_counts": [8, 16], "boundary_ignore": False,
                           "tail_scale": 1.0, "labeled_styles": None, "style_textures": "shared"}
    counts = np.zeros(256, np.int64)
    for p in (small_root / "gtFine" / "train").glob("*/*.png"):
        counts += np.bincount(load(p).ravel(), minlength=256)
    assert set(np.flatnonzero(counts)) <= set(range(C))
    assert [m["pixel_counts"]["train"][name] for name in SYNTHSCAPES.names] == counts[:C].tolist()
    assert m["pixel_counts"]["train"]["ignore"] == 0
    assert sum(m["style_counts"]["train"]) == 40
    assert read_manifest(small_root / "missing") is None


def test_every_class_in_the_generated_set(small_root: Path):
    m = read_manifest(small_root)
    total = {k: m["pixel_counts"]["train"][k] + m["pixel_counts"]["val"][k] for k in SYNTHSCAPES.names}
    assert all(v > 0 for v in total.values()), total


def test_disk_matches_iter_scenes(small_root: Path):
    train = read_list(small_root / "splits" / "train.txt")
    for i, (k, img, mask) in enumerate(iter_scenes(3, height=64, width=64, n_styles=4, seed=0, start=5)):
        img_p, mask_p = train[5 + i]
        assert f"style{k:02d}_{5 + i:06d}" in img_p
        assert np.array_equal(load(small_root / img_p), img)
        assert np.array_equal(load(small_root / mask_p), mask)


def test_generation_is_deterministic_and_seed_dependent(tmp_path: Path, small_root: Path):
    params = {**SMALL, "n_train": 12, "n_val": 4, "labeled_counts": (4,)}
    a = files_of(generate_synthscapes(tmp_path / "a", **params))
    b = files_of(generate_synthscapes(tmp_path / "b", **params))
    assert a == b  # byte-identical images, masks, lists and manifest
    c = files_of(generate_synthscapes(tmp_path / "c", **{**params, "seed": 1}))
    masks_a = {k: v for k, v in a.items() if k.endswith("labelTrainIds.png")}
    masks_c = {k: v for k, v in c.items() if k.endswith("labelTrainIds.png")}
    assert sorted(masks_a.values()) != sorted(masks_c.values())
    # image i does not depend on how many images are generated: the first 12 of small_root match
    small = files_of(small_root)
    for name in a:
        if name.startswith("leftImg8bit/train"):
            assert small[name] == a[name]


def test_generation_with_worker_processes_is_identical(tmp_path: Path):
    params = {**SMALL, "n_train": 60, "n_val": 0, "height": 32, "width": 32, "labeled_counts": (8,)}
    serial = files_of(generate_synthscapes(tmp_path / "s", **params))
    parallel = files_of(generate_synthscapes(tmp_path / "p", **params, num_workers=2))
    assert serial == parallel


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"labeled_counts": (8, 100)}, r"labeled_counts \[100\] exceed n_train=40"),
        ({"height": 8}, "height=8"),
        ({"n_train": 0}, "n_train=0"),
        ({"n_styles": 1.5}, "n_styles=1.5"),
        ({"labeled_counts": (0,)}, r"labeled_counts\[\]=0"),
        ({"seed": None}, "seed=None"),
        ({"style_textures": "random"}, r"style_textures='random'; expected one of \['shared', 'permuted', 'permuted_head'\]"),
    ],
)
def test_generate_rejects_bad_parameters(tmp_path: Path, override, message):
    with pytest.raises(ValueError, match=message):
        generate_synthscapes(tmp_path / "x", **{**SMALL, **override})


def test_generate_refuses_a_non_empty_folder(tmp_path: Path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "junk.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthscapes(tmp_path / "x", **SMALL)


# ------------------------------------------------------------------------------------------ ensure_synthscapes

TINY = dict(n_train=10, n_val=2, height=32, width=32, n_styles=2, seed=0, labeled_counts=[4])


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = S.generate_synthscapes

    def wrapper(root, **kw):
        calls.append(kw)
        return real(root, **kw)

    monkeypatch.setattr(S, "generate_synthscapes", wrapper)
    return calls


def test_ensure_reuses_cache_and_regenerates_on_change(tmp_path: Path, counted):
    root = tmp_path / "cache" / "ds"
    assert ensure_synthscapes(root, **TINY) == root
    assert len(counted) == 1
    mtime = (root / "manifest.json").stat().st_mtime_ns
    # same parameters (counts given as a tuple in another order) -> reused
    ensure_synthscapes(root, **{**TINY, "labeled_counts": (4,)}, num_workers=0)
    assert len(counted) == 1 and (root / "manifest.json").stat().st_mtime_ns == mtime
    # changed parameters -> regenerated in place
    ensure_synthscapes(root, **{**TINY, "n_val": 3})
    assert len(counted) == 2 and read_manifest(root)["params"]["n_val"] == 3
    assert len(read_list(root / "splits" / "val.txt")) == 3
    ensure_synthscapes(root, **{**TINY, "n_val": 3, "style_textures": "permuted"})
    assert len(counted) == 3 and read_manifest(root)["params"]["style_textures"] == "permuted"
    # no temporary or old folders left next to the dataset (only the lock file)
    assert sorted(p.name for p in root.parent.iterdir()) == [".ds.lock", "ds"]


def test_ensure_regenerates_stale_or_incomplete_folders(tmp_path: Path, counted):
    root = tmp_path / "ds"
    ensure_synthscapes(root, **TINY)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["generator"] = "synthscapes-v0"
    (root / "manifest.json").write_text(json.dumps(manifest))
    ensure_synthscapes(root, **TINY)  # version changed
    assert len(counted) == 2 and read_manifest(root)["generator"] == GENERATOR_VERSION
    ensure_synthscapes(root, **{**TINY, "seed": 2})  # parameters changed
    assert len(counted) == 3 and read_manifest(root)["params"]["seed"] == 2


def test_ensure_never_replaces_a_foreign_folder(tmp_path: Path, counted):
    root = tmp_path / "mine"
    root.mkdir()
    ensure_synthscapes(root, **TINY)  # an empty folder is fine
    assert len(counted) == 1
    (root / "manifest.json").unlink()  # now it is a non-empty folder that is not a synthscapes dataset
    with pytest.raises(FileExistsError, match="no synthscapes manifest.json"):
        ensure_synthscapes(root, **TINY)
    assert (root / "splits" / "train.txt").exists()  # untouched


def test_ensure_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch):
    def crash(root, **kw):
        (Path(root) / "leftImg8bit").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "generate_synthscapes", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthscapes(tmp_path / "ds", **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock"]


def test_ensure_concurrent_callers_generate_once(tmp_path: Path, counted):
    root = tmp_path / "ds"
    results, errors = [], []

    def call():
        try:
            results.append(ensure_synthscapes(root, **TINY))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [root] * 3 and len(counted) == 1


def test_ensure_rejects_unknown_parameters(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown parameter.*'size'"):
        ensure_synthscapes(tmp_path / "ds", size=64)


# ------------------------------------------------------------------------------------------ private helpers


def test_ref_coords_are_on_the_64px_reference_grid():
    ys, xs = S._ref_coords(32, 64)  # scale 64 / min(32, 64) = 2
    assert ys.shape == (32, 1) and xs.shape == (1, 64)
    assert ys[0, 0] == 1.0 and xs[0, -1] == 127.0  # (0 + 0.5) * 2, (63 + 0.5) * 2
    assert not ys.flags.writeable  # cached: must not be modified by callers


def test_shade_uses_instance_colours_and_class_textures():
    style = make_styles(1, seed=0)[0]
    label = np.full((32, 32), S.ROAD, np.uint8)
    label[:, 16:] = S.SKY
    inst = np.zeros((32, 32), np.int16)
    inst[:8, :8] = 1
    inst_colour = np.array([[0, 0, 0], [0.9, 0.1, 0.1]], np.float32)
    img = S._shade(np.random.default_rng(0), style, label, inst, inst_colour)
    assert img.shape == (32, 32, 3) and img.dtype == np.float32
    # instance pixels = instance colour + road texture (amplitude 0.12, mean ~0 over 8 x 8 px)
    np.testing.assert_allclose(img[:8, :8].mean((0, 1)), [0.9, 0.1, 0.1], atol=0.06)
    # the road's fine grating (period <= 4.5 / 0.6 = 7.5 ref px) jumps between neighbours; the sky's
    # gradient (period >= 200 / 1.7 = 118 ref px, amplitude 0.2) changes by <= 0.2 * 2 pi / 118 * 2 = 0.02 per px
    road_step = np.abs(np.diff(img[20, :16, 0])).max()
    sky_step = np.abs(np.diff(img[20, 16:, 0])).max()
    assert road_step > 0.1 and sky_step < 0.025


def test_swap_into_place_replaces_and_cleans_up(tmp_path: Path):
    old, new = tmp_path / "ds", tmp_path / "tmp"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    S._swap_into_place(new, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"] and (old / "b").read_text() == "new"
