"""task=predict: index / colour / overlay PNGs for a folder of images, with clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.checkpointing import CheckpointError
from semiseg_lit.data.datamodule import resolve_class_info
from semiseg_lit.data.image_io import DataError
from semiseg_lit.data.transforms import Normalize
from semiseg_lit.models.deeplab import build_segmentation_net
from semiseg_lit.ops.sliding_window import sliding_window_inference
from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.common import method_class
from semiseg_lit.tasks.predict import (
    PredictionError,
    choose_mode,
    list_images,
    load_inference_model,
    output_paths,
)
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
CROP = 64
SMALL_NET = ["model.encoder=resnet18", "model.encoder_weights=null", "model.decoder_channels=16",
             "model.aux_channels=16", f"data.crop_size={CROP}", "trainer.accelerator=cpu",
             "trainer.enable_progress_bar=false", "logger.wandb.enabled=false"]


def compose_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def build_checkpoint(path: Path, experiment: str = "supervised_synthscapes", extra: list[str] = (),
                     edit=None) -> Path:
    """A checkpoint as Lightning writes it (state_dict + hyper_parameters) of an untrained method,
    without training; ``edit(checkpoint)`` may change it before it is saved."""
    cfg = compose_config([f"+experiment={experiment}", *SMALL_NET, f"paths.output_dir={path.parent}", *extra])
    torch.manual_seed(0)  # the same weights in every run (unseeded, the ONNX tolerance check was flaky)
    method = method_class(cfg)(cfg, resolve_class_info(cfg.data))
    checkpoint = {"state_dict": method.state_dict(), "hyper_parameters": dict(method.hparams), "global_step": 0}
    if edit is not None:
        edit(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def predict_cfg(ckpt: Path, inp: Path, out: Path, *extra: str):
    return compose_config(["task=predict", f"ckpt_path={ckpt}", f"input={inp}", f"output={out}", *SMALL_NET,
                           f"paths.output_dir={out.parent / 'hydra'}", *extra])


def write_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path, quality=100) if path.suffix == ".jpg" else Image.fromarray(image).save(path)
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt")


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """A large image (sliding window), a small one in a sub-folder (whole image), a corrupt PNG, a text file."""
    root = tmp_path / "images"
    write_image(root / "large.png", 150, 110, seed=0)
    write_image(root / "sub" / "small.jpg", 40, 50, seed=1)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("not an image")
    return root


def reference_argmax(ckpt: Path, image: np.ndarray, sliding: bool) -> np.ndarray:
    """Train ids computed directly: the student rebuilt from the checkpoint, whole image or sliding window."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = state["hyper_parameters"]["config"]
    net = build_segmentation_net(OmegaConf.create(cfg["model"]), cfg["data"]["num_classes"])
    net.load_state_dict({k[len("student."):]: v for k, v in state["state_dict"].items() if k.startswith("student.")})
    net.eval()
    x = Normalize(cfg["data"]["mean"], cfg["data"]["std"])(image)[None]
    with torch.no_grad():
        probs = sliding_window_inference(net, x, 10, crop=CROP) if sliding else net(x).softmax(1)
    return probs.argmax(1)[0].numpy().astype(np.uint8)


def test_predicts_every_readable_image_and_reports_the_corrupt_one(ckpt, image_dir, tmp_path):
    out = tmp_path / "pred"
    with pytest.raises(PredictionError, match="broken.png") as err:
        run_task(predict_cfg(ckpt, image_dir, out))
    assert [f.name for f, _ in err.value.failures] == ["broken.png"]

    palette = np.asarray(torch.load(ckpt, weights_only=True)["hyper_parameters"]["palette"], dtype=np.uint8)
    for rel, (h, w), sliding in (("large", (150, 110), True), ("sub/small", (40, 50), False)):
        image = np.asarray(Image.open(image_dir / (rel + (".png" if sliding else ".jpg"))).convert("RGB"))
        index_im = Image.open(out / f"{rel}.png")
        assert index_im.mode == "L"
        index = np.asarray(index_im)
        assert index.shape == (h, w) and index.dtype == np.uint8 and index.max() < 10
        np.testing.assert_array_equal(index, reference_argmax(ckpt, image, sliding))
        color = np.asarray(Image.open(out / f"{rel}_color.png"))
        assert color.shape == (h, w, 3)
        np.testing.assert_array_equal(color, palette[index])
        blend = np.asarray(Image.open(out / f"{rel}_overlay.png")).astype(int)
        np.testing.assert_allclose(blend, 0.5 * image + 0.5 * color.astype(float), atol=1)
    assert not (out / "broken.png").exists() and not (out / "notes.png").exists()
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["written"] == ["large.png", "sub/small.jpg"]
    assert summary["failed"][0]["file"].endswith("broken.png") and "cannot read" in summary["failed"][0]["error"]
    assert summary["network"] == "student" and len(summary["class_names"]) == 10


