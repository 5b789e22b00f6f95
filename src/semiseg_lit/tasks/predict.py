"""``task=predict``: segment a folder of images with a trained checkpoint.

``python -m semiseg_lit task=predict ckpt_path=CKPT input=DIR output=DIR [predict.mode=auto|whole|sliding]
[eval.model=student|teacher] [eval.scales=[...]] [eval.flip=true]``

Every image under ``input`` (png, jpg, jpeg, bmp, tif, tiff; recursively, sorted) gives, under ``output``
at the same relative path:

* ``<stem>.png``: index PNG (8-bit grey), pixel value = predicted train id;
* ``<stem>_color.png``: the prediction in the checkpoint's class colours;
* ``<stem>_overlay.png``: the image blended with those colours.

The network, its normalisation (mean/std), crop size, evaluation resize and class table all come
from the checkpoint, so the command needs no dataset. Images of any size work: larger than the crop
they are segmented with the sliding window of the evaluation (``ops/sliding_window.py``), otherwise in
one pass. Unreadable files are named, skipped, and reported at the end (the task then fails with
:class:`PredictionError`, so the exit code is non-zero); ``predictions.json`` lists what was written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from torch import nn

from semiseg_lit.checkpointing import CheckpointError, check_compatible, load_checkpoint
from semiseg_lit.data.image_io import DataError, read_image
from semiseg_lit.data.labels import ClassInfo, colorize
from semiseg_lit.data.transforms import Normalize
from semiseg_lit.errors import RunFolderError, UserError, checking_input
from semiseg_lit.ops.sliding_window import protocol_probs, resolve_auto_mode
from semiseg_lit.tasks.common import method_class
from semiseg_lit.tasks.evaluate import config_for_checkpoint

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PREDICT_MODES = ("auto", "whole", "sliding")
SUMMARY_NAME = "predictions.json"


class PredictionError(UserError, RuntimeError):
    """Some input images could not be read (a user error: exit code 2); ``failures`` holds ``(file, reason)`` pairs."""

    def __init__(self, message: str, failures: Sequence[tuple[Path, str]]):
        super().__init__(message)
        self.failures = list(failures)


# ----------------------------------------------------------------------------- the checkpoint
@dataclass
class InferenceModel:
    """A checkpoint's evaluation network, ready to run, with what is needed to feed and read it."""

    net: nn.Module                 # the evaluated network (student or teacher), eval mode, on ``device``
    cfg: DictConfig                # run config with data / model / method taken from the checkpoint
    class_info: ClassInfo
    checkpoint: Path
    which: str                     # "student" | "teacher": the network returned by eval_network()
    crop: tuple[int, int]          # (H, W) of the evaluation crop / sliding window
    device: torch.device

    @property
    def num_classes(self) -> int:
        return self.class_info.num_classes


def class_info_from_checkpoint(checkpoint: dict[str, Any], path: Path) -> ClassInfo:
    """The class table saved in the checkpoint's hyper-parameters (names, palette, head, tail)."""
    hp = checkpoint.get("hyper_parameters", {})
    missing = [k for k in ("class_names", "palette") if k not in hp]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {' / '.join(missing)} in its hyper_parameters "
                              "(written by an older semiseg_lit?)")
    try:
        return ClassInfo(name=str(hp["config"]["data"].get("name", "checkpoint")),
                         names=tuple(str(n) for n in hp["class_names"]),
                         palette=tuple(tuple(int(v) for v in c) for c in hp["palette"]),
                         head=tuple(int(i) for i in hp.get("head", ())), tail=tuple(int(i) for i in hp.get("tail", ())))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: invalid class table in hyper_parameters ({exc})") from exc


