"""Evaluation-time inference: sliding window, whole image, center crop, multi-scale / flip.

Protocols (specs/ael.md §8, specs/eln.md §6):

* AEL/U2PL Cityscapes offline eval: sliding window, crop 769, stride ``ceil(769 * 2/3) = 513``, last window
  aligned to the border, softmax probabilities summed per window and divided by the overlap count.
* ELN: whole-image inference, single scale, no flip.
* AEL in-training check: center crop 769 (Cityscapes) / 513 (VOC), padded if the image is smaller.

Conventions: ``images`` is ``[B,3,H,W]`` float (already normalised); ``model`` is any callable
``images -> logits [B,C,h,w]``; the logits are always upsampled bilinearly (``align_corners=False``) to the
size of the tensor that was fed to the model, then turned into softmax probabilities (float32). Everything
stays on the input's device. The functions do not switch autograd off themselves: call them under
``torch.no_grad()`` / ``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]
Size = int | tuple[int, int] | Sequence[int]


def _pair(value: Size, name: str) -> tuple[int, int]:
    """``v -> (v, v)``; ``(h, w) -> (h, w)``; both entries must be positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name}={value!r}: expected a positive int or a pair (h, w) of positive ints")
    return int(pair[0]), int(pair[1])


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a [B,C,H,W] tensor, got {shape}")


