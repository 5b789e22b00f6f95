"""``SemiSegDataModule``: one LightningDataModule for every method.

A training batch is a dict with one entry per stream the method asks for::

    {"labeled":   {"image": [B_l,3,H,W], "mask": [B_l,H,W], "index": [B_l]},
     "unlabeled": {"image": weak [B_u,3,H,W], "image_strong": [B_u,3,H,W], "index": [B_u], ("mask"),
                   ("image_strong2", "valid": UniMatch V2, see UnlabeledTransform)},
     "partner":   {"image", "mask", "index"},        # AEL copy-paste partners (large scale jitter)
     "bank":      {"image", "index", "bank_class"}}  # AEL CutMix-bank draws (weak view)

Each stream is an infinite seeded sampler (``samplers.InfiniteStreamSampler``), so the labeled
stream cycles independently of the unlabeled one, batches never have size 1, DDP ranks see
disjoint shards of the same order, and a resumed run continues the exact same streams.
Batch sizes in the config are GLOBAL and divided by the world size. With emulated GPUs
(``virtual_ranks``, AEL) each device batch is ``G = virtual_ranks / world size`` groups, one per
emulated GPU, filled as that GPU's shard of the stream (``samplers.virtual_rank_position``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from semiseg_lit.data.labels import CITYSCAPES, VOC, ClassInfo
from semiseg_lit.data.samplers import CutMixBankSampler, InfiniteStreamSampler, ShardSampler, worker_init
from semiseg_lit.data.transforms import (
    EvalTransform,
    LabeledTransform,
    UnlabeledTransform,
    build_transforms,
    crop_hw,
)
from semiseg_lit.ops.sliding_window import center_crop
from semiseg_lit.ops.virtual_ranks import groups_per_device

log = logging.getLogger(__name__)

STREAM_IDS = {"labeled": 1, "unlabeled": 2, "partner": 3, "bank": 4}


@dataclass
class Partition:
    """The resolved file lists of a run."""

    labeled: list
    unlabeled: list
    val: list
    source: str


class SeededDataset(Dataset):
    """Wraps a ``SegmentationDataset``: keys are ``(index, sample_seed)`` pairs from the stream
    sampler; the seed drives the augmentation of that one sample."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, Any]:
        out = self.dataset.get(key[0], seed=key[1])
        if len(key) > 2:  # the class a CutMix-bank draw was made for (AEL)
            out["bank_class"] = key[2]
        return out


def pad_collate(items: list[dict[str, Any]], ignore_index: int = 255) -> dict[str, Any]:
    """Collate evaluation samples of different sizes: pad images (0 = mean colour) and masks
    (ignore) bottom/right to the largest size in the batch; padded pixels never count."""
    h = max(it["image"].shape[-2] for it in items)
    w = max(it["image"].shape[-1] for it in items)
    images = torch.stack([F.pad(it["image"], (0, w - it["image"].shape[-1], 0, h - it["image"].shape[-2]))
                          for it in items])
    out: dict[str, Any] = {"image": images, "index": torch.tensor([it["index"] for it in items])}
    if all("mask" in it for it in items):
        out["mask"] = torch.stack([
            F.pad(it["mask"], (0, w - it["mask"].shape[-1], 0, h - it["mask"].shape[-2]), value=ignore_index)
            for it in items])
    return out


def center_crop_collate(items: list[dict[str, Any]], crop: tuple[int, int], label_pad_value: int = 255,
                        ignore_index: int = 255) -> dict[str, Any]:
    """Collate for ``val_mode=center_crop``: every sample is centre-cropped to ``crop`` on its own first
    (a smaller side padded symmetrically: image 0, label ``label_pad_value``), as the AEL reference's
    validation transform does per image (ael.md §8); with ``label_pad_value=0`` the padding of VOC's
    images (all smaller than 513) counts as background in the mIoU, as it does there."""
    cropped = []
    for it in items:
        image, mask = center_crop(it["image"][None], it["mask"][None], crop, label_pad_value=label_pad_value)
        cropped.append({**it, "image": image[0], "mask": mask[0]})
    return pad_collate(cropped, ignore_index=ignore_index)