def inference_config(cfg: DictConfig, checkpoint: dict[str, Any], path: Path, expect_classes: int | None = None,
                     key: str = "predict.num_classes") -> DictConfig:
    """``cfg`` with ``data`` (the keys the current schema knows), ``model`` and ``method`` from the
    checkpoint, and no pretrained-weight downloads. ``expect_classes`` (option ``key``), if set, must
    match the checkpoint's class count."""
    saved = checkpoint.get("hyper_parameters", {}).get("config")
    ck_classes = int(saved["data"]["num_classes"]) if saved else -1
    check_compatible(checkpoint, path, ck_classes)  # a semiseg_lit checkpoint at all?
    if expect_classes is not None and int(expect_classes) != ck_classes:
        raise CheckpointError(f"checkpoint {path} has {ck_classes} classes ({saved['data'].get('name')}) but "
                              f"{key}={expect_classes}")
    merged = cfg.copy()
    with open_dict(merged):
        if str(merged.data.get("name")) != str(saved["data"].get("name")):
            log.info("using the checkpoint's data settings (%s, %d classes), not data=%s",
                     saved["data"].get("name"), ck_classes, merged.data.get("name"))
        merged.data = OmegaConf.merge(merged.data, {k: v for k, v in saved["data"].items() if k in merged.data})
    return config_for_checkpoint(merged, checkpoint, path)


def inference_device(accelerator: str) -> torch.device:
    """``trainer.accelerator`` -> a torch device (auto: CUDA, else MPS, else CPU)."""
    acc = str(accelerator).lower()
    if acc == "cpu":
        return torch.device("cpu")
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"trainer.accelerator={accelerator}: no CUDA device available (use trainer.accelerator=cpu)")
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if acc == "mps" or (acc == "auto" and mps is not None and mps.is_available()):
        if mps is None or not mps.is_available():
            raise ValueError(f"trainer.accelerator={accelerator}: MPS is not available")
        return torch.device("mps")
    if acc == "auto":
        return torch.device("cpu")
    raise ValueError(f"trainer.accelerator={accelerator!r}: expected auto | cpu | gpu | cuda | mps")


def load_inference_model(cfg: DictConfig, expect_classes: int | None = None, device: torch.device | None = None,
                         key: str = "predict.num_classes") -> InferenceModel:
    """Rebuild the method of ``cfg.ckpt_path`` from the checkpoint's own config, load its weights
    strictly (another architecture fails here, naming the file) and pick the evaluated network."""
    if not cfg.ckpt_path:
        raise ValueError(f"task={cfg.task} needs ckpt_path=<checkpoint file>")
    path = Path(str(cfg.ckpt_path)).expanduser()
    checkpoint = load_checkpoint(path)
    merged = inference_config(cfg, checkpoint, path, expect_classes, key)
    class_info = class_info_from_checkpoint(checkpoint, path)
    if class_info.num_classes != int(merged.data.num_classes):
        raise CheckpointError(f"checkpoint {path}: {class_info.num_classes} class names but "
                              f"data.num_classes={merged.data.num_classes}")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict (weights)")
    method = method_class(merged)(merged, class_info)
    try:
        method.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the network it describes: {exc}") from exc
    device = device or inference_device(merged.trainer.accelerator)
    method.eval().to(device)
    net = method.eval_network()
    which = "teacher" if net is getattr(method, "teacher", None) else "student"
    return InferenceModel(net=net, cfg=merged, class_info=class_info, checkpoint=path, which=which,
                          crop=method.val_crop(), device=device)


