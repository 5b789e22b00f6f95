"""ELN: semi-supervised segmentation with an Error Localization Network (Kwon & Kwak, CVPR 2022).

Spec: ``specs/eln.md``. One LightningModule, one AdamW, automatic optimisation; the loss of a step is
the sum of the terms of its stage, and the stage is a pure function of ``global_step`` (so it survives
a resume):

1. ``[0, pretrain_steps)`` — supervised CE of the student on the labeled batch.
2. ``[pretrain_steps, pretrain_steps + eln_steps)`` — **plus** the gated CE of K auxiliary decoders
   (error simulation, §2.2: decoder k's CE counts only while ``CE_k >= factor_k · CE_main``) and the
   class-balanced BCE of the ELN on the predictions of aux 0 … K-1 and of the main decoder (§3).
3. after — **plus**, on the unlabeled batch, CE of the student's weak- and strong-view predictions
   against the teacher's argmax kept where ``sigmoid(ELN(weak image, teacher logits)) > 0.5`` (§4.2),
   and the pixel contrastive loss between teacher (anchor) and student projections (§4.3). The teacher
   is copied from the student at the first stage-3 step and then follows it by EMA (``EMATeacher``,
   constant decay 0.995, parameters only). These stage-3 terms are weighted by the schedule-aware
   start ``w`` (``method.unsup_warmup_steps`` / ``unsup_rampup_steps``, :mod:`semiseg_lit.ops.rampup`),
   counted from the stage-3 start: 1 throughout in the reference; with a ramp the teacher is still
   copied at the stage-3 start and follows the student by EMA from there.

Design choices (see also the report in ``ELNConfig``):

* auxiliary decoders are :class:`AuxDecoder` modules — smp's ``DeepLabV3PlusDecoder`` + a 1×1
  ``SegmentationHead``, built with the student's decoder settings (``model.*``) and freshly
  initialised, as in the reference (not copies of the main decoder). They read the *detached*
  encoder features of the student's own labeled forward pass (the reference re-runs the encoder under
  ``no_grad``; the values are the same, its BN statistics are updated once instead of twice);
  with a reference network (``model=deeplabv3plus_eln``) they are fresh copies of its head
  (``build_aux_decoder``: ASPP + decoder + classifier + the unused projector, as the reference);
* the ELN is trained on the (detached) full-resolution logits of those forward passes, so the main
  decoder's dropout is on, as in the reference;
* the unlabeled losses live on the 1/4-resolution grid of the projection head (as in the reference):
  the student's and teacher's 1/4 logits are the classifier conv on the decoder features (no ×4
  upsampling); the ELN logits are, with ``method.eln.network=reference``, the reference ELN's native
  1/4 output (the same grid, as the reference), else (smp ELN, image resolution) averaged over each
  4×4 cell of that grid;
* a gated-off aux decoder gets zero gradients (``torch.where``), not ``None``: AdamW keeps moving it
  by momentum / weight decay, which is what the reference does under PyTorch 1.11 (eln.md §5.2);
* with DDP the modules unused in stages 1–2 (aux decoders, ELN, projection head) need
  ``strategy=ddp_find_unused_parameters_true``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC, BinaryPrecision, BinaryRecall, MulticlassConfusionMatrix

from semiseg_lit.callbacks.ema_teacher import EMATeacher
from semiseg_lit.data.labels import ClassInfo
from semiseg_lit.data.transforms import crop_hw
from semiseg_lit.methods.base import SegMethod
from semiseg_lit.models.deeplab import SegOutput
from semiseg_lit.models.eln_net import ErrorLocalizationNet, dropout_disabled
from semiseg_lit.models.reference_nets import ReferenceELN
from semiseg_lit.ops.contrastive import pixel_contrastive_loss
from semiseg_lit.ops.eln_targets import aux_decoder_gate, balanced_bce_loss, eln_pseudo_labels, eln_targets
from semiseg_lit.ops.ema import resolve_ema_decay
from semiseg_lit.ops.losses import class_argmax
from semiseg_lit.ops.metrics import segmentation_scores
from semiseg_lit.ops.sliding_window import center_crop, protocol_probs

__all__ = ["AuxDecoder", "ELNMethod", "build_eln_network", "eln_stage", "freeze_bn_affine_", "kept_rejected_accuracy",
           "masked_cross_entropy", "quarter_grid", "quarter_logits", "stage_warnings", "training_mode"]


# ----------------------------------------------------------------------------------------- stages
def eln_stage(step: int, pretrain_steps: int, eln_steps: int) -> int:
    """Training stage (1, 2 or 3) of global step ``step`` (eln.md §1, epochs → steps).

    1 if ``step < pretrain_steps``; 2 if ``step < pretrain_steps + eln_steps``; else 3.
    """
    if pretrain_steps < 0 or eln_steps < 0:
        raise ValueError(f"method.eln.pretrain_steps={pretrain_steps} / eln_steps={eln_steps}: expected >= 0")
    if step < pretrain_steps:
        return 1
    return 2 if step < pretrain_steps + eln_steps else 3


def stage_warnings(pretrain_steps: int, eln_steps: int, max_steps: int) -> list[str]:
    """Messages for stage boundaries that ``trainer.max_steps`` never reaches (``max_steps < 0`` = no limit)."""
    if max_steps < 0:
        return []
    msgs = []
    if pretrain_steps >= max_steps:
        msgs.append(f"ELN: method.eln.pretrain_steps={pretrain_steps} >= trainer.max_steps={max_steps}: "
                    "stage 2 (aux decoders + ELN) and stage 3 (pseudo labels) never start")
    elif pretrain_steps + eln_steps >= max_steps:
        msgs.append(f"ELN: stage 3 starts at step pretrain_steps + eln_steps = {pretrain_steps + eln_steps} >= "
                    f"trainer.max_steps={max_steps}: no semi-supervised training will happen")
    return msgs


# ----------------------------------------------------------------------------------------- tensor helpers
def masked_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """``Σ_valid CE(z_p, y_p) / max(n_valid, 1)`` (float32): the mean CE over non-ignored pixels, and 0
    (attached to the graph) instead of ``F.cross_entropy``'s NaN when every pixel is ignored."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return ce / (labels != ignore_index).sum().clamp_min(1)