def test_mode_whole_and_color_switches(ckpt, tmp_path):
    inp = tmp_path / "in"
    image = write_image(inp / "a.png", 100, 90, seed=3)
    out = tmp_path / "out"
    run_task(predict_cfg(ckpt, inp, out, "predict.mode=whole", "predict.save_color=false",
                         "predict.save_overlay=false"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), reference_argmax(ckpt, image, False))
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "predictions.json"]


def test_val_resize_of_the_checkpoint_is_applied_and_undone(tmp_path):
    ckpt = build_checkpoint(tmp_path / "resize.ckpt", extra=["data.val_resize=[48,48]"])
    inp = tmp_path / "in"
    write_image(inp / "a.png", 70, 30, seed=4)
    run_task(predict_cfg(ckpt, inp, tmp_path / "out"))
    assert np.asarray(Image.open(tmp_path / "out" / "a.png")).shape == (70, 30)


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "no such folder"),
    (lambda root: root, "no images found"),
    (lambda root: (root / "x.txt").write_text("x") and root / "x.txt", "not an image file"),
])
def test_missing_empty_or_non_image_input_is_a_clear_error(ckpt, tmp_path, make, message):
    root = tmp_path / "in"
    root.mkdir()
    (root / "readme.md").write_text("no images here")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message):
        run_task(predict_cfg(ckpt, make(root), out))
    assert not out.exists()


@pytest.mark.parametrize("missing", ["ckpt_path", "input", "output"])
def test_missing_option_is_named(ckpt, image_dir, tmp_path, missing):
    cfg = predict_cfg(ckpt, image_dir, tmp_path / "out", f"{missing}=null")
    with pytest.raises(ValueError, match=missing):
        run_task(cfg)


def test_checkpoint_with_another_class_count_fails_before_any_work(ckpt, image_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"10 classes \(synthscapes\) but predict.num_classes=19"):
        run_task(predict_cfg(ckpt, image_dir, out, "predict.num_classes=19"))
    assert not out.exists()


def test_checkpoint_of_another_architecture_fails_before_any_work(tmp_path, image_dir):
    def wider_decoder(checkpoint):
        checkpoint["hyper_parameters"]["config"]["model"]["decoder_channels"] = 32

    ckpt = build_checkpoint(tmp_path / "mismatch.ckpt", edit=wider_decoder)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="mismatch.ckpt does not fit the network"):
        run_task(predict_cfg(ckpt, image_dir, out))
    assert not out.exists()


def test_foreign_checkpoint_is_refused(tmp_path, image_dir):
    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpt)
    with pytest.raises(CheckpointError, match="not written by semiseg_lit"):
        run_task(predict_cfg(ckpt, image_dir, tmp_path / "out"))


def test_two_images_predicted_into_one_file_is_an_error(ckpt, tmp_path):
    inp = tmp_path / "in"
    write_image(inp / "a.png", 20, 20, seed=0)
    write_image(inp / "a.jpg", 20, 20, seed=1)
    with pytest.raises(DataError, match="would both be predicted into"):
        run_task(predict_cfg(ckpt, inp, tmp_path / "out"))
    with pytest.raises(DataError, match="is the input folder"):
        run_task(predict_cfg(ckpt, inp, inp))


