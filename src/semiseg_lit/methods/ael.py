"""AEL: Adaptive Equalization Learning (Hu et al., NeurIPS 2021), as the official code does it.

One training step (ael.md §13), per device:

1. **ACP** — adaptive Copy-Paste on the labeled crops: draw K classes from
   ``softmax(sqrt(1 - conf))`` over the pasteable classes; each labeled crop gets, with
   probability 0.5, all pixels of those classes from its partner crop (large scale jitter).
2. **ACM** — adaptive CutMix on unlabeled crops: the ``bank`` stream delivers images drawn for a
   class ``c ~ softmax(1 - conf)`` from the CutMix image bank; the teacher predicts both them and the
   random unlabeled crops; the box of a random connected component of ``c`` (else a random box of
   half the area) is pasted from the bank image into the random one; the teacher logits are mixed
   with the same mask; the bank is updated from the teacher's argmax.
3. Student forward on the labeled crops (OHEM main + 0.4·aux) and on the mixed crops.
4. The confidence bank is updated from the student's softmax on labeled pixels.
5. Unsupervised loss on the labeled and mixed crops: CE against teacher pseudo-labels weighted by
   ``conf_teacher^γ`` (DR) and an equalization keep mask with ``P(keep | ĉ) = s_ĉ`` (AES),
   normalised by the weight sum.
6. ``loss = (L_sup + w·α·(L_c1 + L_c2)) · grad_scale``; the EMA teacher callback updates the teacher.

``w`` is the schedule-aware start (``method.unsup_warmup_steps`` / ``unsup_rampup_steps``,
:mod:`semiseg_lit.ops.rampup`): 0 during a supervised warm-up, then a sigmoid ramp to 1; 1 from step 0
in the reference. Only the loss is weighted: during the warm-up the teacher still pseudo-labels, the
CutMix image bank and the confidence bank still update and the EMA teacher still follows the student,
so all three are warm when the unsupervised loss switches on, and a step draws the same randomness
whatever the warm-up length (runs differ only by ``w``).

Emulated GPUs (``method.ael.virtual_ranks = V``, :mod:`semiseg_lit.ops.virtual_ranks`): the device
batch is ``G = V / world size`` groups and every per-GPU piece of the reference acts per group — the
confidence bank row, the ACP class draw, the CutMix draws, the AES noise, OHEM — with each group's
randomness from its own virtual rank. Every loss term is a vector ``[G]`` of per-GPU losses and the
step loss is their mean (what DDP's gradient averaging over ``G`` GPUs gives). BatchNorm sees the
whole device batch (the reference's SyncBN). ``V = 1``: one group per device.

Every component can be switched off (``method.ael.*``), which gives the ablations of Table 3.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from semiseg_lit.callbacks.confidence_bank import ConfidenceBank
from semiseg_lit.callbacks.cutmix_bank import CutMixBank
from semiseg_lit.callbacks.ema_teacher import EMATeacher
from semiseg_lit.data.labels import ClassInfo
from semiseg_lit.methods.base import SegMethod
from semiseg_lit.ops.confidence import copy_paste_class_probs, equalization_keep_rate, resolve_bank_momentum
from semiseg_lit.ops.copy_paste import adaptive_copy_paste, draw_paste_classes
from semiseg_lit.ops.cutmix import cutmix_masks, mix, random_box_masks
from semiseg_lit.ops.ema import resolve_ema_decay
from semiseg_lit.ops.losses import (
    class_argmax,
    ohem_cross_entropy_per_group,
    per_pixel_cross_entropy,
    pseudo_labels,
    weighted_pseudo_label_loss_per_group,
)
from semiseg_lit.ops.sampling import equalization_keep_mask
from semiseg_lit.ops.virtual_ranks import (
    groups_per_device,
    rand_per_group,
    roll_within_groups,
    virtual_rank_generators,
)

# the official EMA cap (ael.md §2; U2PL/AEL train.py: ema_decay = min(1 - 1/(iter+1), 0.99)); `auto` caps there
REFERENCE_EMA_DECAY = 0.99


class AELMethod(SegMethod):
    # the EMA teacher and the banks update per training step (tasks/common.check_method_options)
    supports_grad_accumulation = False

    def __init__(self, cfg: DictConfig, class_info: ClassInfo, num_unlabeled: int | None = None):
        super().__init__(cfg, class_info)
        self.ael = cfg.method.ael
        if self.ael is None:
            raise ValueError("method=ael needs the method.ael config node")
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.num_unlabeled = num_unlabeled
        self.confidence_bank: ConfidenceBank | None = None
        self.cutmix_bank: CutMixBank | None = None
        self._method_callbacks: list[Callback] | None = None
        self.last_views: dict | None = None  # set by training_step (see there), read by WandbPanels
        self.last_group_terms: dict | None = None  # per emulated GPU loss terms [G] and OHEM selection
        if int(self.ael.virtual_ranks) < 1:
            raise ValueError(f"method.ael.virtual_ranks={self.ael.virtual_ranks}: expected the number of GPUs "
                             "to emulate (>= 1; 1 = one per device, the reference experiments: 8)")
        # the confidence bank's EMA momentum (`auto`: time constant max_steps / 16, at most the reference's 0.999)
        max_steps = int(OmegaConf.select(cfg, "trainer.max_steps", default=-1))
        self.bank_momentum = resolve_bank_momentum(self.ael.bank_momentum, max_steps)
        # the EMA teacher's cap (`auto`: time constant max_steps / 40, at most the reference's 0.99)
        self.ema_decay = resolve_ema_decay(self.ael.ema_decay, max_steps, "method.ael.ema_decay", REFERENCE_EMA_DECAY)
        if self.ael.student_view not in ("weak", "strong"):
            raise ValueError(f"method.ael.student_view={self.ael.student_view!r}: expected 'weak' or 'strong'")
        ignore_list = self.ael.copy_paste_ignore_classes
        if ignore_list is None:
            ignore_list = cfg.data.stuff_classes
        bad = [c for c in ignore_list if not 0 <= int(c) < self.num_classes]
        if bad:
            raise ValueError(f"method.ael.copy_paste_ignore_classes has {bad} outside [0, {self.num_classes})")
        ignore = torch.zeros(self.num_classes, dtype=torch.bool)
        ignore[[int(c) for c in ignore_list]] = True
        if bool(ignore.all()):
            raise ValueError("method.ael.copy_paste_ignore_classes excludes every class: nothing can be pasted")
        self.register_buffer("paste_ignore", ignore, persistent=False)

    def on_fit_start(self) -> None:
        rank_zero_info(f"AEL: confidence-bank momentum {self.bank_momentum:.4g} (time constant "
                       f"{1.0 / max(1.0 - self.bank_momentum, 1e-12):.0f} steps); EMA teacher decay "
                       f"{self.ema_decay:.4g} (time constant {1.0 / max(1.0 - self.ema_decay, 1e-12):.0f} steps); "
                       f"{self.describe_unsup_start()}")

    @classmethod
    def required_streams(cls, cfg: DictConfig) -> tuple[str, ...]:
        a = cfg.method.ael
        streams = ["labeled", "unlabeled"]
        if a.copy_paste:
            streams.append("partner")
        if a.cutmix and a.cutmix_adaptive:
            streams.append("bank")
        return tuple(streams)

    @classmethod
    def virtual_ranks(cls, cfg: DictConfig) -> int:
        """GPUs emulated in all (the data module fills each device batch with their shards)."""
        return int(cfg.method.ael.virtual_ranks)

    @property
    def groups(self) -> int:
        """Emulated GPUs on this device, ``virtual_ranks / world size``."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return groups_per_device(int(self.ael.virtual_ranks), world)

    # ------------------------------------------------------------------ callbacks
    def configure_callbacks(self) -> list[Callback]:
        """The method's state-owning callbacks, built once: Lightning calls this for every
        ``fit``/``validate``, and a later call must hand back the same (trained) bank and teacher."""
        if self._method_callbacks is None:
            self._method_callbacks = self._build_callbacks()
        return list(self._method_callbacks)

    def _build_callbacks(self) -> list[Callback]:
        a = self.ael
        groups = self.groups
        if groups > 1 and a.cutmix and a.cutmix_adaptive and not a.cutmix_bank_sync:
            raise ValueError(
                f"method.ael.cutmix_bank_sync=false keeps one CutMix image bank per device, but method.ael."
                f"virtual_ranks={a.virtual_ranks} puts {groups} emulated GPUs on each device, which would share it: "
                "the run would emulate no real GPU layout. Set method.ael.cutmix_bank_sync=true (one bank for "
                "all, the clean choice) or virtual_ranks equal to the number of devices")
        callbacks: list[Callback] = [
            EMATeacher(decay=self.ema_decay, warmup=a.ema_warmup, average_buffers=a.ema_average_buffers),
            ConfidenceBank(self.num_classes, self.class_info.names, momentum=self.bank_momentum, absent=a.bank_absent,
                           init=a.bank_init, sync=a.bank_sync, seed=int(self.cfg.seed),
                           ignore_index=self.ignore_index, log_every_n_steps=int(self.cfg.trainer.log_every_n_steps),
                           groups=groups),
        ]
        n = (self.num_unlabeled or len(self.trainer.datamodule.partition.unlabeled)) if a.cutmix else 0
        if a.cutmix and a.cutmix_adaptive and n > 0:  # n = 0: task=eval, which resolves only the val set
            callbacks.append(CutMixBank(self.num_classes, n, area_thresh=a.cutmix_bank_area_thresh,
                                        lag=a.cutmix_bank_lag, sync=a.cutmix_bank_sync, groups=groups))
        return callbacks

    # ------------------------------------------------------------------ helpers
    def step_generators(self) -> list[torch.Generator]:
        """Randomness of this step, one generator per emulated GPU of this device: a function of
        (seed, step, virtual rank) only, so resumed runs replay it and a virtual rank draws the same
        whatever the number of devices (ops/virtual_ranks.py)."""
        groups = self.groups
        return virtual_rank_generators(int(self.cfg.seed), self.global_step, self.global_rank * groups, groups,
                                       self.device)

    def supervised_loss_per_group(self, logits: torch.Tensor, target: torch.Tensor,
                                  groups: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``method.loss`` per emulated GPU: OHEM mined per group (ael.md §7) or CE averaged per group.
        Returns ``(loss [G], OHEM kept mask [B, H, W] or None)``."""
        loss_cfg = self.cfg.method.loss
        if loss_cfg.name == "ohem":
            return ohem_cross_entropy_per_group(logits.float(), target, groups, thresh=loss_cfg.ohem_thresh,
                                                min_kept=loss_cfg.ohem_min_kept, ignore_index=self.ignore_index)
        if loss_cfg.name == "ce":
            ce, _, valid = per_pixel_cross_entropy(logits, target, self.ignore_index)
            per_group = valid.reshape(groups, -1)
            return ce.reshape(groups, -1).sum(1) / per_group.sum(1).clamp_min(1), None
        raise ValueError(f"method.loss.name={loss_cfg.name!r}: expected 'ce' or 'ohem'")

    def unsup_loss(self, logits: torch.Tensor, pl_conf: torch.Tensor, pl_label: torch.Tensor,
                   keep_rate: torch.Tensor | None, gens: list[torch.Generator]) -> torch.Tensor:
        """DR + AES weighted pseudo-label CE per emulated GPU (ael.md §5–6): ``[G]``."""
        a = self.ael
        groups, (b, _, h, w) = len(gens), logits.shape
        keep = None
        if keep_rate is not None:
            noise_shape = (keep_rate.shape[-1], h, w) if a.sampling_shared_noise else (b // groups, h, w)
            noise = rand_per_group(gens, noise_shape, self.device)
            keep = equalization_keep_mask(class_argmax(logits.detach()), keep_rate,
                                          noise=noise if a.sampling_shared_noise else noise.flatten(0, 1),
                                          shared_noise=a.sampling_shared_noise)
        return weighted_pseudo_label_loss_per_group(
            logits.float(), pl_label, pl_conf, groups, keep=keep, gamma=float(a.gamma) if a.reweight else 0.0,
            ignore_index=self.ignore_index, normalize=a.loss_normalize,
            ignored_in_denominator=a.ignored_in_denominator)

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        a = self.ael
        gens = self.step_generators()  # one per emulated GPU (group) of this device
        groups = len(gens)
        bank = self.confidence_bank.bank  # [G, C], state before this step's update (used by ACP)
        x_l, y_l = batch["labeled"]["image"], batch["labeled"]["mask"]
        b_l = x_l.shape[0] // groups

        # 1. adaptive Copy-Paste (labeled): each group draws its own classes from its own bank row
        if a.copy_paste:
            probs = copy_paste_class_probs(bank, self.paste_ignore)
            k = int(a.copy_paste_k)
            classes = draw_paste_classes(probs, k, noise=rand_per_group(gens, (k,), self.device))
            has_partner = rand_per_group(gens, (b_l,), self.device).flatten() < a.copy_paste_prob
            x_l, y_l = adaptive_copy_paste(x_l, y_l, batch["partner"]["image"], batch["partner"]["mask"],
                                           classes.repeat_interleave(b_l, 0), has_partner)

        # 2. teacher pseudo-labels and (adaptive) CutMix (unlabeled); the teacher sees the weak views,
        # the student the weak or (student_view=strong) the pixel-aligned photometric views, same mask
        self.teacher.train(bool(a.teacher_train_mode))
        view = "image_strong" if a.student_view == "strong" else "image"
        x1, s1, idx1 = batch["unlabeled"]["image"], batch["unlabeled"][view], batch["unlabeled"]["index"]
        b_u, _, h, w = x1.shape
        with torch.no_grad():
            t_l = self.teacher(x_l) if a.labeled_consistency else None
            if a.cutmix and a.cutmix_adaptive:
                drawn = batch["bank"]  # images drawn from the CutMix image bank (per group, from its bank row)
                x2, s2, idx2, cls2 = drawn["image"], drawn[view], drawn["index"], drawn["bank_class"]
                t12 = self.teacher(torch.cat([x1, x2]))
                t1, t2 = t12.float().chunk(2)
                pred1, pred2 = class_argmax(t1), class_argmax(t2)
                keys = rand_per_group(gens, (b_u // groups, h * w + 1), self.device).flatten(0, 1)
                box_noise = rand_per_group(gens, (b_u // groups, 3), self.device).flatten(0, 1)
                mask = cutmix_masks(pred2, cls2, float(a.cutmix_area_thresh), keys=keys, box_noise=box_noise)
                # bank writes in emulated-GPU order ([random, drawn] per group), as an all-gather would give
                self.cutmix_bank.update(self._group_major(idx1, idx2, groups), self._group_major(pred1, pred2, groups))
                x_u, t_u = mix(s1, s2, mask), mix(t1, t2, mask)
            elif a.cutmix:  # CutMix-Seg: random boxes between the images of each group's unlabeled batch
                t1 = self.teacher(x1).float()
                box_noise = rand_per_group(gens, (b_u // groups, 3), self.device).flatten(0, 1)
                mask = random_box_masks(b_u, h, w, area=0.5, noise=box_noise)
                x_u = mix(s1, roll_within_groups(s1, groups), mask)
                t_u = mix(t1, roll_within_groups(t1, groups), mask)
            else:
                x_u, t_u, mask = s1, self.teacher(x1).float(), None
            conf_u, pl_u = pseudo_labels(t_u, float(a.threshold), self.ignore_index)
            if t_l is not None:
                conf_l, pl_l = pseudo_labels(t_l.float(), float(a.threshold), self.ignore_index)

        # the batch as trained on, for the W&B panels (references only, no copies or syncs);
        # mix_mask = 1 where the pixel was pasted from the second image (None without CutMix)
        self.last_views = {"labeled": (x_l, y_l), "mixed": (x_u, pl_u), "mix_mask": mask}

        # 3. student (BatchNorm over the whole device batch); supervised loss per emulated GPU
        out_l = self.student.forward_all(x_l, aux=True)
        logits_u = self.student(x_u)
        sup, ohem_kept = self.supervised_loss_per_group(out_l.logits, y_l, groups)
        terms = {"sup": sup}
        if out_l.aux is not None:
            terms["aux"] = self.cfg.method.loss.aux_weight * self.supervised_loss_per_group(out_l.aux, y_l, groups)[0]

        # 4. confidence bank (student softmax on labeled pixels; row g from group g)
        bank = self.confidence_bank.update(F.softmax(out_l.logits.detach().float(), 1), y_l)

        # 5. DR + AES unsupervised losses (keep rates and noise per group), weighted by the
        # schedule-aware start w (0 during the supervised warm-up, then a ramp to 1)
        keep_rate = equalization_keep_rate(bank, float(a.sampling_beta)) if a.sampling else None
        unsup_w = a.alpha * self.unsup_weight(self.global_step)
        terms["unsup_unlabeled"] = unsup_w * self.unsup_loss(logits_u, conf_u, pl_u, keep_rate, gens)
        if t_l is not None:
            terms["unsup_labeled"] = unsup_w * self.unsup_loss(out_l.logits, conf_l, pl_l, keep_rate, gens)

        # 6. the mean over emulated GPUs of their losses (= DDP's gradient average over G GPUs)
        self.last_group_terms = {**{k: v.detach() for k, v in terms.items()}, "ohem_kept": ohem_kept}
        terms = {name: per_group.mean() for name, per_group in terms.items()}
        loss = sum(terms.values()) * float(a.grad_scale)
        self.track_finite(loss, terms, self.global_step)
        self.log_losses({"loss": loss, **terms}, batch_size=x_l.shape[0])
        self.log("train/unsup_weight", self.unsup_weight(self.global_step), on_step=True, on_epoch=False,
                 batch_size=x_l.shape[0])
        return loss

    @staticmethod
    def _group_major(first: torch.Tensor, second: torch.Tensor, groups: int) -> torch.Tensor:
        """``[first_g, second_g]`` for g = 0..G-1 (each a group's chunk): the order in which G GPUs'
        rows would arrive in an all-gather."""
        pair = torch.stack([first.reshape(groups, -1, *first.shape[1:]), second.reshape(groups, -1, *second.shape[1:])], 1)
        return pair.reshape(-1, *first.shape[1:])
