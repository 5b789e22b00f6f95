"""Synthscapes: the embedded procedural, long-tailed street-scene dataset (specs/data.md §4, design v2).

A scene follows a Cityscapes-like grammar (§4.1): sky on top, a skyline of building blocks and trees,
a horizon at 35-55 % of the height with a random vanishing point, a road trapezoid with sidewalk
wedges and grass verges, and perspective-scaled "things" (cars on the road; poles with diamond
signs, persons and rare bicycles on the sidewalks). Each class has a characteristic texture type,
which is the main appearance cue; colours are deliberately unreliable (overlapping base colours,
per-instance colours, a random per-image camera transform).

v2 adds 16 fixed *styles* ("cities", §4.1 (b)): each style rescales every class's texture
frequency (x0.6-1.7), rotates its orientation (+-0.6 rad) and redraws its colour (sd 0.22),
so each style is a small domain that only the unlabeled data covers when labels are few.

``style_textures="permuted"`` (v2.2) also gives each style its own assignment of the ten texture
cues to the ten classes (a seeded permutation per style): road may wear the window grid in one city
and the fine grating in another. Geometry (layout, shapes, sizes) is shared by every style, so a
network can only tell the classes of an unseen style apart by where and what shape they are, and the
texture of a withheld style is information that only its unlabeled images carry (no augmentation
invents it). ``"permuted_head"`` permutes only the six head classes' textures (the tail things keep
theirs). ``"shared"`` (the default) keeps the v2 table: every style uses the same class textures.

On disk the dataset uses the exact Cityscapes layout with style-as-city (§1.1) and UniMatch split
lists (§2.2, §2.3); see :func:`generate_synthscapes` and :func:`ensure_synthscapes`.

Boundary band: the optional 1-px ignore (255) band at class boundaries is **off by default**,
like Cityscapes ``labelTrainIds`` (VOC has one). Poles are 1-3 px wide at 64-128 px, so a band would
erase most of the thinnest tail class.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from semiseg_lit.data.labels import ClassInfo

__all__ = [
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "SYNTHSCAPES",
    "Style",
    "STYLE_TEXTURES",
    "make_styles",
    "style_name",
    "image_rng",
    "render_scene",
    "boundary_band",
    "camera_transform",
    "iter_scenes",
    "class_table",
    "generate_synthscapes",
    "ensure_synthscapes",
    "read_manifest",
    "labeled_pool_size",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = "synthscapes-v2.2"
STYLE_TEXTURES = ("shared", "permuted", "permuted_head")
IGNORE_INDEX = 255
REF_SIZE = 64  # texture periods are given in pixels of a 64-px reference grid (resolution independent)
MIN_SIZE = 16
FRAME = 19  # Cityscapes' annotated frame is the 20th of a snippet: <city>_<seq>_000019

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, POLE, SIGN, PERSON, BICYCLE = range(10)
NUM_CLASSES = 10

SYNTHSCAPES = ClassInfo(
    name="synthscapes",
    names=("road", "sidewalk", "building", "vegetation", "sky", "car", "pole", "sign", "person", "bicycle"),
    # Cityscapes colours of the namesake classes (§1.1 table): distinct and familiar.
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (70, 130, 180),
        (0, 0, 142), (153, 153, 153), (220, 220, 0), (220, 20, 60), (119, 11, 32),
    ),  # fmt: skip
    head=(ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR),
    tail=(POLE, SIGN, PERSON, BICYCLE),
)

# Seed-sequence spawn keys: every random stream is a pure function of (seed, key, ...).
_SPLIT_KEYS = {"train": 0, "val": 1}
_STYLE_KEY = 2
_PARTITION_KEY = 3
_TEXTURE_PERM_KEY = 4


# ----------------------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Texture:
    """One class's texture cue: ``kind`` in {sine, square, grid, blocks, checker}; ``period`` in
    reference px; ``angle`` = direction of the wave vector (rad; 0 = varies along x); ``amplitude``
    added to the colour in [0, 1] units."""

    kind: str
    period: float
    angle: float
    amplitude: float


# §4.1 (c): road fine grating, sidewalk diagonal grating, building window grid, vegetation blocky
# noise, sky smooth vertical gradient, car coarse vertical bands, pole fine vertical (the wave runs
# along the pole so it stays visible on a 1-px pole), sign checker, person diagonal, bicycle fine diagonal.
_TEXTURES: tuple[_Texture, ...] = (
    _Texture("sine", 4.5, 0.0, 0.12),  # road
    _Texture("square", 7.0, math.pi / 4, 0.12),  # sidewalk
    _Texture("grid", 9.0, 0.0, 0.18),  # building
    _Texture("blocks", 4.0, 0.0, 0.20),  # vegetation
    _Texture("sine", 200.0, math.pi / 2, 0.20),  # sky
    _Texture("sine", 14.0, 0.0, 0.18),  # car
    _Texture("sine", 4.0, math.pi / 2, 0.20),  # pole
    _Texture("checker", 4.0, math.pi / 4, 0.25),  # sign
    _Texture("sine", 6.0, 3 * math.pi / 4, 0.18),  # person
    _Texture("sine", 4.0, math.pi / 4, 0.20),  # bicycle
)

# Base RGB colours in [0, 1]; deliberately overlapping (greys for road/building/pole, etc.).
_BASE_COLOURS = np.array(
    [
        [0.45, 0.43, 0.46],  # road
        [0.58, 0.52, 0.55],  # sidewalk
        [0.50, 0.46, 0.42],  # building
        [0.36, 0.50, 0.28],  # vegetation
        [0.58, 0.70, 0.84],  # sky
        [0.35, 0.35, 0.50],  # car
        [0.50, 0.50, 0.50],  # pole
        [0.80, 0.70, 0.25],  # sign
        [0.65, 0.35, 0.35],  # person
        [0.45, 0.25, 0.25],  # bicycle
    ],
    dtype=np.float32,
)
_INSTANCE_CLASSES = (CAR, PERSON, BICYCLE)  # each instance gets its own colour
_BLOCK_TABLE = 64  # size of the random value table behind the blocky-noise texture


@dataclass(frozen=True)
class Style:
    """A "city" (§4.1 (b)): per-class texture frequency scale, orientation offset (rad) and RGB colour;
    ``texture_of[c]`` = which entry of the texture table class c wears (identity unless the styles
    permute textures)."""

    name: str
    freq_scale: tuple[float, ...]
    angle_offset: tuple[float, ...]
    colours: tuple[tuple[float, float, float], ...]
    texture_of: tuple[int, ...] = tuple(range(NUM_CLASSES))


def style_name(k: int) -> str:
    """Folder / city name of style ``k``: ``style00``, ``style01``, ..."""
    return f"style{k:02d}"


def make_styles(n_styles: int, seed: int, textures: str = "shared") -> list[Style]:
    """The ``n_styles`` fixed styles of a dataset seed (§4.1 (b)).

    For style k and class c: ``freq_scale = exp(U(log 0.6, log 1.7))``, ``angle_offset = U(-0.6, 0.6)``,
    ``colour = clip(base_c + N(0, 0.22), 0.05, 0.95)``. Style k is drawn from its own seed sequence
    ``(seed, 2, k)``, so the first styles do not change when ``n_styles`` grows.

    ``textures="permuted"``: style k's ``texture_of`` is a permutation of the 10 texture cues drawn from
    the separate sequence ``(seed, 4, k)`` (so frequencies, angles and colours are those of "shared");
    class c then wears texture ``texture_of[c]`` with its own base period, orientation and amplitude.
    ``textures="permuted_head"``: the same, but only the six head classes (road .. car) swap textures among
    themselves; the tail things (pole, sign, person, bicycle) keep theirs in every style.
    """
    if int(n_styles) < 1:
        raise ValueError(f"make_styles: n_styles={n_styles}; expected >= 1")
    if textures not in STYLE_TEXTURES:
        raise ValueError(f"make_styles: textures={textures!r}; expected one of {list(STYLE_TEXTURES)}")
    styles = []
    for k in range(int(n_styles)):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_STYLE_KEY, k)))
        scale = np.exp(rng.uniform(math.log(0.6), math.log(1.7), NUM_CLASSES))
        angle = rng.uniform(-0.6, 0.6, NUM_CLASSES)
        colour = np.clip(_BASE_COLOURS + rng.normal(0.0, 0.22, _BASE_COLOURS.shape), 0.05, 0.95)
        texture_of = tuple(range(NUM_CLASSES))
        if textures != "shared":
            perm_rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_TEXTURE_PERM_KEY, k)))
            moved = np.arange(NUM_CLASSES) if textures == "permuted" else np.array(SYNTHSCAPES.head)
            table = np.arange(NUM_CLASSES)
            table[moved] = moved[perm_rng.permutation(len(moved))]
            texture_of = tuple(int(v) for v in table)
        styles.append(
            Style(
                name=style_name(k),
                freq_scale=tuple(float(v) for v in scale),
                angle_offset=tuple(float(v) for v in angle),
                colours=tuple(tuple(float(v) for v in rgb) for rgb in colour),  # type: ignore[misc]
                texture_of=texture_of,
            )
        )
    return styles


@lru_cache(maxsize=8)
def _ref_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in reference px, ``(H, 1)`` and ``(1, W)``: ``(i + 0.5) * 64 / min(H, W)``."""
    s = REF_SIZE / min(height, width)
    ys = ((np.arange(height, dtype=np.float32) + 0.5) * s)[:, None]
    xs = ((np.arange(width, dtype=np.float32) + 0.5) * s)[None, :]
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def _texture(
    tex: _Texture, period: float, angle: float, phase: np.ndarray, table: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Texture values in [-1, 1] at the given reference coordinates (1-D arrays of the pixels to shade).

    With ``u = x cos(a) + y sin(a)``, ``v = -x sin(a) + y cos(a)`` and ``f = 2 pi / period``:
    sine ``sin(f u + p0)``; square ``sign(sin(f u + p0))``; grid (windows) ``-1`` where
    ``frac(u / period + p0) < 0.55`` and ``frac(v / (1.2 period) + p1) < 0.6`` else ``+0.4``;
    blocks ``table[floor(u / period) mod K, floor(v / period) mod K]``; checker
    ``sign(sin(f u + p0)) * sign(sin(f v + p1))``. ``phase`` is a per-image pair in [0, 1).
    """
    ca, sa = math.cos(angle), math.sin(angle)
    u = xs * ca + ys * sa
    if tex.kind == "sine":
        return np.sin(u * (2 * math.pi / period) + 2 * math.pi * phase[0])
    if tex.kind == "square":
        return np.sign(np.sin(u * (2 * math.pi / period) + 2 * math.pi * phase[0]))
    v = ys * ca - xs * sa
    if tex.kind == "grid":
        win = (np.mod(u / period + phase[0], 1.0) < 0.55) & (np.mod(v / (1.2 * period) + phase[1], 1.0) < 0.6)
        return np.where(win, np.float32(-1.0), np.float32(0.4))
    if tex.kind == "blocks":
        k = table.shape[0]
        i = np.floor(u / period + k * phase[0]).astype(np.int64) % k
        j = np.floor(v / period + k * phase[1]).astype(np.int64) % k
        return table[i, j]
    if tex.kind == "checker":
        f = 2 * math.pi / period
        return np.sign(np.sin(u * f + 2 * math.pi * phase[0])) * np.sign(np.sin(v * f + 2 * math.pi * phase[1]))
    raise ValueError(f"unknown texture kind {tex.kind!r}; expected sine, square, grid, blocks or checker")


# ----------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Ground:
    """Horizon row ``hz`` (px), vanishing column ``vx`` (px) and the road / sidewalk / verge slopes.

    At depth ``d = (y - hz) / (H - hz)`` the road spans ``vx - W (w0 + al d)`` .. ``vx + W (w0 + ar d)``;
    the sidewalks add ``W sl d`` / ``W sr d`` on each side and the verges another ``W g d``.
    """

    hz: float
    vx: float
    w0: float
    al: float
    ar: float
    sl: float
    sr: float
    g: float

    def depth(self, y: np.ndarray | float, height: int) -> np.ndarray | float:
        """Perspective depth ``d = (y - hz) / (H - hz)``: 0 at the horizon, 1 at the bottom row."""
        return (y - self.hz) / (height - self.hz)

    def row_of(self, d: float, height: int) -> float:
        """Inverse of :meth:`depth`: the image row of depth ``d``."""
        return self.hz + d * (height - self.hz)

    def road_edges(self, d: np.ndarray | float, width: int) -> tuple[Any, Any]:
        """Left and right road edges (px) at depth ``d``."""
        return self.vx - width * (self.w0 + self.al * d), self.vx + width * (self.w0 + self.ar * d)


def _sample_ground(rng: np.random.Generator, height: int, width: int) -> _Ground:
    """Horizon at 35-55 % of H, vanishing point at 30-70 % of W, random wedge slopes (§4.1)."""
    return _Ground(
        hz=float(rng.uniform(0.35, 0.55) * height),
        vx=float(rng.uniform(0.3, 0.7) * width),
        w0=float(rng.uniform(0.01, 0.04)),
        al=float(rng.uniform(0.4, 0.7)),
        ar=float(rng.uniform(0.4, 0.7)),
        sl=float(rng.uniform(0.15, 0.35)),
        sr=float(rng.uniform(0.15, 0.35)),
        g=float(rng.uniform(0.05, 0.2)),
    )


def _skyline_columns(rng: np.random.Generator, ground: _Ground, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Per-column (top, bottom, class) of the skyline: blocks of width 8-22 % of W, 60 % buildings
    (flat top ``hz - h`` with ``h = U(0.3, 0.9) hz``), 30 % trees (elliptic crown
    ``top(x) = hz - h sqrt(1 - t^2)``, t = -1..1 across the block), 10 % gaps (sky); each block's
    base sits ``U(0, 0.2) (H - hz)`` below the horizon."""
    n_max = int(math.ceil(1.3 / 0.08))  # enough blocks to span the width
    widths = rng.uniform(0.08, 0.22, n_max) * width
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]]) - rng.uniform(0, 1) * widths[0]
    kind = rng.choice(np.array([BUILDING, VEGETATION, SKY]), size=n_max, p=[0.6, 0.3, 0.1])
    rise = rng.uniform(0.3, 0.9, n_max) * ground.hz
    drop = rng.uniform(0.0, 0.2, n_max) * (height - ground.hz)
    cols = np.arange(width, dtype=np.float32) + 0.5
    block = np.clip(np.searchsorted(starts, cols, side="right") - 1, 0, n_max - 1)
    t = np.clip((cols - starts[block]) / widths[block] * 2 - 1, -1, 1)  # -1..1 across the block
    crown = np.sqrt(1 - t**2)
    is_tree = kind[block] == VEGETATION
    top = ground.hz - rise[block] * np.where(is_tree, crown, 1.0)
    bottom = ground.hz + drop[block]
    return top.astype(np.float32), bottom.astype(np.float32), kind[block].astype(np.uint8)