def test_output_inside_the_input_folder_is_not_read_back(ckpt, tmp_path):
    inp = tmp_path / "in"
    write_image(inp / "a.png", 30, 30, seed=0)
    out = inp / "pred"
    for i in range(2):  # the second run replaces its own earlier predictions: overwrite=true
        run_task(predict_cfg(ckpt, inp, out, *(["overwrite=true"] if i else [])))
        assert json.loads((out / "predictions.json").read_text())["written"] == ["a.png"]
    assert [p.relative_to(inp).as_posix() for p in list_images(inp, exclude=out)] == ["a.png"]


def test_ael_checkpoint_predicts_with_the_teacher_unless_asked_for_the_student(tmp_path):
    def teacher_says_class_7(checkpoint):
        bias = checkpoint["state_dict"]["teacher.segmentation_head.0.bias"]
        bias[7] += 1e4

    ckpt = build_checkpoint(tmp_path / "ael.ckpt", experiment="ael_synthscapes", edit=teacher_says_class_7)
    inp = tmp_path / "in"
    write_image(inp / "a.png", 40, 40, seed=0)
    run_task(predict_cfg(ckpt, inp, tmp_path / "teacher"))
    assert (np.asarray(Image.open(tmp_path / "teacher" / "a.png")) == 7).all()
    run_task(predict_cfg(ckpt, inp, tmp_path / "student", "eval.model=student"))
    assert not (np.asarray(Image.open(tmp_path / "student" / "a.png")) == 7).all()
    model = load_inference_model(predict_cfg(ckpt, inp, tmp_path / "x"))
    assert model.which == "teacher" and model.crop == (CROP, CROP)


def test_eln_checkpoint_loads_without_pretrained_weights(tmp_path):
    def says_imagenet(checkpoint):  # as a real ELN run records it; nothing may be downloaded
        checkpoint["hyper_parameters"]["config"]["method"]["eln"]["encoder_weights"] = "imagenet"

    ckpt = build_checkpoint(tmp_path / "eln.ckpt", experiment="eln_synthscapes",
                            extra=["method.eln.decoder_channels=16"], edit=says_imagenet)
    inp = tmp_path / "in"
    image = write_image(inp / "a.png", 40, 40, seed=0)
    run_task(predict_cfg(ckpt, inp, tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["network"] == "student"  # the teacher is not copied before stage 3
    assert load_inference_model(predict_cfg(ckpt, inp, tmp_path / "x")).cfg.method.eln.encoder_weights is None
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")),
                                  reference_argmax(ckpt, image, sliding=False))


def test_helpers():
    assert choose_mode("auto", 65, 10, (64, 64)) == "sliding"
    assert choose_mode("auto", 64, 64, (64, 64)) == "whole"
    assert choose_mode("whole", 500, 500, (64, 64)) == "whole"
    with pytest.raises(ValueError, match="predict.mode='tiles'"):
        choose_mode("tiles", 1, 1, (64, 64))
    paths = output_paths(Path("a/b.x.jpg"), Path("/o"))
    assert paths == {"index": Path("/o/a/b.x.png"), "color": Path("/o/a/b.x_color.png"),
                     "overlay": Path("/o/a/b.x_overlay.png")}


@pytest.mark.slow
def test_cli_on_a_trained_checkpoint_exits_non_zero_when_a_file_fails(synth_root, compose_cfg, tmp_path, image_dir):
    train_out = tmp_path / "train"
    run_task(compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, train_out)]))
    ckpt = train_out / "checkpoints" / "last.ckpt"
    out = tmp_path / "pred"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "semiseg_lit", "task=predict", f"ckpt_path={ckpt}", f"input={image_dir}",
         f"output={out}", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode != 0
    assert "predicted 2 of 3 images" in proc.stdout and "broken.png" in proc.stdout
    for rel in ("large", "sub/small"):
        assert {p.name for p in (out / rel).parent.glob(Path(rel).name + "*")} == {
            f"{Path(rel).name}.png", f"{Path(rel).name}_color.png", f"{Path(rel).name}_overlay.png"}
    assert np.asarray(Image.open(out / "large.png")).shape == (150, 110)