# ----------------------------------------------------------------------------- files
def list_images(root: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under ``root`` (or ``root`` itself), recursively, sorted by relative path; hidden
    files/folders and anything under ``exclude`` are skipped. Missing / empty input -> DataError."""
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"input={root}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return [root]
    if not root.is_dir():
        raise DataError(f"input={root}: no such folder or file")
    skip = exclude.resolve() if exclude is not None else None
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and not (skip is not None and p.resolve().is_relative_to(skip)):
            found.append(p)
    if not found:
        raise DataError(f"input={root}: no images found (looked recursively for {', '.join(IMAGE_SUFFIXES)})")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def output_paths(rel: Path, out: Path, color: bool = True, overlay: bool = True) -> dict[str, Path]:
    """``{"index": out/<rel stem>.png, "color": ..._color.png, "overlay": ..._overlay.png}``."""
    folder = out / rel.parent
    paths = {"index": folder / f"{rel.stem}.png"}
    if color:
        paths["color"] = folder / f"{rel.stem}_color.png"
    if overlay:
        paths["overlay"] = folder / f"{rel.stem}_overlay.png"
    return paths


def plan_outputs(images: Sequence[Path], root: Path, out: Path, color: bool = True,
                 overlay: bool = True) -> list[tuple[Path, Path, dict[str, Path]]]:
    """``(image, relative path, output paths)`` per image; two images writing the same file, or an
    output overwriting an input image, is an error naming both (before any work)."""
    base = root if root.is_dir() else root.parent
    inputs = {p.resolve(): p for p in images}
    owner: dict[Path, Path] = {}
    plan = []
    for image in images:
        rel = image.relative_to(base)
        targets = output_paths(rel, out, color, overlay)
        for target in targets.values():
            key = target.resolve()
            if key in owner:
                raise DataError(f"input files {owner[key]} and {image} would both be predicted into {target}; "
                                "rename one of them")
            if key in inputs:
                raise DataError(f"the prediction of {image} would overwrite the input image {inputs[key]}; "
                                "choose another output folder")
            owner[key] = image
        plan.append((image, rel, targets))
    return plan


def check_no_overwrite(plan: Sequence[tuple[Path, Path, dict[str, Path]]], out: Path, overwrite: bool) -> None:
    """Refuse to replace files already in the output folder (the predictions and ``predictions.json``)
    unless ``overwrite=true``; the message names them and the options."""
    if overwrite:
        return
    targets = [t for _, _, paths in plan for t in paths.values()] + [out / SUMMARY_NAME]
    existing = [t for t in targets if t.exists()]
    if existing:
        listed = ", ".join(str(t) for t in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise RunFolderError(f"output={out} already holds {len(existing)} file(s) this prediction would replace "
                             f"({listed}); choose another output folder, or add overwrite=true to replace them")


def progress(items: Sequence[Any], enabled: bool, description: str = "predicting") -> Iterator[Any]:
    """``items`` with a progress bar (rich, else tqdm, else none)."""
    if not enabled:
        yield from items
        return
    try:
        from rich.progress import track

        yield from track(items, description=description, total=len(items))
        return
    except ImportError:
        pass
    try:
        from tqdm import tqdm

        yield from tqdm(items, desc=description, total=len(items))
    except ImportError:
        yield from items


# ----------------------------------------------------------------------------- inference
def choose_mode(mode: str, height: int, width: int, crop: tuple[int, int]) -> str:
    """``auto`` -> ``sliding`` when the image is larger than the crop on either side, else ``whole``."""
    if mode not in PREDICT_MODES:
        raise ValueError(f"predict.mode={mode!r}: expected {' | '.join(PREDICT_MODES)}")
    return resolve_auto_mode(mode, height, width, crop)


def predict_image(model: InferenceModel, image: np.ndarray, mode: str = "auto", scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> np.ndarray:
    """Train ids ``[H,W]`` uint8 of one RGB uint8 image ``[H,W,3]`` (normalisation and ``data.val_resize``
    as in evaluation; a resized prediction is resized back to the image size)."""
    data = model.cfg.data
    height, width = image.shape[:2]
    resize = data.get("val_resize")
    if resize is not None:
        image = cv2.resize(image, (int(resize[1]), int(resize[0])), interpolation=cv2.INTER_LINEAR)
    x = Normalize(list(data.mean), list(data.std))(image)[None].to(model.device)
    with torch.inference_mode():
        probs = protocol_probs(model.net, x, model.num_classes, model.crop, mode, scales, flip)
        if probs.shape[-2:] != (height, width):
            probs = torch.nn.functional.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        return probs.argmax(1)[0].to(torch.uint8).cpu().numpy()


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image * (1 - alpha) + color * alpha``, rounded, uint8 ``[H,W,3]``."""
    blend = image.astype(np.float32) * (1.0 - alpha) + color.astype(np.float32) * alpha
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def write_prediction(image: np.ndarray, pred: np.ndarray, targets: dict[str, Path], palette: Sequence[Sequence[int]],
                     alpha: float) -> None:
    """Write the index PNG and, when asked for, the colour PNG and the overlay."""
    targets["index"].parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pred).save(targets["index"])
    if "color" in targets or "overlay" in targets:
        color = colorize(pred, palette)
        if "color" in targets:
            Image.fromarray(color).save(targets["color"])
        if "overlay" in targets:
            Image.fromarray(overlay(image, color, alpha)).save(targets["overlay"])


