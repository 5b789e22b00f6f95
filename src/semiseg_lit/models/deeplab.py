"""Segmentation network factory: DeepLabV3+ (segmentation-models-pytorch) with any smp/timm encoder.

``SegmentationNet`` adds to smp's DeepLabV3+ what the semi-supervised methods need:

* an optional auxiliary FCN head on the stride-16 features (the encoder's second-to-last stage,
  ResNet ``layer3``), as in AEL/U2PL (ael.md §2: 3×3 conv → BN → ReLU → Dropout(0.1) → 1×1 conv);
* an optional projection head on the decoder features (ELN's 128-d head, eln.md §2.1:
  1×1 conv → ReLU → 1×1 conv);
* padding of inputs to a multiple of the encoder's reduction, so any image size works;
* parameter groups (backbone / heads) for separate learning-rate multipliers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from semiseg_lit.errors import RunFailure


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the configured network (other architecture / class count)."""


class FCNHead(nn.Sequential):
    """Auxiliary head: 3×3 conv → BN → ReLU → Dropout2d(0.1) → 1×1 conv (ael.md §2 ``Aux_Module``)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(mid_channels, num_classes, 1),
        )


class ProjectionHead(nn.Sequential):
    """Pixel embedding head: 1×1 conv → ReLU → 1×1 conv (eln.md §2.1 ``proj``); not normalised."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, out_channels, 1))


@dataclass
class SegOutput:
    """Network outputs. ``logits`` and ``aux`` are at the input resolution; ``proj`` and
    ``decoder_features`` at 1/4 of it; ``features`` are the encoder stages (for aux decoders);
    ``native_logits``: the classifier's output before upsampling (1/4 resolution), set with
    ``keep_features`` by the reference networks (``models/reference_nets.py``)."""

    logits: torch.Tensor
    aux: torch.Tensor | None = None
    proj: torch.Tensor | None = None
    decoder_features: torch.Tensor | None = None
    features: list[torch.Tensor] | None = None
    native_logits: torch.Tensor | None = None


