"""Data-pipeline benchmark: images per second (and per worker) of the real training streams.

    python benchmarks/data_throughput.py [--workers 0 1 2] [--batches 8] [--datasets cityscapes voc]
        [--n-images 8] [--step-s 0.69 --step-images 16] [--root /tmp/dir]
    python benchmarks/data_throughput.py --compare-crop-first 20   # transform cost only, both paths

Writes synthetic trees in the official layouts into a temporary folder (or ``--root``):
Cityscapes-sized 2048×1024 PNG images + ``labelTrainIds`` PNGs (``tests/data/layout_builders.py``'s
street label maps, image = palette colour + noise) and VOC-sized 500×375 JPEGs (quality 95) +
``SegmentationClassAug`` PNGs. Then runs the real ``SemiSegDataModule`` streams of the ``data=cityscapes``
/ ``data=voc`` configs (crop 769 / 513, scale jitter [0.5, 2.0], flip) through a ``DataLoader`` with each
``num_workers``:

* ``labeled``: image + mask, weak (geometric) view;
* ``unlabeled``: weak view + the pixel-aligned strong view (ELN's: ColorJitter(0.4, 0.4, 0.4, 0.1, p=1),
  ToGray(p=0.2), on top of the weak view).

The first ``1 + 2·num_workers`` batches (worker start-up, prefetched batches) are not timed.
``images_per_s_per_worker`` divides by the number of worker processes (by 1 for ``num_workers=0``,
where the main process loads). With ``--step-s`` (a measured training step) and ``--step-images`` (image loads per step and device: e.g. AEL = labeled + partner +
unlabeled + bank batches), the script also prints the loader rate a step consumes and how many workers
keep up. The last lines are one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # tests.data.layout_builders writes the official trees

ELN_STRONG = [
    {"_target_": "albumentations.ColorJitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
     "p": 1.0},
    {"_target_": "albumentations.ToGray", "p": 0.2},
]


# ----------------------------------------------------------------------------------------- trees
def write_cityscapes_tree(root: Path, n_train: int) -> Path:
    """Official Cityscapes tree with ``n_train`` 1024×2048 training images and one validation image."""
    from tests.data.layout_builders import write_cityscapes

    write_cityscapes(root, cities={"train": {"aachen": n_train}, "val": {"frankfurt": 1}}, size=(1024, 2048))
    return root


def write_voc_tree(base: Path, n_train: int, seed: int = 0) -> Path:
    """``VOCdevkit/VOC2012`` with ``n_train`` 375×500 JPEGs (+ one val) and grey SegmentationClassAug PNGs."""
    from semiseg_lit.data.labels import VOC
    from tests.data.layout_builders import label_image, object_mask, voc_ids

    root = base / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train, val = voc_ids(2007, n_train), voc_ids(2008, 1)
    for sid in train + val:
        labels = object_mask(375, 500, rng, n_objects=2, border=0)
        Image.fromarray(label_image(labels, VOC.palette, rng)).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
        Image.fromarray(labels).save(root / "SegmentationClassAug" / f"{sid}.png")
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    return root


def file_size_mb(folder: Path, pattern: str) -> float:
    files = list(folder.rglob(pattern))
    return sum(f.stat().st_size for f in files) / max(1, len(files)) / 2**20


# ----------------------------------------------------------------------------------------- loaders
def data_cfg(dataset: str, root: Path, n_images: int, workers: int, batch: int):
    """The ``data`` node of ``data=<dataset>`` with this tree, worker count and batch size."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from semiseg_lit.__main__ import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"data={dataset}", f"data.root={root}", f"data.n_labeled={n_images // 2}",
            f"data.num_workers={workers}", f"data.labeled_batch_size={batch}", f"data.unlabeled_batch_size={batch}",
            "data.check_before_training=none", "paths.output_dir=.", "logger.wandb.enabled=false"])
    cfg.data.augment.strong = ELN_STRONG
    return cfg.data


def measure(dataset: str, root: Path, stream: str, workers: int, args: argparse.Namespace) -> dict:
    """Images per second of one stream's ``DataLoader`` (first batch untimed)."""
    from semiseg_lit.data.datamodule import SemiSegDataModule

    dm = SemiSegDataModule(data_cfg(dataset, root, args.n_images, workers, args.batch), seed=0,
                           streams=("labeled", "unlabeled"))
    dm.setup("fit")
    it = iter(dm.stream_loader(stream))
    shape = tuple(next(it)["image"].shape)
    for _ in range(2 * workers):  # drain what the workers prefetched while starting: steady state from here
        next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    seconds = time.perf_counter() - t0
    del it
    n = args.batches * args.batch
    rate = n / seconds
    return {"dataset": dataset, "stream": stream, "views": "weak+strong" if stream == "unlabeled" else "weak",
            "num_workers": workers, "batch_shape": list(shape), "images": n, "seconds": round(seconds, 3),
            "images_per_s": round(rate, 2), "images_per_s_per_worker": round(rate / max(1, workers), 2)}


