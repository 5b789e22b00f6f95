"""Input battery (issue #8 item 5): every kind of bad input gives ONE clear error naming the file,
key or value before training starts — through ``task=check_data`` and through the training entry
point — and nothing already written in the run folder is lost.

The dataset is a tiny folder-layout tree (``images/<split>/<stem>.{png,jpg}`` + ``masks/<split>/<stem>.png``,
3 classes) with explicit split lists, so each case damages one known labeled file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semiseg_lit.tasks import run_task

SIZE = (48, 64)  # H, W
N_TRAIN, N_VAL = 8, 3
LABELED = [f"train_{k:03d}" for k in range(4)]  # train_000.png, train_001.jpg, train_002.png, train_003.jpg


def _ext(k: int) -> str:
    return ".png" if k % 2 == 0 else ".jpg"


def _pair(stem: str) -> str:
    k = int(stem.rsplit("_", 1)[1])
    return f"images/train/{stem}{_ext(k)} masks/train/{stem}.png"


def build_tree(root: Path) -> Path:
    """8 train + 3 val images (PNG and JPEG alternating, train_002 grey) with 'L' index masks."""
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for k in range(n):
            labels = ((np.arange(SIZE[0])[:, None] * 3 // SIZE[0] + k) % 3 + np.zeros(SIZE, int)).astype(np.uint8)
            image = np.clip(labels[..., None] * 80 + rng.integers(0, 40, (*SIZE, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(image)
            if split == "train" and k == 2:
                im = im.convert("L")  # a grey image: loads as 3 channels
            im.save(root / "images" / split / f"{split}_{k:03d}{_ext(k)}", quality=95)
            Image.fromarray(labels).save(root / "masks" / split / f"{split}_{k:03d}.png")
    (root / "labeled.txt").write_text("\n".join(_pair(s) for s in LABELED))
    (root / "unlabeled.txt").write_text("\n".join(_pair(f"train_{k:03d}") for k in range(4, N_TRAIN)))
    return root


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.num_classes=3", f"data.labeled_list={root / 'labeled.txt'}",
            f"data.unlabeled_list={root / 'unlabeled.txt'}", "data.crop_size=32", "data.labeled_batch_size=2",
            "data.unlabeled_batch_size=2", "data.val_batch_size=3", "data.num_workers=0",
            "model.encoder=resnet18", "model.encoder_weights=null", "model.decoder_channels=16",
            "model.aux_channels=16", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger.wandb.enabled=false",
            f"paths.output_dir={out}", f"paths.log_dir={out / 'logs'}", *extra]


def existing_run(out: Path) -> dict[str, bytes]:
    """A run folder from an earlier run (checkpoint, metrics, config); returns its snapshot."""
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (out / "checkpoints" / "best.ckpt").write_bytes(b"an earlier run's best checkpoint")
    (out / "metrics.json").write_text('{"miou": 0.5}')
    (out / "config_resolved.yaml").write_text("earlier: true\n")
    return snapshot(out)


def snapshot(out: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not str(p.relative_to(out)).startswith(skip)}


# ----------------------------------------------------------------------------- the damage
def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_png(root):
    return _truncate(root / "images/train/train_000.png"), "truncated"


def truncated_jpeg(root):
    return _truncate(root / "images/train/train_001.jpg"), "truncated"


def zero_byte_image(root):
    p = root / "images/train/train_003.jpg"
    p.write_bytes(b"")
    return p, "0 bytes"


def zero_byte_mask(root):
    p = root / "masks/train/train_001.png"
    p.write_bytes(b"")
    return p, "0 bytes"


def mask_16bit(root):
    p = root / "masks/train/train_000.png"
    Image.fromarray(np.zeros(SIZE, np.uint16) + 1).save(p)
    return p, "16-bit"


def mask_rgba(root):
    p = root / "masks/train/train_001.png"
    Image.fromarray(np.zeros((*SIZE, 4), np.uint8)).save(p)
    return p, "colour image"


def mask_size_mismatch(root):
    p = root / "masks/train/train_002.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(p)
    return p, "same size"


def label_out_of_range(root):
    p = root / "masks/train/train_003.png"
    Image.fromarray(np.full(SIZE, 7, np.uint8)).save(p)
    return p, "label values [7]"


def empty_split_list(root):
    p = root / "labeled.txt"
    p.write_text("")
    return p, "empty"


def duplicate_id_in_split(root):
    p = root / "labeled.txt"  # train_000 as a pair AND as an image path: the same sample twice
    p.write_text(p.read_text() + "\nimages/train/train_000.png")
    return p, "train/train_000"


def unlabeled_overlaps_labeled(root):
    p = root / "unlabeled.txt"
    p.write_text(p.read_text() + "\n" + _pair("train_001"))
    return p, "train/train_001"


FILE_CASES = [truncated_png, truncated_jpeg, zero_byte_image, zero_byte_mask, mask_16bit, mask_rgba,
              mask_size_mismatch, label_out_of_range]
LIST_CASES = [empty_split_list, duplicate_id_in_split, unlabeled_overlaps_labeled]


@pytest.fixture
def tree(tmp_path) -> Path:
    return build_tree(tmp_path / "data")


def _train_fails(compose_cfg, root, out, needle, *extra) -> str:
    before = existing_run(out)
    with pytest.raises(ValueError) as err:  # DataError / SplitError are ValueErrors
        run_task(compose_cfg(overrides(root, out, *extra)))
    msg = str(err.value)
    assert needle in msg, msg
    assert snapshot(out) == before  # nothing written, nothing lost
    return msg


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda f: f.__name__)
def test_bad_file_is_one_clear_error_before_training(compose_cfg, tree, tmp_path, case):
    bad, what = case(tree)
    # check_data: a report with exactly this one problem
    problems = run_task(compose_cfg(overrides(tree, tmp_path / "check", "task=check_data")))
    report = json.loads((tmp_path / "check" / "check_data.json").read_text())
    listed = [p for split in report["splits"].values() for p in split["problems"]]
    assert problems == 1 and len(listed) == 1, listed
    assert listed[0]["file"] == str(bad) and what in listed[0]["problem"], listed
    # training: one error naming the file, raised before a trainer exists
    msg = _train_fails(compose_cfg, tree, tmp_path / "run", str(bad))
    assert "1 problem in the labeled images" in msg and what in msg


@pytest.mark.parametrize("case", LIST_CASES, ids=lambda f: f.__name__)
def test_bad_split_list_is_one_clear_error_before_training(compose_cfg, tree, tmp_path, case):
    bad, what = case(tree)
    for task, out in (("check_data", tmp_path / "check"), ("train", tmp_path / "run")):
        msg = _train_fails(compose_cfg, tree, out, str(bad), f"task={task}")
        assert what in msg


def test_non_utf8_file_name_is_named_before_training(compose_cfg, tree, tmp_path):
    """A bytes (latin-1) name on Linux: refused with the name shown as bytes, whichever set it is in."""
    if sys.platform != "linux":
        pytest.skip("bytes file names are a Linux thing")
    for sub in ("images", "masks"):
        src = tree / sub / "train" / "train_004.png" if sub == "masks" else tree / "images/train/train_004.png"
        os.link(src, os.path.join(os.fsencode(tree / sub / "train"), b"caf\xe9.png"))
    # a seeded draw over the folder (split lists must be UTF-8 text, so they cannot name the file)
    extra = ("data.labeled_list=null", "data.unlabeled_list=null", "data.n_labeled=4", "method=ael")
    for task, out in (("check_data", tmp_path / "check"), ("train", tmp_path / "run")):
        msg = _train_fails(compose_cfg, tree, out, "caf\\xe9.png", f"task={task}", *extra)
        assert "not valid UTF-8" in msg


@pytest.mark.slow
def test_grey_image_loads_as_three_channels_and_trains(compose_cfg, tree, tmp_path):
    """The control: the undamaged tree (with its grey labeled image) checks clean and trains."""
    from semiseg_lit.data.image_io import read_image

    assert read_image(tree / "images/train/train_002.png").shape == (*SIZE, 3)
    assert run_task(compose_cfg(overrides(tree, tmp_path / "check", "task=check_data"))) == 0
    run_task(compose_cfg(overrides(tree, tmp_path / "run")))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


# ----------------------------------------------------------------------------- the command line
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "semiseg_lit", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("bad, needles", [
    ("data.crop_sise=32", ["crop_sise"]),                   # unknown key
    ("trainer.max_steps=ten", ["max_steps", "ten"]),        # wrong type
    ("data.labeled_batch_size=[2]", ["labeled_batch_size"]),  # wrong type (a list for an int)
])
def test_bad_config_on_the_command_line_is_one_error_and_writes_nothing(tree, tmp_path, bad, needles):
    out = tmp_path / "run"
    before = existing_run(out)
    res = _cli([*overrides(tree, out), f"hydra.run.dir={out}", bad], tmp_path)
    assert res.returncode != 0
    for needle in needles:
        assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert snapshot(out) == before


@pytest.mark.slow
def test_bad_file_through_the_command_line(tree, tmp_path):
    bad, _ = truncated_png(tree)
    out = tmp_path / "run"
    before = existing_run(out)
    res = _cli([*overrides(tree, out), f"hydra.run.dir={out}"], tmp_path)
    assert res.returncode != 0
    assert res.stderr.count("Error executing job") == 1, res.stderr[-3000:]
    assert "1 problem in the labeled images" in res.stderr and f"{bad}: cannot read" in res.stderr
    # Hydra records the latest invocation in .hydra/ and appends to its log; our files are untouched
    assert snapshot(out, skip=(".hydra", "__main__.log")) == before