def _background(rng: np.random.Generator, ground: _Ground, height: int, width: int) -> np.ndarray:
    """Label map of the stuff classes: sky, skyline, grass below the horizon, then the road,
    sidewalk and verge wedges painted over (§4.1)."""
    rows = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    cols = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    top, bottom, kind = _skyline_columns(rng, ground, height, width)
    label = np.where(rows >= ground.hz, np.uint8(VEGETATION), np.uint8(SKY))
    label = np.where((rows >= top[None]) & (rows < bottom[None]) & (kind[None] != SKY), kind[None], label)
    d = np.maximum(ground.depth(rows, height), 0.0)
    below = rows >= ground.hz
    left, right = ground.road_edges(d, width)
    dist = np.maximum(left - cols, cols - right)  # > 0 outside the road, in px
    side_w = np.where(cols < ground.vx, ground.sl, ground.sr) * width * d
    label = np.where(below & (dist <= side_w + ground.g * width * d), np.uint8(VEGETATION), label)
    label = np.where(below & (dist <= side_w), np.uint8(SIDEWALK), label)
    label = np.where(below & (dist <= 0), np.uint8(ROAD), label)
    return label.astype(np.uint8)


@dataclass(frozen=True)
class _Thing:
    """A perspective-scaled object: class, depth ``d`` in (0, 1], base row / centre column (px), size unit (px)."""

    cls: int
    d: float
    y: float
    x: float
    s: float
    sign: bool = False


