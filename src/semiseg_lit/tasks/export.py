"""``task=export``: ONNX and TorchScript files of a checkpoint's evaluation network.

``python -m semiseg_lit task=export ckpt_path=CKPT [output=DIR] [export.format=onnx|torchscript|both]
[export.height=H export.width=W] [export.opset=18] [export.dynamic_axes=true] [export.onnx_exporter=dynamo|legacy]
[eval.model=student|teacher]``

The exported graph is the network that ``task=eval`` evaluates (student or teacher, from the
checkpoint's ``method.eval_model`` or ``eval.model``): input ``image`` = normalised RGB float32
``[N,3,H,W]``, ``x = (pixel / 255 - mean) / std``; output ``logits`` ``[N,C,H,W]`` at the input resolution
(argmax over dim 1 = train id). Any H, W works (the graph pads to a multiple of the encoder stride and
crops back). Multi-scale / flip averaging and the sliding window are not part of the graph; the sidecar
``<stem>_export.json`` records the normalisation, the class names and palette, and the evaluation
protocol (crop size, mode). Files: ``<stem>.onnx`` (class table etc. also in its metadata),
``<stem>.torchscript.pt`` (``semiseg_lit.json`` in its extra files), written to ``output`` or beside the
checkpoint.

ONNX exporters: ``dynamo`` (``torch.onnx.export(dynamo=True)``, torch.export-based, the default since
torch 2.9; needs ``onnxscript``; opset >= 18) or ``legacy`` (TorchScript-based, deprecated by torch;
opset >= 11). Both are checked against PyTorch with onnxruntime when ``export.check=true``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from semiseg_lit.console import quiet_third_party
from semiseg_lit.errors import UserError, checking_input
from semiseg_lit.models.deeplab import SegmentationNet
from semiseg_lit.models.reference_nets import ReferenceSegNet
from semiseg_lit.tasks.predict import InferenceModel, load_inference_model

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "both")
MIN_OPSET = {"dynamo": 18, "legacy": 11}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
METADATA_KEY = "semiseg_lit"


class ExportError(ValueError):
    """An export option that cannot be honoured, or an exported file that disagrees with PyTorch."""


class ExportableNet(nn.Module):
    """``SegmentationNet.forward`` without Python branches on the input size, so that a traced or
    exported graph stays valid for every H, W: pad bottom/right to a multiple of the encoder stride
    (possibly by 0), run, crop back."""

    def __init__(self, net: SegmentationNet | ReferenceSegNet):
        super().__init__()
        if not isinstance(net, (SegmentationNet, ReferenceSegNet)):
            raise ExportError(f"the evaluation network is a {type(net).__name__}; export supports SegmentationNet "
                              "and the reference networks")
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, ReferenceSegNet):  # any input size, no padding, no size branches
            return self.net(image)
        h, w = image.shape[-2], image.shape[-1]
        d = self.net.size_divisor
        x = F.pad(image, (0, (-w) % d, 0, (-h) % d))
        return self.net.classify(self.net.decode(self.net.encoder(x)))[..., :h, :w]


# ----------------------------------------------------------------------------- options
def check_options(cfg: DictConfig) -> None:
    """Every unsupported option is an error before the checkpoint is read."""
    e, ev = cfg.export, cfg.eval
    if not cfg.ckpt_path:
        raise ValueError("task=export needs ckpt_path=<checkpoint file>")
    if e.format not in FORMATS:
        raise ExportError(f"export.format={e.format!r}: expected {' | '.join(FORMATS)}")
    if e.onnx_exporter not in MIN_OPSET:
        raise ExportError(f"export.onnx_exporter={e.onnx_exporter!r}: expected {' | '.join(MIN_OPSET)}")
    if e.format != "torchscript" and int(e.opset) < MIN_OPSET[e.onnx_exporter]:
        hint = " (or export.onnx_exporter=legacy for opsets 11-17)" if e.onnx_exporter == "dynamo" else ""
        raise ExportError(f"export.opset={e.opset} is too low for the {e.onnx_exporter} ONNX exporter: expected "
                          f">= {MIN_OPSET[e.onnx_exporter]}{hint}")
    if [float(s) for s in ev.scales] != [1.0] or bool(ev.flip):
        raise ExportError(f"eval.scales={list(ev.scales)} eval.flip={ev.flip}: multi-scale / flip averaging is "
                          "not part of the exported network; export with eval.scales=[1.0] eval.flip=false and "
                          "average the exported model's outputs yourself")
    if ev.mode not in (None, "whole"):
        raise ExportError(f"eval.mode={ev.mode}: the exported network runs on the whole input; the sliding window "
                          "/ center crop are not part of it (leave eval.mode unset; the crop size is in the "
                          "sidecar JSON)")
    for key in ("height", "width"):
        if e[key] is not None and int(e[key]) < 1:
            raise ExportError(f"export.{key}={e[key]}: expected a positive size or null (the crop size)")
    if int(e.batch_size) < 1:
        raise ExportError(f"export.batch_size={e.batch_size}: expected >= 1")
    if e.format != "torchscript":
        needed = ["onnx"] + (["onnxscript"] if e.onnx_exporter == "dynamo" else [])
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install 'semiseg-lit[export]' "
                              f"(or {' '.join(missing)})")


def export_metadata(model: InferenceModel, example: torch.Tensor, dynamic: bool) -> dict[str, Any]:
    """What a user of the exported file needs: input normalisation and layout, classes, protocol."""
    data, m = model.cfg.data, model.cfg.model
    shape: list[Any] = ["batch", 3, "height", "width"] if dynamic else list(example.shape)
    return {
        "checkpoint": str(model.checkpoint), "network": model.which, "method": str(model.cfg.method.name),
        "model": {"arch": str(m.arch), "encoder": str(m.encoder)}, "data": model.class_info.name,
        "num_classes": model.num_classes, "class_names": list(model.class_info.names),
        "palette": [list(c) for c in model.class_info.palette], "ignore_index": int(data.ignore_index),
        "input": {"name": INPUT_NAME, "shape": shape, "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                  "normalization": "x = (pixel / 255 - mean) / std per channel, pixel = uint8 RGB",
                  "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std]},
        "output": {"name": OUTPUT_NAME, "shape": [shape[0], model.num_classes, shape[2], shape[3]],
                   "dtype": "float32", "meaning": "class logits at the input resolution; argmax over dim 1 = train id"},
        "evaluation": {"val_mode": str(data.val_mode), "crop_size": list(model.crop),
                       "val_resize": list(data.val_resize) if data.get("val_resize") is not None else None,
                       "note": "task=predict slides crop-size windows (stride ceil(2/3 crop), softmax averaged) "
                               "over images larger than the crop and runs smaller ones whole"},
    }


# ----------------------------------------------------------------------------- ONNX
def _dynamic_shapes(dynamic: bool) -> dict[str, Any] | None:
    if not dynamic:
        return None
    dim = torch.export.Dim
    return {INPUT_NAME: {0: dim("batch", min=1), 2: dim("height", min=1), 3: dim("width", min=1)}}


def export_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str,
                dynamic: bool, metadata: dict[str, Any]) -> None:
    """Write ``net`` as ONNX (input ``image``, output ``logits``) with ``metadata`` in its metadata_props."""
    import onnx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
            if exporter == "dynamo":
                program = torch.onnx.export(net, (example,), dynamo=True, opset_version=opset,
                                            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                            dynamic_shapes=_dynamic_shapes(dynamic), verbose=False)
                program.save(str(path))
            else:
                axes = {0: "batch", 2: "height", 3: "width"}
                torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None)
    except Exception as exc:  # noqa: BLE001 - re-raised with the options that led to it
        raise ExportError(f"ONNX export failed (export.onnx_exporter={exporter}, export.opset={opset}): "
                          f"{type(exc).__name__}: {exc}") from exc
    proto = onnx.load(str(path))
    written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if written != opset:
        path.unlink(missing_ok=True)
        raise ExportError(f"export.opset={opset}: the {exporter} exporter wrote opset {written}; use an opset it "
                          f"supports (dynamo: >= 18, legacy: 11-20)")
    if dynamic:  # the dynamo exporter names the output sizes by symbolic formulas equal to the input's
        for dim, name in zip(proto.graph.output[0].type.tensor_type.shape.dim, ("batch", None, "height", "width")):
            if name is not None:
                dim.dim_param = name
    del proto.metadata_props[:]
    entries = {METADATA_KEY: json.dumps(metadata), "class_names": json.dumps(metadata["class_names"]),
               "palette": json.dumps(metadata["palette"]), "mean": json.dumps(metadata["input"]["mean"]),
               "std": json.dumps(metadata["input"]["std"]), "normalization": metadata["input"]["normalization"]}
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def check_onnx(path: Path, net: nn.Module, images: torch.Tensor) -> dict[str, float] | None:
    """Run the ONNX file with onnxruntime and compare with PyTorch (None if onnxruntime is missing)."""
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: the ONNX file was not checked")
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])
    return compare(got, net, images, "ONNX (onnxruntime)", path)


# ----------------------------------------------------------------------------- TorchScript
def export_torchscript(net: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """Trace ``net`` and save it with ``semiseg_lit.json`` (``metadata``) among its extra files."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
            traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc


