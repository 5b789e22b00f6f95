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


def _geometric(crop: int, scale_range: Sequence[float], hflip: bool, pad_label: int,
               mean: Sequence[float]) -> list[Any]:
    """Random scale → pad to the crop → random crop → flip. The image is padded with the mean
    colour (0 after normalisation, as the reference pads normalised tensors with 0, ael.md §9)."""
    fill = tuple(float(m) * 255.0 for m in mean)
    lo, hi = float(scale_range[0]), float(scale_range[1])
    ops: list[Any] = []
    if (lo, hi) != (1.0, 1.0):
        # RandomScale(scale_limit=(a-1, b-1)) draws the factor uniformly in [a, b]
        ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    ops += [
        A.PadIfNeeded(min_height=crop, min_width=crop, position="center",
                      border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=pad_label),
        A.RandomCrop(height=crop, width=crop),
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
        x = (image.astype(np.float32) - self.mean) * self.inv_std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse (for visualisation): float CHW/BCHW tensor -> uint8 on the 0-255 scale."""
        mean = torch.as_tensor(self.mean.reshape(3, 1, 1), device=x.device)
        std = 1.0 / torch.as_tensor(self.inv_std.reshape(3, 1, 1), device=x.device)
        return (x.float() * std + mean).clamp(0, 255).to(torch.uint8)


def _mask_tensor(mask: np.ndarray | None) -> torch.Tensor | None:
    return None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()


class LabeledTransform:
    """Weak geometric augmentation of an (image, mask) pair -> {"image", "mask"} tensors."""

    def __init__(self, crop: int, scale_range: Sequence[float], hflip: bool, pad_label: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.geometric = A.Compose(_geometric(crop, scale_range, hflip, pad_label, mean))
        self.normalize = Normalize(mean, std)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, seed: int | None = None
                 ) -> dict[str, torch.Tensor]:
        if seed is not None:
            reseed(self.geometric, seed)
        data = self.geometric(image=image, mask=mask) if mask is not None else self.geometric(image=image)
        out = {"image": self.normalize(data["image"])}
        if mask is not None:
            out["mask"] = _mask_tensor(data["mask"])
        return out


class UnlabeledTransform:
    """Weak view (geometric) and a pixel-aligned strong view (photometric on top of the weak one).

    Returns {"image": weak, "image_strong": strong} (+ "mask" when a ground truth exists, used only
    for diagnostics such as pseudo-label accuracy on synthscapes, never for training).
    """

    def __init__(self, crop: int, scale_range: Sequence[float], hflip: bool, pad_label: int,
                 mean: Sequence[float], std: Sequence[float], strong: Sequence[Any] = ()):
        self.geometric = A.Compose(_geometric(crop, scale_range, hflip, pad_label, mean))
        self.strong = A.Compose(list(strong))
        self.normalize = Normalize(mean, std)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, seed: int | None = None
                 ) -> dict[str, torch.Tensor]:
        if seed is not None:
            reseed(self.geometric, seed)
            reseed(self.strong, seed + 1)
        data = self.geometric(image=image, mask=mask) if mask is not None else self.geometric(image=image)
        weak = data["image"]
        strong = self.strong(image=weak)["image"] if self.strong.transforms else weak
        out = {"image": self.normalize(weak), "image_strong": self.normalize(strong)}
        if mask is not None:
            out["mask"] = _mask_tensor(data["mask"])
        return out


class EvalTransform:
    """Evaluation: no geometry (full image), only normalisation. Cropping/padding for the chosen
    protocol (center crop, whole image, sliding window) happens on the batch in the method."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.normalize = Normalize(mean, std)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, seed: int | None = None
                 ) -> dict[str, torch.Tensor]:
        out = {"image": self.normalize(image)}
        if mask is not None:
            out["mask"] = _mask_tensor(mask)
        return out