def quarter_grid(x: Tensor, size: Sequence[int]) -> Tensor:
    """Average of ``x`` ``[B,C,H,W]`` over the 4×4 cells of a 1/4-resolution grid of ``size`` = (h, w).

    The grid cell (i, j) covers pixels ``[4i, 4i+4) × [4j, 4j+4)``; ``x`` is edge-padded to
    ``4h × 4w`` first (``h = ceil(H/4)``), so a partial border cell averages its own pixels and copies.
    """
    h, w = int(size[0]), int(size[1])
    ph, pw = 4 * h - x.shape[-2], 4 * w - x.shape[-1]
    if ph < 0 or pw < 0 or ph >= 4 or pw >= 4:
        raise ValueError(f"quarter_grid: a {tuple(x.shape[-2:])} map does not tile a {(h, w)} grid of "
                         "4×4 cells")
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return F.avg_pool2d(x, 4)


def quarter_logits(net: nn.Module, out: SegOutput) -> Tensor:
    """Class logits on the 1/4-resolution grid ``[B,C,h,w]`` of ``out.proj`` (eln.md §4.2: the pseudo-label
    CE and the contrastive loss use the decoder's own 1/4 resolution): the reference networks' native
    logits (``out.native_logits``), else the classifier conv of ``net.segmentation_head`` applied to
    ``out.decoder_features`` without the ×4 upsampling."""
    if out.decoder_features is None or out.proj is None:
        raise ValueError("quarter_logits needs forward_all(..., proj=True, keep_features=True) outputs")
    h, w = out.proj.shape[-2:]
    if out.native_logits is not None:
        return out.native_logits[..., :h, :w]
    conv = net.segmentation_head[0]
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"segmentation_head[0] is {type(conv).__name__}, expected the classifier Conv2d")
    return conv(out.decoder_features)[..., :h, :w]


