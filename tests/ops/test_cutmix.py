"""Tests of adaptive CutMix (ael.md §4 "ACM")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from semiseg_lit.ops.cutmix import (
    class_presence,
    component_box_masks,
    connected_components,
    cutmix_masks,
    mix,
    random_box_masks,
    sample_from_cutmix_bank,
    update_cutmix_bank,
    write_cutmix_bank,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _box(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """float [H, W] with ones on rows[0]..rows[1]-1 × cols[0]..cols[1]-1."""
    m = torch.zeros(h, w)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def _same_partition(ours: np.ndarray, ref: np.ndarray) -> bool:
    """True if both label maps have the same background and split the foreground identically."""
    if not np.array_equal(ours == 0, ref == 0):
        return False
    fg = ours > 0
    pairs = set(zip(ours[fg].tolist(), ref[fg].tolist()))
    return len(pairs) == len(np.unique(ours[fg])) == len(np.unique(ref[fg]))


# ---------------------------------------------------------------- random_box_masks
def test_random_box_masks_hand_examples() -> None:
    # H=W=10, area 0.5
    # (u=0, v=(0.3, 0.5)): y_prop = 0.5^0 = 1 -> 10 rows; x_prop = 0.5 -> 5 cols;
    #     top = round(0·0.3) = 0; left = round(5·0.5) = round(2.5) = 2 (half to even, as np.round)
    # (u=1, v=(0.8, 0.2)): y_prop = 0.5 -> 5 rows; x_prop = 1 -> 10 cols; top = round(5·0.8) = 4; left = 0
    noise = torch.tensor([[0.0, 0.3, 0.5], [1.0, 0.8, 0.2]])
    masks = random_box_masks(2, 10, 10, noise=noise)
    assert masks.dtype == torch.float32 and masks.shape == (2, 10, 10)
    assert torch.equal(masks[0], _box(10, 10, (0, 10), (2, 7)))
    assert torch.equal(masks[1], _box(10, 10, (4, 9), (0, 10)))
    # non-square H=8, W=12, (u=0.5, v=(0, 1)): y_prop = x_prop = 0.70711;
    #     rows = round(5.657) = 6, cols = round(8.485) = 8; top = 0, left = round(4·1) = 4
    m = random_box_masks(1, 8, 12, noise=torch.tensor([[0.5, 0.0, 1.0]]))
    assert torch.equal(m[0], _box(8, 12, (0, 6), (4, 12)))


def test_random_box_masks_matches_reference_formula() -> None:
    # init_cutmix (utils.py): y = 0.5**u, x = 0.5/y, size = round((y, x)·h), pos = round((h - size)·v)
    rs = np.random.RandomState(0)
    noise = rs.random_sample((20, 3))
    h = 33
    masks = random_box_masks(20, h, h, noise=torch.tensor(noise, dtype=torch.float32))
    for b, (u, vy, vx) in enumerate(noise):
        y_prop = np.exp(u * np.log(0.5))
        sizes = np.round(np.array([y_prop, 0.5 / y_prop]) * h)
        pos = np.round((h - sizes) * np.array([vy, vx]))
        ref = np.zeros((h, h))
        ref[int(pos[0]):int(pos[0] + sizes[0]), int(pos[1]):int(pos[1] + sizes[1])] = 1
        assert np.array_equal(masks[b].numpy(), ref), b


@pytest.mark.parametrize("device", DEVICES)
def test_random_box_masks_properties(device: str) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    masks = random_box_masks(64, 20, 30, generator=g, device=device)
    assert masks.device.type == device
    area = masks.sum((1, 2)).cpu()
    # rounding each side changes the area by at most (H + W)/2 + 1/4
    assert ((area - 300).abs() <= 26).all()
    # each mask is one axis-aligned rectangle: rows × cols outer product reproduces it
    rows, cols = masks.amax(2), masks.amax(1)
    assert torch.equal(rows[:, :, None] * cols[:, None, :], masks)
    again = random_box_masks(64, 20, 30, generator=torch.Generator(device=device).manual_seed(0), device=device)
    assert torch.equal(masks, again)


def test_random_box_masks_errors() -> None:
    with pytest.raises(ValueError, match="area"):
        random_box_masks(1, 4, 4, area=0.0)
    with pytest.raises(ValueError, match="noise"):
        random_box_masks(2, 4, 4, noise=torch.rand(2, 2))


# ---------------------------------------------------------------- connected_components
def test_connected_components_hand_example() -> None:
    # 8-connectivity; label = 1 + raster index of the component's first pixel
    #   1 0 0 1 1     A = {(0,0), (1,1)}                  diagonal only       -> 1 + 0  = 1
    #   0 1 0 0 1     B = {(0,3), (0,4), (1,4), (2,3), (2,4)} a "U" on its side -> 1 + 3  = 4
    #   0 0 0 1 1     C = {(3,0), (4,0), (4,1)}                              -> 1 + 15 = 16
    #   1 0 0 0 0     D = {(4,3)}  (two rows below B: not adjacent)          -> 1 + 23 = 24
    #   1 1 0 1 0
    mask = torch.tensor([[1, 0, 0, 1, 1],
                         [0, 1, 0, 0, 1],
                         [0, 0, 0, 1, 1],
                         [1, 0, 0, 0, 0],
                         [1, 1, 0, 1, 0]], dtype=torch.bool)
    expected = torch.tensor([[1, 0, 0, 4, 4],
                             [0, 1, 0, 0, 4],
                             [0, 0, 0, 4, 4],
                             [16, 0, 0, 0, 0],
                             [16, 16, 0, 24, 0]])
    labels = connected_components(mask[None])
    assert labels.dtype == torch.long and torch.equal(labels[0], expected)
    # U shape (opening upwards) is one component; the same mask as 2nd image gets per-image labels
    u = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    both = connected_components(torch.stack([u, u]))
    assert torch.equal(both[0], u.long()) and torch.equal(both[1], u.long())


@pytest.mark.parametrize("device", DEVICES)
def test_connected_components_matches_scipy_on_random_masks(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    structure = np.ones((3, 3))
    for density in (0.2, 0.4, 0.5, 0.6, 0.8):
        masks = torch.rand(6, 23, 31, generator=g) < density
        labels = connected_components(masks.to(device)).cpu().numpy()
        for b in range(6):
            ref, _ = ndimage.label(masks[b].numpy(), structure=structure)
            assert _same_partition(labels[b], ref), (density, b)


def test_connected_components_long_snake_and_edge_cases() -> None:
    # boustrophedon snake: one component whose path length is ~ H·W/2
    h = w = 32
    snake = np.zeros((h, w), dtype=bool)
    snake[::2, :] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    labels = connected_components(torch.from_numpy(snake)[None])[0].numpy()
    assert _same_partition(labels, ndimage.label(snake, structure=np.ones((3, 3)))[0])
    assert len(np.unique(labels[snake])) == 1
    assert connected_components(torch.zeros(2, 4, 5, dtype=torch.bool)).eq(0).all()
    full = connected_components(torch.ones(2, 4, 5, dtype=torch.bool))
    assert full.eq(1).all()
    with pytest.raises(ValueError, match="binary"):
        connected_components(torch.ones(4, 5, dtype=torch.bool))


# ---------------------------------------------------------------- component_box_masks
def _two_blobs() -> torch.Tensor:
    # class 2: A = 2×2 block (4 px) top-left; B = "L" of 5 px in rows 3-5, cols 3-5
    pred = torch.zeros(6, 6, dtype=torch.long)
    pred[0:2, 0:2] = 2
    pred[3:6, 5] = 2
    pred[5, 3:6] = 2
    return pred


@pytest.mark.parametrize("device", DEVICES)
def test_component_box_masks_hand_example(device: str) -> None:
    pred = torch.stack([_two_blobs()] * 3).to(device)
    # threshold 4.5/36·36 = 4.5 px: only B (5 px) is eligible -> its bbox rows 3-5 × cols 3-5
    # image 1 asks for class 1 (absent) -> found False; image 2 class 0 (background, one big comp)
    masks, found = component_box_masks(pred, torch.tensor([2, 1, 0], device=device), min_area=4.5 / 36,
                                       generator=torch.Generator(device=device).manual_seed(0))
    assert found.cpu().tolist() == [True, False, True]
    assert torch.equal(masks[0].cpu(), _box(6, 6, (3, 6), (3, 6)))
    assert masks[1].eq(0).all()
    assert torch.equal(masks[2].cpu(), torch.ones(6, 6))  # class-0 pixels span the whole crop
    # threshold 5 px: nothing is strictly larger -> not found (tiny crop / small objects)
    _, found = component_box_masks(pred[:1], torch.tensor([2], device=device), min_area=5 / 36)
    assert not found.any()


def test_component_box_masks_strict_threshold_and_uniform_choice() -> None:
    # 4×4 crop, min_area 0.25 -> threshold exactly 4 px; a 4-px component is NOT eligible (> 4)
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, :2, :2] = 1
    assert not component_box_masks(pred, torch.tensor([1]), 0.25)[1].any()
    pred[0, 2, 0] = 1  # now 5 px
    masks, found = component_box_masks(pred, torch.tensor([1]), 0.25)
    assert found.all() and torch.equal(masks[0], _box(4, 4, (0, 3), (0, 2)))
    # both blobs eligible: each is chosen about half of the time
    batch = torch.stack([_two_blobs()] * 400)
    masks, found = component_box_masks(batch, torch.full((400,), 2), 0.0,
                                       generator=torch.Generator().manual_seed(1))
    is_a = masks.flatten(1).eq(_box(6, 6, (0, 2), (0, 2)).flatten()).all(1)
    is_b = masks.flatten(1).eq(_box(6, 6, (3, 6), (3, 6)).flatten()).all(1)
    assert found.all() and (is_a | is_b).all() and 0.4 < is_a.float().mean() < 0.6


def test_component_box_masks_errors() -> None:
    with pytest.raises(ValueError, match="classes"):
        component_box_masks(torch.zeros(2, 3, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="min_area"):
        component_box_masks(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, dtype=torch.long), -0.1)


# ---------------------------------------------------------------- cutmix_masks
def test_cutmix_masks_component_or_random_fallback() -> None:
    pred = torch.stack([_two_blobs(), torch.zeros(6, 6, dtype=torch.long)])
    g = torch.Generator().manual_seed(0)
    masks = cutmix_masks(pred, torch.tensor([2, 2]), min_area=4.5 / 36, generator=g)
    assert torch.equal(masks[0], _box(6, 6, (3, 6), (3, 6)))
    # image 1 has no class 2 -> a random box of ~half the area (18 px ± rounding)
    assert 12 <= int(masks[1].sum()) <= 24
    rows, cols = masks[1].amax(1), masks[1].amax(0)
    assert torch.equal(rows[:, None] * cols[None, :], masks[1])


# ---------------------------------------------------------------- mix
@pytest.mark.parametrize("device", DEVICES)
def test_mix_hand_example(device: str) -> None:
    # a = [[1, 2], [3, 4]], b = [[10, 20], [30, 40]], M = [[0, 1], [1, 0]] -> [[1, 20], [30, 4]]
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], device=device)
    b = a * 10
    m = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], device=device)
    expected = torch.tensor([[[1.0, 20.0], [30.0, 4.0]]], device=device)
    torch.testing.assert_close(mix(a, b, m), expected)                       # [B, H, W] float
    four = mix(a[:, None].expand(1, 3, 2, 2), b[:, None].expand(1, 3, 2, 2), m)  # broadcast over C
    torch.testing.assert_close(four, expected[:, None].expand(1, 3, 2, 2))
    labels = mix(a.long(), b.long(), m)                                      # integer maps: select
    assert labels.dtype == torch.long and torch.equal(labels, expected.long())
    half = mix(a.bfloat16(), b.bfloat16(), m)
    assert half.dtype == torch.bfloat16


def test_mix_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mix(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="matching mask"):
        mix(torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2), torch.zeros(1, 2, 2))


# ---------------------------------------------------------------- update_cutmix_bank
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8])
def test_update_cutmix_bank_hand_example(dtype: torch.dtype) -> None:
    # C=3, N=4; image 0 -> column 3, image 1 -> column 1; threshold 0.5·2·2 = 2 px (>=)
    # image 0 [[0, 0], [0, 1]]: counts [3, 1, 0] -> [1, 0, 0]
    # image 1 [[2, 2], [2, 255]]: counts [0, 0, 3] -> [0, 0, 1]  (255 counted nowhere)
    bank = torch.zeros(3, 4, dtype=dtype)
    bank[1, 3] = 1  # stale entry, overwritten
    bank[0, 0] = 1  # other columns untouched
    pred = torch.tensor([[[0, 0], [0, 1]], [[2, 2], [2, 255]]])
    out = update_cutmix_bank(bank, torch.tensor([3, 1]), pred, min_area=0.5)
    expected = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]).to(dtype)
    assert out is bank and torch.equal(out, expected)


def test_update_cutmix_bank_errors() -> None:
    with pytest.raises(ValueError, match="indices"):
        update_cutmix_bank(torch.zeros(3, 4), torch.tensor([0]), torch.zeros(2, 2, 2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="bank"):
        update_cutmix_bank(torch.zeros(3), torch.tensor([0]), torch.zeros(1, 2, 2, dtype=torch.long), 0.1)


def test_class_presence_rows_written_to_the_bank_equal_the_direct_update() -> None:
    # what a DDP rank gathers instead of the predictions: one [C] presence row per image
    pred = torch.tensor([[[0, 0], [0, 1]], [[2, 2], [2, 255]]])
    present = class_presence(pred, 3, min_area=0.5)
    assert present.tolist() == [[True, False, False], [False, False, True]]
    direct = update_cutmix_bank(torch.zeros(3, 4, dtype=torch.bool), torch.tensor([3, 1]), pred, 0.5)
    assert torch.equal(write_cutmix_bank(torch.zeros(3, 4, dtype=torch.bool), torch.tensor([3, 1]), present), direct)
    with pytest.raises(ValueError, match="present"):
        write_cutmix_bank(torch.zeros(3, 4), torch.tensor([3, 1]), present[:, :2])


# ---------------------------------------------------------------- sample_from_cutmix_bank
@pytest.mark.parametrize("device", DEVICES)
def test_sample_from_cutmix_bank(device: str) -> None:
    # row 0: only image 2; row 1: images {0, 4}; row 2: empty -> uniform over all 5
    bank = torch.zeros(3, 5, dtype=torch.bool, device=device)
    bank[0, 2] = True
    bank[1, 0] = bank[1, 4] = True
    classes = torch.tensor([0, 1, 2], device=device).repeat(3000)
    g = torch.Generator(device=device).manual_seed(0)
    idx = sample_from_cutmix_bank(bank, classes, generator=g).view(3000, 3).cpu()
    assert idx.dtype == torch.long
    assert idx[:, 0].eq(2).all()
    assert (idx[:, 1].eq(0) | idx[:, 1].eq(4)).all() and 0.45 < idx[:, 1].eq(0).float().mean() < 0.55
    freq = torch.bincount(idx[:, 2], minlength=5).float() / 3000
    torch.testing.assert_close(freq, torch.full((5,), 0.2), atol=0.03, rtol=0)
    again = sample_from_cutmix_bank(bank, classes, generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(again.view(3000, 3).cpu(), idx)
