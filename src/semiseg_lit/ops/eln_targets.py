"""Pure tensor functions of the Error Localization Network (ELN, Kwon & Kwak, CVPR 2022).

Spec: ``specs/eln.md`` §2.2 (auxiliary-decoder loss gate), §2.3 (ELN input), §3 (ELN targets and the
class-balanced BCE) and §4.2 (ELN-filtered pseudo labels).

Conventions: logits ``[B, C, h, w]``, labels ``[B, H, W]`` int64 with ``ignore_index`` (255), ELN
logits ``[B, 1, h, w]`` (one logit per pixel; sigmoid = probability that the prediction is correct).
Every resize is bilinear with ``align_corners=True`` as in the reference. Numerically sensitive parts
(softmax / entropy, BCE) run in float32 with autocast disabled. Nothing here syncs with the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_lit.ops.losses import class_argmax

__all__ = [
    "ELNInputError",
    "aux_decoder_gate",
    "balanced_bce_loss",
    "eln_inputs",
    "eln_pseudo_labels",
    "eln_targets",
    "entropy_map",
    "resize_bilinear",
]


class ELNInputError(ValueError):
    """A tensor with the wrong rank / shape / dtype was passed to an ELN function."""


# ----------------------------------------------------------------------------------------- helpers
def _check_rank(name: str, x: Tensor, rank: int, layout: str) -> None:
    if x.dim() != rank:
        raise ELNInputError(f"{name}: expected a {rank}-D tensor {layout}, got shape {tuple(x.shape)}")


def _check_batch(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ELNInputError(f"{name_a} has batch size {a.shape[0]} but {name_b} has {b.shape[0]} "
                            f"(shapes {tuple(a.shape)} and {tuple(b.shape)})")


def _as_map(name: str, eln_logits: Tensor) -> Tensor:
    """Accept ELN logits as ``[B,1,h,w]`` or ``[B,h,w]``; return ``[B,1,h,w]``."""
    if eln_logits.dim() == 3:
        return eln_logits.unsqueeze(1)
    if eln_logits.dim() != 4 or eln_logits.shape[1] != 1:
        raise ELNInputError(f"{name}: expected ELN logits [B,1,h,w] (or [B,h,w]), got shape "
                            f"{tuple(eln_logits.shape)}")
    return eln_logits


def resize_bilinear(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of ``[B,C,h,w]`` to ``size`` with ``align_corners=True`` (identity if equal)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _autocast_off(x: Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


# ----------------------------------------------------------------------------------------- §2.3
def entropy_map(logits: Tensor) -> Tensor:
    """Per-pixel prediction entropy, eln.md §2.3 step 2.

    ``H = -Σ_c softmax(z)_c · log_softmax(z)_c`` (natural log), float32, shape ``[B,1,h,w]``.
    Uniform logits over C classes give ``log C``; a one-hot-like prediction gives ≈ 0.
    """
    _check_rank("logits", logits, 4, "[B,C,h,w]")
    with _autocast_off(logits):
        log_p = F.log_softmax(logits.float(), dim=1)
        return -(log_p.exp() * log_p).sum(dim=1, keepdim=True)


def eln_inputs(images: Tensor, logits: Tensor) -> Tensor:
    """ELN input ``cat([image, H(z_up), z_up])`` with 3+1+C channels, eln.md §2.3 steps 1-3.

    ``z_up`` = the *detached* segmentation logits, bilinearly upsampled (align_corners=True) to the
    image size; ``H`` = :func:`entropy_map` of ``z_up``. Raw logits (not softmax) are fed, as in the
    reference. The result has the dtype of ``images``.
    """
    _check_rank("images", images, 4, "[B,3,H,W]")
    _check_rank("logits", logits, 4, "[B,C,h,w]")
    _check_batch("images", images, "logits", logits)
    if images.shape[1] != 3:
        raise ELNInputError(f"images: expected 3 channels [B,3,H,W], got shape {tuple(images.shape)}")
    with _autocast_off(logits):
        z_up = resize_bilinear(logits.detach().float(), images.shape[-2:])
        ent = entropy_map(z_up)
    return torch.cat([images, ent.to(images.dtype), z_up.to(images.dtype)], dim=1)


# ----------------------------------------------------------------------------------------- §3
def eln_targets(pred_logits: Tensor, target: Tensor, ignore_index: int = 255,
                ignore_as_error: bool = False) -> tuple[Tensor, Tensor]:
    """ELN training target ``t = [argmax_c z_up == y]`` at label resolution, eln.md §3.

    ``z_up`` = ``pred_logits`` resized to the label size (bilinear, align_corners=True).
    Returns ``(t, valid)``: ``t`` float ``[B,H,W]`` (1 = correct, 0 = wrong) and ``valid`` bool.
    Pixels with ``target == ignore_index`` get ``t = 0`` and ``valid = False`` by default;
    with ``ignore_as_error=True`` they are counted as errors (``valid = True``) — the reference's
    behaviour (eln.md §3, "Ignore-label pixels (255) count as errors").
    Labels outside ``[0, C)`` that are not ``ignore_index`` can never match and count as errors.
    """
    _check_rank("pred_logits", pred_logits, 4, "[B,C,h,w]")
    _check_rank("target", target, 3, "[B,H,W]")
    _check_batch("pred_logits", pred_logits, "target", target)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ELNInputError(f"target: expected an integer label map, got dtype {target.dtype}")
    with torch.no_grad(), _autocast_off(pred_logits):
        pred = class_argmax(resize_bilinear(pred_logits.detach().float(), target.shape[-2:]))
    ignore = target == ignore_index
    correct = (pred == target) & ~ignore
    t = correct.float()
    valid = torch.ones_like(ignore) if ignore_as_error else ~ignore
    return t, valid


def balanced_bce_loss(eln_logits: Tensor, t: Tensor, valid: Tensor) -> Tensor:
    """Class-balanced BCE of the ELN, eln.md §3 (``corrector_loss``).

    ``ℓ_p = BCEWithLogits(e_p, t_p)``; pixels with ``t_p = 0`` are weighted by ``w0 = n1 / n0``
    (``n1``, ``n0`` = counts of valid correct / wrong pixels over the whole batch, no gradient), so both
    classes carry the same total weight; ``L = Σ_valid w_p ℓ_p / n_valid`` (a plain mean over the valid
    pixels, not normalised by the weight sum). Guards: ``n0 = 0`` → ``w0 = 1`` (the reference raises
    ZeroDivisionError); no valid pixel → 0 (still attached to the graph). As in the reference, a batch
    with ``n1 = 0`` gets ``w0 = 0`` (loss 0). ``eln_logits`` ``[B,1,h,w]`` (or ``[B,h,w]``) are
    resized to ``t``'s size first (bilinear, align_corners=True). Computed in float32.
    """
    e = _as_map("eln_logits", eln_logits)
    _check_rank("t", t, 3, "[B,H,W]")
    if valid.shape != t.shape or valid.dtype != torch.bool:
        raise ELNInputError(f"valid: expected a bool tensor of shape {tuple(t.shape)} (like t), got "
                            f"{valid.dtype} {tuple(valid.shape)}")
    _check_batch("eln_logits", e, "t", t)
    with _autocast_off(e):
        e = resize_bilinear(e.float(), t.shape[-2:]).squeeze(1)
        t = t.float()
        bce = F.binary_cross_entropy_with_logits(e, t, reduction="none")
        positive = t > 0.5
        n1 = (positive & valid).sum().float()
        n0 = (~positive & valid).sum().float()
        w0 = torch.where(n0 > 0, n1 / n0.clamp_min(1.0), torch.ones_like(n0))
        weight = torch.where(positive, torch.ones_like(bce), w0) * valid.float()
        n_valid = valid.sum().float().clamp_min(1.0)
        return (bce * weight).sum() / n_valid


# ----------------------------------------------------------------------------------------- §2.2
def aux_decoder_gate(aux_ce: Tensor, main_ce: Tensor, factor: float | Sequence[float] | Tensor) -> Tensor:
    """Loss gate of the error-simulating auxiliary decoders, eln.md §2.2.

    ``gated_k = aux_ce_k if aux_ce_k >= factor_k · main_ce else 0·aux_ce_k`` elementwise (broadcast;
    ``aux_ce`` may hold one CE per decoder and ``factor`` the matching factors, e.g. ``[20, 50]``).
    Sum the result for the total auxiliary loss. No host sync (``torch.where``); the comparison uses
    the current values and carries no gradient, and ``main_ce`` gets no gradient from the gate.
    Spec example: two decoders with CE 3.51 and factors [20, 50] give a total of
    7.02 / 3.51 / 0 for ``main_ce`` = 0.01 / 0.1 / 1.0.
    """
    if not torch.is_tensor(aux_ce):
        raise ELNInputError(f"aux_ce: expected a tensor, got {type(aux_ce).__name__}")
    main = torch.as_tensor(main_ce, device=aux_ce.device).detach()
    fac = torch.as_tensor(factor, dtype=torch.float32, device=aux_ce.device)
    if fac.dim() > 0 and aux_ce.dim() > 0 and fac.shape[-1] not in (1, aux_ce.shape[-1]):
        raise ELNInputError(f"factor: {fac.numel()} factors for aux_ce of shape {tuple(aux_ce.shape)}")
    passed = aux_ce.detach().float() >= fac * main.float()
    return torch.where(passed, aux_ce, torch.zeros_like(aux_ce))


# ----------------------------------------------------------------------------------------- §4.2
def eln_pseudo_labels(teacher_logits: Tensor, eln_logits: Tensor, threshold: float = 0.5,
                      ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """ELN-filtered pseudo labels, eln.md §4.2.

    ``ŷ = argmax_c z_t``, ``keep = sigmoid(e) > threshold`` (strict: exactly 0.5, i.e. logit 0, is
    discarded, like the reference's ``round``), ``labels = where(keep, ŷ, ignore_index)``.
    ``eln_logits`` are resized to the teacher grid if needed (bilinear, align_corners=True).
    Returns ``(labels int64 [B,h,w], keep bool [B,h,w])``; no gradient.
    """
    _check_rank("teacher_logits", teacher_logits, 4, "[B,C,h,w]")
    e = _as_map("eln_logits", eln_logits)
    _check_batch("teacher_logits", teacher_logits, "eln_logits", e)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ELNInputError(f"threshold: expected a probability in [0, 1], got {threshold}")
    with torch.no_grad(), _autocast_off(e):
        e = resize_bilinear(e.detach().float(), teacher_logits.shape[-2:]).squeeze(1)
        keep = torch.sigmoid(e) > threshold
        yhat = class_argmax(teacher_logits.detach())
        labels = torch.where(keep, yhat, torch.full_like(yhat, ignore_index))
    return labels, keep