def read_weights_file(path: str | Path, missing_error: type[Exception] = FileNotFoundError,
                      read_error: type[Exception] = CheckpointMismatchError) -> dict[str, torch.Tensor]:
    """A local weights file as a state dict (``weights_only=True``; a ``{"state_dict": ...}``
    wrapper is unwrapped). Missing or unreadable files raise the given error types, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise missing_error(f"encoder_weights={str(path)!r}: file not found (use 'imagenet', null, or a "
                            "path to a saved encoder state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise read_error(f"cannot read encoder weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local encoder state dict strictly; names the file on any mismatch."""
    state = read_weights_file(path)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    # an ImageNet classifier's head (fc/classifier) is not part of the encoder: tolerated
    unexpected = [k for k in state if k not in own and not k.startswith(("fc.", "classifier.", "head."))]
    shape_bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape_bad:
        raise CheckpointMismatchError(
            f"encoder weights {path} do not match the encoder: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), shape mismatches {shape_bad[:3]}")
    encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, int, int]:
    """``x`` zero-padded on the bottom/right to multiples of ``divisor``, and its original ``(h, w)``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, h, w


class SegmentationNet(nn.Module):
    """DeepLabV3+ with optional aux FCN head and projection head (see module docstring)."""

    def __init__(self, num_classes: int, encoder: str = "resnet18", encoder_weights: str | None = None,
                 output_stride: int = 16, decoder_channels: int = 256,
                 atrous_rates: tuple[int, ...] = (12, 24, 36), aspp_separable: bool = False,
                 aspp_dropout: float = 0.1, aux_head: bool = False, aux_channels: int = 256,
                 projection_dim: int | None = None, in_channels: int = 3):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"model.output_stride must be 8 or 16, got {output_stride}")
        local_file = encoder_weights is not None and encoder_weights not in ("imagenet",) and (
            "/" in encoder_weights or encoder_weights.endswith((".pt", ".pth", ".bin", ".safetensors")))
        try:
            net = smp.DeepLabV3Plus(
                encoder_name=encoder, encoder_weights=None if local_file else encoder_weights,
                encoder_output_stride=output_stride, decoder_channels=decoder_channels,
                decoder_atrous_rates=tuple(atrous_rates), decoder_aspp_separable=aspp_separable,
                decoder_aspp_dropout=aspp_dropout, in_channels=in_channels, classes=num_classes)
        except KeyError as exc:
            raise ValueError(f"model.encoder={encoder!r} is not an smp encoder (see smp.encoders.get_encoder_names()"
                             f"; timm encoders as 'tu-<name>'): {exc}") from exc
        except Exception as exc:
            if encoder_weights and not local_file:
                raise RunFailure(  # a RuntimeError: one message, no stack trace
                    f"could not load model.encoder_weights={encoder_weights!r} for {encoder!r} ({exc}). Without a "
                    "network, set model.encoder_weights=null or a path to a local state-dict file.") from exc
            raise
        self.encoder = net.encoder
        self.decoder = net.decoder
        self.segmentation_head = net.segmentation_head
        if local_file:
            load_encoder_weights(self.encoder, encoder_weights)
        self.num_classes = num_classes
        channels = self.encoder.out_channels
        self.aux_head = FCNHead(channels[-2], aux_channels, num_classes) if aux_head else None
        self.projection_head = ProjectionHead(decoder_channels, projection_dim) if projection_dim else None
        # input sizes must be multiples of the deepest stage's stride (32 for the 5-stage encoders)
        self.size_divisor = 2 ** len(channels[1:]) if len(channels) > 1 else 32

    # ------------------------------------------------------------------ helpers
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"backbone": encoder params, "head": everything else} (trainable only)."""
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return {"backbone": backbone, "head": head}

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """DeepLabV3+ decoder features at 1/4 resolution."""
        return self.decoder(features)

    def classify(self, decoder_features: torch.Tensor) -> torch.Tensor:
        """Segmentation head: 1×1 conv + ×4 bilinear upsampling."""
        return self.segmentation_head(decoder_features)

    # ------------------------------------------------------------------ forward
    def forward_all(self, x: torch.Tensor, aux: bool = False, proj: bool = False,
                    keep_features: bool = False,
                    feature_transform: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
                    ) -> SegOutput:
        """All outputs. ``feature_transform``: applied to the encoder's feature maps before the decoder
        and the aux head (UniMatch V2's complementary channel dropout); smp's identity stage 0, the
        (padded) input image itself, is not a feature and is passed through unchanged."""
        x, h, w = pad_to_multiple(x, self.size_divisor)
        features = self.encoder(x)
        if feature_transform is not None:
            features = [features[0], *feature_transform(list(features[1:]))]
        dec = self.decode(features)
        logits = self.classify(dec)[..., :h, :w]
        out = SegOutput(logits=logits)
        if aux and self.aux_head is not None:
            a = self.aux_head(features[-2])
            out.aux = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]
        if proj and self.projection_head is not None:
            ph, pw = -(-h // 4), -(-w // 4)
            out.proj = self.projection_head(dec)[..., :ph, :pw]
        if keep_features:
            out.features = features
            out.decoder_features = dec
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] at the input resolution (the evaluation / export interface)."""
        return self.forward_all(x).logits


def build_segmentation_net(model_cfg, num_classes: int) -> nn.Module:
    """Build from the ``model`` config node (``config.ModelConfig``): ``model.arch=deeplabv3plus`` is
    smp's DeepLabV3+ (:class:`SegmentationNet`); ``deeplabv3plus_ael`` / ``deeplabv3plus_eln`` are the
    official networks of the papers (:mod:`semiseg_lit.models.reference_nets`); ``dpt`` is a timm ViT
    (DINOv2) + DPT (:mod:`semiseg_lit.models.dpt`)."""
    if model_cfg.arch == "dpt":
        from semiseg_lit.models.dpt import build_dpt_net

        return build_dpt_net(model_cfg, num_classes)
    from semiseg_lit.models.dpt import check_dpt_only_keys

    check_dpt_only_keys(model_cfg)
    if model_cfg.arch != "deeplabv3plus":
        from semiseg_lit.models.reference_nets import build_reference_net

        return build_reference_net(model_cfg, num_classes)
    return SegmentationNet(
        num_classes=num_classes, encoder=model_cfg.encoder, encoder_weights=model_cfg.encoder_weights,
        output_stride=int(model_cfg.output_stride), decoder_channels=int(model_cfg.decoder_channels),
        atrous_rates=tuple(model_cfg.atrous_rates), aspp_separable=bool(model_cfg.aspp_separable),
        aspp_dropout=float(model_cfg.aspp_dropout), aux_head=bool(model_cfg.aux_head),
        aux_channels=int(model_cfg.aux_channels),
        projection_dim=int(model_cfg.projection_dim) if model_cfg.projection_dim else None)