def _probs_at(model: Model, inputs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``softmax(upsample(model(inputs)))`` at the input's spatial size, float32 ``[N,C,h,w]``."""
    logits = model(inputs)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[1] != num_classes:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model output: expected logits [N,{num_classes},h,w] (num_classes={num_classes}), "
                         f"got {got}")
    if logits.shape[-2:] != inputs.shape[-2:]:
        logits = F.interpolate(logits.float(), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    return logits.float().softmax(dim=1)


def pad_bottom_right(tensor: torch.Tensor, height: int, width: int, value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims of ``tensor`` at the bottom/right with ``value`` up to at least ``height×width``."""
    pad_h, pad_w = max(height - tensor.shape[-2], 0), max(width - tensor.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), mode="constant", value=value)


def default_stride(crop: int) -> int:
    """Cityscapes sliding-window stride ``ceil(crop * 2/3)`` (ael.md §8: 769 -> 513)."""
    if not isinstance(crop, int) or crop <= 0:
        raise ValueError(f"crop={crop!r}: expected a positive int")
    return -(-crop * 2 // 3)  # exact integer ceil(2*crop/3)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window start offsets along one axis (ael.md §8).

    ``n = ceil((length - crop) / stride) + 1`` windows (1 if ``length <= crop``) and
    ``start_i = min(i * stride, length - crop)``, so the last window ends exactly at the border.
    Example: length 2048, crop 769, stride 513 -> ``[0, 513, 1026, 1279]``.
    """
    for name, v in (("length", length), ("crop", crop), ("stride", stride)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}={v!r}: expected a positive int")
    if length <= crop:
        return [0]
    n = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(n)]


def _coverage(length: int, crop: int, starts: list[int], device: torch.device) -> torch.Tensor:
    """How many windows cover each position of one axis, ``[length]`` float32."""
    count = torch.zeros(length, device=device)
    for s in starts:
        count[s:s + crop] += 1
    return count


def sliding_window_inference(model: Model, images: torch.Tensor, num_classes: int, crop: Size,
                             stride: Size | None = None, batch_windows: int = 8) -> torch.Tensor:
    """Sliding-window softmax probabilities ``[B,C,H,W]`` (ael.md §8, the AEL/U2PL Cityscapes eval).

    The image is padded bottom/right with 0 up to the crop if smaller; windows start at
    :func:`window_starts` on each axis (a grid, last window aligned to the border). With ``p_w`` the
    softmax of the (upsampled) window logits and ``n(x)`` the number of windows covering pixel ``x``:
    ``P(x) = sum_w p_w(x) / n(x)``; the padding is cropped off at the end.

    Args:
        model: ``images -> logits [N,C,h,w]`` (eval mode: windows of different images share a batch).
        images: ``[B,3,H,W]`` normalised images.
        num_classes: ``C``; the model output must have ``C`` channels.
        crop: window size, int or ``(h, w)``.
        stride: step, int or ``(h, w)``; ``None`` -> :func:`default_stride` of each crop side.
        batch_windows: windows per model call; each call sees ``batch_windows * B`` crops.
    """
    _check_images(images)
    crop_h, crop_w = _pair(crop, "crop")
    stride_h, stride_w = ((default_stride(crop_h), default_stride(crop_w)) if stride is None
                          else _pair(stride, "stride"))
    if not isinstance(batch_windows, int) or batch_windows <= 0:
        raise ValueError(f"batch_windows={batch_windows!r}: expected a positive int")
    batch, _, height, width = images.shape
    padded = pad_bottom_right(images, crop_h, crop_w)
    pad_h, pad_w = padded.shape[-2:]
    ys = window_starts(pad_h, crop_h, stride_h)
    xs = window_starts(pad_w, crop_w, stride_w)
    corners = [(y, x) for y in ys for x in xs]

    prob_sum = torch.zeros(batch, num_classes, pad_h, pad_w, device=images.device)
    for first in range(0, len(corners), batch_windows):
        chunk = corners[first:first + batch_windows]
        # window-major stack: rows [k*B, (k+1)*B) are window k of every image
        crops = torch.cat([padded[:, :, y:y + crop_h, x:x + crop_w] for y, x in chunk], dim=0)
        probs = _probs_at(model, crops, num_classes).split(batch, dim=0)
        for (y, x), p in zip(chunk, probs):
            prob_sum[:, :, y:y + crop_h, x:x + crop_w] += p
    # the windows form a grid, so the per-pixel count is the outer product of the per-axis counts
    count = torch.outer(_coverage(pad_h, crop_h, ys, images.device), _coverage(pad_w, crop_w, xs, images.device))
    return (prob_sum / count)[:, :, :height, :width]


def whole_image_inference(model: Model, images: torch.Tensor, num_classes: int, pad_to: Size | None = None,
                          size_divisor: int | None = None) -> torch.Tensor:
    """Whole-image softmax probabilities ``[B,C,H,W]`` (eln.md §6: single scale, no sliding window).

    The image is padded bottom/right with 0 to at least ``pad_to`` and then up to a multiple of
    ``size_divisor`` (``H' = ceil(max(H, pad_h) / d) * d``), run once, and the padding is cropped off.
    """
    _check_images(images)
    height, width = images.shape[-2:]
    target_h, target_w = (height, width) if pad_to is None else _pair(pad_to, "pad_to")
    target_h, target_w = max(target_h, height), max(target_w, width)
    if size_divisor is not None:
        if not isinstance(size_divisor, int) or size_divisor <= 0:
            raise ValueError(f"size_divisor={size_divisor!r}: expected a positive int or None")
        target_h = -(-target_h // size_divisor) * size_divisor
        target_w = -(-target_w // size_divisor) * size_divisor
    padded = pad_bottom_right(images, target_h, target_w)
    return _probs_at(model, padded, num_classes)[:, :, :height, :width]


def center_crop(images: torch.Tensor, labels: torch.Tensor, crop: Size,
                label_pad_value: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Center crop of images ``[B,3,H,W]`` and labels ``[B,H,W]`` for the fast in-training check (ael.md §8).

    A side smaller than the crop is first padded symmetrically (extra pixel bottom/right) with 0 (image)
    and ``label_pad_value`` (label; 255 = ignore; AEL's VOC validation pads with 0 = background). The
    crop starts at ``floor((H' - crop_h) / 2)``, ``floor((W' - crop_w) / 2)``.
    """
    _check_images(images)
    if labels.ndim != 3 or labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"labels: expected [B,H,W] matching images {tuple(images.shape)}, got "
                         f"{tuple(labels.shape)}")
    crop_h, crop_w = _pair(crop, "crop")
    pad_h, pad_w = max(crop_h - images.shape[-2], 0), max(crop_w - images.shape[-1], 0)
    if pad_h or pad_w:
        border = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        images = F.pad(images, border, mode="constant", value=0.0)
        labels = F.pad(labels, border, mode="constant", value=label_pad_value)
    top = (images.shape[-2] - crop_h) // 2
    left = (images.shape[-1] - crop_w) // 2
    return (images[:, :, top:top + crop_h, left:left + crop_w],
            labels[:, top:top + crop_h, left:left + crop_w])


def _resize(tensor: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=align_corners)


def multi_scale_inference(infer_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                          scales: Sequence[float] = (1.0,), flip: bool = False,
                          align_corners: bool = False) -> torch.Tensor:
    """Average of ``infer_fn`` probabilities over scales (and horizontal flips), ``[B,C,H,W]`` (ael.md §8).

    For each scale ``s`` the image is resized bilinearly to ``(floor(H*s + 0.5), floor(W*s + 0.5))``,
    ``infer_fn(resized) -> probs`` is resized back to ``(H, W)``; with ``flip`` the pass on
    ``images.flip(-1)`` is flipped back and added too. Result: sum of passes / number of passes.
    The reference eval.py resizes with ``align_corners=True``; the default here is ``False``.
    """
    _check_images(images)
    if len(scales) == 0 or any(not (isinstance(s, (int, float)) and s > 0) for s in scales):
        raise ValueError(f"scales={tuple(scales)!r}: expected a non-empty sequence of positive numbers")
    height, width = images.shape[-2:]
    flips = (False, True) if flip else (False,)
    total: torch.Tensor | None = None
    for scale in scales:
        size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        scaled = _resize(images, size, align_corners)
        for flipped in flips:
            probs = infer_fn(scaled.flip(-1) if flipped else scaled)
            probs = _resize(probs.float(), (height, width), align_corners)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
    return total / (len(scales) * len(flips))


def resolve_auto_mode(mode: str, height: int, width: int, crop: tuple[int, int]) -> str:
    """``auto`` -> ``sliding`` when the image is larger than the crop on either side, else ``whole``;
    any other mode is returned as it is."""
    if mode != "auto":
        return mode
    return "sliding" if height > crop[0] or width > crop[1] else "whole"


def protocol_probs(net: Model, images: torch.Tensor, num_classes: int, crop: Size, mode: str = "whole",
                   scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Softmax probabilities ``[B,C,H,W]`` of normalised ``images`` by an evaluation protocol.

    ``mode``: ``whole`` / ``center_crop`` (one pass of the given images), ``sliding`` (crop-size windows,
    stride :func:`default_stride` of each side), ``auto`` (sliding when an input is larger than the crop
    on either side, else whole); averaged over ``scales`` and the horizontal ``flip`` when asked for.
    """
    crop_h, crop_w = _pair(crop, "crop")
    if mode not in ("whole", "center_crop", "sliding", "auto"):
        raise ValueError(f"evaluation mode={mode!r}: expected whole | center_crop | sliding | auto")

    def infer(x: torch.Tensor) -> torch.Tensor:
        if resolve_auto_mode(mode, x.shape[-2], x.shape[-1], (crop_h, crop_w)) == "sliding":
            return sliding_window_inference(net, x, num_classes, crop=(crop_h, crop_w))
        return net(x).float().softmax(1)

    scales = tuple(float(s) for s in scales)
    if scales == (1.0,) and not flip:
        return infer(images)
    return multi_scale_inference(infer, images, scales=scales, flip=bool(flip))

