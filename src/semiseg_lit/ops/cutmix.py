"""Adaptive CutMix (ACM) on unlabeled crops (ael.md §4 "ACM", paper Eq. 8–9).

An image bank records which unlabeled images (last seen) contain each class. A class is drawn
with ``softmax(1 - conf)``, an image containing it is taken from the bank, and the bounding box of
a random connected component of that class (in the teacher's argmax) is pasted into a random
unlabeled crop; if there is no large-enough component, a random box of half the area is used.

Everything is vectorised over the batch and runs on the input's device; the only host syncs are
the convergence checks of :func:`connected_components` (every ``check_every`` iterations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "random_box_masks",
    "connected_components",
    "component_box_masks",
    "cutmix_masks",
    "mix",
    "class_presence",
    "write_cutmix_bank",
    "update_cutmix_bank",
    "sample_from_cutmix_bank",
]


def _check_label_map(x: Tensor, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name}: expected a [B, H, W] tensor, got shape {tuple(x.shape)}")


def _box_mask(top: Tensor, left: Tensor, bottom: Tensor, right: Tensor, height: int, width: int) -> Tensor:
    """Bool ``[B, H, W]`` with ``mask[b, y, x] = top_b <= y < bottom_b and left_b <= x < right_b``."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def random_box_masks(
    batch: int,
    height: int,
    width: int,
    area: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Random boxes covering a fraction ``area`` of the crop (the reference ``init_cutmix``, ael.md §4).

    Per sample, with ``(u, v_y, v_x) ~ U[0,1)^3``: ``y_prop = area^u``, ``x_prop = area / y_prop``,
    ``size = round(prop · (H, W))``, ``top-left = round(((H, W) - size) · (v_y, v_x))``. The reference
    uses ``h`` for both sides (square crops); here rows use ``H`` and columns ``W``.

    Args:
        noise: optional ``[B, 3]`` uniforms ``(u, v_y, v_x)`` replacing the generator.

    Returns:
        float ``[B, H, W]`` in {0, 1}.
    """
    if not 0.0 < area <= 1.0:
        raise ValueError(f"area={area}: expected a fraction in (0, 1]")
    if batch < 0 or height < 1 or width < 1:
        raise ValueError(f"random_box_masks: invalid size batch={batch}, height={height}, width={width}")
    if noise is None:
        noise = torch.rand(batch, 3, generator=generator, device=device)
    elif noise.shape != (batch, 3):
        raise ValueError(f"noise: expected shape ({batch}, 3), got {tuple(noise.shape)}")
    noise = noise.float()
    u, v_y, v_x = noise.unbind(1)
    y_prop = torch.full_like(u, area).pow(u)
    x_prop = area / y_prop
    size_y = torch.round(y_prop * height)
    size_x = torch.round(x_prop * width)
    top = torch.round((height - size_y) * v_y)
    left = torch.round((width - size_x) * v_x)
    return _box_mask(top, left, top + size_y, left + size_x, height, width).float()


def _neighbourhood_min(labels: Tensor, fill: int) -> Tensor:
    """Minimum over each pixel's 3×3 neighbourhood (itself included), ``fill`` outside the image.

    Separable: the minimum over 3 columns, then over 3 rows of that (4 elementwise minima instead of 9).
    """
    padded = F.pad(labels, (1, 1, 1, 1), value=fill)
    rows = torch.minimum(torch.minimum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])
    return torch.minimum(torch.minimum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def connected_components(binary: Tensor, check_every: int = 4) -> Tensor:
    """8-connected component labels of a batch of binary masks, computed with torch.

    Union-find style label propagation: every foreground pixel starts with its flat index as
    label; each iteration (1) takes the 3×3 neighbourhood minimum ``m``, (2) hooks the current
    label's root to ``m`` (``L[L[p]] ← min(L[L[p]], m_p)``, a scatter-amin), (3) sets
    ``L[p] ← min(L[p], m_p)`` and (4) pointer-jumps ``L ← L[L]``. Labels only decrease and stay
    pixel indices inside the component, so the fixed point is the component's smallest flat
    index; convergence is checked every ``check_every`` iterations (the only host syncs).

    Returns:
        int64 ``[B, H, W]``: 0 for background, ``1 + (raster index of the component's first pixel)``
        for foreground. Labels are therefore ordered like ``scipy.ndimage.label`` /
        ``skimage.measure.label`` numbering (raster order of first pixel) but not consecutive.
    """
    _check_label_map(binary, "binary")
    if check_every < 1:
        raise ValueError(f"check_every={check_every}: expected >= 1")
    fg = binary.to(torch.bool)
    b, h, w = fg.shape
    n = b * h * w
    flat_index = torch.arange(n, device=fg.device).view(b, h, w)
    # parent[n] = n is the background sentinel, so gathers at a background label stay there
    parent = torch.cat([torch.where(fg, flat_index, n).flatten(),
                        torch.full((1,), n, dtype=torch.long, device=fg.device)])
    while True:
        before = parent
        for _ in range(check_every):
            labels = parent[:n].view(b, h, w)
            m = torch.where(fg, _neighbourhood_min(labels, n), n).flatten()
            parent = parent.scatter_reduce(0, labels.flatten(), m, reduce="amin")
            parent = torch.cat([torch.minimum(parent[:n], m), parent[n:]])
            parent = parent[parent]
        if torch.equal(parent, before):  # host sync, once per `check_every` iterations
            break
    image_offset = (torch.arange(b, device=fg.device) * (h * w)).view(b, 1, 1)
    return torch.where(fg, parent[:n].view(b, h, w) - image_offset + 1, 0)


def _span(has: Tensor) -> Tensor:
    """Bool ``[B, L]`` that is True from the first to the last True of each row of ``has``."""
    from_start = has.long().cumsum(1) > 0
    to_end = has.flip(1).long().cumsum(1).flip(1) > 0
    return from_start & to_end


def component_box_masks(
    pred: Tensor, classes: Tensor, min_area: float, generator: torch.Generator | None = None,
    keys: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Bounding box of a random large connected component of ``pred == classes[b]`` (ael.md §4 step 5).

    Components are 8-connected; a component is eligible if its pixel count is
    ``> min_area · H · W`` (the reference uses ``h²``, square crops). One eligible component is
    chosen uniformly (= the reference's shuffle-then-first-eligible) and its plain bounding box
    ``[min_row, max_row] × [min_col, max_col]`` is returned (``no_pad = no_slim = True``).
    ``keys [B, H·W+1]`` (uniforms; the component with the largest key among the eligible ones is
    chosen) replaces the generator, e.g. to draw each emulated GPU's keys from its own stream.

    Returns:
        ``(masks float [B, H, W] in {0, 1}, found bool [B])``; ``found`` is False (and the mask is
        all zero) where the class is absent or no component is large enough.
    """
    _check_label_map(pred, "pred")
    b, h, w = pred.shape
    if classes.shape != (b,):
        raise ValueError(f"classes: expected shape ({b},), got {tuple(classes.shape)}")
    if min_area < 0:
        raise ValueError(f"min_area={min_area}: expected a non-negative fraction of H*W")
    components = connected_components(pred == classes.view(b, 1, 1))
    sizes = torch.zeros(b, h * w + 1, dtype=torch.long, device=pred.device)
    sizes.scatter_add_(1, components.flatten(1), torch.ones_like(components.flatten(1)))
    sizes[:, 0] = 0  # background is never a component
    eligible = sizes > min_area * h * w
    if keys is None:
        keys = torch.rand(b, h * w + 1, generator=generator, device=pred.device)
    elif keys.shape != (b, h * w + 1):
        raise ValueError(f"keys: expected shape ({b}, {h * w + 1}), got {tuple(keys.shape)}")
    keys = keys.to(pred.device)
    chosen = torch.where(eligible, keys, -1.0).argmax(1)
    found = eligible.any(1)
    member = (components == chosen.view(b, 1, 1)) & found.view(b, 1, 1)
    box = _span(member.any(2))[:, :, None] & _span(member.any(1))[:, None, :]
    return box.float(), found


def cutmix_masks(
    pred: Tensor,
    classes: Tensor,
    min_area: float,
    area: float = 0.5,
    generator: torch.Generator | None = None,
    keys: Tensor | None = None,
    box_noise: Tensor | None = None,
) -> Tensor:
    """ACM mask: the component box of :func:`component_box_masks` where found, else a random box.

    ``M_b = box_b if found_b else random_box(area)`` (``generate_cutmix_mask``, ael.md §4 step 5).
    Both draws use ``generator`` (component choice first), unless given explicitly: ``keys [B, H·W+1]``
    (:func:`component_box_masks`) and ``box_noise [B, 3]`` (:func:`random_box_masks`).
    Returns float ``[B, H, W]`` in {0, 1}.
    """
    boxes, found = component_box_masks(pred, classes, min_area, generator=generator, keys=keys)
    b, h, w = pred.shape
    fallback = random_box_masks(b, h, w, area=area, generator=generator, device=pred.device, noise=box_noise)
    return torch.where(found.view(b, 1, 1), boxes, fallback)


def mix(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """CutMix ``a·(1-M) + b·M`` with ``M [B, H, W]`` broadcast over channels (images, logits).

    Float inputs are blended arithmetically (computed in the inputs' dtype); integer inputs (label
    maps ``[B, H, W]``) are selected with ``where(M > 0.5, b, a)``.
    """
    if a.shape != b.shape:
        raise ValueError(f"mix: a and b must have the same shape, got {tuple(a.shape)} / {tuple(b.shape)}")
    _check_label_map(mask, "mask")
    if a.dim() not in (3, 4) or a.shape[0] != mask.shape[0] or a.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"mix: expected a of shape [B, (C,) H, W] matching mask {tuple(mask.shape)}, "
                         f"got {tuple(a.shape)}")
    m = mask if a.dim() == 3 else mask.unsqueeze(1)
    if a.is_floating_point():
        m = m.to(a.dtype)
        return a * (1 - m) + b * m
    return torch.where(m > 0.5, b, a)


def class_presence(pred: Tensor, num_classes: int, min_area: float) -> Tensor:
    """Which classes each image shows: ``present[b, c] = #(pred_b == c) >= min_area·H·W``, bool ``[B, C]``.

    Values of ``pred`` outside ``[0, C)`` are not counted (one ``scatter_add_``; not ``bincount``, which
    on CUDA reads the min/max of its input back to the host: a sync per call).
    """
    _check_label_map(pred, "pred")
    b, h, w = pred.shape
    valid = (pred >= 0) & (pred < num_classes)
    bins = torch.where(valid, pred, num_classes).long()
    bins = bins + (torch.arange(b, device=pred.device) * (num_classes + 1)).view(b, 1, 1)
    flat = bins.flatten()
    counts = torch.zeros(b * (num_classes + 1), dtype=torch.long, device=pred.device)
    counts = counts.scatter_add_(0, flat, torch.ones_like(flat)).view(b, num_classes + 1)
    return counts[:, :num_classes] >= min_area * h * w


def write_cutmix_bank(bank: Tensor, indices: Tensor, present: Tensor) -> Tensor:
    """``bank[:, indices[b]] = present[b]`` for every row of ``present [B, C]`` (in place; returns ``bank``).

    If an index repeats, one of its rows wins (the reference writes sequentially, last wins).
    """
    if bank.dim() != 2:
        raise ValueError(f"bank: expected a [C, N] tensor, got shape {tuple(bank.shape)}")
    if present.dim() != 2 or present.shape[1] != bank.shape[0] or indices.shape != present.shape[:1]:
        raise ValueError(f"indices/present: expected [B] and [B, {bank.shape[0]}], got {tuple(indices.shape)} / "
                         f"{tuple(present.shape)}")
    bank[:, indices.to(bank.device)] = present.t().to(bank.device, bank.dtype)
    return bank


def update_cutmix_bank(bank: Tensor, indices: Tensor, pred: Tensor, min_area: float) -> Tensor:
    """Record which classes each image shows: ``bank[c, idx_b] = [#(pred_b == c) >= min_area·H·W]``.

    All ``C`` entries of every column ``indices[b]`` are overwritten (utils.py:239; the reference
    uses ``area_thresh2 · h²``). Values of ``pred`` outside ``[0, C)`` are not counted. If an index
    repeats in ``indices``, one of its rows wins (the reference writes sequentially, last wins).
    Modifies ``bank [C, N]`` (bool/uint8/float) in place and returns it
    (= :func:`write_cutmix_bank` of :func:`class_presence`).
    """
    _check_label_map(pred, "pred")
    if bank.dim() != 2:
        raise ValueError(f"bank: expected a [C, N] tensor, got shape {tuple(bank.shape)}")
    if indices.shape != pred.shape[:1]:
        raise ValueError(f"indices: expected shape ({pred.shape[0]},), got {tuple(indices.shape)}")
    return write_cutmix_bank(bank, indices, class_presence(pred, bank.shape[0], min_area))


def sample_from_cutmix_bank(
    bank: Tensor, classes: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """For each ``classes[b]``, a uniformly random image index ``i`` with ``bank[classes[b], i]`` set.

    Uniform over all ``N`` images where the row is empty (utils.py:209 ``sample_from_bank``).
    Vectorised as ``argmax_i(key_i + bank[c, i])`` with ``key ~ U[0,1)^N``. Returns int64 ``[B]``.
    """
    if bank.dim() != 2:
        raise ValueError(f"bank: expected a [C, N] tensor, got shape {tuple(bank.shape)}")
    if classes.dim() != 1:
        raise ValueError(f"classes: expected a 1-D tensor [B], got shape {tuple(classes.shape)}")
    rows = bank[classes.to(bank.device)].to(torch.bool)
    keys = torch.rand(rows.shape, generator=generator, device=bank.device)
    return (keys + rows.float()).argmax(1)
