"""task=export: ONNX (onnxruntime) and TorchScript files give the evaluation network's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semiseg_lit.checkpointing import CheckpointError
from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.export import ExportableNet, ExportError
from semiseg_lit.tasks.predict import load_inference_model
from tests.tasks.test_predict import CROP, SMALL_NET, build_checkpoint, compose_config

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An AEL checkpoint whose teacher differs from its student (the teacher is the exported network)."""

    def perturb_teacher(checkpoint):
        g = torch.Generator().manual_seed(0)
        for k, v in checkpoint["state_dict"].items():
            if k.startswith("teacher.") and v.is_floating_point() and "running" not in k:
                v.add_(0.05 * torch.randn(v.shape, generator=g))

    return build_checkpoint(tmp_path_factory.mktemp("export") / "model.ckpt", experiment="ael_synthscapes",
                            edit=perturb_teacher)


def export_cfg(ckpt: Path, out: Path, *extra: str):
    return compose_config(["task=export", f"ckpt_path={ckpt}", f"output={out}", *SMALL_NET,
                           f"paths.output_dir={out.parent / 'hydra'}", *extra])


def reference(ckpt: Path, images: torch.Tensor, *extra: str) -> torch.Tensor:
    """Logits of the evaluation network run directly in PyTorch (SegmentationNet.forward)."""
    model = load_inference_model(export_cfg(ckpt, Path("/nonexistent"), *extra), device=torch.device("cpu"))
    with torch.no_grad():
        return model.net(images)


def random_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": images.numpy()})[0]


def test_legacy_onnx_and_torchscript_match_pytorch(ckpt, tmp_path):
    out = tmp_path / "out"
    run_task(export_cfg(ckpt, out, "export.onnx_exporter=legacy", "export.opset=17"))
    images = random_images(2, 70, 90)  # another batch and size than the example input (dynamic axes)
    ref = reference(ckpt, images)
    got = run_onnx(out / "model.onnx", images)
    assert got.shape == (2, 10, 70, 90)
    np.testing.assert_array_equal(got.argmax(1), ref.argmax(1).numpy())
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)

    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), ref, atol=1e-5, rtol=1e-5)

    meta = json.loads((out / "model_export.json").read_text())
    assert meta["network"] == "teacher" and meta["num_classes"] == 10 and len(meta["class_names"]) == 10
    assert meta["input"]["mean"] == [0.485, 0.456, 0.406] and meta["input"]["shape"] == ["batch", 3, "height", "width"]
    assert meta["evaluation"]["crop_size"] == [CROP, CROP]
    assert meta["checks"]["onnx"]["argmax_agreement"] == 1.0
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(props["class_names"]) == meta["class_names"]
    assert json.loads(props["semiseg_lit"])["input"]["std"] == [0.229, 0.224, 0.225]
    extra = {"semiseg_lit.json": ""}
    torch.jit.load(str(out / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["semiseg_lit.json"])["palette"] == meta["palette"]


def test_student_and_fixed_axes(ckpt, tmp_path):
    out = tmp_path / "out"
    run_task(export_cfg(ckpt, out, "export.format=onnx", "export.onnx_exporter=legacy", "export.dynamic_axes=false",
                        "export.height=40", "export.width=72", "eval.model=student"))
    assert not (out / "model.torchscript.pt").exists()
    shape = [d.dim_value for d in onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 3, 40, 72]
    images = random_images(1, 40, 72, seed=1)
    student, teacher = reference(ckpt, images, "eval.model=student"), reference(ckpt, images)
    got = run_onnx(out / "model.onnx", images)
    np.testing.assert_array_equal(got.argmax(1), student.argmax(1).numpy())
    assert not np.allclose(got, teacher.numpy(), atol=1e-3)


@pytest.mark.slow
def test_dynamo_onnx_exporter_matches_pytorch(ckpt, tmp_path):
    pytest.importorskip("onnxscript")
    out = tmp_path / "out"
    run_task(export_cfg(ckpt, out, "export.format=onnx"))  # the default exporter: dynamo, opset 18
    model = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 10, "height", "width"]
    for n, h, w in ((1, CROP, CROP), (3, 50, 97)):
        images = random_images(n, h, w, seed=h)
        np.testing.assert_array_equal(run_onnx(out / "model.onnx", images).argmax(1),
                                      reference(ckpt, images).argmax(1).numpy())


def test_exportable_net_equals_the_network_on_any_size(ckpt):
    net = load_inference_model(export_cfg(ckpt, Path("/x")), device=torch.device("cpu")).net
    wrapped = ExportableNet(net).eval()
    for h, w in ((64, 64), (33, 70), (1, 5)):
        x = random_images(1, h, w)
        with torch.no_grad():
            torch.testing.assert_close(wrapped(x), net(x), atol=0, rtol=0)


@pytest.mark.parametrize("extra, message", [
    (["export.format=tflite"], "export.format='tflite'"),
    (["eval.scales=[0.75,1.0]"], "multi-scale / flip"),
    (["eval.flip=true"], "multi-scale / flip"),
    (["eval.mode=sliding"], "eval.mode=sliding"),
    (["export.opset=13"], "export.opset=13 is too low for the dynamo"),
    (["export.onnx_exporter=legacy", "export.opset=9"], "export.opset=9 is too low for the legacy"),
    (["export.onnx_exporter=tf2onnx"], "export.onnx_exporter='tf2onnx'"),
    (["export.height=0"], "export.height=0"),
])
def test_unsupported_options_fail_before_any_work(ckpt, tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        run_task(export_cfg(ckpt, out, *extra))
    assert not out.exists()


def test_checkpoint_with_another_class_count_is_refused(ckpt, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="10 classes .* export.num_classes=21"):
        run_task(export_cfg(ckpt, out, "export.num_classes=21"))
    assert not out.exists()
