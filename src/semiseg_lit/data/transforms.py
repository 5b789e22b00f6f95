"""albumentations pipelines: labeled (weak), unlabeled (weak + pixel-aligned strong), evaluation.

Reproducibility: albumentations' ``Compose`` keeps its own RNG and ignores global seeds, so
DataLoader workers would all replay the same augmentation stream (libraries.md §D.5). Here every
sample is drawn with an explicit per-sample seed (from the seeded training samplers in
``samplers.py``) and the pipeline is reseeded with :func:`reseed` before it is applied, so the
augmentation of the k-th sample of a stream is a pure function of ``(seed, stream, k)``: the same
for any number of workers, different in every worker and epoch, and reproducible after a resume.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.core.composition import BaseCompose
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf


def reseed(pipeline: A.BaseCompose, seed: int) -> None:
    """Reset ``pipeline`` and all its children to ONE shared RNG stream seeded with ``seed``.

    (``Compose.set_random_seed`` gives every child its own generator with the same seed, which
    correlates e.g. the flip decision with the scale factor; a shared stream does not.)
    """
    rng = np.random.default_rng(seed)
    py_rng = random.Random(seed)

    def _set(node: Any) -> None:
        node.set_random_state(rng, py_rng)
        if isinstance(node, BaseCompose):
            for child in node.transforms:
                _set(child)

    _set(pipeline)


def build_transforms(specs: Sequence[Any] | ListConfig | None) -> list[A.BasicTransform]:
    """Instantiate a YAML list of albumentations transforms (``_target_`` nodes)."""
    if not specs:
        return []
    out = []
    for i, spec in enumerate(specs):
        node = OmegaConf.create(spec) if not isinstance(spec, DictConfig) else spec
        if "_target_" not in node:
            raise ValueError(f"data.augment.strong[{i}]: expected a node with `_target_` (e.g. "
                             f"albumentations.ColorJitter), got {OmegaConf.to_container(node)}")
        out.append(instantiate(node, _convert_="all"))
    return out


def crop_hw(value: Any, key: str = "data.crop_size") -> tuple[int, int]:
    """A crop size given as ``N`` (square) or ``[H, W]`` -> ``(H, W)``; anything else is an error."""
    if isinstance(value, (ListConfig, list, tuple)):
        items = list(value)
        if len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
            return int(items[0]), int(items[1])
    elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return int(value), int(value)
    raise ValueError(f"{key}={value!r}: expected a positive int (square) or [height, width]")


SCALE_SAMPLING = ("uniform", "split")


def random_scale(lo: float, hi: float, sampling: str = "uniform") -> A.BasicTransform | BaseCompose:
    """Random rescale (image bilinear, mask nearest) by a factor drawn from [lo, hi].

    ``uniform``: s ~ U(lo, hi). ``split`` (the AEL reference's RandResize, ael.md §9): s ~ U(lo, 1) or
    U(1, hi) with probability 1/2 each, so P(s < 1) = 1/2 (for [0.5, 2], uniform gives 1/3)."""
    if sampling not in SCALE_SAMPLING:
        raise ValueError(f"data.augment.scale_sampling={sampling!r}: expected one of {SCALE_SAMPLING}")
    if not 0 < lo <= hi:
        raise ValueError(f"scale range [{lo}, {hi}]: expected 0 < a <= b")

    def uniform(a: float, b: float) -> A.RandomScale:
        # RandomScale(scale_limit=(a-1, b-1)) draws the factor uniformly in [a, b]
        return A.RandomScale(scale_limit=(a - 1.0, b - 1.0), interpolation=cv2.INTER_LINEAR,
                             mask_interpolation=cv2.INTER_NEAREST, p=1.0)

    if sampling == "split" and lo < 1.0 < hi:
        return A.OneOf([uniform(lo, 1.0), uniform(1.0, hi)], p=1.0)  # equal weights: 1/2 each
    return uniform(lo, hi)


class RandomScaleCrop(A.DualTransform):
    """Random scale → centre pad to the crop → random crop, computed on the crop window only.

    The same result as ``random_scale(lo, hi, sampling)`` + ``A.PadIfNeeded(position="center")`` +
    ``A.RandomCrop`` (the default pipeline of ``crop_first=False``), with the same random draws in the
    same order from the shared RNG streams of :func:`reseed` (so a seed gives the same scale and crop
    position on both paths), but without resizing the whole image: a 2048×1024 Cityscapes image scaled
    by s ∈ [0.5, 2] is up to 4096×2048 pixels, of which a 769×769 crop keeps at most 1/14.

    With the scaled size ``(H', W') = (int(H·s), int(W·s))`` (albumentations' ``scale``), centre padding
    ``top = int((crop_h - H') / 2)`` when ``H' < crop_h`` and the crop origin ``y_min = int((max(H',
    crop_h) - crop_h + 1)·h_start)`` (``get_crop_coords``), output row ``r`` is scaled row ``y = y_min -
    top + r`` (padding where ``y`` is outside ``[0, H')``). Image: bilinear with OpenCV's resize mapping
    ``y_src = (y + 0.5)·H/H' - 0.5`` (edge pixels replicated), evaluated by ``cv2.warpAffine`` on the
    window only; it quantises the sub-pixel position to 1/32 pixel (``cv2.resize``: 1/2048), so pixel
    values differ from the full-image path by rounding (a few grey levels at sharp edges).
    Mask: nearest with OpenCV's ``INTER_NEAREST`` index ``floor(y·H/H')``: identical labels.
    """

    def __init__(self, crop: tuple[int, int], scale_range: Sequence[float], sampling: str, fill: Sequence[float],
                 fill_mask: int):
        super().__init__(p=1.0)
        if sampling not in SCALE_SAMPLING:
            raise ValueError(f"data.augment.scale_sampling={sampling!r}: expected one of {SCALE_SAMPLING}")
        self.crop_h, self.crop_w = crop
        self.lo, self.hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < self.lo <= self.hi:
            raise ValueError(f"scale range [{self.lo}, {self.hi}]: expected 0 < a <= b")
        self.split = sampling == "split" and self.lo < 1.0 < self.hi
        self.fill, self.fill_mask = tuple(float(f) for f in fill), int(fill_mask)

    def get_params(self) -> dict[str, Any]:
        # the draws of A.OneOf(p=1) [p check, child choice] + A.RandomScale, then A.RandomCrop's two starts
        if self.split:
            self.py_random.random()  # OneOf's probability check (p = 1: always passes, but it draws)
            first = int(self.random_generator.choice(2, p=[0.5, 0.5])) == 0
            a, b = (self.lo, 1.0) if first else (1.0, self.hi)
        else:
            a, b = self.lo, self.hi
        scale = self.py_random.uniform(a - 1.0, b - 1.0) + 1.0
        return {"scale": scale, "h_start": self.py_random.random(), "w_start": self.py_random.random()}

    def _window(self, size: int, scale: float, crop: int, start: float) -> tuple[int, int, int, float]:
        """(first output index inside the image, last + 1, scaled index of output 0, src/dst ratio)."""
        scaled = int(size * scale)
        pad_before = int((crop - scaled) / 2.0) if scaled < crop else 0
        origin = int((max(scaled, crop) - crop + 1) * start) - pad_before  # scaled coordinate of output 0
        lo, hi = max(0, -origin), min(crop, scaled - origin)
        return lo, hi, origin, 1.0 / (scaled / size)  # OpenCV's 1 / inv_scale, to the last bit

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        s = params["scale"]
        return {"rows": self._window(h, s, self.crop_h, params["h_start"]),
                "cols": self._window(w, s, self.crop_w, params["w_start"])}

    def apply(self, img: np.ndarray, rows: tuple, cols: tuple, **params: Any) -> np.ndarray:
        (r0, r1, ry, fy), (c0, c1, cx, fx) = rows, cols
        channels = img.shape[2:]
        window = None
        if r1 > r0 and c1 > c0:
            # inverse map: output (x, y) of the valid window -> source (fx·(x + cx + c0 + 0.5) - 0.5, ...)
            m = np.array([[fx, 0.0, fx * (cx + c0 + 0.5) - 0.5], [0.0, fy, fy * (ry + r0 + 0.5) - 0.5]])
            window = cv2.warpAffine(img, m, (c1 - c0, r1 - r0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REPLICATE).reshape(r1 - r0, c1 - c0, *channels)
            if (r0, r1, c0, c1) == (0, self.crop_h, 0, self.crop_w):
                return window  # the crop lies inside the scaled image: no padding
        fill = np.asarray(self.fill[: channels[0]] if channels else self.fill[:1], dtype=np.float64)
        out = np.empty((self.crop_h, self.crop_w, *channels), dtype=img.dtype)
        out[...] = np.round(fill).astype(img.dtype).reshape(channels) if channels else fill[0]
        if window is not None:
            out[r0:r1, c0:c1] = window
        return out

    def apply_to_mask(self, mask: np.ndarray, rows: tuple, cols: tuple, **params: Any) -> np.ndarray:
        (r0, r1, ry, fy), (c0, c1, cx, fx) = rows, cols
        out = np.full((self.crop_h, self.crop_w, *mask.shape[2:]), self.fill_mask, dtype=mask.dtype)
        if r1 > r0 and c1 > c0:
            # OpenCV INTER_NEAREST: source index floor(dst · (1 / (dst_size / src_size))), clamped
            src_r = np.minimum(np.floor((np.arange(r0, r1) + ry) * fy).astype(np.int64), mask.shape[0] - 1)
            src_c = np.minimum(np.floor((np.arange(c0, c1) + cx) * fx).astype(np.int64), mask.shape[1] - 1)
            out[r0:r1, c0:c1] = mask.take(src_r, axis=0).take(src_c, axis=1)  # rows, then columns
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def _geometric(crop: int | Sequence[int], scale_range: Sequence[float], hflip: bool, pad_label: int,
               mean: Sequence[float], resize: Sequence[int] | None = None,
               scale_sampling: str = "uniform", crop_first: bool = True) -> list[Any]:
    """(Resize to exactly ``resize``) → random scale → pad to the crop → random crop → flip.

    The image is padded with the mean colour (0 after normalisation, as the reference pads
    normalised tensors with 0, ael.md §9). ``resize`` ([H, W], aspect ratio not kept) is ELN's VOC
    geometry (eln.md §5: every image resized to 505×505, no scale, no crop). ``crop_first``
    (``data.augment.crop_first``): scale, pad and crop in one step on the crop window only
    (:class:`RandomScaleCrop`; same draws and labels, image equal up to interpolation rounding)."""
    fill = tuple(float(m) * 255.0 for m in mean)
    crop_h, crop_w = crop_hw(crop)
    lo, hi = float(scale_range[0]), float(scale_range[1])
    ops: list[Any] = []
    if resize is not None:
        rh, rw = crop_hw(resize, "data.augment.resize")
        ops.append(A.Resize(height=rh, width=rw, interpolation=cv2.INTER_LINEAR,
                            mask_interpolation=cv2.INTER_NEAREST))
    if crop_first and (lo, hi) != (1.0, 1.0):
        ops.append(RandomScaleCrop((crop_h, crop_w), (lo, hi), scale_sampling, fill, pad_label))
        if hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        return ops
    if (lo, hi) != (1.0, 1.0):
        ops.append(random_scale(lo, hi, scale_sampling))
    ops += [
        A.PadIfNeeded(min_height=crop_h, min_width=crop_w, position="center",
                      border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=pad_label),
        A.RandomCrop(height=crop_h, width=crop_w),
    ]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    return ops


class Normalize:
    """uint8 HWC RGB -> float CHW normalised tensor (mean/std on the 0-1 scale)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, np.float32).reshape(1, 1, 3) * 255.0)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        # channel planes written one at a time into the CHW result, then normalised in place: the same
        # values as ``(image - mean) * inv_std`` transposed, ~7x faster (no strided HWC->CHW float copy)
        x = np.empty((image.shape[2], *image.shape[:2]), dtype=np.float32)
        for c in range(image.shape[2]):
            x[c] = image[..., c]
        x -= self.mean.reshape(-1, 1, 1)
        x *= self.inv_std.reshape(-1, 1, 1)
        return torch.from_numpy(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse (for visualisation): float CHW/BCHW tensor -> uint8 on the 0-255 scale."""
        mean = torch.as_tensor(self.mean.reshape(3, 1, 1), device=x.device)
        std = 1.0 / torch.as_tensor(self.inv_std.reshape(3, 1, 1), device=x.device)
        return (x.float() * std + mean).clamp(0, 255).to(torch.uint8)


def _mask_tensor(mask: np.ndarray | None) -> torch.Tensor | None:
    return None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()


class LabeledTransform:
    """Weak geometric augmentation of an (image, mask) pair -> {"image", "mask"} tensors; with
    ``strong`` (photometric transforms) the image also gets those, on top (``data.augment.labeled_strong``)."""

    def __init__(self, crop: int | Sequence[int], scale_range: Sequence[float], hflip: bool, pad_label: int,
                 mean: Sequence[float], std: Sequence[float], resize: Sequence[int] | None = None,
                 scale_sampling: str = "uniform", strong: Sequence[Any] = (), crop_first: bool = True):
        self.geometric = A.Compose(_geometric(crop, scale_range, hflip, pad_label, mean, resize, scale_sampling,
                                              crop_first))
        self.strong = A.Compose(list(strong))
        self.normalize = Normalize(mean, std)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, seed: int | None = None
                 ) -> dict[str, torch.Tensor]:
        if seed is not None:
            reseed(self.geometric, seed)
            reseed(self.strong, seed + 1)
        data = self.geometric(image=image, mask=mask) if mask is not None else self.geometric(image=image)
        if self.strong.transforms:
            data["image"] = self.strong(image=data["image"])["image"]
        out = {"image": self.normalize(data["image"])}
        if mask is not None:
            out["mask"] = _mask_tensor(data["mask"])
        return out


class UnlabeledTransform:
    """Weak view (geometric) and a pixel-aligned strong view (photometric on top of the weak one).

    Returns {"image": weak, "image_strong": strong} (+ "mask" when a ground truth exists, used only
    for diagnostics such as pseudo-label accuracy on synthscapes, never for training).

    ``strong_views=2`` adds "image_strong2", a second strong view drawn independently (its own seed) from
    the same weak crop; ``padding_mask=True`` adds "valid" (bool [H, W], False where the crop is padding),
    both for UniMatch V2 (docs/unimatch_v2.md §2: ``img_s1, img_s2, ignore_mask``).
    """

    def __init__(self, crop: int | Sequence[int], scale_range: Sequence[float], hflip: bool, pad_label: int,
                 mean: Sequence[float], std: Sequence[float], strong: Sequence[Any] = (),
                 resize: Sequence[int] | None = None, scale_sampling: str = "uniform", crop_first: bool = True,
                 strong_views: int = 1, padding_mask: bool = False):
        if strong_views not in (1, 2):
            raise ValueError(f"strong_views={strong_views}: expected 1 or 2")
        self.geometric = A.Compose(_geometric(crop, scale_range, hflip, pad_label, mean, resize, scale_sampling,
                                              crop_first))
        self.strong = A.Compose(list(strong))
        self.normalize = Normalize(mean, std)
        self.strong_views, self.padding_mask = int(strong_views), bool(padding_mask)
        # the value that marks image pixels in the padding marker (padding gets pad_label)
        self._marker = 1 if pad_label != 1 else 2

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, seed: int | None = None
                 ) -> dict[str, torch.Tensor]:
        if seed is not None:
            reseed(self.geometric, seed)
            reseed(self.strong, seed + 1)
        inputs: dict[str, Any] = {"image": image}
        if mask is not None:
            inputs["mask"] = mask
        if self.padding_mask:
            inputs["masks"] = [np.full(image.shape[:2], self._marker, dtype=np.uint8)]
        data = self.geometric(**inputs)
        weak = data["image"]
        strong = self.strong(image=weak)["image"] if self.strong.transforms else weak
        out = {"image": self.normalize(weak), "image_strong": self.normalize(strong)}
        if self.strong_views == 2:
            if seed is not None:
                reseed(self.strong, seed + 2)
            strong2 = self.strong(image=weak)["image"] if self.strong.transforms else weak
            out["image_strong2"] = self.normalize(strong2)
        if self.padding_mask:
            out["valid"] = torch.from_numpy(np.ascontiguousarray(data["masks"][0]) == self._marker)
        if mask is not None:
            out["mask"] = _mask_tensor(data["mask"])
        return out


class EvalTransform:
    """Evaluation: no geometry (full image), only normalisation. Cropping/padding for the chosen
    protocol (center crop, whole image, sliding window) happens on the batch in the method.

    ``resize`` ([H, W]) resizes image (bilinear) AND label (nearest) first: ELN's VOC protocol
    measures mIoU on 505×505 resized labels (eln.md §6), not at the original resolution."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], resize: Sequence[int] | None = None):
        self.normalize = Normalize(mean, std)
        self.resize = crop_hw(resize, "data.val_resize") if resize is not None else None

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, seed: int | None = None
                 ) -> dict[str, torch.Tensor]:
        if self.resize is not None:
            size = (self.resize[1], self.resize[0])  # cv2 takes (width, height)
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            if mask is not None:  # nearest neighbour by indexing: any integer dtype
                h, w = mask.shape[:2]
                rows = np.minimum((np.arange(self.resize[0]) * h) // self.resize[0], h - 1)
                cols = np.minimum((np.arange(self.resize[1]) * w) // self.resize[1], w - 1)
                mask = mask[rows[:, None], cols[None, :]]
        out = {"image": self.normalize(image)}
        if mask is not None:
            out["mask"] = _mask_tensor(mask)
        return out
