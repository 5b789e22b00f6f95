"""Typed configuration schemas (Hydra structured configs).

Every YAML file of a config group starts its defaults list with the matching ``base_*`` schema
stored here, so a misspelled key or a wrong type fails when Hydra composes the config, with a
message that names the key, instead of being silently ignored.

The schemas mirror the config groups in ``conf/``: ``paths``, ``data``, ``model``, ``method``,
``trainer``, ``logger``, ``callbacks``. Method schemas have one sub-node per method
(``method.ael``, ``method.eln``, ``method.unimatch_v2``) so a sweep such as ``-m method.ael.alpha=0.5,1.0`` is typed too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "${paths.root_dir}/data"
    cache_dir: str = "${oc.env:SEMISEG_CACHE,${oc.env:HOME,.}/.cache/semiseg_lit}"
    log_dir: str = "${paths.root_dir}/logs"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class SynthscapesConfig:
    """Parameters of the procedural dataset (``data.synthscapes``); see ``data/synthscapes.py``."""

    n_train: int = 1000
    n_val: int = 200
    height: int = 128
    width: int = 128
    n_styles: int = 16
    seed: int = 0
    # size factor of the tail things (pole width, sign, person, bicycle); 1 = the v2 geometry
    tail_scale: float = 1.0
    # labeled split lists drawn only from the images of styles 0..K-1 (null: all styles); the other styles
    # are then seen only in the unlabeled images
    labeled_styles: int | None = None
    # "shared": every style uses the same class textures (v2); "permuted": each style permutes which class
    # wears which texture, so an unlabeled-only style's textures are information no augmentation invents;
    # "permuted_head": only the head classes swap textures (the tail things keep theirs)
    style_textures: str = "shared"


@dataclass
class AugmentConfig:
    """Training augmentation. ``weak`` is geometric (shared by the labeled and both unlabeled views);
    ``strong`` is photometric and applied on top of the weak view, so the two views stay pixel-aligned."""

    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    # how the scale factor s is drawn from scale_range [a, b]: "uniform" s ~ U(a, b); "split" = the AEL
    # reference's RandResize: s ~ U(a, 1) or U(1, b) with probability 1/2 each (ael.md §9)
    scale_sampling: str = "uniform"
    # scale, pad and crop in one step on the crop window (data/transforms.RandomScaleCrop): the same draws
    # and labels, the image equal up to interpolation rounding, without resizing the whole image first
    crop_first: bool = True
    hflip: bool = True
    # image padding value is the mean colour (0 after normalisation); label padding is ignore (255)
    # by default. AEL parity pads labels with 0 (ael.md §9).
    pad_label: int = 255
    strong: list[Any] = field(default_factory=list)
    # also apply ``strong`` to the labeled (and copy-paste partner) images: the augmentation-matched
    # supervised baseline of data.md §4.1 (b), for methods whose student sees strong views
    labeled_strong: bool = False
    # the large-scale-jitter range of AEL's copy-paste partner images (ael.md §4 ACP)
    partner_scale_range: list[float] = field(default_factory=lambda: [0.1, 2.0])
    # resize every training image to exactly [H, W] first (aspect ratio not kept; label nearest):
    # ELN's VOC geometry is [505, 505] with scale_range [1, 1] and crop_size 505 (eln.md §5)
    resize: list[int] | None = None


@dataclass
class DataConfig:
    name: str = MISSING
    # dataset layout: synthscapes | cityscapes | voc | folder
    dataset: str = MISSING
    root: str = MISSING
    num_classes: int = MISSING
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    head_classes: list[int] | None = None
    tail_classes: list[int] | None = None
    ignore_index: int = 255
    # large "stuff" classes that AEL's copy-paste never pastes (method.ael.copy_paste_ignore_classes
    # defaults to this list; reference for Cityscapes: road, sidewalk, building, vegetation, sky)
    stuff_classes: list[int] = field(default_factory=list)
    label_remap: dict[int, int] = field(default_factory=dict)
    # partition: explicit split lists (any published format) or a seeded draw of n_labeled images
    labeled_list: str | None = None
    unlabeled_list: str | None = None
    val_list: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    # seeded draws take the labeled images from this split (null = train_split) and the unlabeled
    # ones from the rest of train_split (VOC classic: labeled from train, unlabeled from train_aug)
    labeled_split: str | None = None
    # labeled draw size; null = every image of train_split that has a mask is labeled
    n_labeled: int | None = None
    # extra unlabeled images (no masks needed), added to the unlabeled set minus labeled / val files:
    # a folder of images (any nesting; e.g. your raw photos, VOC JPEGImages, Cityscapes
    # leftImg8bit/train_extra) and / or a split of the dataset read without masks (train_extra)
    unlabeled_dir: str | None = None
    unlabeled_split: str | None = None
    split_seed: int = 0
    # folder layout only
    image_dir: str | None = None
    mask_dir: str | None = None
    image_suffix: str = ".jpg"
    mask_suffix: str = ".png"
    # voc layout only: SegmentationClassAug | SegmentationClass | auto
    voc_mask_dir: str = "auto"
    # geometry and batches (batch sizes are GLOBAL: divided by the world size)
    # training crop: N (square) or [H, W] (ELN Cityscapes: [512, 1024]); checked by transforms.crop_hw
    crop_size: Any = 96
    labeled_batch_size: int = 8
    unlabeled_batch_size: int = 8
    val_batch_size: int = 8
    # fast in-training validation: center_crop | whole | sliding
    val_mode: str = "whole"
    val_crop_size: Any = None
    # resize val images AND labels to [H, W] before evaluation (ELN's VOC protocol: [505, 505])
    val_resize: list[int] | None = None
    # label of the padding that val_mode=center_crop adds around images smaller than the crop
    # (255 = ignore); 0 = the AEL reference's VOC validation, where padding counts as background (ael.md §8)
    val_pad_label: int = 255
    # read and check files before training: labeled (every labeled mask: size, values; every val
    # image / mask header: readable, same size) | all (every file fully) | none
    check_before_training: str = "labeled"
    num_workers: int = 2
    pin_memory: bool = False
    persistent_workers: bool = True
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthscapes: SynthscapesConfig = field(default_factory=SynthscapesConfig)


@dataclass
class ModelConfig:
    # deeplabv3plus (smp, any smp/timm encoder) | deeplabv3plus_ael (official AEL network, encoder
    # resnet101s/resnet50s) | deeplabv3plus_eln (official ELN network, encoder resnet50/resnet101):
    # models/reference_nets.py, README "Reference networks"
    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    # "imagenet" is the documented choice for real experiments (needs the weights on disk or a
    # network); null = random init; a path to a local state dict file loads that file.
    encoder_weights: str | None = None
    output_stride: int = 16
    decoder_channels: int = 256
    atrous_rates: list[int] = field(default_factory=lambda: [12, 24, 36])
    aspp_separable: bool = False
    aspp_dropout: float = 0.1
    aux_head: bool = False
    aux_channels: int = 256
    projection_dim: int | None = None
    # model.arch=dpt only (timm ViT + DPT, models/dpt.py, README "DINOv2 + DPT"): keyword arguments of
    # timm.create_model (e.g. a tiny ViT {embed_dim: 48, depth: 4, num_heads: 2}); the 4 tapped ViT blocks
    # (null = uniform, [2, 5, 8, 11] for 12 blocks); encoder frozen (requires_grad off, eval mode);
    # readout of the class token (ignore = UniMatch V2 | cat | add); reassemble widths; taps normalised
    # by the ViT's final norm (UniMatch V2 / DINOv2 get_intermediate_layers)
    encoder_kwargs: Any = None  # a mapping or null (typed Any: a dict-typed node would refuse new keys)
    encoder_output_indices: list[int] | None = None
    freeze_encoder: bool = False
    dpt_readout: str = "ignore"
    dpt_intermediate_channels: list[int] = field(default_factory=lambda: [48, 96, 192, 384])
    dpt_norm_features: bool = True


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    backbone_lr_mult: float = 1.0
    head_lr_mult: float = 10.0
    # poly | constant
    scheduler: str = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0
    # learning rate follows the total labeled batch (methods/lr_scaling.py; README "Learning rate and batch
    # size"): lr x B / base_batch_size (linear, Goyal et al. 2017) or x sqrt(B / base_batch_size), B = per-device
    # labeled batch x devices x nodes x accumulate_grad_batches. Off by default and in every reference experiment.
    scale_lr_with_batch: bool = False
    # the global labeled batch method.optim.lr was tuned for (method YAMLs: the reference experiment's official
    # batch, reference.labeled_batch_size, else the method's preset batch); needed only when scaling
    base_batch_size: int | None = None
    lr_scale_rule: str = "linear"      # linear | sqrt


@dataclass
class LossConfig:
    # ce | ohem
    name: str = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    aux_weight: float = 0.4


@dataclass
class AELConfig:
    """AEL knobs (ael.md). Each component can be switched off for the ablation table (§10 Table 3)."""

    # mean teacher (§2): decay min(1 - 1/(step+1), ema_decay); the reference keeps the teacher in
    # train mode (BN batch statistics, dropout) when it pseudo-labels and does not average buffers.
    # ema_decay: "auto" = time constant max_steps / 40 steps, at most the reference's 100 (0.99; every
    # schedule >= 4000 steps), or a decay in [0, 1) (reference experiments: 0.99); checked by
    # ops/ema.resolve_ema_decay (Any: OmegaConf has no str|float union)
    ema_decay: Any = "auto"
    ema_warmup: bool = True
    ema_average_buffers: bool = False
    teacher_train_mode: bool = True
    # confidence bank (§3). EMA momentum: "auto" = time constant max_steps / 16 steps, at most the
    # reference's 1000 (0.999; every schedule >= 16000 steps); or a number in [0, 1) (reference
    # experiments: 0.999). Typed Any because OmegaConf has no str|float union: checked by
    # ops/confidence.resolve_bank_momentum when the method is built, naming the key.
    bank_momentum: Any = "auto"
    bank_absent: str = "zero"          # zero (reference: absent classes pulled to 0) | keep
    bank_init: str = "random"          # random (reference: torch.rand) | zeros | ones
    bank_sync: bool = True             # all-reduce across DDP ranks; false = per-GPU banks (reference)
    # adaptive Copy-Paste on labeled images (§4 ACP)
    copy_paste: bool = True
    copy_paste_k: int = 3
    copy_paste_prob: float = 0.5
    copy_paste_ignore_classes: list[int] | None = None  # null = data.stuff_classes
    # CutMix on unlabeled images (§4 ACM); adaptive=false = CutMix-Seg random boxes
    cutmix: bool = True
    cutmix_adaptive: bool = True
    cutmix_area_thresh: float = 0.005  # min component area (fraction of the crop) for the box
    cutmix_bank_area_thresh: float = 0.01  # min area for "image contains class" in the bank
    cutmix_bank_lag: int = 8           # steps between a bank update and the sampler reading it
    cutmix_bank_sync: bool = True
    # what the student sees of the (mixed) unlabeled images: "weak" = the teacher's view (reference:
    # no photometric augmentation, the only strong augmentation is the mix); "strong" = the
    # pixel-aligned photometric view (data.augment.strong) of the same crops, mixed with the same mask
    student_view: str = "weak"
    # adaptive equalization sampling (§5) and dynamic re-weighting (§6)
    sampling: bool = True
    sampling_beta: float = 1.0
    sampling_shared_noise: bool = False  # true = one noise map per class shared by the batch (reference)
    reweight: bool = True
    gamma: float = 2.0
    threshold: float = 0.95            # pseudo-label confidence threshold (reference: VOC 0.7, Cityscapes 0)
    loss_normalize: str = "batch"      # batch (reference: one normaliser) | image (paper Eq. 11-13)
    ignored_in_denominator: bool = True  # reference: low-confidence pixels stay in the DR denominator
    labeled_consistency: bool = False  # the L_c1 term on labeled images (code, not paper; §7; reference: true)
    alpha: float = 1.0                 # weight of the unsupervised loss
    grad_scale: float = 1.0            # 1/8 reproduces the reference's loss/W on 8 GPUs (§7)
    # emulate this many GPUs of the reference run (GLOBAL count, divided by the world size): the
    # per-device batch is split into groups and every per-GPU piece (confidence bank, OHEM, class
    # draws, CutMix draws, AES noise) acts per group. Reference experiments: 8.
    virtual_ranks: int = 1


@dataclass
class ELNParityConfig:
    """Quirks of the official ELN code (eln.md §1, §3, §5.1), off by default; all on = reference."""

    # BN γ/β of the student encoder/decoder and the aux decoders are never optimised (§5.1)
    freeze_bn_affine: bool = False
    # ignore-label pixels are ELN training targets with t = 0 ("wrong") (§3)
    ignore_as_error: bool = False
    # student <- teacher (parameters and buffers) every N steps of stage 3; reference: 266 (§1)
    reset_every_steps: int | None = None
    # method.eln.network=reference: the trunk's projection shortcuts stay randomly initialised after the
    # ImageNet weights are loaded (the reference's BasicBlock names them `shortcut`, §2.3); reference: true
    random_shortcuts: bool = False


@dataclass
class ELNConfig:
    """ELN knobs (eln.md). Stage boundaries are global steps (reference: epochs of 266 steps)."""

    # stage 1 = [0, pretrain_steps): supervised; stage 2 = [pretrain_steps, pretrain_steps + eln_steps):
    # + aux decoders + ELN BCE; stage 3 = after: + pseudo-label CE + pixel contrastive (§1).
    # Reference, VOC: 18620 / 13300; Cityscapes: 26600 / 15428.
    pretrain_steps: int = 18620
    eln_steps: int = 13300
    # the ELN network (§2.3): smp (models/eln_net.py; image-resolution output, averaged over the 4x4
    # cells of the teacher's 1/4 grid for pseudo labels) | reference (models/reference_nets.ReferenceELN,
    # the official layers; native 1/4 output on the teacher's 1/4 grid; encoder resnet34 or resnet18)
    network: str = "smp"
    encoder: str = "resnet34"
    encoder_weights: str | None = "imagenet"
    decoder_channels: int = 256
    aspp_dropout: float = 0.5
    first_conv_init: str = "reset"     # reset (reference: fresh 3+1+C-input stem conv) | smp
    # error simulation: one auxiliary decoder per gate factor, gated by aux_CE >= f·main_CE (§2.2)
    aux_gate_factors: list[float] = field(default_factory=lambda: [20.0, 50.0])
    # EMA teacher (§1): constant decay, parameters only, from the stage-3 start; "auto" = time constant
    # max_steps / 40, at most the reference's 200 steps (0.995; the ELN experiments set 0.995)
    ema_decay: Any = "auto"
    ema_average_buffers: bool = False
    # pseudo-labelling networks: BN in train mode (batch statistics; reference) or eval mode;
    # their dropouts are always off (the reference's gt_mode)
    teacher_train_mode: bool = True
    eln_train_mode: bool = True
    # pseudo labels: keep where sigmoid(ELN) > threshold (§4.2)
    threshold: float = 0.5
    pseudo_weight: float = 1.0
    # pixel contrastive loss (§4.3); the crop is clamped to the 1/4-resolution map size
    contrastive_weight: float = 1.0
    # width of the student's contrastive projection head when model.projection_dim is null (the
    # method brings the model piece it needs; reference 128, eln.md §2.1)
    projection_dim: int = 128
    temperature: float = 0.5
    n_crops: int = 8
    crop_size: int = 32
    # validation: ELN error-detection precision / recall / AUROC (bounded-memory AUROC bins)
    val_metrics: bool = True
    val_auroc_thresholds: int = 200
    # stage 3: validate the other network too (student and teacher, as the official code logs both,
    # eln.md §6); ``val/miou`` and best.ckpt follow ``method.eval_model``
    val_both_networks: bool = True
    parity: ELNParityConfig = field(default_factory=ELNParityConfig)


@dataclass
class UniMatchV2Config:
    """UniMatch V2 knobs (docs/unimatch_v2.md; defaults = the official code, LiheYoung/UniMatch-V2)."""

    # pseudo-label confidence threshold tau (configs/*.yaml conf_thresh)
    conf_thresh: float = 0.95
    # loss = labeled_weight * L_x + unlabeled_weight * (L_s1 + L_s2) / 2  (unimatch_v2.py:202-204: 1/2 and 1/2)
    labeled_weight: float = 0.5
    unlabeled_weight: float = 0.5
    # EMA teacher: d = min(1 - 1/(step+1), ema_decay) (ema_warmup), parameters and buffers (unimatch_v2.py:221-226);
    # "auto" = time constant max_steps / 40, at most the reference's 250 steps (0.996; the experiments set 0.996)
    ema_decay: Any = "auto"
    ema_warmup: bool = True
    ema_average_buffers: bool = True
    # the teacher pseudo-labels in eval mode (unimatch_v2.py:88-91)
    teacher_train_mode: bool = False
    # complementary channel dropout on the student's encoder features of the two strong views (dpt.py:148-167);
    # feature_dropout_prob = fraction of the images whose two views get complementary halves (0.5)
    feature_dropout: bool = True
    feature_dropout_prob: float = 0.5
    # CutMix: one box per strong view with probability cutmix_prob, area U(cutmix_area) of the crop, ratio
    # U(cutmix_ratio), pasted from the reversed batch (dataset/transform.py:66-84, unimatch_v2.py:175-190)
    cutmix: bool = True
    cutmix_prob: float = 0.5
    cutmix_area: list[float] = field(default_factory=lambda: [0.02, 0.4])
    cutmix_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3333333333333335])
    cutmix_candidates: int = 128  # draws of the vectorised rejection loop (ops/cutmix_boxes.py)
    # GPUs of the official run emulated on any number of devices: per-GPU CE/OHEM means, unsupervised
    # denominators, CutMix partners and dropout draws (reference experiments: 4)
    virtual_ranks: int = 1


@dataclass
class MethodConfig:
    name: str = MISSING
    _target_: str = MISSING
    # which model is evaluated/checkpointed as "the" model: student | teacher
    eval_model: str = "student"
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # schedule-aware start of the unsupervised loss (ops/rampup.py; AEL and ELN, ignored by supervised):
    # weight 0 for unsup_warmup_steps, then a ramp to 1 over unsup_rampup_steps (counted from the
    # method's first unsupervised step: AEL 0, ELN the stage-3 start). Each "auto" or an int >= 0
    # (Any: no str|int union in OmegaConf; checked when the method is built). auto = none for
    # schedules of >= 16000 steps (the reference), else max_steps // 8 and max_steps // 4.
    unsup_warmup_steps: Any = 0
    unsup_rampup_steps: Any = 0
    unsup_rampup_shape: str = "sigmoid"  # sigmoid: exp(-5(1-t)^2) (Laine & Aila; Tarvainen & Valpola) | linear
    # per-method sub-nodes (filled by method/ael.yaml and method/eln.yaml)
    ael: AELConfig | None = None
    eln: ELNConfig | None = None
    unimatch_v2: UniMatchV2Config | None = None


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 1000
    val_check_interval: int = 250
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    benchmark: bool = False
    sync_batchnorm: bool = False
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0
    limit_val_batches: float | None = None
    fast_dev_run: bool = False
    # speed (models/compile.py): torch.compile of every network's encoder and decoder (falls back to eager
    # with one warning where it cannot run), its mode (null = default | reduce-overhead | max-autotune),
    # its backend, and NHWC (channels_last) weights and activations
    compile: bool = False
    compile_mode: str | None = None
    # inductor (generated kernels) | aot_eager | eager (graph capture only: checks, not speed)
    compile_backend: str = "inductor"
    channels_last: bool = False


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "semiseg_lit"
    entity: str | None = None
    # offline | online | disabled. "offline" also applies when no API key is configured.
    mode: str = "offline"
    # null = automatic: single run -> no group; Hydra multirun -> "<experiment>_<sweep timestamp>"
    group: str | None = None
    # run name; null = automatic: "<name>_seed<seed>", in a multirun the job's swept overrides
    run_name: str | None = None
    # null = the task (train | eval)
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False


@dataclass
class CSVConfig:
    enabled: bool = True


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: CSVConfig = field(default_factory=CSVConfig)


@dataclass
class CheckpointConfig:
    monitor: str = "val/miou"
    mode: str = "max"
    save_last: bool = True


@dataclass
class WandbPanelsConfig:
    """Dashboard panels (``callbacks/wandb_panels.py``): images/tables go to W&B, numbers to every logger."""

    enabled: bool = True
    # fixed validation images (evenly spaced over the val set, the same ones at every validation)
    n_images: int = 4
    # log the validation panels at every n-th validation (the final evaluation is always logged)
    every_n_val: int = 1
    # panel images are downscaled so that their longer side is at most this many pixels
    max_side: int = 512
    # training-batch sample (AEL: after Copy-Paste / CutMix) every n steps; 0 = never
    train_every_n_steps: int = 200
    n_train_images: int = 4


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # EMA teacher / confidence bank settings live in method.* (the callbacks are added by the method)
    rich_progress: bool = True
    lr_monitor: bool = True
    wandb_panels: WandbPanelsConfig = field(default_factory=WandbPanelsConfig)


@dataclass
class EvalConfig:
    """Options of ``task=eval`` (and of the evaluation at the end of training)."""

    # whole | sliding | center_crop; null = data.val_mode
    mode: str | None = None
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    # student | teacher; null = method.eval_model
    model: str | None = None
    # task=eval logs to W&B (logger.wandb) only when true; the IoU table is printed and written beside
    # the checkpoint either way
    wandb: bool = False


@dataclass
class PredictConfig:
    """Options of ``task=predict`` (``input=DIR output=DIR``). The network, its normalisation, crop size
    and classes come from the checkpoint; ``eval.scales`` / ``eval.flip`` / ``eval.model`` apply too."""

    # auto (sliding window for images larger than the crop, whole image otherwise) | whole | sliding
    mode: str = "auto"
    # refuse a checkpoint with another class count before any work (null = accept the checkpoint's)
    num_classes: int | None = None
    save_color: bool = True
    save_overlay: bool = True
    # weight of the class colours in the overlay (image * (1 - a) + colours * a)
    overlay_alpha: float = 0.5


@dataclass
class ExportConfig:
    """Options of ``task=export``: ONNX / TorchScript of the evaluation network (normalised image
    [N,3,H,W] -> logits [N,C,H,W]), written to ``output`` (null = beside the checkpoint)."""

    # onnx | torchscript | both
    format: str = "both"
    # size of the example input (null = the checkpoint's crop size) and its batch size
    height: int | None = None
    width: int | None = None
    batch_size: int = 1
    # batch, height and width dynamic in the ONNX graph (false = fixed to the example input)
    dynamic_axes: bool = True
    opset: int = 18
    # dynamo (torch.export-based, needs onnxscript; opset >= 18) | legacy (TorchScript-based; opset >= 11)
    onnx_exporter: str = "dynamo"
    # refuse a checkpoint with another class count before any work (null = accept the checkpoint's)
    num_classes: int | None = None
    # run the exported model(s) on a random image and compare with PyTorch (onnxruntime for ONNX)
    check: bool = True


@dataclass
class ReferenceConfig:
    """What a reference experiment reproduces (set by ``conf/experiment/<ael|eln|supervised>_<dataset>_*``).
    A run whose global batch differs from these, or that accumulates gradients, gets a loud warning naming
    the key (``tasks/common.warn_reference_overrides``)."""

    # the official run, e.g. "hzhupku/SemiSeg-AEL train.py, 8 GPUs x (2 labeled + 1 mixed unlabeled)"
    source: str = ""
    labeled_batch_size: int = 0
    unlabeled_batch_size: int | None = None  # null: the method reads no unlabeled stream


@dataclass
class RootConfig:
    task: str = "train"
    seed: int = 0
    ckpt_path: str | None = None
    name: str = "${method.name}_${data.name}"
    # reference | clean: the reference experiments write their deliberate-difference rows as
    # ${parity:<official value>,<clean value>} (README "Deliberate differences"); this one key picks the column
    parity: str = "reference"
    # the official run a reference experiment reproduces (null for every other experiment)
    reference: ReferenceConfig | None = None
    # replace what is in the output folder: the run folder of task=train (old checkpoints, metrics, logs)
    # and existing prediction files of task=predict; false = refuse with a message (nothing is overwritten)
    overwrite: bool = False
    # resuming (ckpt_path) with another seed, batch size, max_steps or data split: strict = refuse,
    # warn = a loud warning naming the keys, then resume
    resume_check: str = "strict"
    # print the stack trace of every error (like HYDRA_FULL_ERROR=1)
    debug: bool = False
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # task=predict: folder (or file) of images to segment, and the folder the predictions go to;
    # task=export: folder for the exported files (null = beside the checkpoint)
    input: str | None = None
    output: str | None = None
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


TASKS = ("train", "eval", "check_data", "predict", "export", "report")
PARITY_MODES = ("reference", "clean")


def parity_value(reference: Any, clean: Any, *, _root_: Any) -> Any:
    """``${parity:A,B}``: ``A`` (the official code's behaviour) when the root key ``parity`` is
    ``reference``, ``B`` (the deliberate fix) when it is ``clean``."""
    mode = _root_.get("parity", "reference")
    if mode not in PARITY_MODES:
        raise ValueError(f"parity={mode!r}: expected one of {', '.join(PARITY_MODES)} (reference = the official "
                         "code's behaviour, clean = the deliberate fixes; README 'Deliberate differences')")
    return reference if mode == "reference" else clean


def steps_fraction(steps: Any, fraction: Any) -> int:
    """``${steps_fraction:${trainer.max_steps},0.25}``: ``floor(steps x fraction)`` as an int, for step counts
    that follow the budget (the ELN stage boundaries of a method comparison, conf/compare_method/)."""
    try:
        n, f = int(steps), float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"steps_fraction:{steps},{fraction}: expected a step count and a fraction in [0, 1]") from None
    if n < 0 or not 0.0 <= f <= 1.0:
        raise ValueError(f"steps_fraction:{steps},{fraction}: expected a step count >= 0 and a fraction in [0, 1]")
    return int(n * f)


def check_schema(cfg: Any) -> None:
    """Re-check a composed config against :class:`RootConfig`.

    Group files and plain overrides are checked by Hydra at composition, but ``+key=value`` adds a
    key even to a typed node; merging into the schema again turns such a key (``+data.colour=0.5``)
    into an error naming it instead of a silently ignored setting."""
    try:
        OmegaConf.merge(OmegaConf.structured(RootConfig), OmegaConf.to_container(cfg, resolve=False))
    except ConfigKeyError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"unknown config key: {first} (check the spelling; `python -m semiseg_lit "
                         f"--cfg job` prints every key)") from None


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (called once before ``hydra.main``)."""
    if not OmegaConf.has_resolver("parity"):
        OmegaConf.register_new_resolver("parity", parity_value)
    if not OmegaConf.has_resolver("steps_fraction"):
        OmegaConf.register_new_resolver("steps_fraction", steps_fraction)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RootConfig)
    cs.store(group="paths", name="base_paths", node=PathsConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="method", name="base_method", node=MethodConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="logger", name="base_logger", node=LoggerConfig)
    cs.store(group="callbacks", name="base_callbacks", node=CallbacksConfig)
