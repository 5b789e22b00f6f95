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
6. ``loss = (L_sup + α·(L_c1 + L_c2)) · grad_scale``; the EMA teacher callback updates the teacher.

Every component can be switched off (``method.ael.*``), which gives the ablations of Table 3.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from semiseg_lit.callbacks.confidence_bank import ConfidenceBank
from semiseg_lit.callbacks.cutmix_bank import CutMixBank
from semiseg_lit.callbacks.ema_teacher import EMATeacher
from semiseg_lit.data.labels import ClassInfo
from semiseg_lit.methods.base import SegMethod
from semiseg_lit.ops.confidence import copy_paste_class_probs, equalization_keep_rate
from semiseg_lit.ops.copy_paste import adaptive_copy_paste, draw_paste_classes
from semiseg_lit.ops.cutmix import cutmix_masks, mix, random_box_masks
from semiseg_lit.ops.losses import class_argmax, pseudo_labels, weighted_pseudo_label_loss
from semiseg_lit.ops.sampling import equalization_keep_mask


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

    @classmethod
    def required_streams(cls, cfg: DictConfig) -> tuple[str, ...]:
        a = cfg.method.ael
        streams = ["labeled", "unlabeled"]
        if a.copy_paste:
            streams.append("partner")
        if a.cutmix and a.cutmix_adaptive:
            streams.append("bank")
        return tuple(streams)

    # ------------------------------------------------------------------ callbacks
    def configure_callbacks(self) -> list[Callback]:
        """The method's state-owning callbacks, built once: Lightning calls this for every
        ``fit``/``validate``, and a later call must hand back the same (trained) bank and teacher."""
        if self._method_callbacks is None:
            self._method_callbacks = self._build_callbacks()
        return list(self._method_callbacks)

    def _build_callbacks(self) -> list[Callback]:
        a = self.ael
        callbacks: list[Callback] = [
            EMATeacher(decay=a.ema_decay, warmup=a.ema_warmup, average_buffers=a.ema_average_buffers),
            ConfidenceBank(self.num_classes, self.class_info.names, momentum=a.bank_momentum, absent=a.bank_absent,
                           init=a.bank_init, sync=a.bank_sync, seed=int(self.cfg.seed),
                           ignore_index=self.ignore_index, log_every_n_steps=int(self.cfg.trainer.log_every_n_steps)),
        ]
        n = (self.num_unlabeled or len(self.trainer.datamodule.partition.unlabeled)) if a.cutmix else 0
        if a.cutmix and a.cutmix_adaptive and n > 0:  # n = 0: task=eval, which resolves only the val set
            callbacks.append(CutMixBank(self.num_classes, n, area_thresh=a.cutmix_bank_area_thresh,
                                        lag=a.cutmix_bank_lag, sync=a.cutmix_bank_sync))
        return callbacks

    # ------------------------------------------------------------------ helpers
    def step_generator(self) -> torch.Generator:
        """Randomness of this step: a function of (seed, step, rank) only, so resumed runs replay it."""
        g = torch.Generator(device=self.device)
        g.manual_seed((int(self.cfg.seed) * 1_000_003 + self.global_step * 7919 + self.global_rank) % (2**63))
        return g

    def unsup_loss(self, logits: torch.Tensor, pl_conf: torch.Tensor, pl_label: torch.Tensor,
                   keep_rate: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        """DR + AES weighted pseudo-label CE (ael.md §5–6)."""
        a = self.ael
        keep = None
        if keep_rate is not None:
            keep = equalization_keep_mask(class_argmax(logits.detach()), keep_rate, generator=g,
                                          shared_noise=a.sampling_shared_noise)
        return weighted_pseudo_label_loss(
            logits.float(), pl_label, pl_conf, keep=keep, gamma=float(a.gamma) if a.reweight else 0.0,
            ignore_index=self.ignore_index, normalize=a.loss_normalize,
            ignored_in_denominator=a.ignored_in_denominator)

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        a = self.ael
        g = self.step_generator()
        bank = self.confidence_bank.bank  # state before this step's update (used by ACP)
        x_l, y_l = batch["labeled"]["image"], batch["labeled"]["mask"]

        # 1. adaptive Copy-Paste (labeled)
        if a.copy_paste:
            probs = copy_paste_class_probs(bank, self.paste_ignore)
            classes = draw_paste_classes(probs, int(a.copy_paste_k), generator=g)
            has_partner = torch.rand(x_l.shape[0], generator=g, device=self.device) < a.copy_paste_prob
            x_l, y_l = adaptive_copy_paste(x_l, y_l, batch["partner"]["image"], batch["partner"]["mask"],
                                           classes, has_partner)

        # 2. teacher pseudo-labels and (adaptive) CutMix (unlabeled); the teacher sees the weak views,
        # the student the weak or (student_view=strong) the pixel-aligned photometric views, same mask
        self.teacher.train(bool(a.teacher_train_mode))
        view = "image_strong" if a.student_view == "strong" else "image"
        x1, s1, idx1 = batch["unlabeled"]["image"], batch["unlabeled"][view], batch["unlabeled"]["index"]
        with torch.no_grad():
            t_l = self.teacher(x_l) if a.labeled_consistency else None
            if a.cutmix and a.cutmix_adaptive:
                drawn = batch["bank"]  # images drawn from the CutMix image bank
                x2, s2, idx2, cls2 = drawn["image"], drawn[view], drawn["index"], drawn["bank_class"]
                t12 = self.teacher(torch.cat([x1, x2]))
                t1, t2 = t12.float().chunk(2)
                pred1, pred2 = class_argmax(t1), class_argmax(t2)
                mask = cutmix_masks(pred2, cls2, float(a.cutmix_area_thresh), generator=g)
                self.cutmix_bank.update(torch.cat([idx1, idx2]), torch.cat([pred1, pred2]))
                x_u, t_u = mix(s1, s2, mask), mix(t1, t2, mask)
            elif a.cutmix:  # CutMix-Seg: random boxes between two halves of the unlabeled batch
                t1 = self.teacher(x1).float()
                b, _, h, w = x1.shape
                mask = random_box_masks(b, h, w, area=0.5, generator=g, device=self.device)
                x_u, t_u = mix(s1, s1.roll(1, 0), mask), mix(t1, t1.roll(1, 0), mask)
            else:
                x_u, t_u, mask = s1, self.teacher(x1).float(), None
            conf_u, pl_u = pseudo_labels(t_u, float(a.threshold), self.ignore_index)
            if t_l is not None:
                conf_l, pl_l = pseudo_labels(t_l.float(), float(a.threshold), self.ignore_index)

        # the batch as trained on, for the W&B panels (references only, no copies or syncs);
        # mix_mask = 1 where the pixel was pasted from the second image (None without CutMix)
        self.last_views = {"labeled": (x_l, y_l), "mixed": (x_u, pl_u), "mix_mask": mask}

        # 3. student
        out_l = self.student.forward_all(x_l, aux=True)
        logits_u = self.student(x_u)
        terms = {"sup": self.supervised_loss(out_l.logits, y_l)}
        if out_l.aux is not None:
            terms["aux"] = self.cfg.method.loss.aux_weight * self.supervised_loss(out_l.aux, y_l)

        # 4. confidence bank (student softmax on labeled pixels)
        bank = self.confidence_bank.update(F.softmax(out_l.logits.detach().float(), 1), y_l)

        # 5. DR + AES unsupervised losses
        keep_rate = equalization_keep_rate(bank, float(a.sampling_beta)) if a.sampling else None
        terms["unsup_unlabeled"] = a.alpha * self.unsup_loss(logits_u, conf_u, pl_u, keep_rate, g)
        if t_l is not None:
            terms["unsup_labeled"] = a.alpha * self.unsup_loss(out_l.logits, conf_l, pl_l, keep_rate, g)

        loss = sum(terms.values()) * float(a.grad_scale)
        self.track_finite(loss, terms, self.global_step)
        self.log_losses({"loss": loss, **terms}, batch_size=x_l.shape[0])
        return loss
