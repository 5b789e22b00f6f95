"""UniMatch V2 (Yang, Zhao, Zhao; arXiv 2410.10777), as the official code does it (docs/unimatch_v2.md).

One training step (docs/unimatch_v2.md §3), per device:

1. **EMA teacher** (eval mode, no grad) predicts the weak view of the unlabeled crops: confidence
   ``conf = max softmax`` and pseudo-label ``ŷ = argmax``.
2. **Two strong views** (independent photometric draws of the same weak crop, ``data.augment.strong``),
   each with its own **CutMix** box pasted from the reversed batch of its emulated GPU; ``ŷ``, ``conf`` and
   the padding mask are pasted with the same box.
3. **Student**: the labeled crops in one forward; both strong views in another, where the encoder features
   go through **complementary channel dropout** (each image's two views keep complementary channel halves).
4. ``L = w_l·L_x + w_u·(L_s1 + L_s2)/2`` (reference ``w_l = w_u = 1/2``), with ``L_x`` CE / OHEM on the labels
   and ``L_si = Σ CE(s_i, ŷ_i)·[conf_i ≥ τ]·valid_i / Σ valid_i``; the EMA-teacher callback then updates the
   teacher with ``d = min(1 − 1/(step+1), 0.996)`` over parameters and buffers.

Emulated GPUs (``method.unimatch_v2.virtual_ranks = V``): the device batch is ``G = V / world size``
groups; each group's CE / OHEM mean, unsupervised denominator, CutMix partners and dropout draws are its
own (what a reference GPU computes), and the step loss is the mean of the per-group losses (DDP's
gradient average). Randomness: per-step generators on the training device (seed, step, virtual rank),
so a resumed run replays the same draws.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from semiseg_lit.callbacks.ema_teacher import EMATeacher
from semiseg_lit.data.labels import ClassInfo
from semiseg_lit.methods.base import SegMethod
from semiseg_lit.ops.complementary_dropout import complementary_channel_dropout
from semiseg_lit.ops.cutmix_boxes import cutmix_box_masks, cutmix_box_noise_width, paste_from_partner
from semiseg_lit.ops.ema import resolve_ema_decay
from semiseg_lit.ops.losses import (
    confident_pseudo_label_loss_per_group,
    ohem_cross_entropy_per_group,
    per_pixel_cross_entropy,
    pseudo_labels,
)
from semiseg_lit.ops.virtual_ranks import groups_per_device, rand_per_group, virtual_rank_generators

Features = list[torch.Tensor]


# the official EMA cap (unimatch_v2.py:221); `auto` caps there
REFERENCE_EMA_DECAY = 0.996


class UniMatchV2Method(SegMethod):
    # the EMA teacher updates once per optimizer step (tasks/common.check_method_options)
    supports_grad_accumulation = False

    def __init__(self, cfg: DictConfig, class_info: ClassInfo):
        super().__init__(cfg, class_info)
        u = cfg.method.get("unimatch_v2")
        if u is None:
            raise ValueError("method=unimatch_v2 needs the method.unimatch_v2 config node (conf/method/unimatch_v2.yaml)")
        self.uv2 = u
        self._check_options(u)
        # the EMA teacher's cap (`auto`: time constant max_steps / 40, at most the reference's 0.996)
        self.ema_decay = resolve_ema_decay(u.ema_decay, int(OmegaConf.select(cfg, "trainer.max_steps", default=-1)),
                                           "method.unimatch_v2.ema_decay", REFERENCE_EMA_DECAY)
        if u.feature_dropout and "feature_transform" not in inspect.signature(self.student.forward_all).parameters:
            raise ValueError(
                f"method.unimatch_v2.feature_dropout=true needs a network whose forward_all takes feature_transform; "
                f"model.arch={cfg.model.arch!r} does not. Use model.arch=deeplabv3plus or a DPT model (model=dpt_*), "
                "or set method.unimatch_v2.feature_dropout=false")
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self._method_callbacks: list[Callback] | None = None

    @staticmethod
    def _check_options(u: DictConfig) -> None:
        def bad(key: str, value: Any, expected: str) -> ValueError:
            return ValueError(f"method.unimatch_v2.{key}={value}: expected {expected}")

        if not 0.0 <= float(u.conf_thresh) <= 1.0:
            raise bad("conf_thresh", u.conf_thresh, "a probability in [0, 1] (reference 0.95)")
        for key in ("cutmix_prob", "feature_dropout_prob"):
            if not 0.0 <= float(u[key]) <= 1.0:
                raise bad(key, u[key], "a probability in [0, 1] (reference 0.5)")
        a_lo, a_hi = (float(v) for v in u.cutmix_area)
        if not 0.0 < a_lo <= a_hi <= 1.0:
            raise bad("cutmix_area", list(u.cutmix_area), "[min, max] fractions of the crop, 0 < min <= max <= 1")
        r_lo, r_hi = (float(v) for v in u.cutmix_ratio)
        if not 0.0 < r_lo <= r_hi:
            raise bad("cutmix_ratio", list(u.cutmix_ratio), "[min, max] aspect ratios, 0 < min <= max")
        if int(u.cutmix_candidates) < 1:
            raise bad("cutmix_candidates", u.cutmix_candidates, "a positive number of draws (128)")
        if int(u.virtual_ranks) < 1:
            raise bad("virtual_ranks", u.virtual_ranks, "the number of GPUs to emulate (>= 1; the reference: 4)")

    def on_fit_start(self) -> None:
        if not OmegaConf.select(self.cfg, "data.augment.strong"):
            rank_zero_warn("method=unimatch_v2 with data.augment.strong=[]: both strong views equal the weak view "
                           "(only CutMix and the feature dropout perturb them). The unimatch_v2_* experiments set the "
                           "official colour jitter / grayscale / blur (docs/unimatch_v2.md §2)")
        rank_zero_info(f"UniMatch V2: tau {self.uv2.conf_thresh}, EMA cap {self.ema_decay:.4g}, "
                       f"{self.groups} emulated GPU(s) per device; {self.describe_unsup_start()}")

    # ------------------------------------------------------------------ data and callbacks
    @classmethod
    def required_streams(cls, cfg: DictConfig) -> tuple[str, ...]:
        return ("labeled", "unlabeled")

    @classmethod
    def unlabeled_options(cls, cfg: DictConfig) -> dict[str, Any]:
        """The weak view, two independent strong views and the padding mask (docs/unimatch_v2.md §2)."""
        return {"strong_views": 2, "padding_mask": True}

    @classmethod
    def virtual_ranks(cls, cfg: DictConfig) -> int:
        return int(cfg.method.unimatch_v2.virtual_ranks)

    @property
    def groups(self) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        return groups_per_device(int(self.uv2.virtual_ranks), world, "method.unimatch_v2.virtual_ranks")

    def configure_callbacks(self) -> list[Callback]:
        """The EMA-teacher callback, built once (Lightning asks for every fit / validate)."""
        if self._method_callbacks is None:
            u = self.uv2
            self._method_callbacks = [EMATeacher(decay=self.ema_decay, warmup=bool(u.ema_warmup),
                                                 average_buffers=bool(u.ema_average_buffers))]
        return list(self._method_callbacks)

    # ------------------------------------------------------------------ pieces of the step
    def step_generators(self) -> list[torch.Generator]:
        """One generator per emulated GPU of this device, a function of (seed, step, virtual rank)."""
        groups = self.groups
        return virtual_rank_generators(int(self.cfg.seed), self.global_step, self.global_rank * groups, groups,
                                       self.device)

    def cutmix_boxes(self, gens: list[torch.Generator], batch: int, height: int, width: int) -> torch.Tensor:
        """One box mask ``[B, H, W]`` per image of a strong view (none with ``cutmix=false``)."""
        u = self.uv2
        if not u.cutmix:
            return torch.zeros(batch, height, width, dtype=torch.bool, device=self.device)
        noise = rand_per_group(gens, (batch // len(gens), cutmix_box_noise_width(int(u.cutmix_candidates))),
                               self.device).flatten(0, 1)
        return cutmix_box_masks(noise, height, width, prob=float(u.cutmix_prob),
                                area_range=tuple(float(v) for v in u.cutmix_area),
                                ratio_range=tuple(float(v) for v in u.cutmix_ratio))

    def feature_dropout(self, gens: list[torch.Generator]) -> Callable[[Features], Features] | None:
        """Complementary channel dropout of the ``[view 1; view 2]`` batch's encoder features (or None)."""
        if not self.uv2.feature_dropout:
            return None
        prob = float(self.uv2.feature_dropout_prob)
        return lambda features: complementary_channel_dropout(features, gens, drop_prob=prob)

    def supervised_loss_per_group(self, logits: torch.Tensor, target: torch.Tensor, groups: int) -> torch.Tensor:
        """``method.loss`` per emulated GPU: CE mean over its valid pixels, or OHEM mined per GPU ``[G]``."""
        loss_cfg = self.cfg.method.loss
        if loss_cfg.name == "ohem":
            return ohem_cross_entropy_per_group(logits.float(), target, groups, thresh=float(loss_cfg.ohem_thresh),
                                                min_kept=int(loss_cfg.ohem_min_kept),
                                                ignore_index=self.ignore_index)[0]
        if loss_cfg.name == "ce":
            ce, _, valid = per_pixel_cross_entropy(logits, target, self.ignore_index)
            return ce.reshape(groups, -1).sum(1) / valid.reshape(groups, -1).sum(1).clamp_min(1)
        raise ValueError(f"method.loss.name={loss_cfg.name!r}: expected 'ce' or 'ohem'")

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        u = self.uv2
        gens = self.step_generators()  # one per emulated GPU of this device
        groups, tau = len(gens), float(u.conf_thresh)
        x_l, y_l = batch["labeled"]["image"], batch["labeled"]["mask"]
        unl = batch["unlabeled"]
        x_w, x_s1, x_s2, valid = unl["image"], unl["image_strong"], unl["image_strong2"], unl["valid"]
        b_u, _, h, w = x_w.shape

        # 1. the EMA teacher predicts the weak view: confidence and hard pseudo-label
        self.teacher.train(bool(u.teacher_train_mode))
        with torch.no_grad():
            conf, pseudo = pseudo_labels(self.teacher(x_w).float())

        # 2. CutMix: each strong view gets its own box from the partner image (reversed batch per emulated GPU);
        # the partner's pseudo-label, confidence and padding mask come with it
        box1, box2 = self.cutmix_boxes(gens, b_u, h, w), self.cutmix_boxes(gens, b_u, h, w)
        x_s1, x_s2 = paste_from_partner(x_s1, box1, groups), paste_from_partner(x_s2, box2, groups)
        pl1, conf1, valid1 = (paste_from_partner(t, box1, groups) for t in (pseudo, conf, valid))
        pl2, conf2, valid2 = (paste_from_partner(t, box2, groups) for t in (pseudo, conf, valid))

        # 3. student: the labeled crops; both strong views in one forward, their encoder features through
        # complementary channel dropout
        logits_l = self.student(x_l)
        out_s = self.student.forward_all(torch.cat([x_s1, x_s2]), feature_transform=self.feature_dropout(gens))
        logits_s1, logits_s2 = out_s.logits.chunk(2)

        # 4. supervised + confident pseudo-label losses per emulated GPU, then their mean
        l_s1 = confident_pseudo_label_loss_per_group(logits_s1, pl1, conf1, valid1, tau, groups)
        l_s2 = confident_pseudo_label_loss_per_group(logits_s2, pl2, conf2, valid2, tau, groups)
        terms = {
            "sup": float(u.labeled_weight) * self.supervised_loss_per_group(logits_l, y_l, groups),
            "unsup": float(u.unlabeled_weight) * self.unsup_weight(self.global_step) * (l_s1 + l_s2) / 2,
        }
        terms = {name: per_group.mean() for name, per_group in terms.items()}
        loss = sum(terms.values())
        self.track_finite(loss, terms, self.global_step)
        self.log_losses({"loss": loss, **terms}, batch_size=x_l.shape[0])
        # the share of non-padding weak-view pixels whose pseudo-label passes tau (reference mask_ratio)
        mask_ratio = ((conf >= tau) & valid).sum() / valid.sum().clamp_min(1)
        self.log("train/mask_ratio", mask_ratio, on_step=True, on_epoch=False, batch_size=x_l.shape[0])
        return loss