def _sample_things(rng: np.random.Generator, ground: _Ground, height: int, width: int) -> list[_Thing]:
    """Cars (1-4 on the road), poles (p=0.75 for one, then 0.35 for a second; each with a sign at
    p=0.6), persons (p=0.7, 1-3) and bicycles (p=0.4) on the sidewalks (some fall outside the frame).
    Depth ``d ~ U(d_lo, 1)``, size unit ``s = W d``. Returned far-to-near (painter's order)."""
    things: list[_Thing] = []

    def on_sidewalk(cls: int, d_lo: float, sign: bool = False) -> None:
        d = float(rng.uniform(d_lo, 1.0))
        left_side = bool(rng.random() < 0.5)
        lo, hi = ground.road_edges(d, width)
        off = float(rng.uniform(0.25, 0.85)) * (ground.sl if left_side else ground.sr) * width * d
        x = lo - off if left_side else hi + off
        things.append(_Thing(cls, d, ground.row_of(d, height), x, width * d, sign))

    for _ in range(int(rng.integers(1, 5))):
        d = float(rng.uniform(0.12, 1.0))
        lo, hi = ground.road_edges(d, width)
        things.append(_Thing(CAR, d, ground.row_of(d, height), float(lo + (hi - lo) * rng.uniform(0.2, 0.8)), width * d))
    if rng.random() < 0.75:
        on_sidewalk(POLE, 0.3, sign=bool(rng.random() < 0.6))
        if rng.random() < 0.35:
            on_sidewalk(POLE, 0.3, sign=bool(rng.random() < 0.6))
    if rng.random() < 0.7:
        for _ in range(int(rng.integers(1, 4))):
            on_sidewalk(PERSON, 0.25)
    if rng.random() < 0.4:
        on_sidewalk(BICYCLE, 0.3)
    return sorted(things, key=lambda t: t.d)  # painter's order: far first