def kept_rejected_accuracy(yhat: Tensor, keep: Tensor, gt: Tensor,
                           ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Pixel accuracy of the pseudo labels that the ELN keeps and of those it rejects (diagnostics).

    ``yhat``/``keep`` ``[B,h,w]`` live on the 1/4 grid and are expanded by nearest ×4 to the GT size
    ``[B,H,W]``; GT ``ignore_index`` pixels are skipped. ``acc_kept = #(ŷ = y, kept) / max(#kept, 1)``,
    same for the rejected pixels (0 when a group is empty). No host sync.
    """
    H, W = gt.shape[-2:]
    yhat_f = yhat.repeat_interleave(4, -2).repeat_interleave(4, -1)[..., :H, :W]
    keep_f = keep.repeat_interleave(4, -2).repeat_interleave(4, -1)[..., :H, :W]
    valid = gt != ignore_index
    correct = (yhat_f == gt) & valid
    acc_kept = (correct & keep_f).sum() / (valid & keep_f).sum().clamp_min(1)
    acc_rejected = (correct & ~keep_f).sum() / (valid & ~keep_f).sum().clamp_min(1)
    return acc_kept.float(), acc_rejected.float()


def freeze_bn_affine_(module: nn.Module) -> int:
    """Set ``requires_grad=False`` on every BatchNorm γ/β of ``module`` (eln.md §5.1 parity); returns the
    number of frozen tensors. Running statistics still update."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
                n += 1
    return n


@contextmanager
def training_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily ``module.train(training)``; every submodule's previous mode is restored on exit."""
    previous = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, mode in previous:
            m.training = mode


# ----------------------------------------------------------------------------------------- modules
class AuxDecoder(nn.Module):
    """Error-simulation decoder (eln.md §2.2): the student's DeepLabV3+ decoder + 1×1 classifier
    architecture, freshly initialised, on DETACHED encoder features; logits at input resolution."""

    def __init__(self, encoder_channels: Sequence[int], num_classes: int, decoder_channels: int,
                 atrous_rates: Sequence[int], output_stride: int, aspp_separable: bool, aspp_dropout: float):
        super().__init__()
        self.decoder = DeepLabV3PlusDecoder(
            encoder_channels=list(encoder_channels), encoder_depth=len(encoder_channels) - 1,
            out_channels=decoder_channels, atrous_rates=tuple(atrous_rates), output_stride=output_stride,
            aspp_separable=aspp_separable, aspp_dropout=aspp_dropout)
        self.head = SegmentationHead(decoder_channels, num_classes, kernel_size=1, upsampling=4)

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Logits ``[B,C,H,W]`` cropped to ``size`` (the unpadded input size)."""
        z = self.head(self.decoder([f.detach() for f in features]))
        return z[..., : int(size[0]), : int(size[1])]


def build_eln_network(e: DictConfig, num_classes: int) -> nn.Module:
    """The ELN of ``method.eln.network``: ``smp`` (:class:`ErrorLocalizationNet`) or ``reference``
    (:class:`~semiseg_lit.models.reference_nets.ReferenceELN`, the official layers)."""
    network = e.get("network", "smp")
    if network == "reference":
        if e.first_conv_init != "reset":
            raise ValueError(f"method.eln.first_conv_init={e.first_conv_init!r}: method.eln.network=reference "
                             "always replaces the stem conv by a fresh one (reset), as the reference")
        if int(e.decoder_channels) != 256:
            raise ValueError(f"method.eln.decoder_channels={e.decoder_channels}: method.eln.network=reference "
                             "has 256-channel heads")
        return ReferenceELN(num_classes, encoder=e.encoder, encoder_weights=e.encoder_weights,
                            aspp_dropout=float(e.aspp_dropout),
                            random_shortcuts=bool(e.parity.get("random_shortcuts", False)))
    if network != "smp":
        raise ValueError(f"method.eln.network={network!r}: expected 'smp' or 'reference'")
    return ErrorLocalizationNet(num_classes, encoder_name=e.encoder, encoder_weights=e.encoder_weights,
                                decoder_channels=int(e.decoder_channels), aspp_dropout=float(e.aspp_dropout),
                                first_conv_init=e.first_conv_init)


# ----------------------------------------------------------------------------------------- method
# the official constant EMA decay (eln.md §1); `auto` caps there
REFERENCE_EMA_DECAY = 0.995


class ELNMethod(SegMethod):
    """Student + teacher (EMA) DeepLabV3+ with projection head, K aux decoders and an ELN (module docstring)."""

    # the ELN and the aux decoders get no gradient before stage 2: `trainer.strategy=ddp` becomes
    # ddp_find_unused_parameters_true for this method (tasks/common.resolve_strategy)
    ddp_find_unused_parameters = True
    # the EMA teacher updates per training step (tasks/common.check_method_options)
    supports_grad_accumulation = False

    def __init__(self, cfg: DictConfig, class_info: ClassInfo):
        if cfg.method.get("eln") is None:
            raise ValueError("method=eln needs the method.eln config node")
        if not cfg.model.get("projection_dim"):  # the method brings the projection head it needs
            dim = int(cfg.method.eln.get("projection_dim") or 0)
            if dim < 1:
                raise ValueError(f"method=eln needs a contrastive projection head: set model.projection_dim=128 "
                                 f"(or method.eln.projection_dim=128), got {dim}")
            cfg = copy.deepcopy(cfg)  # the checkpoint's config then records the head that was built
            with open_dict(cfg):
                cfg.model.projection_dim = dim
        super().__init__(cfg, class_info)
        e = self.e = cfg.method.eln
        eln_stage(0, int(e.pretrain_steps), int(e.eln_steps))  # validates the boundaries
        # the EMA teacher's constant decay (`auto`: time constant max_steps / 40, at most the reference's 0.995)
        self.ema_decay = resolve_ema_decay(e.ema_decay, int(OmegaConf.select(cfg, "trainer.max_steps", default=-1)),
                                           "method.eln.ema_decay", REFERENCE_EMA_DECAY)
        factors = [float(f) for f in e.aux_gate_factors]
        if not factors or min(factors) < 0:
            raise ValueError(f"method.eln.aux_gate_factors={factors}: expected one factor >= 0 per aux decoder")
        if not 0.0 <= float(e.threshold) <= 1.0:
            raise ValueError(f"method.eln.threshold={e.threshold}: expected a probability in [0, 1]")
        reset = e.parity.reset_every_steps
        if reset is not None and int(reset) < 1:
            raise ValueError(f"method.eln.parity.reset_every_steps={reset}: expected null or >= 1")
        m = cfg.model
        if hasattr(self.student, "build_aux_decoder"):  # reference networks: fresh heads of their own kind
            self.aux_decoders = nn.ModuleList([self.student.build_aux_decoder() for _ in factors])
        else:
            self.aux_decoders = nn.ModuleList([
                AuxDecoder(self.student.encoder.out_channels, self.num_classes, int(m.decoder_channels),
                           tuple(m.atrous_rates), int(m.output_stride), bool(m.aspp_separable),
                           float(m.aspp_dropout))
                for _ in factors])
        self.register_buffer("gate_factors", torch.tensor(factors), persistent=False)
        self.eln = build_eln_network(e, self.num_classes)
        # the reference ELN answers on the 1/4 grid of the teacher's native logits; the smp ELN at the
        # image resolution, averaged over the 4x4 cells of that grid (quarter_grid)
        self.eln_native = e.get("network", "smp") == "reference"
        if hasattr(self.student, "quarter_size"):  # reference networks: is their 1/4 grid the ELN's?
            crop = crop_hw(cfg.data.crop_size)
            grid, eln_grid = tuple(self.student.quarter_size(n) for n in crop), tuple(-(-n // 4) for n in crop)
            if grid != eln_grid:
                raise ValueError(
                    f"data.crop_size={list(crop)}: the native 1/4 grid of model.arch={cfg.model.arch} is {grid}, the "
                    f"ELN's is {eln_grid} (ceil(n/4)), so the ELN map cannot be aligned with the pseudo labels. "
                    "Use crop sides n with n % 4 in (1, 2) (e.g. 769, 513) or model=deeplabv3plus_eln")
        if e.parity.freeze_bn_affine:
            freeze_bn_affine_(self.student)
            freeze_bn_affine_(self.aux_decoders)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        # True once the teacher was copied from the student (saved; before that the student is evaluated)
        self.register_buffer("teacher_ready", torch.zeros((), dtype=torch.bool))
        self._teacher_ready = False  # host mirror of the buffer (no per-step sync)
        self._method_callbacks: list[Callback] | None = None
        thresholds = int(e.val_auroc_thresholds)
        self.val_eln_precision = BinaryPrecision(ignore_index=self.ignore_index, validate_args=False)
        self.val_eln_recall = BinaryRecall(ignore_index=self.ignore_index, validate_args=False)
        self.val_eln_auroc = BinaryAUROC(thresholds=thresholds, ignore_index=self.ignore_index,
                                         validate_args=False)
        self._val_eln_updated = False
        # stage 3: the network that is not evaluated is validated too (method.eln.val_both_networks)
        self.val_confusion_other = MulticlassConfusionMatrix(self.num_classes, ignore_index=self.ignore_index,
                                                             validate_args=False)
        self._val_both = False

    @classmethod
    def required_streams(cls, cfg: DictConfig) -> tuple[str, ...]:
        return ("labeled", "unlabeled")

    # ------------------------------------------------------------------ stages and callbacks
    @property
    def stage3_start(self) -> int:
        return int(self.e.pretrain_steps) + int(self.e.eln_steps)

    def stage(self, step: int) -> int:
        return eln_stage(step, int(self.e.pretrain_steps), int(self.e.eln_steps))

    def configure_callbacks(self) -> list[Callback]:
        """The EMA-teacher callback, built once (Lightning calls this for every ``fit``/``validate``)."""
        if self._method_callbacks is None:
            self._method_callbacks = [EMATeacher(decay=self.ema_decay, warmup=False,
                                                 average_buffers=bool(self.e.ema_average_buffers),
                                                 start_step=self.stage3_start)]
        return list(self._method_callbacks)

    def on_fit_start(self) -> None:
        e = self.e
        for msg in stage_warnings(int(e.pretrain_steps), int(e.eln_steps), int(self.trainer.max_steps)):
            rank_zero_warn(msg)
        rank_zero_info(f"ELN stage 3: {self.describe_unsup_start()}")

    def on_train_start(self) -> None:
        self._teacher_ready = bool(self.teacher_ready)  # one host sync per fit (after a checkpoint restore)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.apply_stage_transitions(self.global_step)

    @torch.no_grad()
    def apply_stage_transitions(self, step: int) -> None:
        """Stage-3 events before the step (eln.md §1): at the first stage-3 step ``teacher <- student``;
        with ``parity.reset_every_steps = N``, ``student <- teacher`` (parameters and buffers) at
        ``stage3_start + k·N``, k >= 1. The optimizer state is kept."""
        start = self.stage3_start
        if step < start:
            return
        if not self._teacher_ready:
            self.teacher.load_state_dict(self.student.state_dict())
            self.teacher_ready.fill_(True)
            self._teacher_ready = True
            return
        reset = self.e.parity.reset_every_steps
        if reset is not None and step > start and (step - start) % int(reset) == 0:
            self.student.load_state_dict(self.teacher.state_dict())

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """Five AdamW groups (eln.md §5): student backbone / heads, ELN trunk / head, aux decoders;
        backbones get ``optim.backbone_lr_mult``, the rest ``optim.head_lr_mult``. The teacher is frozen."""
        o = self.cfg.method.optim
        lr_b, lr_h = o.lr * o.backbone_lr_mult, o.lr * o.head_lr_mult
        student, eln = self.student.param_groups(), self.eln.param_groups()
        aux = [p for p in self.aux_decoders.parameters() if p.requires_grad]
        return [
            {"params": student["backbone"], "lr": lr_b, "name": "backbone"},
            {"params": student["head"], "lr": lr_h, "name": "head"},
            {"params": eln["backbone"], "lr": lr_b, "name": "eln_backbone"},
            {"params": eln["head"], "lr": lr_h, "name": "eln_head"},
            {"params": aux, "lr": lr_h, "name": "aux_decoders"},
        ]

    def step_generator(self, step: int) -> torch.Generator:
        """Randomness of a step (contrastive crops): a function of (seed, step, rank) only."""
        g = torch.Generator(device=self.device)
        g.manual_seed((int(self.cfg.seed) * 1_000_003 + step * 7919 + self.global_rank) % (2**63))
        return g

    # ------------------------------------------------------------------ losses
    def eln_loss(self, images: Tensor, pred_logits: Tensor, target: Tensor) -> Tensor:
        """Class-balanced BCE of the ELN (train mode, dropout on) on one (detached) prediction, eln.md §3."""
        t, valid = eln_targets(pred_logits, target, self.ignore_index,
                               ignore_as_error=bool(self.e.parity.ignore_as_error))
        # reference ELN: its native 1/4 map, upsampled to the label size inside the loss (as the reference)
        e = self.eln(images, pred_logits, native=True) if self.eln_native else self.eln(images, pred_logits)
        return balanced_bce_loss(e, t, valid)

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Teacher + ELN on the weak view (eln.md §4.2), dropout off, BN mode from the config.

        Returns ``(labels, keep, yhat, teacher_proj)`` on the 1/4 grid: ``yhat = argmax z_t``,
        ``keep = sigmoid(ELN) > threshold`` (reference ELN: its native 1/4 output, on the same grid;
        smp ELN: its logits averaged per 4×4 cell), ``labels = ŷ`` where kept else ignore.
        """
        with training_mode(self.teacher, bool(self.e.teacher_train_mode)), dropout_disabled(self.teacher):
            t = self.teacher.forward_all(images, proj=True, keep_features=True)
        z_q = quarter_logits(self.teacher, t)
        h, w = z_q.shape[-2:]
        with training_mode(self.eln, bool(self.e.eln_train_mode)):
            if self.eln_native:
                e = self.eln(images, t.logits, clean=True, native=True)
                if tuple(e.shape[-2:]) != (h, w):
                    raise RuntimeError(f"ELN native output {tuple(e.shape[-2:])} is not on the teacher's 1/4 grid "
                                       f"{(h, w)}; use a reference segmentation network (model=deeplabv3plus_eln) "
                                       "or method.eln.network=smp")
            else:
                e = quarter_grid(self.eln(images, t.logits, clean=True), (h, w))
        labels, keep = eln_pseudo_labels(z_q, e, float(self.e.threshold), self.ignore_index)
        return labels, keep, class_argmax(z_q), t.proj

    def compute_losses(self, batch: dict, step: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Loss terms of global step ``step`` (summed with weight 1) and diagnostics (logged only)."""
        e, stage = self.e, self.stage(step)
        x_l, y_l = batch["labeled"]["image"], batch["labeled"]["mask"]
        out_l = self.student.forward_all(x_l, keep_features=stage >= 2)
        terms = {"sup": self.supervised_loss(out_l.logits, y_l)}
        diag: dict[str, Tensor] = {}
        if stage >= 2:  # error simulation + ELN (labeled batch only)
            aux_logits = [dec(out_l.features, x_l.shape[-2:]) for dec in self.aux_decoders]
            aux_ce = torch.stack([masked_cross_entropy(z, y_l, self.ignore_index) for z in aux_logits])
            terms["aux"] = aux_decoder_gate(aux_ce, terms["sup"], self.gate_factors).sum()
            gate_open = (aux_ce.detach() >= self.gate_factors * terms["sup"].detach()).float()
            eln_terms = [self.eln_loss(x_l, z, y_l) for z in (*aux_logits, out_l.logits)]
            terms["eln"] = torch.stack(eln_terms).sum()
            for k in range(len(aux_logits)):
                diag[f"aux{k}_ce"], diag[f"aux{k}_gate_open"] = aux_ce[k].detach(), gate_open[k]
                diag[f"eln_aux{k}"] = eln_terms[k].detach()
            diag["eln_main"] = eln_terms[-1].detach()
        if stage >= 3:  # pseudo labels on the unlabeled batch, weighted by the schedule-aware start
            u = batch["unlabeled"]
            labels, keep, yhat, t_proj = self.pseudo_labels(u["image"])
            g = self.step_generator(step)
            w = self.unsup_weight(step - self.stage3_start)  # 1 in the reference (ops/rampup.py)
            for view, x in (("weak", u["image"]), ("strong", u["image_strong"])):
                out = self.student.forward_all(x, proj=True, keep_features=True)
                terms[f"pl_{view}"] = w * float(e.pseudo_weight) * masked_cross_entropy(
                    quarter_logits(self.student, out), labels, self.ignore_index)
                terms[f"con_{view}"] = w * float(e.contrastive_weight) * pixel_contrastive_loss(
                    t_proj, out.proj, labels, tau=float(e.temperature), n_crops=int(e.n_crops),
                    crop_size=int(e.crop_size), ignore_index=self.ignore_index, generator=g)
            diag["kept_frac"] = keep.float().mean()
            diag["unsup_weight"] = torch.tensor(w, device=self.device)
            if "mask" in u:
                diag["pl_acc_kept"], diag["pl_acc_rejected"] = kept_rejected_accuracy(
                    yhat, keep, u["mask"], self.ignore_index)
        return terms, diag

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        step = self.global_step
        terms, diag = self.compute_losses(batch, step)
        loss = torch.stack(list(terms.values())).sum()
        self.track_finite(loss, terms, step)
        bs = batch["labeled"]["image"].shape[0]
        self.log_losses({"loss": loss, **terms}, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in diag.items()}, on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/stage", float(self.stage(step)), on_step=True, on_epoch=False, batch_size=bs)
        return loss

    # ------------------------------------------------------------------ evaluation
    def eval_network(self) -> nn.Module:
        """As in ``SegMethod``, but the student stands in for a teacher not yet copied (before stage 3)."""
        net = super().eval_network()
        if net is self.teacher and not bool(self.teacher_ready):
            return self.student
        return net

    @torch.no_grad()
    def error_maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [B,C,H,W], p_error [B,H,W])``: the evaluated network's logits and the ELN's
        probability that each pixel's prediction is wrong, ``sigmoid(-ELN)`` (validation diagnostics
        and the W&B error maps)."""
        logits = self.eval_network()(images)
        return logits, torch.sigmoid(-self.eln(images, logits, clean=True).squeeze(1).float())

    @torch.no_grad()
    def panel_pseudo_labels(self, images: Tensor) -> Tensor | None:
        """Image-resolution pseudo labels for the W&B panel: teacher argmax kept where
        ``sigmoid(ELN) > threshold`` (else ignore), in the modules' current mode; ``None`` before stage 3."""
        if not bool(self.teacher_ready):
            return None
        logits = self.teacher(images).float()
        keep = torch.sigmoid(self.eln(images, logits, clean=True).squeeze(1).float()) > float(self.e.threshold)
        return torch.where(keep, class_argmax(logits), self.ignore_index)

    @torch.no_grad()
    def update_eln_metrics(self, images: Tensor, masks: Tensor) -> None:
        """ELN as an error detector on labeled val images: positive = wrong prediction of the evaluated
        network, score = ``sigmoid(-ELN) = P(error)``; ignore pixels are skipped."""
        logits, err_score = self.error_maps(images)
        t, valid = eln_targets(logits, masks, self.ignore_index, ignore_as_error=False)
        err = torch.where(valid, (1.0 - t).long(), torch.full_like(masks, self.ignore_index))
        for metric in (self.val_eln_precision, self.val_eln_recall, self.val_eln_auroc):
            metric.update(err_score, err)
        self._val_eln_updated = True

    def network_names(self) -> tuple[str, str]:
        """(evaluated, other): ``method.eval_model`` (or ``eval.model``) and the other of student/teacher."""
        which = str(self.cfg.eval.model or self.cfg.method.eval_model)
        return (which, "student" if which == "teacher" else "teacher")

    def on_validation_epoch_start(self) -> None:
        # the official code validates student and teacher in stage 3 (train.py:105-130); one host sync
        self._val_both = bool(self.e.val_both_networks) and bool(self.teacher_ready)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if not (self.e.val_metrics or self._val_both):
            return
        images, masks = batch["image"], batch["mask"]
        ev = self.cfg.eval
        mode = ev.mode or self.cfg.data.val_mode
        if mode == "center_crop":
            images, masks = center_crop(images, masks, self.val_crop(), int(self.cfg.data.val_pad_label))
        if self._val_both:
            other = self.teacher if self.network_names()[1] == "teacher" else self.student
            probs = protocol_probs(other, images, self.num_classes, self.val_crop(), mode, scales=ev.scales,
                                   flip=bool(ev.flip))
            self.val_confusion_other.update(class_argmax(probs), masks)
        if self.e.val_metrics:
            self.update_eln_metrics(images, masks)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._val_both:
            other = segmentation_scores(self.val_confusion_other.compute())
            self.val_confusion_other.reset()
            evaluated, other_name = self.network_names()
            self.log_dict({f"val/miou_{evaluated}": torch.as_tensor(self.last_scores["miou"], dtype=torch.float32),
                           f"val/miou_{other_name}": torch.as_tensor(other["miou"], dtype=torch.float32)})
        if not self._val_eln_updated:
            return
        metrics = {"val_eln/precision": self.val_eln_precision, "val_eln/recall": self.val_eln_recall,
                   "val_eln/auroc": self.val_eln_auroc}
        self.log_dict({k: m.compute().float() for k, m in metrics.items()})
        for m in metrics.values():
            m.reset()
        self._val_eln_updated = False