def check_torchscript(path: Path, net: nn.Module, images: torch.Tensor) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        got = loaded(images)
    return compare(got, net, images, "TorchScript", path)


# ----------------------------------------------------------------------------- checks
def compare(got: torch.Tensor, net: nn.Module, images: torch.Tensor, what: str, path: Path,
            atol: float = 1e-3, rtol: float = 1e-3) -> dict[str, float]:
    """Max |logit difference| and argmax agreement of an exported model with PyTorch; an error if the
    logits are not allclose (``atol``, ``rtol``)."""
    with torch.no_grad():
        ref = net(images).float()
    if tuple(got.shape) != tuple(ref.shape):
        raise ExportError(f"{what} file {path} returns shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
    diff = float((got.float() - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    if not torch.allclose(got.float(), ref, atol=atol, rtol=rtol):
        raise ExportError(f"{what} file {path} disagrees with PyTorch on a random image: max |logit difference| "
                          f"{diff:.3g}, argmax agreement {agree:.4f}")
    return {"max_abs_diff": diff, "argmax_agreement": agree}


def check_size(height: int, width: int, dynamic: bool) -> tuple[int, int]:
    """Size of the check images: another size (and batch) than the example when the axes are dynamic."""
    return (height + 13, width + 7) if dynamic else (height, width)


def export(cfg: DictConfig) -> None:
    quiet_third_party()
    e = cfg.export
    with checking_input():
        check_options(cfg)
        model = load_inference_model(cfg, e.num_classes, device=torch.device("cpu"), key="export.num_classes")
        if str(model.cfg.model.arch) == "dpt":
            raise UserError(
                f"task=export: {model.checkpoint} holds a DINOv2 + DPT network (model.arch=dpt), which cannot be "
                "exported yet: ONNX has no antialiased bicubic resize (timm's position-embedding interpolation) "
                "and TorchScript cannot script timm's ViT. Use task=predict with the checkpoint instead.")
    net = ExportableNet(model.net).eval()
    height, width = int(e.height or model.crop[0]), int(e.width or model.crop[1])
    example = torch.randn(int(e.batch_size), 3, height, width, generator=torch.Generator().manual_seed(0))
    dynamic = bool(e.dynamic_axes)
    metadata = export_metadata(model, example, dynamic)
    out = Path(str(cfg.output)).expanduser() if cfg.output else model.checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = model.checkpoint.stem
    images = torch.randn(int(e.batch_size) + int(dynamic), 3, *check_size(height, width, dynamic),
                         generator=torch.Generator().manual_seed(1))
    files: dict[str, str] = {}
    checks: dict[str, Any] = {}
    if e.format in ("onnx", "both"):
        path = out / f"{stem}.onnx"
        export_onnx(net, example, path, int(e.opset), str(e.onnx_exporter), dynamic, metadata)
        files["onnx"] = str(path)
        checks["onnx"] = check_onnx(path, net, images) if e.check else None
    if e.format in ("torchscript", "both"):
        path = out / f"{stem}.torchscript.pt"
        export_torchscript(net, example, path, metadata)
        files["torchscript"] = str(path)
        checks["torchscript"] = check_torchscript(path, net, images) if e.check else None
    sidecar = out / f"{stem}_export.json"
    info = {**metadata, "files": files,
            "onnx": {"exporter": str(e.onnx_exporter), "opset": int(e.opset)} if "onnx" in files else None,
            "checks": checks}
    sidecar.write_text(json.dumps(info, indent=2))
    lines = [f"exported the {model.which} network of {model.checkpoint} ({model.num_classes} classes):"]
    lines += [f"  {kind}: {p}" + (f"  (max |diff| vs PyTorch {checks[kind]['max_abs_diff']:.2g})"
                                  if checks.get(kind) else "") for kind, p in files.items()]
    lines.append(f"  metadata: {sidecar}  (input: normalised RGB [N,3,H,W], mean {metadata['input']['mean']}, "
                 f"std {metadata['input']['std']})")
    print("\n".join(lines), flush=True)