def compare_crop_first(n: int, seed: int = 0) -> list[dict]:
    """Per-image cost of the labeled transform on decoded 1024×2048 arrays, the crop-first path
    (``data.augment.crop_first=true``) against scaling the whole image first, and of decode + transform
    of a 1024×2048 RGB PNG (OpenCV vs PIL decode), alternating image by image so that a changing
    machine load hits both alike. (The mask PNG read, the same on both paths, is not included.) Crop 769, scale [0.5, 2.0], flip (the
    ``data=cityscapes`` geometry)."""
    import statistics

    import cv2

    from semiseg_lit.data.transforms import LabeledTransform, Normalize

    cv2.setNumThreads(1)  # as in a DataLoader worker (one core each)

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (1024, 2048), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    paths = {flag: LabeledTransform(crop=769, scale_range=(0.5, 2.0), hflip=True, pad_label=255, mean=mean,
                                    std=std, crop_first=flag) for flag in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for k in range(n):
        for flag, t in paths.items():
            t0 = time.perf_counter()
            t(image, mask, seed=k)
            times[flag].append(time.perf_counter() - t0)
    # decode + transform of one 1024x2048 RGB PNG (label-map colours + noise, as the trees above):
    # PIL decode + whole-image-first (before) against read_image (OpenCV for RGB PNGs) + crop-first
    from semiseg_lit.data import image_io

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "image.png"
        smooth = np.repeat(np.repeat(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8), 64, 0), 64, 1)
        noisy = np.clip(smooth.astype(np.int16) + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(png)
        full: dict[bool, list[float]] = {True: [], False: []}
        for k in range(n):
            for flag, t in paths.items():
                t0 = time.perf_counter()
                if flag:
                    img = image_io.read_image(png)
                else:
                    with Image.open(png) as im:
                        img = np.asarray(im.convert("RGB")).copy()
                t(img, mask, seed=k)
                full[flag].append(time.perf_counter() - t0)
    norm = Normalize(mean, std)
    crop = image[:769, :769].copy()
    t0 = time.perf_counter()
    for _ in range(n):
        norm(crop)
    normalize_ms = (time.perf_counter() - t0) / n * 1e3
    return [{"path": "crop_first + OpenCV PNG decode" if flag else "whole_image_first + PIL decode", "images": n,
             "transform_median_ms": round(statistics.median(v) * 1e3, 2),
             "transform_images_per_s": round(1 / statistics.median(v), 2),
             "decode_transform_median_ms": round(statistics.median(full[flag]) * 1e3, 2),
             "decode_transform_images_per_s": round(1 / statistics.median(full[flag]), 2),
             "normalize_769_ms": round(normalize_ms, 2)} for flag, v in times.items()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["cityscapes", "voc"], choices=["cityscapes", "voc"])
    ap.add_argument("--streams", nargs="+", default=["labeled", "unlabeled"], choices=["labeled", "unlabeled"])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    ap.add_argument("--batch", type=int, default=2, help="batch size of each loader")
    ap.add_argument("--n-images", type=int, default=8, help="training images written per dataset")
    ap.add_argument("--root", type=Path, default=None, help="write the trees here (kept) instead of a temp dir")
    ap.add_argument("--step-s", type=float, default=None, help="a measured training-step time (seconds)")
    ap.add_argument("--step-images", type=int, default=None, help="image loads per step and device")
    ap.add_argument("--compare-crop-first", type=int, default=0, metavar="N",
                    help="only time the labeled transform on N decoded 1024x2048 images, crop-first vs "
                         "whole-image-first (no trees written)")
    args = ap.parse_args(argv)
    if args.batches < 1 or args.batch < 2 or args.n_images < 4:
        ap.error("--batches >= 1, --batch >= 2 and --n-images >= 4 are needed")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.compare_crop_first:
        for rec in compare_crop_first(args.compare_crop_first):
            print(json.dumps(rec), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = args.root or Path(tmp)
        roots = {}
        t0 = time.perf_counter()
        if "cityscapes" in args.datasets:
            roots["cityscapes"] = write_cityscapes_tree(base / "cityscapes", args.n_images)
            print(f"# cityscapes tree: {args.n_images} x 2048x1024 PNG, {file_size_mb(roots['cityscapes'] / 'leftImg8bit', '*.png'):.1f} "
                  "MB per image", file=sys.stderr)
        if "voc" in args.datasets:
            roots["voc"] = write_voc_tree(base / "voc", args.n_images)
            print(f"# voc tree: {args.n_images} x 500x375 JPEG, {file_size_mb(roots['voc'] / 'JPEGImages', '*.jpg'):.2f} "
                  "MB per image", file=sys.stderr)
        print(f"# trees written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        records = []
        for dataset, root in roots.items():
            for stream in args.streams:
                for workers in args.workers:
                    rec = measure(dataset, root, stream, workers, args)
                    print(f"# {dataset:10s} {stream:9s} ({rec['views']:11s}) workers={workers}: "
                          f"{rec['images_per_s']:6.2f} images/s, {rec['images_per_s_per_worker']:6.2f} per worker",
                          file=sys.stderr)
                    records.append(rec)
        if args.step_s and args.step_images:
            need = args.step_images / args.step_s
            print(f"# a step of {args.step_s:.3f} s loading {args.step_images} images consumes {need:.2f} images/s",
                  file=sys.stderr)
            for rec in records:
                per_worker = rec["images_per_s_per_worker"]
                print(f"#   {rec['dataset']} {rec['stream']}: >= {math.ceil(need / per_worker)} workers at "
                      f"{per_worker:.2f} images/s each", file=sys.stderr)
        for rec in records:
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