def synthscapes_labeled_counts(n_train: int) -> tuple[int, ...]:
    """The labeled-subset sizes whose split lists are generated with synthscapes."""
    return tuple(n for n in (8, 16, 32, 64) if n < n_train)


def builtin_class_info(dataset: str) -> ClassInfo | None:
    if dataset == "synthscapes":
        from semiseg_lit.data.synthscapes import SYNTHSCAPES

        return SYNTHSCAPES
    return {"cityscapes": CITYSCAPES, "voc": VOC}.get(dataset)


def resolve_class_info(cfg: DictConfig) -> ClassInfo:
    """Class names / palette / head / tail from the config, defaulting to the built-in tables."""
    base = builtin_class_info(cfg.dataset)
    n = int(cfg.num_classes)
    names = list(cfg.class_names) if cfg.class_names is not None else (
        list(base.names) if base is not None else [f"class_{i}" for i in range(n)])
    if len(names) != n:
        raise ValueError(f"data.class_names has {len(names)} entries but data.num_classes={n}")
    if cfg.palette is not None:
        palette = [tuple(int(v) for v in c) for c in cfg.palette]
    elif base is not None:
        palette = [tuple(c) for c in base.palette]
    else:
        from semiseg_lit.data.labels import voc_colormap

        palette = [tuple(int(v) for v in c) for c in voc_colormap(n)]
    if len(palette) != n:
        raise ValueError(f"data.palette has {len(palette)} colours but data.num_classes={n}")
    head = tuple(cfg.head_classes) if cfg.head_classes is not None else (base.head if base else ())
    tail = tuple(cfg.tail_classes) if cfg.tail_classes is not None else (base.tail if base else ())
    for key, idx in (("head_classes", head), ("tail_classes", tail)):
        bad = [i for i in idx if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"data.{key} has class indices {bad} outside [0, {n})")
    return ClassInfo(name=cfg.name, names=tuple(names), palette=tuple(palette), head=head, tail=tail)


def per_device_batch_size(key: str, total: int, world: int, virtual_ranks: int = 1,
                          sync_batchnorm: bool = False, virtual_ranks_key: str = "method.ael.virtual_ranks") -> int:
    """Images per device of the ``data.<key>_batch_size`` stream (batch sizes are global), or a
    ``ValueError`` naming the key: the batch must divide over the devices and over the emulated GPUs
    (``method.ael.virtual_ranks``), and BatchNorm needs 2 images per device, or per run with
    SyncBatchNorm on several devices (the reference's SyncBN with 1 image per GPU)."""
    if total < 1:
        raise ValueError(f"data.{key}_batch_size={total}: expected a positive number of images per step")
    if total % world:
        raise ValueError(f"data.{key}_batch_size={total} is not divisible by the {world} device(s) of the run "
                         "(batch sizes are global): use a multiple of the device count")
    per = total // world
    groups = groups_per_device(virtual_ranks, world, virtual_ranks_key)
    if per % groups:
        hint = (f" (the reference: 2 labeled and 1 unlabeled per GPU, i.e. {2 * virtual_ranks} and {virtual_ranks})"
                if virtual_ranks_key == "method.ael.virtual_ranks" else "")
        raise ValueError(f"data.{key}_batch_size={total} (global) does not split over {virtual_ranks_key}="
                         f"{virtual_ranks} emulated GPUs: give a multiple of {virtual_ranks}{hint}")
    # BatchNorm needs 2 values per channel: the device batch, or with SyncBatchNorm the global one
    if per < 2 and not (sync_batchnorm and world > 1 and total >= 2):
        raise ValueError(f"data.{key}_batch_size={total} gives {per} image(s) per device ({world} device(s)); "
                         f"BatchNorm needs at least 2 images per device: set data.{key}_batch_size={2 * world} or "
                         "more, or on several devices trainer.sync_batchnorm=true (BatchNorm over all devices, as "
                         "the reference's SyncBN)")
    return per