def _window(cy: float, cx: float, ry: float, rx: float, height: int, width: int) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Bounding box of a shape (clipped to the image) and its pixel-centre coordinates ``(h, 1)``, ``(1, w)``."""
    y0, y1 = max(int(math.floor(cy - ry)), 0), min(int(math.ceil(cy + ry)) + 1, height)
    x0, x1 = max(int(math.floor(cx - rx)), 0), min(int(math.ceil(cx + rx)) + 1, width)
    y1, x1 = max(y1, y0), max(x1, x0)
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5)[None, :]
    return slice(y0, y1), slice(x0, x1), ys, xs


# Thing geometry, in units of the size unit s = W d (d = perspective depth), §4.1 "things scaled by perspective".
_CAR_BODY = (0.11, 0.15)  # body height, half-width
_CAR_CABIN = (0.07, 0.095)  # cabin height, half-width (on top of the body)
_POLE = (0.85, 0.012)  # height, half-width (>= 0.5 px)
_SIGN_R = 0.085  # diamond half-diagonal (>= 1 px), centred on the pole top
_PERSON = (0.11, 0.037, 0.03)  # body ellipse semi-axes (y, x), head radius (>= 0.6 px)
_BIKE = (0.07, 0.35, 1.15)  # wheel radius (>= 1.5 px), rim thickness / radius, hub offset / radius


def _thing_parts(t: _Thing, tail_scale: float = 1.0) -> list[tuple[int, tuple[float, float, float, float], Any]]:
    """Parts of one thing as ``(class, bounding box (cy, cx, ry, rx) in px, inside(ys, xs) -> bool mask)``.

    car: body rectangle plus a narrower cabin; pole: a thin rectangle ``>= 1 px`` wide, with (flag) a diamond
    sign ``|y - yc| + |x - xc| <= r`` on top; person: body ellipse plus head disc; bicycle: two rings
    ``| ||p - c_i|| - r | <= th / 2`` side by side (§4.1 "poles with a diamond sign", "persons (ellipses)",
    "bicycles (two rings)"). The base of every thing sits on row ``t.y``.

    ``tail_scale`` k multiplies the size of the tail things (pole width, sign radius, person and bicycle
    sizes; not the pole height): their areas grow as k^2 (k^1 for poles). 1 is the v2 geometry.
    """
    s, y, x = t.s, t.y, t.x
    k = float(tail_scale)
    if t.cls == CAR:
        (bh, bw), (ch, cw) = _CAR_BODY, _CAR_CABIN
        h = (bh + ch) * s

        def car(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            body = (ys >= y - bh * s) & (np.abs(xs - x) <= bw * s)
            cabin = (ys >= y - h) & (np.abs(xs - x) <= cw * s)
            return (ys < y) & (body | cabin)

        return [(CAR, (y - h / 2, x, h / 2 + 1, bw * s + 1), car)]
    if t.cls == POLE:
        ph, half = _POLE[0] * s, max(0.5, _POLE[1] * s * k)
        parts: list[tuple[int, tuple[float, float, float, float], Any]] = [
            (POLE, (y - ph / 2, x, ph / 2 + 1, half + 1),
             lambda ys, xs: (ys >= y - ph) & (ys < y) & (np.abs(xs - x) <= half)),
        ]
        if t.sign:
            r = max(1.0, _SIGN_R * s * k)
            parts.append((SIGN, (y - ph, x, r + 1, r + 1),
                          lambda ys, xs: np.abs(ys - (y - ph)) + np.abs(xs - x) <= r))
        return parts
    if t.cls == PERSON:
        ry, rx, rh = _PERSON[0] * s * k, max(0.6, _PERSON[1] * s * k), max(0.6, _PERSON[2] * s * k)
        head_y = y - 2 * ry - 0.8 * rh

        def person(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            body = ((ys - (y - ry)) / ry) ** 2 + ((xs - x) / rx) ** 2 <= 1
            return body | ((ys - head_y) ** 2 + (xs - x) ** 2 <= rh**2)

        top = head_y - rh
        return [(PERSON, ((y + top) / 2, x, (y - top) / 2 + 1, max(rx, rh) + 1), person)]
    if t.cls == BICYCLE:
        r = max(1.5, _BIKE[0] * s * k)
        th, off, cy = max(1.0, _BIKE[1] * r), _BIKE[2] * r, y - r

        def bike(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            d2 = (ys - cy) ** 2
            left = np.abs(np.sqrt(d2 + (xs - (x - off)) ** 2) - r) <= th / 2
            right = np.abs(np.sqrt(d2 + (xs - (x + off)) ** 2) - r) <= th / 2
            return left | right

        return [(BICYCLE, (cy, x, r + th + 1, off + r + th + 1), bike)]
    raise ValueError(f"_thing_parts: unknown thing class {t.cls}")


# ----------------------------------------------------------------------------------------- appearance


def camera_transform(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random per-image "camera" on a float image in [0, 1] (§4.1 (c)).

    ``x = clip((g_c x - m) k + m + b, 0, 1) ** gamma + N(0, sigma)``, clipped to [0, 1], with per-channel
    gain ``g_c ~ U(0.7, 1.3)``, contrast ``k ~ U(0.7, 1.3)`` about the mean ``m``, brightness
    ``b ~ U(-0.15, 0.15)``, ``gamma ~ U(0.7, 1.4)`` and noise ``sigma ~ U(0, 0.06)``.
    """
    gain = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    contrast = np.float32(rng.uniform(0.7, 1.3))
    bright = np.float32(rng.uniform(-0.15, 0.15))
    gamma = np.float32(rng.uniform(0.7, 1.4))
    sigma = np.float32(rng.uniform(0.0, 0.06))
    x = img * gain
    m = x.mean(dtype=np.float32)
    x = np.clip((x - m) * contrast + m + bright, 0.0, 1.0) ** gamma
    x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(x, 0.0, 1.0)