def _check_options(cfg: DictConfig) -> None:
    """Every option error before any work."""
    for key in ("ckpt_path", "input", "output"):
        if not cfg.get(key):
            raise ValueError(f"task=predict needs {key}=... (python -m semiseg_lit task=predict ckpt_path=CKPT "
                             "input=DIR output=DIR)")
    p = cfg.predict
    if p.mode not in PREDICT_MODES:
        raise ValueError(f"predict.mode={p.mode!r}: expected {' | '.join(PREDICT_MODES)}")
    if not 0.0 <= float(p.overlay_alpha) <= 1.0:
        raise ValueError(f"predict.overlay_alpha={p.overlay_alpha}: expected a number in [0, 1]")
    scales = list(cfg.eval.scales)
    if not scales or any(not isinstance(s, (int, float)) or s <= 0 for s in scales):
        raise ValueError(f"eval.scales={scales}: expected a non-empty list of positive numbers")


def _count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary_text(n_total: int, written: int, out: Path, failures: Sequence[tuple[Path, str]]) -> str:
    lines = [f"predicted {written} of {_count(n_total, 'image')} into {out}"]
    if failures:
        lines.append(f"{len(failures)} file(s) could not be predicted:")
        lines += [f"  {reason}" if str(path) in reason else f"  {path}: {reason}" for path, reason in failures]
    return "\n".join(lines)


def predict(cfg: DictConfig) -> None:
    with checking_input():
        _check_options(cfg)
    root, out = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    if root.is_dir() and out.resolve() == root.resolve():
        raise DataError(f"output={out} is the input folder; choose another folder for the predictions")
    p = cfg.predict
    with checking_input():
        plan = plan_outputs(list_images(root, exclude=out), root, out, bool(p.save_color), bool(p.save_overlay))
        check_no_overwrite(plan, out, bool(cfg.get("overwrite", False)))
        model = load_inference_model(cfg, p.num_classes)
    log.info("predicting %s with the %s network of %s (%s, %d classes) on %s", _count(len(plan), "image"), model.which,
             model.checkpoint, model.class_info.name, model.num_classes, model.device)
    scales, flip = [float(s) for s in cfg.eval.scales], bool(cfg.eval.flip)
    palette, alpha = model.class_info.palette, float(p.overlay_alpha)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    failures: list[tuple[Path, str]] = []
    for image_path, rel, targets in progress(plan, bool(cfg.trainer.enable_progress_bar)):
        try:
            image = read_image(image_path)
        except DataError as exc:
            log.warning("skipped: %s", exc)  # the message names the file
            failures.append((image_path, str(exc)))
            continue
        pred = predict_image(model, image, str(p.mode), scales, flip)
        write_prediction(image, pred, targets, palette, alpha)
        written.append(rel.as_posix())
    summary = {"checkpoint": str(model.checkpoint), "network": model.which, "data": model.class_info.name,
               "mode": str(p.mode), "scales": scales, "flip": flip, "class_names": list(model.class_info.names),
               "palette": [list(c) for c in palette], "input": str(root), "written": written,
               "failed": [{"file": str(f), "error": r} for f, r in failures]}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    text = _summary_text(len(plan), len(written), out, failures)
    print(text, flush=True)
    if failures:
        names = ", ".join(str(f) for f, _ in failures)
        raise PredictionError(f"{len(failures)} of {_count(len(plan), 'image')} could not be predicted: {names} "
                              f"(reasons above and in {out / SUMMARY_NAME})", failures)