class SemiSegDataModule(pl.LightningDataModule):
    """Labeled + unlabeled training streams, validation/test loaders, for every method.

    Args:
        cfg: the ``data`` config node (see ``config.DataConfig``).
        seed: the run's seed (streams and augmentations derive from it).
        streams: training streams the method consumes, e.g. ``("labeled",)`` or
            ``("labeled", "unlabeled")`` or ``("labeled", "unlabeled", "partner")``.
        virtual_ranks: GPUs the method emulates in all (``method.ael.virtual_ranks``; 1 = one per device).
        sync_batchnorm: ``trainer.sync_batchnorm``: BatchNorm sees the batch of all devices, so a
            device may hold a single image of a stream.
        eval_mode: the evaluation protocol when it differs from ``cfg.val_mode`` (``eval.mode``); with
            ``center_crop`` the validation samples are centre-cropped one by one (``center_crop_collate``).
    """

    def __init__(self, cfg: DictConfig, seed: int = 0, streams: tuple[str, ...] = ("labeled",),
                 virtual_ranks: int = 1, sync_batchnorm: bool = False, eval_mode: str | None = None,
                 unlabeled_options: dict[str, Any] | None = None):
        super().__init__()
        unknown = set(streams) - set(STREAM_IDS)
        if unknown:
            raise ValueError(f"unknown training stream(s) {sorted(unknown)}; known: {sorted(STREAM_IDS)}")
        self.cfg = cfg
        self.seed = int(seed)
        self.streams = tuple(streams)
        self.virtual_ranks, self.sync_batchnorm = int(virtual_ranks), bool(sync_batchnorm)
        # extra views of the unlabeled stream a method asks for (UnlabeledTransform: strong_views, padding_mask)
        self.unlabeled_options = dict(unlabeled_options or {})
        self.class_info = resolve_class_info(cfg)
        self.eval_mode = eval_mode or str(cfg.val_mode)
        self.partition: Partition | None = None
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ files
    @property
    def num_classes(self) -> int:
        return int(self.cfg.num_classes)

    def prepare_data(self) -> None:
        """Generate the procedural dataset once (rank 0); real datasets need no preparation."""
        if self.cfg.dataset == "synthscapes":
            self._ensure_synthscapes()

    def _ensure_synthscapes(self) -> Path:
        from semiseg_lit.data.synthscapes import ensure_synthscapes

        s = self.cfg.synthscapes
        # split lists are generated for the standard counts; other n_labeled use a seeded draw
        counts = self._synthscapes_counts()
        return ensure_synthscapes(Path(self.cfg.root), n_train=s.n_train, n_val=s.n_val, height=s.height,
                                  width=s.width, n_styles=s.n_styles, seed=s.seed, labeled_counts=counts,
                                  tail_scale=float(s.get("tail_scale", 1.0)),
                                  labeled_styles=s.get("labeled_styles"),
                                  style_textures=str(s.get("style_textures", "shared")))

    def _synthscapes_counts(self) -> tuple[int, ...]:
        """The standard labeled counts that fit the labeled pool (all of train, or the labeled styles)."""
        from semiseg_lit.data.synthscapes import labeled_pool_size

        s = self.cfg.synthscapes
        counts = synthscapes_labeled_counts(int(s.n_train))
        if s.get("labeled_styles"):
            pool = labeled_pool_size(int(s.n_train), int(s.n_styles), int(s.seed), int(s.labeled_styles))
            counts = tuple(n for n in counts if n <= pool)
        return counts

    def layout(self):
        from semiseg_lit.data import datasets as D

        cfg = self.cfg
        if cfg.dataset in ("cityscapes", "synthscapes"):
            if cfg.dataset == "synthscapes":
                self._ensure_synthscapes()
            return D.CityscapesLayout(Path(cfg.root))
        if cfg.dataset == "voc":
            return D.VOCLayout(Path(cfg.root), mask_dir=cfg.voc_mask_dir)
        if cfg.dataset == "folder":
            if cfg.image_dir is None:
                raise ValueError("data=folder needs data.image_dir (and usually data.mask_dir)")
            return D.FolderLayout(Path(cfg.image_dir), Path(cfg.mask_dir) if cfg.mask_dir else None,
                                  image_suffix=cfg.image_suffix, mask_suffix=cfg.mask_suffix)
        raise ValueError(f"data.dataset={cfg.dataset!r} is not one of synthscapes, cityscapes, voc, folder")

    def resolve_partition(self, stage: str | None = None) -> Partition:
        """Turn the config into labeled / unlabeled / val file lists, with all checks.

        Labeled images need masks; unlabeled images never do (specs/data.md §2, README "Partitions"):

        * labeled = ``data.labeled_list``, else a seeded draw of ``data.n_labeled`` among the images of
          ``data.labeled_split`` (default ``data.train_split``) that have a mask, else (``n_labeled``
          null) every image of ``data.train_split`` that has a mask;
        * unlabeled = ``data.unlabeled_list`` (masks optional), else the rest of ``data.train_split``;
          plus every image of ``data.unlabeled_split`` and every image under ``data.unlabeled_dir``
          (any nesting, hidden files skipped), minus files that are labeled or val images.

        ``stage`` "validate" / "test" (task=eval) resolves only the val set, so a download holding
        only the val split works.
        """
        from semiseg_lit.data.splits import (
            check_disjoint,
            check_files_exist,
            check_unique_ids,
            check_utf8_names,
            partition,
        )

        def check_list(samples: list, source: str) -> None:
            check_utf8_names(samples, source)
            check_unique_ids(samples, source)
            check_files_exist(samples, source)

        cfg = self.cfg
        layout = self.layout()

        def resolve_val() -> list:
            val = (layout.from_split_file(Path(cfg.val_list)) if cfg.val_list is not None
                   else self._split_samples(layout, cfg.val_split))
            if not val:
                raise ValueError(f"the validation set is empty (data.val_list={cfg.val_list}, "
                                 f"data.val_split={cfg.val_split}, root {cfg.root})")
            check_list(val, str(cfg.val_list or cfg.root))
            return val

        if stage in ("validate", "test"):
            return Partition(labeled=[], unlabeled=[], val=list(resolve_val()), source="val only")

        labeled_list = cfg.labeled_list
        unlabeled_list = cfg.unlabeled_list
        if cfg.dataset == "synthscapes" and labeled_list is None and cfg.n_labeled:
            generated = Path(cfg.root) / "splits" / str(int(cfg.n_labeled))
            if (generated / "labeled.txt").exists():
                labeled_list = str(generated / "labeled.txt")
                unlabeled_list = str(generated / "unlabeled.txt")
            elif cfg.synthscapes.get("labeled_styles"):
                from semiseg_lit.errors import UserError

                raise UserError(
                    f"data.n_labeled={cfg.n_labeled} with data.synthscapes.labeled_styles="
                    f"{cfg.synthscapes.labeled_styles}: only the generated lists keep the labeled images inside "
                    f"the labeled styles, and they exist for n_labeled in {list(self._synthscapes_counts())}; use "
                    "one of those, or data.synthscapes.labeled_styles=null")
        extra_unlabeled = cfg.get("unlabeled_dir") or cfg.get("unlabeled_split")
        pool_cache: list = []

        def train_pool() -> list:
            """The images of data.train_split, each with its mask or None."""
            if not pool_cache:
                pool_cache.append(self._split_samples(layout, cfg.train_split, require_masks=False))
            return pool_cache[0]

        if labeled_list is not None:
            labeled = layout.from_split_file(Path(labeled_list))
            labeled_src = str(labeled_list)
        else:
            labeled_split = cfg.labeled_split or cfg.train_split
            split_key = "data.labeled_split" if cfg.labeled_split else "data.train_split"
            candidates = (train_pool() if labeled_split == cfg.train_split
                          else self._split_samples(layout, labeled_split, require_masks=False))
            with_mask = [s for s in candidates if s.mask is not None]
            if not with_mask:
                raise ValueError(
                    f"none of the {len(candidates)} images of {split_key}={labeled_split!r} (root {cfg.root}) has "
                    "a mask, so there is nothing to train on; labeled images need masks "
                    f"({self._mask_hint()}), or give data.labeled_list")
            if cfg.n_labeled is None:  # every image that has a mask is labeled
                labeled = with_mask
                labeled_src = f"every image of {labeled_split} with a mask"
            else:
                n = int(cfg.n_labeled)
                if not 1 <= n <= len(with_mask):
                    without = len(candidates) - len(with_mask)
                    raise ValueError(
                        f"data.n_labeled={n} but {split_key}={labeled_split!r} (root {cfg.root}) has "
                        f"{len(with_mask)} images with a mask" + (f" ({without} more without)" if without else "")
                        + f"; expected 1 <= data.n_labeled <= {len(with_mask)}: lower data.n_labeled, or "
                        "data.n_labeled=null to label every image that has a mask")
                labeled, _ = partition(with_mask, n, int(cfg.split_seed))
                labeled_src = f"seeded draw of {n} from {labeled_split} (split_seed={cfg.split_seed})"
                if labeled_split != cfg.train_split:  # VOC classic: labeled from train, unlabeled from train_aug
                    pool_ids = {s.id for s in train_pool()}
                    outside = [s.id for s in labeled if s.id not in pool_ids]
                    if outside:
                        raise ValueError(f"data.labeled_split={labeled_split!r} is not inside data.train_split="
                                         f"{cfg.train_split!r}: {len(outside)} drawn id(s) are not in it, e.g. "
                                         f"{', '.join(outside[:5])}")

        labeled_ids = {s.id for s in labeled}
        if unlabeled_list is not None:
            unlabeled = layout.from_split_file(Path(unlabeled_list), require_masks=False)
            unlabeled_src = str(unlabeled_list)
        elif extra_unlabeled and not self._has_split(layout, cfg.train_split):
            unlabeled, unlabeled_src = [], ""  # e.g. flat lists + data.unlabeled_dir: no train split to complement
        else:
            # by id and by file: a folder list's ids (relative to image_dir) differ from the split's
            labeled_files = {self._file_key(s.image) for s in labeled}
            unlabeled = sorted((s for s in train_pool()
                                if s.id not in labeled_ids and self._file_key(s.image) not in labeled_files),
                               key=lambda s: s.id)
            unlabeled_src = f"the rest of {cfg.train_split}"
            unmasked = [str(s.image) for s in unlabeled if s.mask is None]
            if unmasked:
                log.info("%d image(s) of data.train_split=%s have no mask: used as unlabeled images, e.g. %s",
                         len(unmasked), cfg.train_split, ", ".join(unmasked[:3]))
        val = resolve_val()
        unlabeled, extra_src = self._add_extra_unlabeled(layout, unlabeled, labeled, val)
        source = f"labeled: {labeled_src}; unlabeled: " + (" + ".join(x for x in (unlabeled_src, extra_src) if x)
                                                           or "none")
        check_disjoint(labeled, unlabeled, str(labeled_list or "labeled draw"),
                       str(unlabeled_list or "unlabeled complement"))
        check_list(labeled, str(labeled_list or cfg.root))
        if "unlabeled" in self.streams or "bank" in self.streams:
            if not unlabeled:
                raise ValueError(
                    f"the unlabeled set is empty ({source}); semi-supervised methods need unlabeled images: "
                    "give data.unlabeled_dir=<folder of images> (no masks needed), data.unlabeled_list, or "
                    "data.unlabeled_split, or lower data.n_labeled")
            check_list(unlabeled, str(unlabeled_list or cfg.get("unlabeled_dir") or cfg.root))
        return Partition(labeled=list(labeled), unlabeled=list(unlabeled), val=list(val), source=source)

    def _add_extra_unlabeled(self, layout, unlabeled: list, labeled: list, val: list) -> tuple[list, str]:
        """``unlabeled`` + the images of ``data.unlabeled_split`` and under ``data.unlabeled_dir`` (never
        needing masks), without files already labeled, val or unlabeled (same image file)."""
        from semiseg_lit.data import datasets as D
        from semiseg_lit.data.image_io import DataError

        cfg = self.cfg
        extra: list = []
        sources: list[str] = []
        if cfg.get("unlabeled_split"):
            if not self._has_split(layout, cfg.unlabeled_split):
                raise DataError(f"data.unlabeled_split={cfg.unlabeled_split!r}: no such split under {cfg.root} "
                                f"({self._split_hint(cfg.unlabeled_split)})")
            extra += self._split_samples(layout, cfg.unlabeled_split, require_masks=False)
            sources.append(f"unlabeled_split {cfg.unlabeled_split}")
        if cfg.get("unlabeled_dir"):
            folder = Path(str(cfg.unlabeled_dir)).expanduser()
            if not folder.is_dir():
                raise DataError(f"data.unlabeled_dir={folder} is not a folder; expected a folder of images "
                                "(any nesting, no masks needed)")
            suffixes = cfg.image_suffix if cfg.dataset == "folder" else ".jpg|.jpeg|.png"
            found = D.FolderLayout(folder, None, image_suffix=suffixes).samples()
            # ids unique across sources: the folder's own relative stems could repeat those of train_split
            extra += [s._replace(id=f"{folder.as_posix()}/{s.id}") for s in found]
            sources.append(f"unlabeled_dir {folder}")
        if not extra:
            return unlabeled, ""
        taken = {self._file_key(s.image) for s in (*labeled, *val)}
        seen = {self._file_key(s.image) for s in unlabeled}
        kept, dropped = [], 0
        for s in extra:
            key = self._file_key(s.image)
            if key in taken:
                dropped += 1
            elif key not in seen:
                seen.add(key)
                kept.append(s)
        if dropped:
            log.info("%d image(s) of %s are labeled or val images and are not used as unlabeled", dropped,
                     " + ".join(sources))
        return list(unlabeled) + kept, f"{len(kept)} from " + " + ".join(sources)

    @staticmethod
    def _file_key(path: Path) -> str:
        return str(Path(path).resolve())

    def _mask_hint(self) -> str:
        cfg = self.cfg
        if cfg.dataset == "folder":
            return f"{cfg.mask_dir}/<split>/<same relative path><{cfg.mask_suffix}>"
        if cfg.dataset == "voc":
            return "<root>/SegmentationClass[Aug]/<id>.png"
        return "<root>/gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png or _labelIds.png"

    def _split_hint(self, split: str) -> str:
        cfg = self.cfg
        if cfg.dataset == "folder":
            return f"expected the folder {cfg.image_dir}/{split}"
        if cfg.dataset == "voc":
            return f"expected the list ImageSets/Segmentation/{split}.txt"
        return f"expected the folder leftImg8bit/{split}"

    @staticmethod
    def _has_split(layout, split: str) -> bool:
        return bool(getattr(layout, "has_split", lambda _s: False)(split))

    def check_contents(self, labeled: list, unlabeled: list, val: list) -> None:
        """Read and check files before training (``data.check_before_training``): a size mismatch,
        an unreadable file or a label value outside ``[0, C) ∪ {ignore}`` fails here, naming the
        files, not hours later. ``labeled``: every labeled mask is read, and every val image and mask
        header (readable, same size; a PNG/JPEG without its end marker is decoded) so a corrupt val
        file fails before step 1, not at the first validation; ``all``: every file is read."""
        from semiseg_lit.data.datasets import scan_samples
        from semiseg_lit.data.image_io import DataError

        mode = self.cfg.check_before_training
        if mode not in ("labeled", "all", "none"):
            raise ValueError(f"data.check_before_training={mode!r}: expected labeled | all | none")
        if mode == "none":
            return
        full = mode == "all"
        groups = [("labeled", labeled, True)] + ([("unlabeled", unlabeled, True)] if full else []) + [
            ("val", val, full)]
        remap = dict(self.cfg.label_remap) if self.cfg.label_remap else None
        for name, samples, read_masks in groups:
            rep = scan_samples(samples, self.num_classes, ignore_index=int(self.cfg.ignore_index),
                               label_remap=remap, decode_images=False, read_masks=read_masks)
            if rep.problems:
                listed = "\n  ".join(f"{f}: {m}" for f, m in rep.problems[:5])
                n = len(rep.problems)
                raise DataError(f"{n} problem{'s' if n != 1 else ''} in the {name} images (checked before "
                                f"training, data.check_before_training={mode}; first ones below); fix or remove "
                                f"them, and run task=check_data for the full report:\n  {listed}")

    @staticmethod
    def _split_samples(layout, split: str, require_masks: bool = True) -> list:
        return layout.samples(split, require_masks=require_masks) if hasattr(layout, "samples") else []

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        if self.partition is not None:
            return
        from semiseg_lit.data.datasets import SegmentationDataset

        cfg = self.cfg
        p = self.resolve_partition(stage)
        self.check_contents(p.labeled, p.unlabeled, p.val)
        self.partition = p
        log.info("partition: %d labeled, %d unlabeled, %d val (%s)", len(p.labeled), len(p.unlabeled),
                 len(p.val), p.source)
        aug = cfg.augment
        remap = OmegaConf.to_container(cfg.label_remap) if cfg.label_remap else None
        common = dict(num_classes=self.num_classes, ignore_index=int(cfg.ignore_index), label_remap=remap)
        resize = list(aug.resize) if aug.resize is not None else None
        geo = dict(crop=crop_hw(cfg.crop_size), hflip=bool(aug.hflip), pad_label=int(aug.pad_label),
                   mean=list(cfg.mean), std=list(cfg.std), resize=resize, scale_sampling=str(aug.scale_sampling))
        geo["crop_first"] = bool(aug.crop_first)
        labeled_strong = build_transforms(aug.strong) if aug.labeled_strong else ()
        self._datasets["labeled"] = SegmentationDataset(
            p.labeled, transform=LabeledTransform(scale_range=list(aug.scale_range), strong=labeled_strong, **geo),
            **common)
        if "partner" in self.streams:
            self._datasets["partner"] = SegmentationDataset(
                p.labeled, transform=LabeledTransform(scale_range=list(aug.partner_scale_range),
                                                      strong=labeled_strong, **geo), **common)
        if "unlabeled" in self.streams or "bank" in self.streams:
            # ground truth of unlabeled images is loaded only when it exists (diagnostics only)
            has_gt = bool(p.unlabeled) and all(s.mask is not None for s in p.unlabeled)
            self._datasets["unlabeled"] = SegmentationDataset(
                p.unlabeled, load_mask=has_gt, check_values=False,
                transform=UnlabeledTransform(scale_range=list(aug.scale_range),
                                             strong=build_transforms(aug.strong), **geo,
                                             **self.unlabeled_options), **common)
        if "bank" in self.streams:  # the same unlabeled images, weak + strong views
            self._datasets["bank"] = SegmentationDataset(
                p.unlabeled, load_mask=False, check_values=False,
                transform=UnlabeledTransform(scale_range=list(aug.scale_range),
                                             strong=build_transforms(aug.strong), **geo), **common)
        self._datasets["val"] = SegmentationDataset(
            p.val, transform=EvalTransform(mean=list(cfg.mean), std=list(cfg.std),
                                       resize=list(cfg.val_resize) if cfg.val_resize is not None else None),
            **common)

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def groups_per_device(self) -> int:
        """Emulated GPUs per device: ``virtual_ranks / world size`` (1 without emulation)."""
        return groups_per_device(self.virtual_ranks, self._world()[1])

    def per_device_batch(self, stream: str) -> int:
        key = "unlabeled" if stream in ("unlabeled", "bank") else "labeled"
        return per_device_batch_size(key, int(self.cfg[f"{key}_batch_size"]), self._world()[1], self.virtual_ranks,
                                     self.sync_batchnorm)

    def _consumed_batches(self) -> int:
        """Training batches already consumed (non-zero when resuming from a checkpoint)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        try:
            return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)
        except AttributeError:
            return int(trainer.global_step)

    def _loader_kwargs(self) -> dict[str, Any]:
        workers = int(self.cfg.num_workers)
        return dict(num_workers=workers, pin_memory=bool(self.cfg.pin_memory),
                    persistent_workers=bool(self.cfg.persistent_workers) and workers > 0,
                    worker_init_fn=worker_init if workers > 0 else None)

    def stream_loader(self, stream: str, start_batch: int = 0) -> DataLoader:
        self.setup()
        rank, world = self._world()
        batch = self.per_device_batch(stream)
        kwargs = self._loader_kwargs()
        if stream == "bank":
            bank = self._bank_callback()
            depth = (kwargs["num_workers"] * 2 if kwargs["num_workers"] else 0) + 2  # workers' + Lightning's prefetch
            if depth > bank.lag:
                raise ValueError(f"data.num_workers={kwargs['num_workers']} prefetches {depth} batches but "
                                 f"method.ael.cutmix_bank_lag={bank.lag}; set the lag to at least {depth}")
            sampler = CutMixBankSampler(self._bank_callback, batch, seed=self.seed, rank=rank, world_size=world,
                                        start=start_batch * batch, groups=self.groups_per_device())
            dataset = SeededDataset(self._datasets["bank"])
        else:
            groups = self.groups_per_device()
            sampler = InfiniteStreamSampler(len(self._datasets[stream]), seed=self.seed,
                                            stream_id=STREAM_IDS[stream], rank=rank, world_size=world,
                                            start=start_batch * batch, groups=groups, group_batch=batch // groups)
            dataset = SeededDataset(self._datasets[stream])
        return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, **kwargs)

    def _bank_callback(self):
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        bank = getattr(module, "cutmix_bank", None)
        if bank is None:
            raise RuntimeError("the 'bank' stream needs the CutMixBank callback of the AEL method")
        return bank

    def train_dataloader(self) -> CombinedLoader:
        start = self._consumed_batches()
        loaders = {name: self.stream_loader(name, start) for name in self.streams}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        rank, world = self._world()
        kwargs = self._loader_kwargs()
        kwargs["persistent_workers"] = False
        collate = functools.partial(pad_collate, ignore_index=int(self.cfg.ignore_index))
        if self.eval_mode == "center_crop":
            crop = crop_hw(self.cfg.val_crop_size if self.cfg.val_crop_size is not None else self.cfg.crop_size,
                           "data.val_crop_size")
            collate = functools.partial(center_crop_collate, crop=crop, label_pad_value=int(self.cfg.val_pad_label),
                                        ignore_index=int(self.cfg.ignore_index))
        return DataLoader(dataset, batch_size=max(1, int(self.cfg.val_batch_size) // world),
                          sampler=ShardSampler(len(dataset), rank, world), collate_fn=collate, **kwargs)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._eval_loader(self._datasets["val"])

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