def boundary_band(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """1-px ignore band: pixel (i, j) becomes ``ignore_index`` when its right or lower neighbour has a
    different label (one-sided, so the band is exactly 1 px wide). Returns a new array."""
    if mask.ndim != 2:
        raise ValueError(f"boundary_band: expected an (H, W) mask, got shape {mask.shape}")
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    return np.where(edge, np.asarray(ignore_index, dtype=mask.dtype), mask)


def _shade(
    rng: np.random.Generator, style: Style, label: np.ndarray, inst: np.ndarray, inst_colour: np.ndarray
) -> np.ndarray:
    """Float RGB image: per-pixel colour (class colour + per-image jitter N(0, 0.05), or the instance
    colour) plus ``amplitude * texture`` of the texture the style assigns the pixel's class, with the
    style's frequency / angle."""
    height, width = label.shape
    ys_ref, xs_ref = _ref_coords(height, width)
    colours = np.asarray(style.colours, dtype=np.float32) + rng.normal(0, 0.05, (NUM_CLASSES, 3)).astype(np.float32)
    phases = rng.random((NUM_CLASSES, 2))
    table = rng.uniform(-1, 1, (_BLOCK_TABLE, _BLOCK_TABLE)).astype(np.float32)
    img = colours[label]
    has_inst = inst > 0
    img[has_inst] = inst_colour[inst[has_inst]]
    flat = label.ravel()
    order = np.argsort(flat, kind="stable")  # group pixels by class: one pass per present class
    bounds = np.searchsorted(flat[order], np.arange(NUM_CLASSES + 1))
    rows, cols = np.divmod(order, width)
    yf = ys_ref[:, 0][rows]
    xf = xs_ref[0][cols]
    tex = np.empty(flat.shape, dtype=np.float32)
    for c in range(NUM_CLASSES):
        lo, hi = bounds[c], bounds[c + 1]
        if lo == hi:
            continue
        spec = _TEXTURES[style.texture_of[c]]
        period = spec.period / style.freq_scale[c]
        angle = spec.angle + style.angle_offset[c]
        tex[order[lo:hi]] = spec.amplitude * _texture(spec, period, angle, phases[c], table, yf[lo:hi], xf[lo:hi])
    return img + tex.reshape(height, width, 1)


def render_scene(
    rng: np.random.Generator, style: Style, height: int, width: int, *, boundary_ignore: bool = False,
    tail_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthscapes scene (§4.1): ``image`` (H, W, 3) uint8 and ``mask`` (H, W) uint8 of class ids
    (255 only on the optional 1-px boundary band, off by default).

    Label map: stuff background (:func:`_background`), then things in far-to-near order. Image:
    class / instance colours + class texture (:func:`_shade`), then :func:`camera_transform`,
    then ``round(255 x)``. Everything is drawn from ``rng``; ``tail_scale`` enlarges the tail things
    (:func:`_thing_parts`) without changing any draw.
    """
    height, width = int(height), int(width)
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"render_scene: height={height}, width={width}; expected both >= {MIN_SIZE}")
    if len(style.colours) != NUM_CLASSES or len(style.freq_scale) != NUM_CLASSES:
        raise ValueError(f"render_scene: style {style.name!r} must hold {NUM_CLASSES} classes")
    ground = _sample_ground(rng, height, width)
    label = _background(rng, ground, height, width)
    things = _sample_things(rng, ground, height, width)
    inst = np.zeros((height, width), dtype=np.int16)
    inst_colour = np.zeros((len(things) + 1, 3), dtype=np.float32)
    for k, t in enumerate(things, start=1):  # a handful of objects, each drawn in its bounding box
        inst_colour[k] = np.asarray(style.colours[t.cls], dtype=np.float32) + rng.normal(0, 0.15, 3)
        for cls, box, inside in _thing_parts(t, tail_scale):
            sy, sx, ys, xs = _window(*box, height, width)
            m = inside(ys, xs)
            label[sy, sx][m] = cls
            inst[sy, sx][m] = k if cls in _INSTANCE_CLASSES else 0
    img = camera_transform(_shade(rng, style, label, inst, inst_colour), rng)
    image = (img * 255.0 + 0.5).astype(np.uint8)
    mask = boundary_band(label) if boundary_ignore else label
    return image, mask


# ----------------------------------------------------------------------------------------- datasets


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Generator of one image, a pure function of (seed, split, index): ``SeedSequence(seed, spawn_key=(split_key, index))``."""
    if split not in _SPLIT_KEYS:
        raise ValueError(f"image_rng: split={split!r}; expected one of {sorted(_SPLIT_KEYS)}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_SPLIT_KEYS[split], int(index))))


def _scene(seed: int, split: str, index: int, styles: Sequence[Style], height: int, width: int,
           boundary_ignore: bool, tail_scale: float = 1.0) -> tuple[int, np.ndarray, np.ndarray]:
    """(style index, image, mask) of image ``index`` of ``split``; the style is drawn uniformly first."""
    rng = image_rng(seed, split, index)
    k = int(rng.integers(len(styles)))
    image, mask = render_scene(rng, styles[k], height, width, boundary_ignore=boundary_ignore,
                               tail_scale=tail_scale)
    return k, image, mask


def iter_scenes(
    n: int, *, height: int = 128, width: int = 128, n_styles: int = 16, seed: int = 0, split: str = "train",
    start: int = 0, boundary_ignore: bool = False, tail_scale: float = 1.0, style_textures: str = "shared",
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """In-memory ``(style index, image, mask)`` for images ``start .. start + n - 1`` of a split; the
    same pixels :func:`generate_synthscapes` writes for those parameters."""
    styles = make_styles(n_styles, seed, style_textures)
    for i in range(start, start + int(n)):
        yield _scene(seed, split, i, styles, height, width, boundary_ignore, tail_scale)


def class_table(pixel_counts: np.ndarray, presence_counts: np.ndarray, n_images: int) -> list[dict[str, Any]]:
    """Per class: ``share = pixels_c / sum_k pixels_k`` (ignore excluded) and ``presence = images_c / N``,
    sorted by share, largest first."""
    px = np.asarray(pixel_counts, dtype=np.float64)[:NUM_CLASSES]
    pres = np.asarray(presence_counts, dtype=np.float64)[:NUM_CLASSES]
    total = px.sum()
    rows = [
        {"class": SYNTHSCAPES.names[c], "share": px[c] / total if total else 0.0,
         "presence": pres[c] / n_images if n_images else 0.0}
        for c in range(NUM_CLASSES)
    ]
    return sorted(rows, key=lambda r: -r["share"])


def _record(split: str, style: str, index: int) -> tuple[str, str]:
    """Cityscapes-layout (image, mask) paths relative to the root (§1.1), style as city."""
    stem = f"{style}_{index:06d}_{FRAME:06d}"
    return (f"leftImg8bit/{split}/{style}/{stem}_leftImg8bit.png",
            f"gtFine/{split}/{style}/{stem}_gtFine_labelTrainIds.png")


def _generate_chunk(job: tuple[Path, str, int, int, dict[str, Any]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Render and write images ``lo .. hi - 1`` of one split (RGB and 'L' PNGs, fast zlib level 1);
    returns their style indices and the (256,) pixel and presence counts."""
    root, split, lo, hi, p = job
    styles = make_styles(p["n_styles"], p["seed"], p["style_textures"])
    pixels = np.zeros(256, dtype=np.int64)
    presence = np.zeros(256, dtype=np.int64)
    style_ids = []
    for i in range(lo, hi):
        k, image, mask = _scene(p["seed"], split, i, styles, p["height"], p["width"], p["boundary_ignore"],
                                p["tail_scale"])
        img_rel, mask_rel = _record(split, styles[k].name, i)
        Image.fromarray(image).save(root / img_rel, format="PNG", compress_level=1)
        Image.fromarray(mask).save(root / mask_rel, format="PNG", compress_level=1)
        counts = np.bincount(mask.ravel(), minlength=256)
        pixels += counts
        presence += counts > 0
        style_ids.append(k)
    return style_ids, pixels, presence


def _check_params(
    n_train: int, n_val: int, height: int, width: int, n_styles: int, seed: int,
    labeled_counts: Sequence[int], boundary_ignore: bool, tail_scale: float = 1.0,
    labeled_styles: int | None = None, style_textures: str = "shared",
) -> dict[str, Any]:
    """Validate the generation parameters; returns them normalised (ints, sorted unique counts)."""
    def as_int(key: str, v: Any, lo: int) -> int:
        try:
            ok = not isinstance(v, bool) and int(v) == v and int(v) >= lo
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"synthscapes: {key}={v!r}; expected an integer >= {lo}")
        return int(v)

    p = {
        "n_train": as_int("n_train", n_train, 1),
        "n_val": as_int("n_val", n_val, 0),
        "height": as_int("height", height, MIN_SIZE),
        "width": as_int("width", width, MIN_SIZE),
        "n_styles": as_int("n_styles", n_styles, 1),
        "seed": as_int("seed", seed, 0),
        "boundary_ignore": bool(boundary_ignore),
    }
    try:
        ok_scale = not isinstance(tail_scale, bool) and 1.0 <= float(tail_scale) <= 4.0
    except (TypeError, ValueError):
        ok_scale = False
    if not ok_scale:
        raise ValueError(f"synthscapes: tail_scale={tail_scale!r}; expected a number in [1, 4]")
    p["tail_scale"] = float(tail_scale)
    if style_textures not in STYLE_TEXTURES:
        raise ValueError(f"synthscapes: style_textures={style_textures!r}; expected one of {list(STYLE_TEXTURES)}")
    p["style_textures"] = str(style_textures)
    p["labeled_styles"] = None if labeled_styles in (None, 0) else as_int("labeled_styles", labeled_styles, 1)
    if p["labeled_styles"] is not None and p["labeled_styles"] > p["n_styles"]:
        raise ValueError(f"synthscapes: labeled_styles={labeled_styles!r}; expected at most n_styles={p['n_styles']}")
    counts = sorted({as_int("labeled_counts[]", n, 1) for n in labeled_counts})
    too_big = [n for n in counts if n > p["n_train"]]
    if too_big:
        raise ValueError(f"synthscapes: labeled_counts {too_big} exceed n_train={p['n_train']}")
    p["labeled_counts"] = counts
    return p


@lru_cache(maxsize=8)
def _train_styles(n_train: int, n_styles: int, seed: int) -> np.ndarray:
    """Style index of every train image: the first draw of its :func:`image_rng`, as in :func:`_scene`."""
    styles = np.array([int(image_rng(seed, "train", i).integers(n_styles)) for i in range(n_train)])
    styles.setflags(write=False)
    return styles


def labeled_pool_size(n_train: int, n_styles: int, seed: int, labeled_styles: int | None) -> int:
    """How many train images labeled lists can draw from: all of them, or those of styles 0..K-1."""
    if not labeled_styles:
        return int(n_train)
    return int((_train_styles(int(n_train), int(n_styles), int(seed)) < labeled_styles).sum())


def _labeled_order(p: dict[str, Any]) -> np.ndarray:
    """Train indices in the order labeled sets take them (the first n form ``splits/<n>/labeled.txt``):
    one seeded permutation of train, restricted to the images of styles ``0 .. labeled_styles - 1`` when
    that is set (image i's style is the first draw of :func:`image_rng`, as in :func:`_scene`)."""
    perm = np.random.default_rng(np.random.SeedSequence(p["seed"], spawn_key=(_PARTITION_KEY,))).permutation(p["n_train"])
    if p["labeled_styles"]:
        style = _train_styles(p["n_train"], p["n_styles"], p["seed"])
        perm = perm[style[perm] < p["labeled_styles"]]
        short = [n for n in p["labeled_counts"] if n > len(perm)]
        if short:
            raise ValueError(f"synthscapes: labeled_styles={p['labeled_styles']} leaves {len(perm)} train images "
                             f"of the labeled styles, fewer than labeled_counts {short}; raise "
                             "data.synthscapes.labeled_styles or n_train")
    return perm


def generate_synthscapes(
    root: Path, *, n_train: int = 1000, n_val: int = 200, height: int = 128, width: int = 128,
    n_styles: int = 16, seed: int = 0, labeled_counts: Sequence[int] = (8, 16, 32, 64),
    boundary_ignore: bool = False, tail_scale: float = 1.0, labeled_styles: int | None = None,
    style_textures: str = "shared", num_workers: int = 0,
) -> Path:
    """Write a synthscapes dataset into the new or empty folder ``root``; returns ``root``.

    Layout (Cityscapes §1.1, style as city; UniMatch lists §2.2-2.3, ``<img> <mask>`` relative to root):
    ``leftImg8bit/{train,val}/styleKK/styleKK_<index:06d>_000019_leftImg8bit.png``,
    ``gtFine/{train,val}/styleKK/styleKK_<index:06d>_000019_gtFine_labelTrainIds.png`` ('L', 255 = ignore),
    ``splits/{train,val}.txt``, ``splits/<n>/{labeled,unlabeled}.txt`` and ``manifest.json``.
    Labeled sets are the first n of one seeded permutation of train (so they are nested, as UniMatch's
    Cityscapes splits, §2.4); unlabeled = the sorted complement. Image i of a split is rendered from
    :func:`image_rng` ``(seed, split, i)``, so the output does not depend on order or ``num_workers``
    (0 = in this process, the default: about 6 s for 1000 + 200 images at 128x128 on one core;
    > 0 = that many "spawn" worker processes, safe inside a multi-threaded trainer).
    """
    root = Path(root)
    p = _check_params(n_train, n_val, height, width, n_styles, seed, labeled_counts, boundary_ignore, tail_scale,
                      labeled_styles, style_textures)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"generate_synthscapes: {root} exists and is not empty; use ensure_synthscapes to replace it")
    perm = _labeled_order(p)  # checked before any image is rendered
    styles = make_styles(p["n_styles"], p["seed"], p["style_textures"])
    for split in ("train", "val"):
        for kind in ("leftImg8bit", "gtFine"):
            for s in styles:
                (root / kind / split / s.name).mkdir(parents=True, exist_ok=True)
    sizes = {"train": p["n_train"], "val": p["n_val"]}
    chunk = 50
    jobs = [(root, split, lo, min(lo + chunk, n), p) for split, n in sizes.items() for lo in range(0, n, chunk)]
    if int(num_workers) > 0:
        with ProcessPoolExecutor(max_workers=int(num_workers), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_generate_chunk, jobs))
    else:
        results = [_generate_chunk(job) for job in jobs]

    records: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    pixels = {s: np.zeros(256, dtype=np.int64) for s in sizes}
    presence = {s: np.zeros(256, dtype=np.int64) for s in sizes}
    style_counts = {s: [0] * p["n_styles"] for s in sizes}
    for (_, split, lo, _, _), (style_ids, px, pres) in zip(jobs, results):
        for i, k in enumerate(style_ids, start=lo):
            records[split].append(_record(split, styles[k].name, i))
            style_counts[split][k] += 1
        pixels[split] += px
        presence[split] += pres

    splits = root / "splits"
    splits.mkdir(exist_ok=True)
    _write_list(splits / "train.txt", records["train"])
    _write_list(splits / "val.txt", records["val"])
    for n in p["labeled_counts"]:
        chosen = perm[:n]
        rest = np.setdiff1d(np.arange(p["n_train"]), chosen)  # sorted
        (splits / str(n)).mkdir(exist_ok=True)
        _write_list(splits / str(n) / "labeled.txt", [records["train"][i] for i in chosen])
        _write_list(splits / str(n) / "unlabeled.txt", [records["train"][i] for i in rest])

    def named(counts: np.ndarray) -> dict[str, int]:
        out = {name: int(counts[c]) for c, name in enumerate(SYNTHSCAPES.names)}
        out["ignore"] = int(counts[IGNORE_INDEX])
        return out

    manifest = {
        "generator": GENERATOR_VERSION,
        "params": p,
        "layout": "cityscapes",
        "classes": list(SYNTHSCAPES.names),
        "ignore_index": IGNORE_INDEX,
        "styles": [s.name for s in styles],
        "n_images": sizes,
        "style_counts": style_counts,
        "pixel_counts": {s: named(pixels[s]) for s in sizes},
        "presence_counts": {s: named(presence[s]) for s in sizes},
    }
    # written last: a folder with a manifest is complete
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def _write_list(path: Path, records: Sequence[tuple[str, str]]) -> None:
    """UniMatch split list: ``<img> <mask>`` per line, each line ending in "\\n" (§2.3)."""
    path.write_text("".join(f"{img} {mask}\n" for img, mask in records))


def read_manifest(root: Path) -> dict[str, Any] | None:
    """``root/manifest.json`` as a dict, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(root) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(root: Path, params: dict[str, Any]) -> bool:
    """True when ``root`` holds a complete dataset of this generator version and these parameters."""
    m = read_manifest(root)
    return m is not None and m.get("generator") == GENERATOR_VERSION and m.get("params") == params


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (``fcntl.flock``); a no-op where fcntl is missing,
    in which case :func:`ensure_synthscapes` still tolerates the rename race."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_synthscapes(root: Path, **params: Any) -> Path:
    """Return ``root``, generating the dataset first unless ``root/manifest.json`` already records this
    generator version and these parameters (those of :func:`generate_synthscapes`; ``num_workers``
    does not count).

    The dataset is written into a temporary sibling folder and renamed into place, so an interrupted
    run never leaves a complete-looking folder; a lock file ``.<name>.lock`` next to ``root``
    serialises concurrent callers (e.g. DDP ranks), which then find the finished dataset. An existing
    ``root`` is replaced only when it is empty or holds an older synthscapes manifest; any other
    folder raises FileExistsError.
    """
    root = Path(root)
    num_workers = int(params.pop("num_workers", 0))
    defaults = {"n_train": 1000, "n_val": 200, "height": 128, "width": 128, "n_styles": 16, "seed": 0,
                "labeled_counts": (8, 16, 32, 64), "boundary_ignore": False, "tail_scale": 1.0,
                "labeled_styles": None, "style_textures": "shared"}
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"ensure_synthscapes: unknown parameter(s) {sorted(unknown)}; expected {sorted(defaults)}")
    wanted = _check_params(**{**defaults, **params})
    if _is_current(root, wanted):
        return root
    with _file_lock(root.parent / f".{root.name}.lock"):
        if _is_current(root, wanted):  # another process finished it while we waited
            return root
        if root.exists():
            _check_replaceable(root)
            log.info("synthscapes: regenerating %s (parameters or generator version changed)", root)
        else:
            log.info("synthscapes: generating the dataset once into %s (%d train + %d val images of %dx%d); "
                     "later runs reuse it", root, wanted["n_train"], wanted["n_val"], wanted["height"],
                     wanted["width"])
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            generate_synthscapes(tmp, **wanted, num_workers=num_workers)
            _swap_into_place(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not _is_current(root, wanted):  # pragma: no cover - only without a working lock
        raise RuntimeError(f"ensure_synthscapes: {root} was replaced concurrently with different parameters")
    return root


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier synthscapes dataset (never delete user data)."""
    if root.is_dir() and not any(root.iterdir()):
        return
    m = read_manifest(root)
    if m is None or not str(m.get("generator", "")).startswith("synthscapes"):
        raise FileExistsError(
            f"ensure_synthscapes: {root} exists but holds no synthscapes manifest.json; refusing to replace it "
            "(delete it or choose another data.root)"
        )


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``, moving an existing (stale) ``root`` aside and deleting it afterwards."""
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(root, old)
    try:
        os.replace(tmp, root)
    except OSError:
        if old is not None and not root.exists():
            os.replace(old, root)  # put the previous dataset back
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
